"""``digits-classify``: 8x8 handwritten digits (scikit-learn), a small MLP, pseudo-label self-training.

Generation 0 trains a classifier on real labelled images. Every later
generation trains on *pseudo-labelled* data: the previous model labels
perturbed copies of the real training images (noise + a shift of up to
``synth_shift`` pixels) and the next model learns those labels. With the default
ancestral synthesis (labels drawn from the model's softmax at temperature 1)
label errors compound over generations; at temperature 0 the labels are the
argmax (classic hard self-training).

Probes (on the held-out real images unless said otherwise):

* ``accuracy``, ``heldout_nll``, ``ece`` (expected calibration error, 15 bins);
* ``nc1`` -- within-class variability collapse of the penultimate features,
  ``tr(Sigma_W Sigma_B^+) / C`` (Papyan et al. 2020); ``nc1_train`` on the real
  training images. Label smoothing drives it down (tight class clusters), MaxSup
  claims to restore intra-class variation; here *higher means less collapse*;
* ``within_class_variation`` and ``class_separation`` -- d_within and R^2 of
  Kornblith et al. (2021) on L2-normalised features, the statistics the MaxSup
  paper reports (MaxSup raises both relative to label smoothing there);
* ``effective_rank`` of the held-out penultimate features (Roy & Vetterli);
* ``label_agreement`` -- share of this generation's pseudo-labels that equal the
  true label of the real image they were made from.

Step outputs: ``loss`` (cross-entropy), ``logits``, ``labels``, ``features``
(penultimate activations [N, D]) and ``hidden_states`` (tuple of every hidden
layer's activations, the last one being ``features``). Two-view methods (VICReg)
call :meth:`DigitsClassify.augmented_views` for two randomly augmented views
(noise ``view_noise``, shift up to ``view_shift`` pixels) of a batch.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.capabilities import HiddenStates, ItemWeights, LabelledLogits, Sampler, StepFeatures, TwoViews
from collapsekit.metrics import CalibrationError
from collapsekit.plugins.probes import effective_rank
from collapsekit.plugins.tasks.digits import check_split, load_digit_images
from collapsekit.plugins.tasks.experts import ExpertData, RealDataVerifier, spare_indices
from collapsekit.plugins.sampling import filter_logits
from collapsekit.pool import REAL, Pool
from collapsekit.task import Task
from ._bench import CHEAP_SEEDS, VERIFIER_VARIANTS

NUM_CLASSES = 10
SIDE = 8


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits as float32 images [N, 8, 8] in [0, 1] and int64 labels [N]."""
    images, labels = load_digit_images()
    return (images / 16.0).astype(np.float32), labels


# -- pure probes ----------------------------------------------------------------------------
def nc1(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, rtol: float = 1e-8) -> float:
    """Neural-collapse NC1 = tr(Sigma_W Sigma_B^+) / C of ``features`` [N, D] with ``labels`` [N].

    Sigma_W = mean over samples of (h_i - mu_{y_i})(h_i - mu_{y_i})^T, Sigma_B = mean over
    the C classes present of (mu_c - mu_G)(mu_c - mu_G)^T with mu_G the mean of all
    samples; ``^+`` is the pseudo-inverse (singular values below ``rtol`` times the
    largest are dropped). Needs at least two classes; computed in float64.
    """
    h = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels)).long()
    if h.ndim != 2 or y.shape != (h.shape[0],):
        raise ValueError(f"nc1 needs features [N, D] and labels [N], got {tuple(h.shape)} and {tuple(y.shape)}")
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(f"nc1 needs samples of at least 2 classes, got {len(classes)}")
    mu_g = h.mean(0)
    means = torch.stack([h[y == c].mean(0) for c in classes])           # [C, D]
    within = h - means[torch.searchsorted(classes, y)]
    sigma_w = within.T @ within / h.shape[0]
    between = means - mu_g
    sigma_b = between.T @ between / len(classes)
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, rtol=rtol, hermitian=True)) / len(classes))


