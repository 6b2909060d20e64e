"""The ``latent-filter`` plugin: LSF as a ``filter_samples`` hook.

After each generation synthesizes its items, every item ``x`` generated for label
``y`` is scored by ``xi(x, y) = softmax(probe(latent(x)))_y`` where the probe is a
multinomial logistic regression trained once per run on the latents of the *real*
training pool, and only the top ``keep`` share by ``xi`` enters the pool history.
Any pool policy then composes training pools from the filtered history; the
paper's headline variant is this filter under ``accumulate-subsample``
(``plugins: [accumulate-subsample, latent-filter]``). See the README for how this
maps onto the paper's "top-N of the accumulated pool".
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible

from .functional import confidence, fit_subspaces, keep_count, subspace_residual, top_n_mask, train_probe
from .text import SentenceEncoder, minilm_path

LATENT_CAPABILITY = {"model": caps.LatentEncoder, "features": caps.FrozenFeatures, "input": None,
                     "text": caps.TextItems}
"""The task capability each latent space needs (``input`` needs only to know the item's pool array)."""
LATENTS = tuple(LATENT_CAPABILITY)
SCORERS = ("probe", "subspace", "random")
ENCODER_GENERATION = 0
"""The latents come from this generation's model: trained on real data only (the paper's choice)."""


class LatentFilter:
    """Keep the most realistic share of each generation's synthetic items by a real-data latent probe.

    Args:
        keep: share of each generation's synthesized items kept (top by score); 1 keeps all.
        scorer: ``probe`` (LSF's confidence ``xi``), ``subspace`` (minus the relative residual of the
            latent off the real latents' per-class principal subspace of dimension ``rank``) or
            ``random`` (a uniform random score: the control that keeps the same share blindly).
        latent: the latent space: ``model`` (the generation-0 model's encoder, ``task.encode(model, x)``
            of a task with the ``LatentEncoder`` capability; the paper's choice), ``features`` (the
            task's frozen feature extractor ``task.features(x)``, capability ``FrozenFeatures``),
            ``input`` (the raw pool array, flattened) or ``text`` (the frozen all-MiniLM-L6-v2
            sentence encoder on ``task.decode(items)``, capability ``TextItems``; needs
            ``collapsekit-latent-filter[text]``).
        min_confidence: with the probe scorer, also drop items whose ``xi`` is below this.
        l2: L2 penalty of the probe (on standardised latents).
        max_iter: L-BFGS iterations of the probe.
        rank: dimension of each class subspace (``subspace`` scorer).
        input_key, label_key: pool arrays holding the item and its label (default: what the task
            declares through the ``Items`` capability).
        keep_size: synthesize ``1 / keep`` times the pool budget (the engine's oversampling) so that the kept
            items fill a whole budget: the pool history grows as fast as without the filter (the README's
            "2N synthesized" control). Off by default, as in the committed bench cells.

    Metrics: ``latent_filter/probe_accuracy`` (probe on the real latents it was fitted to),
    ``latent_filter/label_agreement`` (share of this generation's items whose probe argmax is
    their label, before filtering), ``latent_filter/threshold`` (lowest kept score),
    ``latent_filter/kept_score`` and ``latent_filter/dropped_score`` (mean scores).
    """

    def __init__(self, keep: float = 0.5, scorer: str = "probe", latent: str = "model",
                 min_confidence: float = 0.0, l2: float = 1e-3, max_iter: int = 100, rank: int = 8,
                 input_key: str | None = None, label_key: str | None = None, keep_size: bool = False) -> None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
            raise ValueError(f"latent-filter: keep (share of synthetic items kept) must be in (0, 1], got {keep!r}")
        if scorer not in SCORERS:
            raise ValueError(f"latent-filter: unknown scorer {scorer!r}; choose from {', '.join(SCORERS)}")
        if latent not in LATENTS:
            raise ValueError(f"latent-filter: unknown latent {latent!r}; choose from {', '.join(LATENTS)}")
        if not 0.0 <= min_confidence < 1.0:
            raise ValueError(f"latent-filter: min_confidence must be in [0, 1), got {min_confidence!r}")
        if l2 < 0 or max_iter < 1 or rank < 1:
            raise ValueError(f"latent-filter: need l2 >= 0, max_iter >= 1 and rank >= 1, got {l2}, {max_iter}, {rank}")
        self.keep, self.scorer, self.latent = float(keep), scorer, latent
        self.min_confidence, self.l2, self.max_iter, self.rank = float(min_confidence), float(l2), int(max_iter), int(rank)
        self.input_key, self.label_key = input_key, label_key
        if not isinstance(keep_size, bool):
            raise ValueError(f"latent-filter: keep_size must be true or false, got {keep_size!r}")
        self.keep_size = keep_size
        if keep_size:
            self.oversample = 1.0 / self.keep
        self._cache: dict[Any, dict[str, Any]] = {}
        self._stats: dict[int, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"], state["_stats"] = {}, {}
        return state

    # -- configuration ------------------------------------------------------------------------------
    def keys(self, task: Any) -> tuple[str, str | None]:
        """``(input_key, label_key)`` for ``task`` (its :class:`~collapsekit.capabilities.Items` declaration
        unless overridden in init_args); raise ``TaskIncompatible`` when absent."""
        name = task.name
        declared = isinstance(task, caps.Items) and caps.Items.requirement in caps.provides(task)
        input_key = self.input_key or (task.input_key if declared else None)
        label_key = self.label_key or (task.label_key if declared else None)
        if input_key is None:
            caps.require(task, caps.Items, plugin="latent-filter",
                         why="know which pool array holds an item (or pass input_key in init_args)")
        if label_key is None and self.scorer == "probe":
            raise TaskIncompatible(
                f"latent-filter: task {name!r} has no labels (its label_key is None); the probe scorer scores an "
                f"item by its label's probability, so pass label_key, or use scorer='subspace' (distance to the "
                f"real latents' principal subspace) for unlabelled items such as text")
        pool_keys = set(task.pool_keys)
        for key in (input_key, label_key):
            if key is not None and key not in pool_keys:
                raise TaskIncompatible(f"latent-filter: task {name!r} has no pool array {key!r} "
                                       f"(it has {sorted(pool_keys)}); fix input_key/label_key")
        return input_key, label_key

    @hookimpl
    def configure(self, run):
        if self.scorer != "random" and LATENT_CAPABILITY[self.latent] is not None:
            caps.require(run.task, LATENT_CAPABILITY[self.latent], plugin="latent-filter",
                         why=f"compute latents with latent={self.latent!r}")
        self.keys(run.task)
        if self.latent == "text" and self.scorer != "random":
            try:
                minilm_path()
            except ImportError as exc:
                raise TaskIncompatible(str(exc)) from None
        self._cache.clear()
        self._stats.clear()

    # -- latents and scorer ---------------------------------------------------------------------------
    def encoder(self, run) -> Callable[[np.ndarray], torch.Tensor]:
        """Items -> latents ``[N, D]`` in the configured space (the generation-0 model is read from disk)."""
        task = run.task
        if self.latent == "model":
            model = run.model_of(ENCODER_GENERATION)
            return lambda items: torch.as_tensor(task.encode(model, items))
        if self.latent == "features":
            return lambda items: torch.as_tensor(task.features(items))
        if self.latent == "text":
            encode_text = SentenceEncoder()
            return lambda items: encode_text(task.decode(items)).to(torch.float64)
        return lambda items: torch.as_tensor(np.asarray(items)).reshape(len(items), -1).to(torch.float64)

    def state(self, run) -> dict[str, Any]:
        """The fitted scorer of ``run`` (cached): encoder, probe or subspaces, and their fit on real data."""
        key = (str(run.dir), run.seed)
        if key in self._cache:
            return self._cache[key]
        input_key, label_key = self.keys(run.task)
        real = run.task.real_pool()
        encode = self.encoder(run)
        z = encode(np.asarray(real.arrays[input_key]))
        y = self.labels(real, label_key)
        classes = 1 if y is None else run.task.num_classes or int(y.max()) + 1
        state: dict[str, Any] = {"encode": encode, "classes": classes}
        if self.scorer == "probe":
            probe = train_probe(z, y, num_classes=classes, l2=self.l2, max_iter=self.max_iter)
            state["probe"] = probe
            state["probe_accuracy"] = float((probe.logits(z).argmax(1) == y).double().mean())
        else:
            state["subspaces"] = fit_subspaces(z, y, rank=min(self.rank, z.shape[1]), num_classes=classes)
        self._cache = {key: state}
        return state

    @staticmethod
    def labels(pool, label_key: str | None) -> torch.Tensor | None:
        """The items' labels, or ``None`` for unlabelled items (one subspace for all)."""
        return None if label_key is None else torch.as_tensor(np.array(pool.arrays[label_key])).long()

    def score(self, run, samples, generation: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Scores of ``samples`` (higher = more realistic) and statistics of the scoring."""
        n = len(samples)
        if self.scorer == "random":
            return torch.as_tensor(run.rng(generation, "latent-filter").random(n)), {}
        input_key, label_key = self.keys(run.task)
        state = self.state(run)
        z = state["encode"](np.asarray(samples.arrays[input_key]))
        y = self.labels(samples, label_key)
        if self.scorer == "probe":
            logits = state["probe"].logits(z)
            stats = {"latent_filter/probe_accuracy": state["probe_accuracy"],
                     "latent_filter/label_agreement": float((logits.argmax(1) == y).double().mean()) if n else 0.0}
            return confidence(logits, y), stats
        means, bases = state["subspaces"]
        return -subspace_residual(z, means, bases, y), {}

    # -- hooks ---------------------------------------------------------------------------------------
    @hookimpl
    def filter_samples(self, run, samples, generation):
        scores, stats = self.score(run, samples, generation)
        mask = top_n_mask(scores, keep_count(len(samples), self.keep))
        if self.scorer == "probe" and self.min_confidence > 0:
            mask &= scores >= self.min_confidence
        kept, dropped = scores[mask], scores[~mask]
        stats["latent_filter/threshold"] = float(kept.min()) if len(kept) else float("nan")
        stats["latent_filter/kept_score"] = float(kept.mean()) if len(kept) else float("nan")
        stats["latent_filter/dropped_score"] = float(dropped.mean()) if len(dropped) else float("nan")
        self._stats = {generation: {k: v for k, v in stats.items() if np.isfinite(v)}}
        return mask.numpy(), scores.numpy().astype(np.float64)

    @hookimpl
    def metrics(self, generation):
        return dict(self._stats.get(generation, {}))
