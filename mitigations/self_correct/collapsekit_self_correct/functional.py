"""Pure functions of self-correcting loops (NumPy only; no Lightning, no collapsekit).

Gillman et al. (2024), "Self-Correcting Self-Consuming Loops for Generative Model Training":
an idealised correction of strength ``gamma`` maps the model's distribution ``p`` to
``(p + gamma * p*) / (1 + gamma)`` (``p*`` the data distribution), which makes the loop
exponentially more stable; in practice an expert (a physics simulator, a known source, real-data
clusters) corrects each synthetic item. Here an item is corrected with strength ``lambda`` in
[0, 1]: ``lambda = gamma / (1 + gamma)`` is the share of the idealised mixture that comes from
the data (:func:`mixture_strength`).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def mixture_strength(gamma: float) -> float:
    """``gamma / (1 + gamma)``: the per-item strength in [0, 1) of the paper's correction strength ``gamma >= 0``
    (``gamma`` = infinity gives 1)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or math.isnan(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    return 1.0 if math.isinf(gamma) else float(gamma) / (1.0 + float(gamma))


def change_stats(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> dict[str, float]:
    """How much a correction changed: ``changed_items`` (share of items with any array value changed),
    ``changed_values`` (share of all array values changed) and ``mean_abs_change`` (mean absolute
    change of the floating-point values; 0 without any)."""
    if set(before) != set(after):
        raise ValueError(f"change_stats: the arrays differ: {sorted(before)} vs {sorted(after)}")
    n = len(next(iter(before.values()))) if before else 0
    item_changed = np.zeros(n, dtype=bool)
    changed = total = 0
    abs_sum, float_count = 0.0, 0
    for key in before:
        a, b = np.asarray(before[key]), np.asarray(after[key])
        if a.shape != b.shape:
            raise ValueError(f"change_stats: array {key!r} changed shape {a.shape} -> {b.shape}")
        diff = a != b
        item_changed |= diff.reshape(n, -1).any(1) if n else item_changed
        changed += int(diff.sum())
        total += diff.size
        if np.issubdtype(a.dtype, np.floating):
            abs_sum += float(np.abs(a.astype(np.float64) - b.astype(np.float64)).sum())
            float_count += a.size
    return {"changed_items": float(item_changed.mean()) if n else 0.0,
            "changed_values": changed / total if total else 0.0,
            "mean_abs_change": abs_sum / float_count if float_count else 0.0}