def cosine_class_variation(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
                           ) -> tuple[float, float]:
    """``(d_within, R^2)`` of Kornblith et al. (2021), the feature statistics the MaxSup paper reports.

    With L2-normalised features and cosine distance ``1 - cos``:
    ``d_within`` = mean over classes of the mean distance of all same-class pairs,
    ``d_total`` = mean distance over pairs of all classes (classes weighted equally),
    ``R^2 = 1 - d_within / d_total`` (class separation). All-zero rows count as zero vectors.
    """
    h = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float64), dim=1)
    y = torch.as_tensor(np.asarray(labels)).long()
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(f"cosine_class_variation needs samples of at least 2 classes, got {len(classes)}")
    means = torch.stack([h[y == c].mean(0) for c in classes])            # mean of unit vectors per class
    d_within = float((1.0 - (means * means).sum(1)).mean())                # mean_{x,x' in k} x.x' = |mean_k|^2
    centre = means.mean(0)
    d_total = float(1.0 - centre @ centre)
    return d_within, (1.0 - d_within / d_total) if d_total > 0 else 0.0


def expected_calibration_error(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                               bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |bin| / N * |accuracy(bin) - confidence(bin)|
    (through :class:`collapsekit.metrics.CalibrationError`)."""
    metric = CalibrationError(bins, sync_on_compute=False)     # called on the whole held-out set in each process
    metric.update(torch.as_tensor(np.asarray(probs)), torch.as_tensor(np.asarray(labels)).long())
    return float(metric.compute())


def shift_images(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``images`` [N, H, W] by (``dx[i]``, ``dy[i]``) pixels, filling with 0."""
    n, height, width = images.shape
    s = int(max(dx.abs().max().item() if n else 0, dy.abs().max().item() if n else 0))
    if s == 0:
        return images
    padded = F.pad(images, (s, s, s, s))
    rows = torch.arange(height)[None, :] + s - dy[:, None].long()
    cols = torch.arange(width)[None, :] + s - dx[:, None].long()
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def perturb(images: torch.Tensor, noise: float, shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random shift by up to ``shift`` pixels per axis, then Gaussian noise of std ``noise``, clipped to [0, 1]."""
    out = images
    if shift > 0:
        dx = torch.randint(-shift, shift + 1, (len(images),), generator=generator)
        dy = torch.randint(-shift, shift + 1, (len(images),), generator=generator)
        out = shift_images(out, dx, dy)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out.clamp(0.0, 1.0)


# -- model -------------------------------------------------------------------------------------
class DigitsMLP(nn.Module):
    """MLP 64 -> ``hidden`` -> ``feature_dim`` (ReLU after each) -> 10 classes.

    ``forward(images)`` returns logits; ``forward_all(images)`` returns
    ``(logits, hidden_states)`` with the activations of every hidden layer (the
    last one is the penultimate feature vector).
    """

    def __init__(self, hidden: int = 128, feature_dim: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(SIDE * SIDE, hidden), nn.Linear(hidden, feature_dim)])
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_all(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = images.reshape(len(images), -1)
        hidden = []
        for layer in self.layers:
            x = F.relu(layer(x))
            hidden.append(x)
        return self.head(x), tuple(hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_all(images)[0]


class DigitsCNN(nn.Module):
    """Small CNN on the 8x8 digits: conv 3x3 1 -> ``channels`` -> 2 ``channels`` (ReLU), 2x2 max-pool,
    linear -> ``feature_dim`` (ReLU) -> 10 classes.

    Same interface as :class:`DigitsMLP`: ``forward_all`` returns ``(logits, hidden_states)`` with two
    hidden states, the flattened pooled conv map [N, 2 * channels * 16] and the penultimate features.
    """

    def __init__(self, channels: int = 16, feature_dim: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * (SIDE // 2) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_all(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = images.reshape(len(images), 1, SIDE, SIDE)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1)
        feats = F.relu(self.fc(x))
        return self.head(feats), (x, feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_all(images)[0]


# -- task ------------------------------------------------------------------------------------------
class DigitsClassify(Task, Sampler, LabelledLogits, StepFeatures, HiddenStates, TwoViews, ItemWeights, RealDataVerifier):
    """Classification of the 8x8 digits with pseudo-label self-training across generations.

    Args:
        train_size: real labelled training images (drawn from the 1797 digits by the run's data seed).
        heldout_size: held-out real images for the probes (disjoint from training).
        hidden: width of the first hidden layer (``arch="mlp"``), channels of the first conv (``arch="cnn"``).
        arch: ``mlp`` (:class:`DigitsMLP`, default) or ``cnn`` (:class:`DigitsCNN`).
        feature_dim: width of the penultimate (feature) layer.
        view_noise: noise std of the two augmented views (:meth:`augmented_views`).
        view_shift: maximal shift in pixels of the two augmented views.
        synth_noise: noise std of the perturbed real images that synthesis pseudo-labels.
        synth_shift: maximal shift in pixels of those images.
        batch_size, lr, weight_decay: AdamW training settings.
        eval_batch_size: batch size of probes and synthesis.
    """

    name: ClassVar[str] = "digits-classify"
    pool_keys: ClassVar[tuple[str, ...]] = ("images", "labels", "source")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "accuracy": True, "heldout_nll": False, "ece": False, "nc1": True, "nc1_train": True,
        "effective_rank": True, "label_agreement": True, "within_class_variation": True, "class_separation": True,
    }
    headline: ClassVar[tuple[str, ...]] = ("accuracy", "nc1", "effective_rank", "label_agreement")
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline", "label-smoothing", "maxsup", "vicreg", "verifier-filter",
                                                "verifier-filter-random")
    #: the verifier's control: the same filter keeping the same share of pseudo-labelled items at random
    bench_variants: ClassVar[dict[str, dict]] = {"verifier-filter-random": VERIFIER_VARIANTS["verifier-filter-random"]}
    bench_controls: ClassVar[dict[str, str]] = {"verifier-filter": "verifier-filter-random"}
    #: hidden layers of :class:`DigitsMLP` (the ``hidden_states`` the step returns)
    n_layer: ClassVar[int] = 2

    def __init__(self, train_size: int = 1000, heldout_size: int = 500, hidden: int = 128, feature_dim: int = 32,
                 view_noise: float = 0.1, view_shift: int = 1, synth_noise: float = 0.1, synth_shift: int = 0,
                 batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0,
                 eval_batch_size: int = 1024, arch: str = "mlp") -> None:
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        check_split(train_size, heldout_size)
        if arch not in ("mlp", "cnn"):
            raise ValueError(f"arch must be 'mlp' or 'cnn', got {arch!r}")
        self.arch = arch
        if hidden < 1 or feature_dim < 1:
            raise ValueError(f"hidden and feature_dim must be >= 1, got {hidden} and {feature_dim}")
        if min(view_noise, synth_noise) < 0 or min(view_shift, synth_shift) < 0:
            raise ValueError("view_noise, synth_noise, view_shift and synth_shift must be >= 0")
        self.train_size, self.heldout_size = train_size, heldout_size
        self.hidden, self.feature_dim = hidden, feature_dim
        self.view_noise, self.view_shift = float(view_noise), int(view_shift)
        self.synth_noise, self.synth_shift = float(synth_noise), int(synth_shift)
        self.eval_batch_size = eval_batch_size

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"train_size": 300, "heldout_size": 200, "hidden": 64, "feature_dim": 16, "lr": 1e-2},
                  "trainer": {"max_steps": 60}, "generations": 2, "variants": bench_variants},
        "cpu": {"task": {"train_size": 1000, "heldout_size": 500},
                "trainer": {"max_steps": 600}, "generations": 5, "seeds": CHEAP_SEEDS, "variants": bench_variants},
        "gpu": {"task": {"train_size": 1297, "heldout_size": 500, "hidden": 512, "feature_dim": 128,
                         "batch_size": 128},
                "trainer": {"max_steps": 4000}, "generations": 10, "variants": bench_variants},
    }
    """Run settings per bench preset:
    ``smoke`` (tests, seconds), ``cpu`` (5-9 s per method-seed on one core) and ``gpu``."""

    # -- data -------------------------------------------------------------------------------
    def setup(self, seed: int) -> None:
        super().setup(seed)
        images, labels = load_digits_arrays()
        order = np.random.default_rng(seed).permutation(len(labels))
        train, held = order[:self.train_size], order[self.train_size:self.train_size + self.heldout_size]
        self.train_index, self.heldout_index = train, held          # positions in load_digits()
        self.train_images, self.train_labels = images[train], labels[train]
        self.heldout_images, self.heldout_labels = images[held], labels[held]

    def _require_setup(self) -> None:
        if self.seed is None:
            from collapsekit.errors import CollapsekitError

            raise CollapsekitError("digits-classify: call task.setup(seed) before using its data")

    def real_pool(self) -> Pool:
        self._require_setup()
        n = len(self.train_labels)
        return Pool.fresh({"images": self.train_images, "labels": self.train_labels,
                           "source": np.arange(n, dtype=np.int64)}, REAL)

    # -- model ------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.arch == "cnn":
            return DigitsCNN(self.hidden, self.feature_dim)
        return DigitsMLP(self.hidden, self.feature_dim)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], requirements: frozenset[str]) -> dict[str, Any]:
        images, labels = batch["images"].float(), batch["labels"].long()
        logits, hidden = model.forward_all(images)
        if "weight" in batch:                       # per-item loss weights (ItemWeights)
            loss = (batch["weight"].to(logits.dtype) * F.cross_entropy(logits, labels, reduction="none")).mean()
        else:
            loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits, "labels": labels, "features": hidden[-1], "hidden_states": hidden}

    def augmented_views(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Two random augmentations of ``batch`` forwarded through ``model`` (with gradients).

        Returns two dicts ``{"features": [N, D], "hidden_states": tuple}`` shaped as the
        step outputs. Augmentation: a shift of up to ``view_shift`` pixels per axis and
        noise of std ``view_noise``, drawn from the global torch RNG (seeded per generation).
        """
        images = batch["images"].float()
        views = []
        for _ in range(2):
            _, hidden = model.forward_all(perturb(images, self.view_noise, self.view_shift))
            views.append({"features": hidden[-1], "hidden_states": hidden})
        return views

    @torch.no_grad()
    def _forward_eval(self, model: nn.Module, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features of ``images`` in eval mode, batched."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits, feats = [], []
        for i in range(0, len(images), self.eval_batch_size):
            chunk = torch.as_tensor(np.asarray(images[i:i + self.eval_batch_size]), dtype=torch.float32)
            out, hidden = model.forward_all(chunk.to(device))
            logits.append(out.float().cpu())
            feats.append(hidden[-1].float().cpu())
        model.train(was_training)
        return torch.cat(logits), torch.cat(feats)

    # -- synthesis ----------------------------------------------------------------------------
    def pick_sources(self, n: int, generator: torch.Generator) -> np.ndarray:
        """Sorted indices of ``n`` real training images: each ``n // N`` times plus a random ``n % N``."""
        self._require_setup()
        n_real = len(self.train_labels)
        full = np.tile(np.arange(n_real), n // n_real)
        rest = torch.randperm(n_real, generator=generator)[: n % n_real].numpy()
        return np.sort(np.concatenate([full, rest]).astype(np.int64))

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, generator: torch.Generator, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, **_: Any) -> dict[str, np.ndarray]:
        """Pseudo-labelled data: perturbed real training images labelled by ``model``.

        Labels are drawn from ``softmax(logits / temperature)`` (``temperature`` 0:
        argmax), after optional top-k / top-p filtering; all randomness from ``generator``.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        source = self.pick_sources(n, generator)
        images = perturb(torch.as_tensor(self.train_images[source]), self.synth_noise, self.synth_shift, generator)
        logits, _ = self._forward_eval(model, images.numpy())
        if temperature == 0:
            labels = logits.argmax(1)
        else:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=1)
            labels = torch.multinomial(probs, 1, generator=generator).squeeze(1) if n else logits.argmax(1)
        return {"images": images.numpy().astype(np.float32), "labels": labels.numpy().astype(np.int64),
                "source": source}

    # -- verifier ---------------------------------------------------------------------------------
    def expert_data(self) -> ExpertData:
        """Real digits for the verifier: the digits neither in training nor held out (images in [0, 1])."""
        self._require_setup()
        images, labels = load_digits_arrays()
        spare = spare_indices(len(labels), self.train_index, self.heldout_index)
        return ExpertData(self.train_images.reshape(len(self.train_images), -1), self.train_labels,
                          images[spare].reshape(len(spare), -1), labels[spare], "images", "labels", NUM_CLASSES,
                          int(self.seed))

    # -- probes ---------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, samples: Pool | None) -> dict[str, float]:
        self._require_setup()
        logits, feats = self._forward_eval(model, self.heldout_images)
        labels = torch.as_tensor(self.heldout_labels)
        probs = torch.softmax(logits.double(), 1)
        _, train_feats = self._forward_eval(model, self.train_images)
        metrics = {
            "accuracy": float((logits.argmax(1) == labels).double().mean()),
            "heldout_nll": float(F.cross_entropy(logits.double(), labels)),
            "ece": expected_calibration_error(probs, labels),
            "nc1": nc1(feats, labels),
            "nc1_train": nc1(train_feats, self.train_labels),
            "effective_rank": effective_rank(feats),
        }
        metrics["within_class_variation"], metrics["class_separation"] = cosine_class_variation(feats, labels)
        if samples is not None and len(samples) and "source" in samples.arrays:
            truth = self.train_labels[np.asarray(samples.arrays["source"])]
            metrics["label_agreement"] = float(np.mean(np.asarray(samples.arrays["labels"]) == truth))
        return metrics
