"""The pool policies ``accumulate``, ``accumulate-subsample`` and ``fresh-mix`` (``compose_pool`` hook).

Each returns the training pool of a generation built from the task's real pool
and the on-disk :class:`~collapsekit.pool.PoolHistory` with lineage kept
(``Pool.select`` / ``Pool.concat``). Randomness comes only from
``run.rng(generation, "compose")``. The built-in ``replace`` policy (train on
the previous generation's synthetic pool only) applies when none is listed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from collapsekit import hookimpl
from collapsekit.pool import Pool

from .functional import SCHEDULES, fresh_fraction, fresh_mix_counts, golden_weight, item_weights, subsample_indices


def _check_budget(budget: Any, who: str) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"{who}: budget must be an integer >= 1 or null (= size of the real pool), got {budget!r}")
    return budget


def _check_bool(value: Any, what: str, who: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{who}: {what} must be true or false, got {value!r}")
    return value


def accumulated_sources(generation: int, real: Pool, history: Any, keep_real: bool) -> list[Any]:
    """The pools generation ``generation`` accumulates, oldest first: ``real`` (when ``keep_real``
    or at generation 0) then ``history[0 .. generation-1]`` (memory-mapped, not read yet)."""
    sources: list[Any] = [real] if keep_real or generation == 0 else []
    return sources + [history[g] for g in range(generation)]


def subsample(sources: list[Pool], budget: int, rng: np.random.Generator) -> Pool:
    """``budget`` items drawn uniformly without replacement from all ``sources``; only the chosen
    rows of each (memory-mapped) source are read. Lineage is kept."""
    picks = subsample_indices([len(s) for s in sources], budget, rng)
    parts = [s.select(idx) for s, idx in zip(sources, picks) if len(idx)]
    return Pool.concat(parts or [sources[0].select(np.zeros(0, dtype=np.int64))])


class Accumulate:
    """Train generation ``g`` on the real data plus the synthetic pools of all generations before it.

    Gerstgrasser et al. (2024), "Is Model Collapse Inevitable? Breaking the Curse of
    Recursion by Accumulating Real and Synthetic Data": the pool grows by one
    generation's worth of data per generation; test error stays bounded.

    Args:
        keep_real: keep the real data in every pool (``false``: generation ``g > 0``
            trains on all synthetic pools only).
    """

    def __init__(self, keep_real: bool = True) -> None:
        self.keep_real = _check_bool(keep_real, "keep_real", "accumulate")

    @hookimpl
    def compose_pool(self, generation, real, history):
        return Pool.concat(accumulated_sources(generation, real, history, self.keep_real))


class AccumulateSubsample:
    """Accumulate, then train on a fixed ``budget`` drawn uniformly without replacement from it.

    The compromise scenario of Kazdan et al. (2024), "Collapse or Thrive?": the
    data available grows as under accumulate but every generation trains on the
    same number of items, so its cost stays flat. Each generation draws a new
    subset from ``run.rng(generation, "compose")``; per generation only the chosen
    rows are read from disk.

    Args:
        budget: items per generation (``null``: the size of the real pool).
        keep_real: include the real data in what is accumulated.
    """

    def __init__(self, budget: int | None = None, keep_real: bool = True) -> None:
        self.budget = _check_budget(budget, "accumulate-subsample")
        self.keep_real = _check_bool(keep_real, "keep_real", "accumulate-subsample")

    @hookimpl
    def compose_pool(self, run, generation, real, history):
        sources = accumulated_sources(generation, real, history, self.keep_real)
        return subsample(sources, self.budget or len(real), run.rng(generation, "compose"))


class FreshMix:
    """Mix a share ``alpha_t`` of real data with synthetic data of the previous generation.

    The "fresh data" loop (e.g. Bertrand et al. 2024; Alemohammad et al. 2024):
    generation ``t >= 1`` trains on ``budget`` items, ``round(alpha_t * budget)`` of
    them drawn without replacement from the real pool (a new draw every
    generation) and the rest from generation ``t - 1``'s synthetic pool. If a
    source is too small the pool shrinks so that the real share stays
    ``alpha_t``. Generation 0 trains on real data (``budget`` items of it).

    Args:
        alpha: real share (``schedule`` constant), or its value at generation 1.
        schedule: ``constant``, ``linear`` (``alpha`` -> ``alpha_end`` at generation
            ``horizon``) or ``exponential`` (``alpha_end + (alpha - alpha_end) * decay^(t-1)``).
        alpha_end: the share the linear and exponential schedules move to.
        decay: factor of the exponential schedule.
        horizon: generation at which the linear schedule reaches ``alpha_end``
            (``null``: the last generation of the run).
        budget: items per generation (``null``: the size of the real pool).
        real_weight: weight of the real items in the loss (He, Xu, Cheng 2025): ``null`` (default) weighs
            every item 1 (plain mixing); a number ``w`` in [0, 1] gives the real part of every generation
            ``g >= 1`` the total loss weight ``w`` and the synthetic part ``1 - w``; ``golden`` uses He et
            al.'s optimum ``(sqrt(k^2 + 4k) - k) / 2``, ``k`` = real / synthetic items (0.618 at 1:1).
            Per-item weights average 1 over the pool; the task must honour item weights (capability
            ``ItemWeights``).

    Metrics: ``fresh_mix/alpha`` (the scheduled share; the engine's ``pool/real_share`` is the
    realised one) and, with ``real_weight``, ``fresh_mix/real_weight`` (the engine logs the realised
    ``pool/real_weight_share``).
    """

    def __init__(self, alpha: float = 0.5, schedule: str = "constant", alpha_end: float = 0.0,
                 decay: float = 0.5, horizon: int | None = None, budget: int | None = None,
                 real_weight: float | str | None = None) -> None:
        if real_weight is not None and real_weight != "golden" and (
                isinstance(real_weight, bool) or not isinstance(real_weight, (int, float))
                or not 0.0 <= real_weight <= 1.0):
            raise ValueError(f"fresh-mix: real_weight must be null, 'golden' or a number in [0, 1], got "
                             f"{real_weight!r}")
        self.real_weight = real_weight
        self._weights: dict[int, float] = {}
        if schedule not in SCHEDULES:
            raise ValueError(f"fresh-mix: unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"fresh-mix: horizon must be an integer >= 1 or null, got {horizon!r}")
        self.alpha, self.schedule, self.alpha_end = alpha, schedule, alpha_end
        self.decay, self.horizon = decay, horizon
        self.budget = _check_budget(budget, "fresh-mix")
        try:
            fresh_fraction(1, alpha, schedule, alpha_end, decay, horizon or 1)
        except ValueError as exc:
            raise ValueError(f"fresh-mix: {exc}") from None

    def alpha_at(self, run: Any, generation: int) -> float:
        """The real share of ``generation`` (1.0 at generation 0)."""
        horizon = self.horizon or max(1, run.generations - 1)
        return fresh_fraction(generation, self.alpha, self.schedule, self.alpha_end, self.decay, horizon)

    @hookimpl
    def compose_pool(self, run, generation, real, history):
        rng = run.rng(generation, "compose")
        budget = self.budget or len(real)
        if generation == 0:
            return subsample([real], budget, rng)
        latest = history[generation - 1]
        n_real, n_syn = fresh_mix_counts(budget, self.alpha_at(run, generation), len(real), len(latest))
        real_idx = np.sort(rng.choice(len(real), size=n_real, replace=False))
        syn_idx = np.sort(rng.choice(len(latest), size=n_syn, replace=False))
        pool = Pool.concat([real.select(real_idx), latest.select(syn_idx)])
        if self.real_weight is None:
            return pool
        self._weights[generation] = self.weight_of_real(n_real, n_syn)
        w_real, w_syn = item_weights(n_real, n_syn, self._weights[generation])
        return pool.with_weights(np.r_[np.full(n_real, w_real), np.full(n_syn, w_syn)])

    def weight_of_real(self, n_real: int, n_synthetic: int) -> float:
        """The real part's total loss weight in a pool of ``n_real`` real and ``n_synthetic`` synthetic items."""
        if self.real_weight == "golden":
            return golden_weight(n_real, n_synthetic) if n_real else 0.0
        return float(self.real_weight)

    @hookimpl
    def metrics(self, run, generation):
        out = {"fresh_mix/alpha": self.alpha_at(run, generation)}
        if generation in self._weights:
            out["fresh_mix/real_weight"] = self._weights[generation]
        return out
