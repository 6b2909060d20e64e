"""Silencing Lightning's routine chatter: a run builds a fresh ``Trainer`` every generation, so its
per-Trainer info lines (GPU available, tips) and data-loader warnings would repeat each time."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator, Sequence

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                     "lightning.fabric.utilities.rank_zero", "pytorch_lightning")
ROUTINE_WARNINGS = (".*does not have many workers.*", ".*LeafSpec.*")
"""Warning messages (regexes) that every small CPU run triggers and that say nothing about it."""


def silence_lightning(extra_warnings: Sequence[str] = ()) -> None:
    """For the rest of the process: Lightning's loggers at WARNING, routine warnings (and ``extra_warnings``) off."""
    import lightning.pytorch  # noqa: F401 - it sets its logger to INFO when first imported, so import it first

    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (*ROUTINE_WARNINGS, *extra_warnings):
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """:func:`silence_lightning` for the duration of the block only (levels and filters restored)."""
    import lightning.pytorch  # noqa: F401

    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            silence_lightning()
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
