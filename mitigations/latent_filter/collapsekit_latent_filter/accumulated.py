"""The ``latent-filter-accumulated`` pool policy: LSF's selection over the *whole accumulated* pool.

The paper (Cai et al., AAAI 2026) accumulates real and all synthetic data and trains each
generation on the most realistic items of that accumulated pool, ranked by the real-data probe's
confidence ``xi``, cut to a fixed training budget. collapsekit allows one ``compose_pool`` policy,
so this selection is its own policy (it replaces ``accumulate-subsample``, whose fixed budget it
keeps), not a filter:

* generation 0 trains on ``budget`` real items (all of them when ``budget`` is the real pool's size);
* generation ``g >= 1``: of the ``R`` real and ``S`` accumulated synthetic items (the pool history of
  generations ``0 .. g-1``), ``r = round(budget * R / (R + S))`` real items are drawn uniformly (the
  real share accumulate-subsample draws) and the other ``budget - r`` are the synthetic items with the
  highest ``xi`` over the whole history (:func:`~collapsekit_latent_filter.functional.split_budget`,
  :func:`~collapsekit_latent_filter.functional.top_n_mask`).

With ``scorer: random`` the synthetic items are a uniform random choice: the blind control, equal to
accumulate-subsample with the real share fixed at its expectation. Scores of a generation's items are
computed once (the encoder and probe are frozen) and cached.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from collapsekit import hookimpl
from collapsekit.pool import Pool

from .functional import split_budget, top_n_mask
from .plugin import LatentFilter


class LatentFilterAccumulated:
    """Train each generation on real data plus the top-``xi`` synthetic items of the whole history.

    Args:
        budget: items per generation (``null``: the size of the real pool), as accumulate-subsample.
        scorer, latent, l2, max_iter, rank, input_key, label_key: as ``latent-filter`` (the scoring
            is latent-filter's; ``keep`` and ``min_confidence`` do not apply).

    Metrics: ``latent_filter_accumulated/threshold`` (lowest selected score),
    ``.../selected_score`` and ``.../rejected_score`` (mean scores), ``.../synthetic`` (synthetic
    items in the pool), ``.../newest_share`` (share of them made by the previous generation).
    """

    def __init__(self, budget: int | None = None, scorer: str = "probe", latent: str = "model", l2: float = 1e-3,
                 max_iter: int = 100, rank: int = 8, input_key: str | None = None,
                 label_key: str | None = None) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"latent-filter-accumulated: budget must be an integer >= 1 or null (= size of the "
                             f"real pool), got {budget!r}")
        self.budget = budget
        self.scoring = LatentFilter(keep=1.0, scorer=scorer, latent=latent, l2=l2, max_iter=max_iter, rank=rank,
                                    input_key=input_key, label_key=label_key)
        self._scores: dict[Any, np.ndarray] = {}
        self._stats: dict[int, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_scores"], state["_stats"] = {}, {}
        return state

    @hookimpl
    def configure(self, run):
        self.scoring.configure(run)
        self._scores.clear()
        self._stats.clear()

    def scores_of(self, run, generation: int, pool: Pool) -> np.ndarray:
        """``xi`` (or the configured score) of every item of ``generation``'s pool; cached per run."""
        key = (str(run.dir), run.seed, generation, len(pool))
        if key not in self._scores:
            self._scores[key] = self.scoring.score(run, pool, generation)[0].numpy().astype(np.float64)
        return self._scores[key]

    @hookimpl
    def compose_pool(self, run, generation, real, history):
        rng = run.rng(generation, "compose")
        budget = self.budget or len(real)
        pools = [history[g] for g in range(generation)]
        n_real, n_syn = split_budget(budget, len(real), sum(len(p) for p in pools))
        parts = [real.select(np.sort(rng.choice(len(real), size=n_real, replace=False)))]
        if pools and n_syn:
            scores = [self.scores_of(run, g, p) for g, p in enumerate(pools)]
            flat = np.concatenate(scores)
            chosen = top_n_mask(torch.as_tensor(flat), n_syn).numpy()
            bounds = np.cumsum([0] + [len(p) for p in pools])
            parts += [p.select(np.flatnonzero(chosen[a:b])) for p, a, b in zip(pools, bounds[:-1], bounds[1:])]
            self._stats[generation] = {
                "latent_filter_accumulated/threshold": float(flat[chosen].min()),
                "latent_filter_accumulated/selected_score": float(flat[chosen].mean()),
                "latent_filter_accumulated/synthetic": float(chosen.sum()),
                "latent_filter_accumulated/newest_share": float(chosen[bounds[-2]:].sum() / max(1, chosen.sum())),
            }
            if (~chosen).any():
                self._stats[generation]["latent_filter_accumulated/rejected_score"] = float(flat[~chosen].mean())
        return Pool.concat(parts)

    @hookimpl
    def metrics(self, generation):
        return dict(self._stats.get(generation, {}))
