"""Pure functions of verification-based selection (NumPy only; no Lightning, no collapsekit).

Feng et al. (2024), "Beyond Model Collapse: Scaling Up with Synthesized Data Requires
Verification": synthesize more than the training budget and keep the items a verifier
ranks best. With a budget of ``n`` items and a kept share ``keep``, a generation
synthesizes ``ceil(n / keep)`` items (:func:`oversample_factor` = ``1 / keep``) and keeps the
``n`` with the highest verifier score (:func:`best_mask`), or -- for a likelihood-type verifier -- the
``n`` whose score is closest to the real data's mean score (:func:`typicality`).
"""
from __future__ import annotations

import math

import numpy as np


def oversample_factor(keep: float) -> float:
    """Items synthesized per kept item: ``1 / keep`` for a kept share ``keep`` in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0 or math.isnan(keep):
        raise ValueError(f"keep (the share of synthesized items kept) must be in (0, 1], got {keep!r}")
    return 1.0 / float(keep)


def best_mask(scores: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` highest ``scores`` (``n`` clipped to [0, N]; on ties the earlier item wins;
    NaN ranks last)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"best_mask: n must be an integer, got {n!r}")
    n = max(0, min(int(n), len(s)))
    order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:n]] = True
    return mask


def typicality(scores: np.ndarray, reference: float) -> np.ndarray:
    """``-|score - reference|``: how typical each score is of the real data's mean score ``reference``
    (higher = more typical). Ranking by it keeps items as likely as real data are, dropping both the
    improbable ones (errors) and the unusually probable ones (a mode-seeking pool)."""
    if not np.isfinite(reference):
        raise ValueError(f"typicality: reference must be finite, got {reference!r}")
    return -np.abs(np.asarray(scores, dtype=np.float64) - float(reference))


def selection_stats(scores: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``threshold`` (lowest kept score), ``kept_score`` and ``dropped_score`` (mean scores; a key is left
    out when its set is empty)."""
    s, m = np.asarray(scores, dtype=np.float64), np.asarray(mask, dtype=bool)
    out = {}
    if m.any():
        out["threshold"], out["kept_score"] = float(s[m].min()), float(s[m].mean())
    if (~m).any():
        out["dropped_score"] = float(s[~m].mean())
    return out
