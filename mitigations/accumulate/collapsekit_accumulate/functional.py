"""Pure functions of the pool policies and the closed forms of Gerstgrasser et al. (2024).

NumPy and the standard library only (no Lightning, no collapsekit): index
selection for accumulate-subsample, the real/synthetic split and the
fresh-data schedules of fresh-mix, and the expected excess test error of OLS
on a fixed design relabelled generation after generation.

Generations here are counted as in the papers where it says ``n`` (``n = 1``
is the fit on real data) and 0-based as in collapsekit where it says
``generation``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SCHEDULES = ("constant", "linear", "exponential")


def _check_count(value: int, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# -- accumulate-subsample ---------------------------------------------------------------------
def subsample_indices(sizes: Sequence[int], budget: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Draw ``budget`` items uniformly without replacement from sources of ``sizes`` items.

    The sources are concatenated conceptually (source 0 first); the draw is one
    uniform subset of ``min(budget, sum(sizes))`` of all positions. Returns, per
    source, the sorted *local* indices chosen in it (int64; empty where none),
    so that a caller can read only those rows of each source. ``budget >=
    sum(sizes)`` takes everything (no randomness used).
    """
    sizes = [_check_count(s, "every source size") for s in sizes]
    budget = _check_count(budget, "budget")
    total = sum(sizes)
    if budget >= total:
        return [np.arange(s, dtype=np.int64) for s in sizes]
    chosen = np.sort(rng.choice(total, size=budget, replace=False)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cuts = np.searchsorted(chosen, starts)
    return [chosen[cuts[i]:cuts[i + 1]] - starts[i] for i in range(len(sizes))]


# -- fresh-mix ------------------------------------------------------------------------------------
def fresh_mix_counts(budget: int, alpha: float, n_real: int, n_synthetic: int) -> tuple[int, int]:
    """``(real, synthetic)`` item counts of a pool of ``budget`` items with real share ``alpha``.

    ``real = floor(alpha * budget + 1/2)``, ``synthetic = budget - real``. When a
    source holds fewer items than that, the whole pool shrinks (to the largest
    total both sources can fill) so that the real share stays ``alpha``
    (up to rounding) instead of the missing items being taken from the other source.
    """
    budget = _check_count(budget, "budget")
    n_real = _check_count(n_real, "n_real")
    n_synthetic = _check_count(n_synthetic, "n_synthetic")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the share of real data) must be in [0, 1], got {alpha!r}")
    total = budget
    if alpha > 0:
        total = min(total, math.floor(n_real / alpha + 1e-9))
    if alpha < 1:
        total = min(total, math.floor(n_synthetic / (1.0 - alpha) + 1e-9))
    real = min(math.floor(alpha * total + 0.5), n_real)
    synthetic = min(total - real, n_synthetic)
    return real, synthetic


def linear_schedule(t: int, start: float, end: float, horizon: int) -> float:
    """``start`` at ``t = 1``, moving linearly to ``end`` at ``t = horizon``, then ``end``."""
    t = _check_count(t, "t", 1)
    horizon = _check_count(horizon, "horizon", 1)
    if horizon == 1:
        return float(end)
    return float(start + (end - start) * min(1.0, (t - 1) / (horizon - 1)))


def exponential_schedule(t: int, start: float, end: float, decay: float) -> float:
    """``end + (start - end) * decay^(t - 1)``: ``start`` at ``t = 1``, tending to ``end``."""
    t = _check_count(t, "t", 1)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay!r}")
    return float(end + (start - end) * decay ** (t - 1))


def fresh_fraction(generation: int, alpha: float, schedule: str = "constant", alpha_end: float = 0.0,
                   decay: float = 0.5, horizon: int = 1) -> float:
    """Real share ``alpha_t`` of 0-based ``generation`` (generation 0 trains on real data only: 1.0).

    For ``generation = t >= 1``: ``constant`` gives ``alpha``; ``linear`` goes
    from ``alpha`` (t = 1) to ``alpha_end`` (t = ``horizon``); ``exponential``
    gives ``alpha_end + (alpha - alpha_end) * decay^(t - 1)``.
    """
    generation = _check_count(generation, "generation")
    for value, what in ((alpha, "alpha"), (alpha_end, "alpha_end")):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if generation == 0:
        return 1.0
    if schedule == "constant":
        return float(alpha)
    if schedule == "linear":
        return linear_schedule(generation, alpha, alpha_end, horizon)
    return exponential_schedule(generation, alpha, alpha_end, decay)


