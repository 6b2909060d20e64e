"""Paired-by-seed comparison of a method with a reference method (pure: numpy and scipy only).

Contract of :func:`compare`: given one final value per seed for a method and for its
reference (e.g. the task's ``baseline``), pair them by seed (seeds missing or non-finite on
either side are dropped), take the differences ``d_s = method_s - reference_s`` and report

* ``mean``: the mean difference over the ``n`` paired seeds;
* ``ci``: the paired **bootstrap** 95% percentile interval of that mean (``RESAMPLES``
  resamples of the ``n`` differences with replacement, numpy ``default_rng(BOOTSTRAP_SEED)``,
  so the same inputs always give the same interval);
* ``p``: the two-sided **paired t-test** p-value (``scipy.stats.ttest_1samp`` of the
  differences against 0; differences that are all equal give p = 0 if non-zero, 1 if zero);
* ``significant``: ``p < ALPHA`` **and** the bootstrap interval excludes 0 (both must agree:
  with few seeds the percentile bootstrap alone is too narrow, three same-sign differences
  always exclude 0);
* ``better``: ``True`` / ``False`` when significant and the metric has a better direction
  (``higher_is_better``), else ``None``.

With fewer than ``MIN_SEEDS`` pairs nothing is computed (``mean`` only, ``ci``/``p`` are
``None``, ``significant`` is ``False``): two seeds give no usable interval.

A table makes many comparisons at once; :func:`holm_adjust` corrects a family of them with
the Holm-Bonferroni step-down rule (``p`` becomes the adjusted p-value, ``p_raw`` keeps the
unadjusted one, and ``significant`` is re-decided on the adjusted ``p``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Hashable, Mapping, Sequence, TypeVar

import numpy as np

ALPHA = 0.05
LEVEL = 0.95
MIN_SEEDS = 3
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
METHOD = (f"{LEVEL:.0%} paired bootstrap percentile CI of the mean difference "
          f"({RESAMPLES:,} resamples) and two-sided paired t-test, its p Holm-Bonferroni-adjusted over all "
          f"the comparisons of one table; significant = adjusted p < {ALPHA} and the CI excludes 0; "
          f"needs >= {MIN_SEEDS} seeds")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Comparison:
    """A method minus its reference over paired seeds (see the module docstring)."""

    n: int
    mean: float
    ci: tuple[float, float] | None
    p: float | None
    significant: bool
    better: bool | None
    #: the unadjusted p-value when ``p`` was adjusted for multiple comparisons (:func:`holm_adjust`)
    p_raw: float | None = None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def paired_differences(values: Mapping[int, Any], reference: Mapping[int, Any]) -> np.ndarray:
    """``values[s] - reference[s]`` for the seeds finite on both sides, in seed order."""
    seeds = sorted(s for s in values if s in reference and _finite(values[s]) and _finite(reference[s]))
    return np.array([float(values[s]) - float(reference[s]) for s in seeds], dtype=np.float64)


def bootstrap_ci(diffs: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampled with replacement)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("bootstrap_ci needs at least one difference")
    index = np.random.default_rng(seed).integers(0, diffs.size, size=(resamples, diffs.size))
    means = diffs[index].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_t_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the one-sample t-test of ``diffs`` against 0 (needs >= 2 values)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size < 2:
        raise ValueError("a paired t-test needs at least 2 differences")
    if np.all(diffs == diffs[0]):
        return 0.0 if diffs[0] != 0 else 1.0
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(diffs, 0.0).pvalue)


def compare(values: Mapping[int, Any], reference: Mapping[int, Any], higher_is_better: bool | None,
            min_seeds: int = MIN_SEEDS, alpha: float = ALPHA) -> Comparison:
    """Compare ``values`` (seed -> final value) with ``reference`` (seed -> value); see the module docstring."""
    diffs = paired_differences(values, reference)
    n = int(diffs.size)
    mean = float(diffs.mean()) if n else math.nan
    if n < min_seeds:
        return Comparison(n, mean, None, None, False, None)
    ci = bootstrap_ci(diffs)
    p = paired_t_p(diffs)
    significant = p < alpha and (ci[0] > 0 or ci[1] < 0)
    better = None
    if significant and higher_is_better is not None and mean != 0:
        better = (mean > 0) == bool(higher_is_better)
    return Comparison(n, mean, ci, p, significant, better)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    Sorted ascending, the ``i``-th smallest (0-based) of ``m`` becomes ``min(1, (m - i) * p)``,
    made non-decreasing along that order (the step-down rule).
    """
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: ps[j])):
        running = max(running, min(1.0, (m - rank) * float(ps[i])))
        adjusted[i] = running
    return adjusted


def holm_adjust(family: Mapping[K, Comparison], alpha: float = ALPHA) -> dict[K, Comparison]:
    """The comparisons of one family with Holm-adjusted ``p`` and re-decided significance.

    Comparisons without a p-value (too few seeds) are one of no family and stay as they are.
    Adjusting can only take significance away, never add it.
    """
    tested = [k for k, c in family.items() if c.p is not None]
    adjusted = dict(zip(tested, holm([family[k].p for k in tested])))
    out = dict(family)
    for k, p in adjusted.items():
        c = family[k]
        significant = c.significant and p < alpha
        out[k] = replace(c, p=p, p_raw=c.p, significant=significant, better=c.better if significant else None)
    return out
