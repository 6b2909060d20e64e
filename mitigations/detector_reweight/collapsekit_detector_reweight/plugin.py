"""The ``detector-reweight`` plugin: detector-weighted resampling as a ``filter_samples`` hook.

Every generation synthesizes ``oversample`` times the pool budget. A binary logistic-regression
detector of real vs synthetic items is fitted on the task's features (real training items against
this generation's synthetic items, cross-fitted so that every item is scored by a detector that did
not see it), and ``run.samples_per_generation`` synthetic items are drawn without replacement with
probabilities proportional to ``(1 - conf)^bias``, ``conf`` the detector's confidence that the item
is synthetic (Drayson et al. 2025). ``bias: 0`` draws blindly: the control.

Features (``features``): ``bigrams`` -- hashed bigram counts of token sequences (tasks with the
capability ``TokenSequences``); ``input`` -- the item's pool array, flattened (tasks with ``Items``);
``latent`` -- the generation-0 model's latents (``LatentEncoder``); ``auto`` -- ``bigrams`` for token
tasks, else ``input``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible

from .functional import auc, cross_fit_confidence, effective_sample_size, hashed_bigrams, resampling_weights, \
    weighted_sample

FEATURES = ("auto", "bigrams", "input", "latent")


class DetectorReweight:
    """Resample each generation's synthetic items by a real-vs-synthetic detector's confidence.

    Args:
        bias: exponent of the weights ``(1 - conf)^bias`` (0: a blind draw, the control).
        oversample: synthesized items per kept item (>= 1).
        features: ``auto``, ``bigrams``, ``input`` or ``latent`` (see the module docstring).
        folds: cross-fitting folds (>= 2).
        l2: L2 penalty of the detector (standardised features).
        max_iter: L-BFGS iterations of each detector fit.
        buckets: feature size of ``bigrams``.

    Metrics: ``detector_reweight/auc`` (out-of-fold AUC of the detector, real vs synthetic: 0.5 = the
    synthetic items look real), ``.../synthetic_conf`` and ``.../kept_conf`` (mean confidence of all
    synthetic and of the kept items), ``.../ess`` (Kish effective sample size share of the weights).
    """

    higher_is_better: ClassVar[dict[str, bool | None]] = {
        "detector_reweight/auc": None, "detector_reweight/synthetic_conf": None, "detector_reweight/kept_conf": None,
        "detector_reweight/ess": None}

    def __init__(self, bias: float = 1.0, oversample: float = 2.0, features: str = "auto", folds: int = 2,
                 l2: float = 1e-2, max_iter: int = 100, buckets: int = 4096) -> None:
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not np.isfinite(bias) or bias < 0:
            raise ValueError(f"detector-reweight: bias must be a finite number >= 0, got {bias!r}")
        if isinstance(oversample, bool) or not isinstance(oversample, (int, float)) or not oversample >= 1 \
                or not np.isfinite(oversample):
            raise ValueError(f"detector-reweight: oversample must be a finite number >= 1, got {oversample!r}")
        if features not in FEATURES:
            raise ValueError(f"detector-reweight: unknown features {features!r}; choose from {', '.join(FEATURES)}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"detector-reweight: folds must be an integer >= 2, got {folds!r}")
        if l2 < 0 or max_iter < 1 or buckets < 1:
            raise ValueError(f"detector-reweight: need l2 >= 0, max_iter >= 1, buckets >= 1, got {l2}, {max_iter}, "
                             f"{buckets}")
        self.bias, self.oversample, self.features = float(bias), float(oversample), features
        self.folds, self.l2, self.max_iter, self.buckets = folds, float(l2), int(max_iter), int(buckets)
        self._encoder: dict[Any, Any] = {}
        self._stats: dict[int, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_encoder"], state["_stats"] = {}, {}
        return state

    def resolved_features(self, task: Any) -> str:
        """The feature space used on ``task`` (``auto`` resolved)."""
        if self.features != "auto":
            return self.features
        token = isinstance(task, caps.TokenSequences) and caps.TokenSequences.requirement in caps.provides(task)
        return "bigrams" if token else "input"

    @hookimpl
    def configure(self, run):
        need = {"bigrams": caps.TokenSequences, "input": caps.Items, "latent": caps.LatentEncoder}
        caps.require(run.task, need[self.resolved_features(run.task)], plugin="detector-reweight",
                     why=f"compute detector features ({self.resolved_features(run.task)})")
        self._encoder.clear()
        self._stats.clear()

    def featurize(self, run: Any, arrays: Any) -> np.ndarray:
        """Detector features ``[N, D]`` of pool arrays (float64)."""
        task, kind = run.task, self.resolved_features(run.task)
        if kind == "bigrams":
            return hashed_bigrams(np.asarray(arrays["tokens"])[:, 1:], task.vocab_size, self.buckets)
        items = np.asarray(arrays[task.input_key])
        if kind == "input":
            return items.reshape(len(items), -1).astype(np.float64)
        key = (str(run.dir), run.seed)
        if key not in self._encoder:
            self._encoder = {key: run.model_of(0)}
        with torch.no_grad():
            return torch.as_tensor(task.encode(self._encoder[key], items)).double().numpy()

    @hookimpl
    def filter_samples(self, run, samples, generation):
        n = min(run.samples_per_generation, len(samples))
        rng = run.rng(generation, "detector-reweight")
        real = self.featurize(run, run.task.real_pool().arrays)
        synthetic = self.featurize(run, samples.arrays)
        if min(len(real), len(synthetic)) < self.folds:
            raise TaskIncompatible(f"detector-reweight: {len(real)} real and {len(synthetic)} synthetic items are too "
                                   f"few for {self.folds} cross-fitting folds")
        conf_real, conf = cross_fit_confidence(real, synthetic, self.folds, rng, self.l2, self.max_iter)
        weights = resampling_weights(conf, self.bias)
        mask = weighted_sample(weights, n, rng)
        self._stats = {generation: {
            "detector_reweight/auc": auc(conf_real, conf),
            "detector_reweight/synthetic_conf": float(conf.mean()),
            "detector_reweight/kept_conf": float(conf[mask].mean()) if mask.any() else float("nan"),
            "detector_reweight/ess": effective_sample_size(weights)}}
        return mask, 1.0 - conf

    @hookimpl
    def metrics(self, generation):
        return {k: v for k, v in self._stats.get(generation, {}).items() if np.isfinite(v)}
