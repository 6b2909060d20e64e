"""A table of reference log-probs by example id, kept on the model's device (pure torch)."""
from __future__ import annotations

import torch

from .losses import check_on_device as _check


class RefLogpTable:
    """Reference log-probs of a fixed set of examples, indexed by their ``example_id``.

    :meth:`fill` stores every example's value once (e.g. the whole forget set at the start of
    unlearning); :meth:`lookup` is then plain indexing on the device: no host sync in a training
    step, whatever the batch. ``forwarded`` counts the examples stored by :meth:`fill` (each one
    sent through the reference model once); ``len()`` is the number of distinct ids held.
    """

    def __init__(self) -> None:
        self.values: torch.Tensor | None = None
        self.known: torch.Tensor | None = None
        self.forwarded = 0

    def __len__(self) -> int:
        return 0 if self.known is None else int(self.known.sum())

    @property
    def filled(self) -> bool:
        return self.values is not None

    def clear(self) -> None:
        self.values = self.known = None

    def fill(self, ids: torch.Tensor, values: torch.Tensor, size: int | None = None) -> None:
        """Hold ``values[i]`` for example ``ids[i]`` (ids in ``[0, size)``; ``size`` defaults to the
        largest id + 1, which reads it back from the device)."""
        ids, values = ids.reshape(-1).to(values.device).long(), values.reshape(-1)
        if ids.shape != values.shape:
            raise ValueError(f"RefLogpTable: {len(ids)} ids but {len(values)} values")
        if size is None:
            size = int(ids.max()) + 1 if len(ids) else 0
        _check((ids >= 0).all(), _NEGATIVE)
        _check((ids < size).all(), f"RefLogpTable: an example id is >= the table size {size}")
        self.values = torch.zeros(size, dtype=values.dtype, device=values.device)
        self.known = torch.zeros(size, dtype=torch.bool, device=values.device)
        self.values[ids] = values.detach()
        self.known[ids] = True
        self.forwarded += len(ids)

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values of ``ids`` (any shape), checked on the device: an id never filled is an error."""
        if self.values is None or self.known is None:
            raise RuntimeError("RefLogpTable: fill() it before lookup()")
        ids = ids.to(self.values.device).long()
        _check((ids >= 0).all(), _NEGATIVE)
        inside = ids.clamp(0, max(len(self.values) - 1, 0))
        _check(((ids < len(self.values)) & self.known[inside]).all(),
               "RefLogpTable: an example id of the batch is not in the table (not a forget example?)")
        out = self.values[inside]
        return out if dtype is None else out.to(dtype)


_NEGATIVE = ("RefLogpTable: example ids must be >= 0; a negative id marks an item without a stable identity "
             "(e.g. a synthetic sample), which cannot be a forget example")
