"""The ``verifier-filter`` plugin: verification-based selection as a ``filter_samples`` hook.

Every generation synthesizes ``1 / keep`` times the pool budget (the plugin's ``oversample``
attribute) and keeps the ``run.samples_per_generation`` items a verifier ranks best, so the
pool the next generation trains on has the baseline's size. Verifiers:

* ``task`` -- the task's own (capability :class:`collapsekit.capabilities.Verifier`): markov-text's
  exact source likelihood, multiplication's exact answer check, a judge classifier trained on
  real digits that neither the models nor the probes see (digits-classify, digits-diffusion,
  image-diffusion with labels);
* ``model`` -- a frozen model of the run: each item's mean log-likelihood per scored position
  under generation ``model_generation``'s model (:func:`collapsekit.scoring.score_items`; tasks
  whose step returns logits and labels);
* ``random`` -- a uniform random score: the control that keeps the same share blindly.

``rank: best`` keeps the highest scores (a verifier of correctness: an exact answer, a judge's
confidence); ``rank: typical`` keeps the scores closest to the real data's mean score (a verifier
of likelihood: the highest-likelihood samples of a language are atypically repetitive, so keeping
them sharpens the pool; keeping the typical ones drops both errors and that sharpening).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible
from collapsekit.scoring import score_items

from .functional import best_mask, oversample_factor, selection_stats, typicality

VERIFIERS = ("task", "model", "random")
RANKS = ("best", "typical")


class VerifierFilter:
    """Keep the synthetic items a verifier ranks best, out of ``1 / keep`` times the pool budget.

    Args:
        keep: share of the synthesized items kept; each generation synthesizes
            ``ceil(samples_per_generation / keep)`` items and keeps the best ``samples_per_generation``.
        verifier: ``task`` (the task's verifier), ``model`` (log-likelihood under a frozen model of the run)
            or ``random`` (the control).
        model_generation: the generation whose trained model scores items with ``verifier: model``
            (0: the model trained on real data only).
        min_score: also drop items scoring below this (the pool may then be smaller than the budget).
        rank: ``best`` (highest scores) or ``typical`` (scores closest to the mean score of the task's real
            training items under the same verifier; not with ``random``).

    Metrics: ``verifier_filter/threshold`` (lowest kept score), ``verifier_filter/kept_score``,
    ``verifier_filter/dropped_score`` (mean scores) and, when the task has a verifier,
    ``verifier_filter/verified_all`` and ``verifier_filter/verified_kept`` (the task verifier's mean
    score of all synthesized and of the kept items, whatever ranks them: how correct the kept pool is);
    with ``rank: typical`` also ``verifier_filter/reference`` (the real items' mean score).
    """

    higher_is_better: ClassVar[dict[str, bool | None]] = {
        "verifier_filter/threshold": None, "verifier_filter/kept_score": None,
        "verifier_filter/dropped_score": None, "verifier_filter/verified_all": None,
        "verifier_filter/verified_kept": None, "verifier_filter/reference": None}

    def __init__(self, keep: float = 0.5, verifier: str = "task", model_generation: int = 0,
                 min_score: float | None = None, rank: str = "best") -> None:
        try:
            self.oversample = oversample_factor(keep)
        except ValueError as exc:
            raise ValueError(f"verifier-filter: {exc}") from None
        if verifier not in VERIFIERS:
            raise ValueError(f"verifier-filter: unknown verifier {verifier!r}; choose from {', '.join(VERIFIERS)}")
        if isinstance(model_generation, bool) or not isinstance(model_generation, int) or model_generation < 0:
            raise ValueError(f"verifier-filter: model_generation must be an integer >= 0, got {model_generation!r}")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not np.isfinite(min_score)):
            raise ValueError(f"verifier-filter: min_score must be a finite number or null, got {min_score!r}")
        if rank not in RANKS or (rank == "typical" and verifier == "random"):
            raise ValueError(f"verifier-filter: rank must be one of {', '.join(RANKS)} ('typical' needs a task or "
                             f"model verifier), got {rank!r} with verifier {verifier!r}")
        self.keep, self.verifier, self.model_generation, self.rank = float(keep), verifier, model_generation, rank
        self.min_score = None if min_score is None else float(min_score)
        self._models: dict[Any, Any] = {}
        self._reference: dict[Any, float] = {}
        self._stats: dict[int, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_models"], state["_reference"], state["_stats"] = {}, {}, {}
        return state

    @staticmethod
    def has_verifier(task: Any) -> bool:
        return isinstance(task, caps.Verifier) and caps.Verifier.requirement in caps.provides(task)

    @hookimpl
    def configure(self, run):
        if self.verifier == "task":
            caps.require(run.task, caps.Verifier, plugin="verifier-filter", why="rank synthetic items by correctness")
        if self.verifier == "model":
            caps.require(run.task, caps.LabelledLogits, plugin="verifier-filter",
                         why="score items by their log-likelihood under a frozen model (verifier: model)")
            if self.model_generation >= run.generations:
                raise TaskIncompatible(f"verifier-filter: model_generation {self.model_generation} is not a "
                                       f"generation of this run (it has {run.generations})")
        self._models.clear()
        self._reference.clear()
        self._stats.clear()

    def scores(self, run: Any, samples: Any, generation: int) -> np.ndarray:
        """The verifier's score of every synthesized item (higher = better)."""
        if self.verifier == "random":
            return run.rng(generation, "verifier-filter").random(len(samples))
        if self.verifier == "task":
            return np.asarray(run.task.verify_items(samples.arrays), dtype=np.float64)
        if self.model_generation > generation:
            raise TaskIncompatible(f"verifier-filter: generation {generation} is filtered before generation "
                                   f"{self.model_generation} (model_generation) exists; use an earlier model")
        key = (str(run.dir), run.seed, self.model_generation)
        if key not in self._models:
            self._models = {key: run.model_of(self.model_generation)}
        return score_items(run.task, self._models[key], samples).mean_log_likelihood

    def reference(self, run: Any, generation: int) -> float:
        """Mean score of the task's real training items under the verifier (cached per run)."""
        key = (str(run.dir), run.seed, self.verifier, self.model_generation)
        if key not in self._reference:
            self._reference = {key: float(np.mean(self.scores(run, run.task.real_pool(), generation)))}
        return self._reference[key]

    @hookimpl
    def filter_samples(self, run, samples, generation):
        scores = self.scores(run, samples, generation)
        ranking = scores
        if self.rank == "typical":
            ranking = typicality(scores, self.reference(run, generation))
        mask = best_mask(ranking, run.samples_per_generation)
        if self.min_score is not None:
            mask &= scores >= self.min_score
        stats = {f"verifier_filter/{k}": v for k, v in selection_stats(scores, mask).items()}
        if self.rank == "typical":
            stats["verifier_filter/reference"] = self.reference(run, generation)
        if self.has_verifier(run.task):
            verified = scores if self.verifier == "task" else np.asarray(run.task.verify_items(samples.arrays), np.float64)
            stats["verifier_filter/verified_all"] = float(verified.mean()) if len(verified) else 0.0
            if mask.any():
                stats["verifier_filter/verified_kept"] = float(verified[mask].mean())
        self._stats = {generation: stats}
        return mask, scores

    @hookimpl
    def metrics(self, generation):
        return dict(self._stats.get(generation, {}))