# -- weighting real against synthetic data (He, Xu, Cheng 2025) -----------------------------------
def golden_weight(n_real: int, n_synthetic: int) -> float:
    """He et al.'s optimal loss weight of the real data, ``w* = (sqrt(k^2 + 4k) - k) / 2`` with
    ``k = n_real / n_synthetic``: it minimises :func:`weighted_mean_error` over ``w``; for ``k = 1``
    (as many real as synthetic items) it is ``(sqrt(5) - 1) / 2 = 0.618...``, the reciprocal of the
    golden ratio. ``n_synthetic = 0`` gives 1."""
    n_real = _check_count(n_real, "n_real", 1)
    n_synthetic = _check_count(n_synthetic, "n_synthetic")
    if n_synthetic == 0:
        return 1.0
    k = n_real / n_synthetic
    return (math.sqrt(k * k + 4 * k) - k) / 2


def weighted_mean_error(w: float, n_real: int, n_synthetic: int, sigma2: float = 1.0) -> float:
    """Stationary ``E(mu_hat - mu)^2`` of the weighted mean ``mu_hat_t = w * mean(real_t) + (1 - w) * mean(syn_t)``
    when every generation draws ``n_real`` *fresh* real samples of variance ``sigma2`` and ``n_synthetic``
    samples of ``N(mu_hat_{t-1}, sigma2)``: the fixed point of ``V = w^2 sigma2 / n_real + (1 - w)^2
    (V + sigma2 / n_synthetic)``, i.e. ``sigma2 (w^2 / n_real + (1 - w)^2 / n_synthetic) / (1 - (1 - w)^2)``
    for ``w`` in (0, 1]."""
    n_real = _check_count(n_real, "n_real", 1)
    n_synthetic = _check_count(n_synthetic, "n_synthetic", 1)
    if not 0.0 < w <= 1.0:
        raise ValueError(f"w (the real data's weight) must be in (0, 1], got {w!r}")
    return sigma2 * (w * w / n_real + (1 - w) ** 2 / n_synthetic) / (1 - (1 - w) ** 2)


def item_weights(n_real: int, n_synthetic: int, real_weight: float) -> tuple[float, float]:
    """Per-item loss weights ``(real item, synthetic item)`` that give the real part the total weight
    ``real_weight`` and the synthetic part ``1 - real_weight`` while the weights average 1 over the pool:
    ``real_weight * (n_r + n_s) / n_r`` and ``(1 - real_weight) * (n_r + n_s) / n_s``. Then
    ``mean_i(w_i l_i) = real_weight * mean_real(l) + (1 - real_weight) * mean_synthetic(l)``."""
    n_real = _check_count(n_real, "n_real")
    n_synthetic = _check_count(n_synthetic, "n_synthetic")
    if not 0.0 <= real_weight <= 1.0:
        raise ValueError(f"real_weight must be in [0, 1], got {real_weight!r}")
    total = n_real + n_synthetic
    return (real_weight * total / n_real if n_real else 0.0,
            (1.0 - real_weight) * total / n_synthetic if n_synthetic else 0.0)


# -- closed forms (OLS on a fixed design, Gerstgrasser et al. 2024, Thm. 1 / Dohmatob et al. 2024) --
def excess_error_unit(sigma2: float, d: int, T: int) -> float:
    """``sigma2 * d / (T - d - 1)``: expected excess error of the real-data fit (needs ``T >= d + 2``)."""
    d = _check_count(d, "d", 1)
    T = _check_count(T, "T", 1)
    if T < d + 2:
        raise ValueError(f"the closed forms need T >= d + 2 (here T={T}, d={d}); use more rows than features")
    if not sigma2 >= 0:
        raise ValueError(f"sigma2 must be >= 0, got {sigma2!r}")
    return float(sigma2) * d / (T - d - 1)


def replace_excess_error(sigma2: float, d: int, T: int, n: int) -> float:
    """Expected ``||w_n - w*||^2_Sigma`` under replace: ``sigma2 * d / (T - d - 1) * n`` (``n = 1``: real fit)."""
    n = _check_count(n, "n", 1)
    return excess_error_unit(sigma2, d, T) * n


def accumulate_excess_error(sigma2: float, d: int, T: int, n: int) -> float:
    """Expected ``||w_n - w*||^2_Sigma`` under accumulate: ``sigma2 * d / (T - d - 1) * sum_{i<=n} 1/i^2``."""
    n = _check_count(n, "n", 1)
    return excess_error_unit(sigma2, d, T) * sum(1.0 / i ** 2 for i in range(1, n + 1))


def accumulate_error_bound(sigma2: float, d: int, T: int) -> float:
    """``sigma2 * d / (T - d - 1) * pi^2 / 6``: the bound of accumulate's excess error for every ``n``."""
    return excess_error_unit(sigma2, d, T) * math.pi ** 2 / 6
