"""A cache of reference log-probabilities keyed by stable example ids. Plain torch, no collapsekit import.

The reference model of NPO is frozen, so ``log pi_ref(y|x)`` of a forget example never
changes: compute it once, on the first batch that holds the example, and reuse it
(open-unlearning recomputes it with a reference forward pass at every step).
"""
from __future__ import annotations

from typing import Callable

import torch


class RefLogpCache:
    """``id -> reference log-prob``; :meth:`lookup` computes only the ids not seen before.

    ``forwarded`` counts the examples that went through ``compute`` (each id once).
    """

    def __init__(self) -> None:
        self.values: dict[int, float] = {}
        self.forwarded = 0

    def __len__(self) -> int:
        return len(self.values)

    def clear(self) -> None:
        self.values.clear()

    def lookup(self, ids: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor],
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Reference log-probs [N] of the examples ``ids`` [N] (int, each >= 0).

        ``compute(rows)`` receives the positions (a LongTensor into ``ids``) of the ids not
        cached yet, duplicates removed, and returns their reference log-probs [len(rows)].
        """
        ids_list = [int(i) for i in ids.reshape(-1).tolist()]
        if any(i < 0 for i in ids_list):
            raise ValueError("RefLogpCache: example ids must be >= 0; a negative id marks an item without a "
                             "stable identity (e.g. a synthetic sample), which cannot be a forget example")
        first: dict[int, int] = {}
        for pos, i in enumerate(ids_list):
            if i not in self.values and i not in first:
                first[i] = pos
        if first:
            rows = torch.tensor(list(first.values()), dtype=torch.long)
            with torch.no_grad():
                values = compute(rows).detach().double().cpu().reshape(-1)
            if len(values) != len(rows):
                raise ValueError(f"RefLogpCache: compute returned {len(values)} values for {len(rows)} rows")
            for i, v in zip(first, values.tolist()):
                self.values[i] = v
            self.forwarded += len(rows)
        return torch.tensor([self.values[i] for i in ids_list], dtype=dtype, device=device)
