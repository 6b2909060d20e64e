"""Torch's intra-op thread count of a run: ``run.threads``, else ``$OMP_NUM_THREADS``, else 1.

The count changes floating-point results (reductions are split differently), so the default never
depends on the machine's load or core count: the same config gives the same numbers on any machine
with the same torch build. One thread each also keeps several runs on one machine from
oversubscribing its cores (every process taking all cores' threads slows them all down); give a
larger ``run.threads`` for a big model trained on CPU.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from .errors import ConfigError

DEFAULT_THREADS = 1
ENV_VARS = ("OMP_NUM_THREADS",)
"""Standard variables read when ``run.threads`` is not set (torch reads the same one at start-up)."""


def resolve_threads(requested: int | None = None) -> tuple[int, str]:
    """``(count, where it came from)``: ``requested`` (``"run.threads"``), else ``$OMP_NUM_THREADS``,
    else :data:`DEFAULT_THREADS` (``"default"``)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"run.threads must be a number of torch threads >= 1 (or null for the default), "
                              f"got {requested!r}")
        return requested, "run.threads"
    for name in ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                count = int(value)
            except ValueError:
                count = 0
            if count < 1:
                raise ConfigError(f"{name}={value!r} is not a number of threads >= 1; fix or unset it, "
                                  f"or set run.threads")
            return count, name
    return DEFAULT_THREADS, "default"


def describe(count: int, source: str) -> str:
    """``"1 torch thread (default)"``, for progress output."""
    return f"{count} torch thread{'s' if count != 1 else ''} ({source})"


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Set torch's intra-op threads to ``count`` inside the block and restore the previous count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
