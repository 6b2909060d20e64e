"""``image-diffusion``: a diffusers DDPM (``UNet2DModel`` + ``DDPMScheduler``) on your own images.

Data: any image dataset that ``datasets.load_dataset(**data)`` reads -- typically an image folder
with one sub-folder per class (``data: {path: imagefolder, data_dir: DIR}``) -- or, by default, the
1797 8x8 scikit-learn digits. Images are resized (shorter side) and centre-cropped to
``resolution``, scaled to [-1, 1] and held in pools as float32 arrays ``image [N, C, H, W]`` with
int64 ``label [N]`` (all 0 for unconditional data); ``C`` is 1 for mode ``L`` and 3 for ``RGB``.
The real data are split into training and held-out items by a permutation drawn from the task seed
(by default a fifth held out, the rest for training). A local folder is read without network access
or progress bars; every image is decoded on its own, so a file that cannot be read is named.

Model: ``model: unet`` is a ``diffusers.UNet2DModel`` built from the ``unet`` dict (``sample_size``,
``in_channels``/``out_channels`` and, for labelled data, ``num_class_embeds = num_classes + 1``
filled in from the data; the extra label is the *null* label, used with probability
``label_dropout`` in training as in classifier-free guidance and by :meth:`ImageDiffusion.encode`).
``model: mlp`` is :class:`~collapsekit.plugins.tasks.denoiser.Denoiser`, an MLP noise predictor on the
flattened image (far cheaper on a CPU). Each generation's model is saved with ``save_pretrained`` into
``gen_<k>/model/``: ``UNet2DModel.from_pretrained`` (or ``Denoiser.from_pretrained``) opens it.
Training: ``x_t = scheduler.add_noise(x0, eps, t)`` with ``t`` uniform over the scheduler's
``num_train_timesteps``; the loss is the MSE to ``eps`` (``prediction_type: epsilon``), to
``scheduler.get_velocity(x0, eps, t)`` (``v_prediction``) or to ``x0`` (``sample``).
Sampling: the ``sampler`` (``ddpm`` or ``ddim``, eta 0) built from the training scheduler's config,
``num_inference_steps`` steps, in batches of ``eval_batch_size``, every random draw from the
``generator`` passed to :meth:`ImageDiffusion.sample`.

Probes (torchmetrics), on ``eval_samples`` images the model draws with a generator fixed by the task
seed, in the feature space of a frozen evaluator: a small classifier (``evaluator``: a CNN, or an MLP on the
flattened image) trained once on the real training images of the task seed (labelled data), a frozen
randomly initialised one (unlabelled data; random-feature FID), or InceptionV3 from ``inception_path``
(needs ``torch-fidelity``):

* ``fid`` -- ``torchmetrics.image.FrechetInceptionDistance`` against the held-out real images;
* ``kid`` -- ``torchmetrics.image.KernelInceptionDistance`` (mean over subsets, seeded);
* ``class_accuracy`` -- share of generated images the evaluator assigns to their label (labelled data);
* ``effective_rank`` -- effective rank of the generated features;
* ``ole`` -- the OLE objective of the generated features grouped by label (labelled data);
* ``heldout_loss`` -- the training loss on the held-out real images with fixed ``(t, eps)``.

Step outputs: ``loss`` and ``features`` (the UNet's mid-block output average-pooled to 2x2 and
flattened, or the MLP's last hidden layer).

``digits-diffusion`` is this task with the MLP denoiser, the MLP evaluator and a full-length DDPM on the
built-in digits (:mod:`~collapsekit.plugins.tasks.digits_diffusion`): a small UNet made one generation of
its ``cpu`` preset about 12x slower on 2 CPU cores (338.7 s against 28.7 s; a UNet training step is
87-178 ms against the MLP's 5.6 ms at batch 128).
"""
from __future__ import annotations

import inspect
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.capabilities import FrozenFeatures, LatentEncoder, Sampler, StepFeatures
from collapsekit.errors import CollapsekitError
from collapsekit.plugins.probes import effective_rank
from collapsekit.plugins.tasks._bench import LSF_CONTROLS, LSF_VARIANTS
from collapsekit.plugins.tasks.digits import load_digit_images
from collapsekit.plugins.tasks.experts import ExpertData, RealDataCorrector, RealDataVerifier, spare_indices
from collapsekit.pool import REAL, Pool
from collapsekit.seeds import derive_seed
from collapsekit.task import PoolBatches, Task, collate_batch, legacy_state_dict, save_pretrained

MODELS = ("unet", "mlp")
SAMPLERS = ("ddpm", "ddim")
SCHEDULERS = ("DDPMScheduler",)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MODES = {"L": 1, "RGB": 3}
EVALUATORS = ("cnn", "mlp")

SMALL_UNET: dict[str, Any] = {
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "add_attention": False,
}
"""Default UNet: two resolution levels, no attention (a few hundred thousand weights)."""

EXAMPLE_UNET: dict[str, Any] = {
    "layers_per_block": 2, "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}
"""The UNet of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``."""


def _error(message: str) -> CollapsekitError:
    return CollapsekitError(f"image-diffusion: {message}")


# -- data ------------------------------------------------------------------------------------------
def to_array(image: Any, resolution: int | None) -> np.ndarray:
    """A PIL image as float32 ``[C, R, R]`` in [-1, 1]: shorter side resized to ``resolution`` (bicubic)
    and centre-cropped (``None``: native size, which must be square)."""
    from PIL import Image, ImageOps

    if resolution is not None and image.size != (resolution, resolution):
        image = ImageOps.fit(image, (resolution, resolution), Image.BICUBIC)
    elif image.size[0] != image.size[1]:
        raise _error(f"images are {image.size[0]}x{image.size[1]} (not square); set resolution to resize and "
                     "centre-crop them")
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def open_image(item: Any, where: str) -> Any:
    """A decoded PIL image of a dataset item (a PIL image, or ``{"bytes", "path"}`` of an undecoded
    ``datasets.Image`` column); a file that cannot be decoded is one error naming it."""
    import io

    from PIL import Image

    if not isinstance(item, Mapping):
        return item
    try:
        image = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
        image.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file; each becomes one message
        raise _error(f"cannot read the image {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                     "replace or delete that file") from None
    return image


def read_images(column: Any, image_key: str, resolution: int | None) -> tuple[np.ndarray, int]:
    """``(float32 [N, C, R, R] in [-1, 1], channels)`` of a dataset's image column, decoded one by one
    (a file that cannot be read is named). Every image must have the mode (``L`` or ``RGB``) of the
    first; with ``resolution`` each is resized and centre-cropped, without it all must share one size."""
    arrays: list[np.ndarray] = []
    first: tuple[str, str, tuple[int, int]] | None = None
    for i, item in enumerate(column):
        where = str(item.get("path") or f"item {i} of {image_key!r}") if isinstance(item, Mapping) \
            else f"item {i} of {image_key!r}"
        image = open_image(item, where)
        if first is None:
            first = (where, image.mode, image.size)
            if image.mode not in MODES:
                raise _error(f"image mode {image.mode!r} ({where}) is not supported; convert the images to "
                             f"{' or '.join(MODES)}, e.g. with PIL's Image.convert")
        elif image.mode != first[1]:
            raise _error(f"the images have mixed modes: {first[0]} is {first[1]}, {where} is {image.mode}; "
                         f"convert them all to one mode ({' or '.join(MODES)}), e.g. with PIL's Image.convert")
        elif resolution is None and image.size != first[2]:
            raise _error(f"the images have mixed sizes: {first[0]} is {first[2][0]}x{first[2][1]}, {where} is "
                         f"{image.size[0]}x{image.size[1]}; set resolution to resize and centre-crop them")
        arrays.append(to_array(image, resolution))
    if first is None:
        raise _error("the dataset holds no images (empty folder?); point data at a folder of images")
    return np.stack(arrays).astype(np.float32), MODES[first[1]]


def load_dataset_images(data: Mapping[str, Any], image_key: str, label_key: str | None,
                        resolution: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(images float32 [N, C, R, R] in [-1, 1], labels int64 [N], num_classes)`` of a ``datasets`` dataset
    (``num_classes`` is 0 and labels are 0 when ``label_key`` is None). ``data`` are ``load_dataset``
    arguments (with an optional ``split``): local files, or a Hub dataset from the cache or the Hub
    (:func:`collapsekit.plugins.tasks.hub.load_dataset`)."""
    import datasets

    from collapsekit.plugins.tasks.hub import load_dataset

    loaded = load_dataset(data, "data", "image-diffusion")
    columns = list(loaded.column_names)
    if image_key not in columns:
        raise _error(f"image_key {image_key!r} is not a column of the data (columns: {columns})")
    if label_key is not None and label_key not in columns:
        raise _error(f"label_key {label_key!r} is not a column of the data (columns: {columns}); "
                     "set label_key: null to train an unconditional model")
    if isinstance(loaded.features[image_key], datasets.Image):        # decoded here, one file at a time
        loaded = loaded.cast_column(image_key, datasets.Image(decode=False))
    arrays, _ = read_images(loaded[image_key], image_key, resolution)
    if label_key is None:
        return arrays, np.zeros(len(arrays), dtype=np.int64), 0
    labels = np.asarray(loaded[label_key])
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise _error(f"label_key {label_key!r} must hold non-negative integer class ids, got {labels.dtype}")
    feature = loaded.features[label_key]
    num_classes = len(feature.names) if hasattr(feature, "names") else int(labels.max()) + 1
    return arrays, labels.astype(np.int64), num_classes


def load_digits_as_images(resolution: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The scikit-learn digits as ``[1797, 1, R, R]`` float32 in [-1, 1] (bilinear upsampling when
    ``resolution`` is not 8), labels and 10 classes."""
    images, labels = load_digit_images()
    x = torch.as_tensor(images[:, None] / 8.0 - 1.0, dtype=torch.float32)
    if resolution not in (None, 8):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.numpy(), labels, 10


@lru_cache(maxsize=4)
def _load_cached(data_json: str, image_key: str, label_key: str | None, resolution: int | None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    data = json.loads(data_json)
    if data is None:
        return load_digits_as_images(resolution)
    return load_dataset_images(dict(data), image_key, label_key, resolution)


def split_indices(n: int, train_size: int | None, heldout_size: int | float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held-out)`` index arrays of a permutation of ``range(n)`` drawn from ``seed``:
    held-out first ``heldout_size`` items (a count, or a share when a float in (0, 1)), then train."""
    held = int(round(heldout_size * n)) if isinstance(heldout_size, float) else int(heldout_size)
    train = n - held if train_size is None else int(train_size)
    if held < 2 or train < 2:
        raise _error(f"need at least 2 training and 2 held-out images, got {train} and {held} of {n}")
    if held + train > n:
        raise _error(f"train_size + heldout_size = {train + held} exceeds the {n} images of the data; "
                     "lower one of them")
    order = np.random.default_rng(seed).permutation(n)
    return order[held:held + train], order[:held]


# -- evaluator -------------------------------------------------------------------------------------
def ole_objective(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  normalize: bool = True) -> float:
    """Orthogonal Low-rank Embedding objective (Lezama et al. 2018), per item.

    ``(sum_c ||Z_c||_* - ||Z||_*) / N`` where ``Z`` [N, D] holds the features (rows
    L2-normalised when ``normalize``), ``Z_c`` the rows of class ``c`` and ``||.||_*``
    the nuclear norm. It is >= 0 (triangle inequality) and 0 exactly when the class
    subspaces are mutually orthogonal; collapse of class structure raises it.
    """
    z = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels)).long()
    if z.ndim != 2 or y.shape != (z.shape[0],) or len(z) == 0:
        raise ValueError(f"ole_objective needs features [N, D] (N >= 1) and labels [N], got "
                         f"{tuple(z.shape)} and {tuple(y.shape)}")
    if normalize:
        z = F.normalize(z, dim=1)
    per_class = sum(torch.linalg.matrix_norm(z[y == c], ord="nuc") for c in torch.unique(y))
    return float((per_class - torch.linalg.matrix_norm(z, ord="nuc")) / len(z))


class Evaluator(nn.Module):
    """Small classifier whose last hidden layer gives the features, and a linear head (``num_classes`` >= 1).
    ``cnn``: two 3x3 conv layers (32, 64 channels), 2x2 average pooling and a hidden layer; ``mlp``: two hidden
    layers on the flattened ``channels x size x size`` image (far cheaper to train on a CPU)."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 64, kind: str = "cnn", size: int = 8) -> None:
        super().__init__()
        if kind not in EVALUATORS:
            raise ValueError(f"image-diffusion: unknown evaluator {kind!r}; choose from {', '.join(EVALUATORS)}")
        self.num_features = hidden
        if kind == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        else:
            self.body = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2),
                nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, max(num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, K], features [B, hidden])`` of images ``[B, C, H, W]`` in [-1, 1]."""
        h = self.body(x.float())
        return self.head(h), h


def train_evaluator(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int, hidden: int,
                    steps: int, batch_size: int = 512, kind: str = "cnn") -> Evaluator:
    """The frozen ``kind`` evaluator of a split: AdamW (lr 3e-3) for ``steps`` mini-batches of the real training
    images with Gaussian pixel noise (std 0.1); untrained (random features) when ``num_classes`` is 0.
    Deterministic for fixed arguments."""
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(derive_seed(seed, 0, "image-diffusion/evaluator"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, "image-diffusion/evaluator-init"))
        model = Evaluator(x.shape[1], num_classes, hidden, kind, x.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps if num_classes else 0):
        batch = torch.randperm(len(x), generator=generator)[:batch_size]
        noisy = x[batch] + 0.1 * torch.randn(x[batch].shape, generator=generator)
        loss = F.cross_entropy(model(noisy)[0], y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


class FeatureNet(nn.Module):
    """The evaluator's features, standardised, as a torchmetrics feature extractor: images
    ``[B, C, H, W]`` -> ``(features - shift) / scale`` ``[B, D]`` float64. The task sets ``shift`` to the
    mean and ``scale`` to the standard deviation (over all entries) of the held-out real features, so
    that KID's polynomial kernel ``(x.y / D + 1)^3`` sees centred features of unit scale. FID is
    unchanged by the shift and divided by ``scale^2``."""

    def __init__(self, evaluator: nn.Module, num_features: int, shift: torch.Tensor | None = None,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.evaluator, self.num_features, self.scale = evaluator, num_features, float(scale)
        self.register_buffer("shift", torch.zeros(num_features, dtype=torch.float64) if shift is None
                             else torch.as_tensor(shift, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.evaluator(x)
        return ((out[1] if isinstance(out, tuple) else out).double() - self.shift) / self.scale


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID InceptionV3 (2048-d pool features) with weights from a local file; images
    in [-1, 1] with 1 or 3 channels are mapped to uint8 RGB first (no download)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(path))
        except ModuleNotFoundError as exc:
            raise _error(f"inception_path needs torch-fidelity ({exc}); pip install torch-fidelity, or "
                         "leave inception_path unset to use the frozen classifier") from None
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        feats = self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        return torch.zeros((len(x), 1)), feats.float()


# -- model helpers ---------------------------------------------------------------------------------
def mid_features(h: torch.Tensor) -> torch.Tensor:
    """A feature map ``[B, C, H, W]`` average-pooled to at most 2x2 and flattened."""
    return F.adaptive_avg_pool2d(h, min(2, h.shape[-1])).flatten(1)


def unet_forward(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                 features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(UNet output, mid-block features or None)``; the features are read by a forward hook."""
    captured: list[torch.Tensor] = []
    handle = model.mid_block.register_forward_hook(lambda m, i, o: captured.append(o)) if features else None
    try:
        out = model(x, t, class_labels=labels).sample
    finally:
        if handle is not None:
            handle.remove()
    return out, (mid_features(captured[0]) if captured else None)


class ImageDiffusion(Task, Sampler, StepFeatures, LatentEncoder, FrozenFeatures, RealDataVerifier,
                     RealDataCorrector):
    """A diffusers DDPM on images, trained generation after generation on its own samples.

    Args:
        data: ``datasets.load_dataset`` keyword arguments (plus optional ``split``), e.g.
            ``{path: imagefolder, data_dir: DIR}``; ``null``: the 8x8 scikit-learn digits.
        image_key, label_key: dataset columns of the image and its class (``label_key: null``: unconditional).
        resolution: image side after resize + centre crop (``null``: native size, must be square).
        train_size, heldout_size: real training items (``null``, the default: all not held out) and
            held-out items (a count, or a share when a float in (0, 1); default 0.2).
        model: ``unet`` (diffusers ``UNet2DModel``) or ``mlp`` (digits-diffusion's MLP denoiser).
        unet: ``UNet2DModel`` config overrides of :data:`SMALL_UNET` (``sample_size``, channels and
            ``num_class_embeds`` default to the data's).
        mlp: ``{hidden, depth, time_dim}`` of the MLP denoiser.
        scheduler: the training noise scheduler: ``DDPMScheduler`` keyword arguments (``num_train_timesteps``,
            ``beta_schedule``, ``prediction_type``, ...), optionally ``class_name: DDPMScheduler``.
        sampler, num_inference_steps: reverse process (``ddpm`` or ``ddim``) and its number of steps.
        label_dropout: probability of training on the null label (labelled data).
        encode_t: timestep at which :meth:`encode` reads the model's features.
        eval_samples: generated images per probe evaluation (class-balanced).
        evaluator: the frozen classifier: ``cnn`` (default) or ``mlp`` (on the flattened image; far cheaper to
            train on a CPU).
        evaluator_hidden, evaluator_steps: feature size and training steps of the frozen classifier.
        inception_path: local InceptionV3 FID weights (``pt_inception-2015-12-05-6726825d.pth``) to use
            as the evaluator instead of the classifier (needs torch-fidelity).
        kid_subsets, kid_subset_size: KID's subsets and their size (capped by the sample counts).
        batch_size, lr, weight_decay: AdamW training settings.
        eval_batch_size: batch size of sampling, encoding and probes.
    """

    name: ClassVar[str] = "image-diffusion"
    pool_keys: ClassVar[tuple[str, ...]] = ("image", "label")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "fid": False, "kid": False, "class_accuracy": True, "effective_rank": True, "ole": False,
        "heldout_loss": False}
    headline: ClassVar[tuple[str, ...]] = ("fid", "kid", "class_accuracy", "ole")
    bench_methods: ClassVar[tuple[str, ...]] = (
        "baseline", "accumulate-subsample", "accumulate-subsample+latent-filter",
        "accumulate-subsample+latent-filter-random", "latent-filter-accumulated", "latent-filter-accumulated-random")
    #: LSF's two rules, each compared (paired by seed) with the same rule keeping the same share at random
    bench_variants: ClassVar[dict[str, dict]] = dict(LSF_VARIANTS)
    bench_controls: ClassVar[dict[str, str]] = dict(LSF_CONTROLS)
    input_key: ClassVar[str] = "image"
    label_key: ClassVar[str | None] = "label"
    num_classes: ClassVar[int | None] = None

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"resolution": 8, "train_size": 200, "heldout_size": 100,
                           "unet": {"block_out_channels": [16, 32], "norm_num_groups": 4},
                           "scheduler": {"num_train_timesteps": 100}, "sampler": "ddim",
                           "num_inference_steps": 5, "eval_samples": 100, "evaluator_steps": 60,
                           "batch_size": 64},
                  "trainer": {"max_steps": 20}, "generations": 2, "variants": bench_variants},
        "cpu": {"task": {"resolution": 8, "train_size": 1000, "heldout_size": 500,
                         "unet": {"block_out_channels": [32, 64], "norm_num_groups": 8},
                         "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
                         "sampler": "ddim", "num_inference_steps": 25, "eval_samples": 500, "batch_size": 128,
                         "lr": 2e-3},
                "trainer": {"max_steps": 500}, "generations": 3,
                # its 12 cells took 4,051 CPU s (~34 min of 2 cores): beside the other tasks' ~41 minutes
                # they break the cpu suite's 45, so `collapsekit bench --preset cpu` runs it only when named
                "opt_in": "12 cells of ~6 CPU-minutes each", "variants": bench_variants},
        "gpu": {"task": {"resolution": 32, "train_size": 1297, "heldout_size": 500, "unet": dict(EXAMPLE_UNET),
                         "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "linear"},
                         "sampler": "ddim", "num_inference_steps": 100, "eval_samples": 2000,
                         "evaluator_steps": 600, "batch_size": 128, "lr": 1e-4, "eval_batch_size": 500},
                "trainer": {"max_steps": 10000}, "generations": 5, "variants": bench_variants},
    }
    """``smoke`` (tests, seconds), ``cpu`` (8x8 digits, small UNet), ``gpu`` (diffusers' unconditional
    example UNet at 32x32; offline stand-in data: the digits upsampled to 32x32 -- set ``data`` to your
    image folder)."""

    def __init__(self, data: Mapping[str, Any] | None = None, image_key: str = "image",
                 label_key: str | None = "label", resolution: int | None = 8, train_size: int | None = None,
                 heldout_size: int | float = 0.2, model: str = "unet", unet: Mapping[str, Any] | None = None,
                 mlp: Mapping[str, Any] | None = None, scheduler: Mapping[str, Any] | None = None,
                 sampler: str = "ddpm", num_inference_steps: int = 50, label_dropout: float = 0.1,
                 encode_t: int = 10, eval_samples: int = 500, evaluator: str = "cnn", evaluator_hidden: int = 64,
                 evaluator_steps: int = 200, inception_path: str | None = None, kid_subsets: int = 50,
                 kid_subset_size: int = 100, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                 eval_batch_size: int = 1000) -> None:
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        if model not in MODELS:
            raise ValueError(f"image-diffusion: unknown model {model!r}; choose from {', '.join(MODELS)}")
        if evaluator not in EVALUATORS:
            raise ValueError(f"image-diffusion: unknown evaluator {evaluator!r}; choose from {', '.join(EVALUATORS)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"image-diffusion: unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < 4):
            raise ValueError(f"image-diffusion: resolution must be an integer >= 4 or null, got {resolution!r}")
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"image-diffusion: data must be a mapping of datasets.load_dataset arguments "
                             f"(e.g. {{path: imagefolder, data_dir: DIR}}) or null, got {data!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"image-diffusion: label_dropout must be in [0, 1), got {label_dropout}")
        if min(num_inference_steps, eval_samples, evaluator_hidden, kid_subsets, kid_subset_size) < 1 \
                or evaluator_steps < 0:
            raise ValueError("image-diffusion: num_inference_steps, eval_samples, evaluator_hidden, kid_subsets "
                             "and kid_subset_size must be >= 1 and evaluator_steps >= 0")
        self.noise = make_scheduler(scheduler)
        self.timesteps = int(self.noise.config.num_train_timesteps)
        if not 0 <= encode_t < self.timesteps:
            raise ValueError(f"image-diffusion: encode_t must be in [0, num_train_timesteps={self.timesteps}), "
                             f"got {encode_t}")
        self.data = None if data is None else dict(data)
        self.image_key, self.label_column = image_key, label_key
        self.label_key = "label" if label_key is not None else None    # pool array (Items capability)
        if label_key is None:       # the real-data experts classify and cluster by label
            self.provides = type(self).provides - {"verifier", "corrector"}
        self.resolution, self.train_size, self.heldout_size = resolution, train_size, heldout_size
        self.model_kind, self.unet_config, self.mlp_config = model, dict(unet or {}), dict(mlp or {})
        unknown = set(self.mlp_config) - {"hidden", "depth", "time_dim"}
        if unknown:
            raise ValueError(f"image-diffusion: unknown mlp settings {sorted(unknown)}; use hidden, depth, time_dim")
        self.sampler, self.num_inference_steps = sampler, int(num_inference_steps)
        self.label_dropout, self.encode_t = float(label_dropout), int(encode_t)
        self.eval_samples, self.evaluator_hidden, self.evaluator_steps = eval_samples, evaluator_hidden, evaluator_steps
        self.evaluator_kind = evaluator
        self.inception_path = inception_path
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.eval_batch_size = eval_batch_size

    # -- data -------------------------------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Load and check the images, split them by ``seed``, check the model config against them and
        fit the frozen evaluator (and the held-out reference of ``fid``/``kid``). Every data or config
        error is raised here, before anything trains."""
        super().setup(seed)
        images, labels, num_classes = _load_cached(json.dumps(self.data, sort_keys=True), self.image_key,
                                                   self.label_column, self.resolution)
        self.channels, self.size = int(images.shape[1]), int(images.shape[-1])
        self.num_classes = num_classes if self.label_key is not None else None
        self.model_config = self.resolved_unet_config() if self.model_kind == "unet" else None
        train, held = split_indices(len(images), self.train_size, self.heldout_size, seed)
        self.train_index, self.heldout_index = train, held
        self.train_x, self.train_y = images[train], labels[train]
        self.heldout_x, self.heldout_y = images[held], labels[held]
        self.evaluator = self._make_evaluator(seed)
        self._fid, self._kid = self._make_metrics()

    def _require_setup(self) -> None:
        if self.seed is None:
            raise CollapsekitError("image-diffusion: call task.setup(seed) before using its data")

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes)

    @property
    def null_label(self) -> int:
        """Label id of the null (unconditional) class: ``num_classes`` (0 for unlabelled data)."""
        return int(self.num_classes or 0)

    def real_arrays(self) -> dict[str, np.ndarray]:
        """The real pool's arrays and the held-out images and labels (the run's data fingerprint)."""
        self._require_setup()
        return {"image": self.train_x, "label": self.train_y, "heldout_image": self.heldout_x,
                "heldout_label": self.heldout_y}

    def real_pool(self) -> Pool:
        self._require_setup()
        return Pool.fresh({"image": self.train_x, "label": self.train_y}, REAL)

    def dataloader(self, pool: Pool, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
        """Batches of ``pool`` (one indexed read per array and batch), in an order drawn from a generator seeded
        with ``seed``. Unlike :meth:`Task.dataloader` the loader has no generator of its own, so each epoch's
        iterator draws its base seed from the global RNG that the training noise draws from too: the numbers
        measured with this task (README tables) were made that way."""
        if len(pool) == 0:
            raise CollapsekitError(f"task {self.name!r}: the training pool is empty; nothing to train on")
        dataset = PoolBatches(pool)
        generator = torch.Generator().manual_seed(seed)
        order = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
                 else torch.utils.data.SequentialSampler(dataset))
        batches = torch.utils.data.BatchSampler(order, batch_size=min(self.batch_size, len(pool)), drop_last=False)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_batch)

    # -- model ------------------------------------------------------------------------------------
    def resolved_unet_config(self) -> dict[str, Any]:
        """:data:`SMALL_UNET` updated by ``unet``, with the data's size, channels and label count filled
        in; raise when a given value contradicts the data or the UNet cannot downsample the images."""
        from diffusers import UNet2DModel

        config = {**SMALL_UNET, **self.unet_config}
        known = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise _error(f"unknown UNet2DModel settings {unknown}")
        wanted = {"sample_size": self.size, "in_channels": self.channels, "out_channels": self.channels}
        if self.conditional:
            wanted["num_class_embeds"] = self.num_classes + 1
        for key, value in wanted.items():
            given = self.unet_config.get(key)
            if given is not None and given != value:
                extra = " (the classes plus one null label)" if key == "num_class_embeds" else ""
                raise _error(f"unet.{key} = {given!r} does not match the data, which need {value}{extra}; "
                             f"remove it from unet to have it filled in")
            config[key] = value
        if not self.conditional and self.unet_config.get("num_class_embeds"):
            raise _error("unet.num_class_embeds is set but the data are unlabelled (label_key: null)")
        if config.get("mid_block_type", "UNetMidBlock2D") is None:
            raise _error("unet.mid_block_type is null, but the step features and encode() latents are read "
                         "from the UNet's mid block; keep a mid block")
        levels = len(config["block_out_channels"])
        if len(config["down_block_types"]) != levels or len(config["up_block_types"]) != levels:
            raise _error(f"unet needs one down and one up block per entry of block_out_channels ({levels}), "
                         f"got {len(config['down_block_types'])} and {len(config['up_block_types'])}")
        if self.size % 2 ** (levels - 1):
            raise _error(f"the {levels}-level UNet halves the image {levels - 1} times, which does not divide the "
                         f"image size {self.size}; change resolution or block_out_channels")
        if any(c % config["norm_num_groups"] for c in config["block_out_channels"]):
            raise _error(f"unet.block_out_channels {list(config['block_out_channels'])} must be multiples of "
                         f"norm_num_groups = {config['norm_num_groups']}")
        return config

    def build_model(self) -> nn.Module:
        self._require_setup()
        if self.model_kind == "mlp":
            from collapsekit.plugins.tasks.denoiser import Denoiser

            cfg = {"hidden": 256, "depth": 2, "time_dim": 64, **self.mlp_config}
            return Denoiser(cfg["hidden"], cfg["depth"], cfg["time_dim"], num_classes=self.null_label,
                            dim=self.channels * self.size * self.size)
        from diffusers import UNet2DModel

        return UNet2DModel(**self.model_config)

    def save_model(self, model: nn.Module, directory: Path) -> list[str]:
        """``model/`` by ``save_pretrained`` (config.json + safetensors): ``UNet2DModel.from_pretrained`` or
        (``model: mlp``) ``collapsekit.plugins.tasks.denoiser.Denoiser.from_pretrained`` opens it."""
        return save_pretrained(directory, model)

    def load_model(self, directory: Path) -> nn.Module:
        """The model of :meth:`save_model` (or of an earlier collapsekit's ``model.pt``: a state dict)."""
        state = legacy_state_dict(directory)
        if state is not None:
            model = self.build_model()
            model.load_state_dict(state)
            return model
        if self.model_kind == "mlp":
            from collapsekit.plugins.tasks.denoiser import Denoiser as cls
        else:
            from diffusers import UNet2DModel as cls
        return cls.from_pretrained(Path(directory) / "model")

    def predict(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(model output [B, C, H, W], features [B, D] or None)`` for noisy images ``x``, timesteps ``t``
        ``[B]`` and labels ``[B]`` (the null label for unconditional data or dropped labels)."""
        if self.model_kind == "mlp":
            out, hidden = model.forward_features(x.flatten(1), t, labels)
            return out.view_as(x), hidden
        return unet_forward(model, x, t, labels if self.conditional else None, features)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model regresses on, by the scheduler's ``prediction_type``."""
        kind = self.noise.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise.get_velocity(x0, noise, t)
        return x0

    def step(self, model: nn.Module, batch: Mapping[str, torch.Tensor], requirements: frozenset[str]) -> dict:
        """Denoising loss at a uniform timestep; labels dropped to null with ``label_dropout`` (global RNG)."""
        x0, y = batch["image"].float(), batch["label"].long()
        t = torch.randint(0, self.timesteps, (len(x0),)).to(x0.device)
        noise = torch.randn(x0.shape).to(x0.device)
        drop = (torch.rand(len(y)) < self.label_dropout).to(y.device)
        y = torch.where(drop | (not self.conditional), torch.full_like(y, self.null_label), y)
        out, feats = self.predict(model, self.noise.add_noise(x0, noise, t), t, y, "features" in requirements)
        result = {"loss": F.mse_loss(out.float(), self.target(x0, noise, t))}
        if feats is not None:
            result["features"] = feats
        return result

    # -- synthesis --------------------------------------------------------------------------------
    def balanced_labels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` class-balanced labels in an order drawn from ``generator`` (all 0 for unlabelled data)."""
        if not self.conditional:
            return torch.zeros(n, dtype=torch.long)
        return (torch.arange(n) % self.num_classes)[torch.randperm(n, generator=generator)]

    def reverse_scheduler(self):
        """A fresh ``ddpm``/``ddim`` scheduler of the training config, set to ``num_inference_steps``."""
        from diffusers import DDIMScheduler, DDPMScheduler

        cls = DDIMScheduler if self.sampler == "ddim" else DDPMScheduler
        scheduler = cls.from_config(self.noise.config)
        scheduler.set_timesteps(min(self.num_inference_steps, self.timesteps))
        return scheduler

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, generator: torch.Generator, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, labels: np.ndarray | None = None,
               **_: Any) -> dict[str, np.ndarray]:
        """``n`` images by the reverse process of ``sampler``, in batches of ``eval_batch_size``, every
        random draw (labels, initial noise, DDPM noise) from ``generator``. Labels are class-balanced
        (or ``labels``). ``temperature``, ``top_k`` and ``top_p`` do not apply and must stay 1, 0, 1."""
        self._require_setup()
        if temperature != 1.0 or top_k or top_p < 1.0:
            raise ValueError("image-diffusion samples by a diffusion reverse process: temperature, top_k and "
                             "top_p do not apply; leave them at 1, 0 and 1")
        y = self.balanced_labels(n, generator) if labels is None else torch.as_tensor(np.asarray(labels)).long()
        if len(y) != n:
            raise ValueError(f"labels holds {len(y)} items, expected n = {n}")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = [self._reverse(model, y[s:s + self.eval_batch_size], generator, device)
               for s in range(0, n, self.eval_batch_size)]
        model.train(was_training)
        shape = (0, self.channels, self.size, self.size)
        images = torch.cat(out) if out else torch.zeros(shape)
        return {"image": images.numpy().astype(np.float32), "label": y.numpy().astype(np.int64)}

    def _reverse(self, model: nn.Module, y: torch.Tensor, generator: torch.Generator, device) -> torch.Tensor:
        scheduler = self.reverse_scheduler()
        x = torch.randn((len(y), self.channels, self.size, self.size), generator=generator)
        labels = (y if self.conditional else torch.full_like(y, self.null_label)).to(device)
        for t in scheduler.timesteps:
            tt = torch.full((len(y),), int(t), dtype=torch.long, device=device)
            out = self.predict(model, x.to(device), tt, labels)[0].float().cpu()
            kwargs = {"eta": 0.0} if self.sampler == "ddim" else {}
            x = scheduler.step(out, t, x, generator=generator, **kwargs).prev_sample
        return x.clamp(-1, 1)

    # -- latents and features ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, model: nn.Module, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model's latent of ``images`` ``[N, C, H, W]``: its features (UNet mid block pooled to 2x2, or
        the MLP's last hidden layer) at timestep ``encode_t`` for the noise-free ``sqrt(abar_t) x`` and the
        null label (deterministic; the label the item is probed for is not given)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = torch.as_tensor(np.array(images, dtype=np.float32))
        scale = float(self.noise.alphas_cumprod[self.encode_t].sqrt())
        out = []
        for s in range(0, len(x), self.eval_batch_size):
            xb = x[s:s + self.eval_batch_size].to(device)
            t = torch.full((len(xb),), self.encode_t, dtype=torch.long, device=device)
            y = torch.full((len(xb),), self.null_label, dtype=torch.long, device=device)
            out.append(self.predict(model, scale * xb, t, y, features=True)[1].float().cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, 1))

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frozen evaluator features of ``images`` ``[N, C, H, W]`` -> ``[N, D]`` (the probes' space)."""
        return self.evaluate_images(images)[1]

    @torch.no_grad()
    def evaluate_images(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(evaluator logits [N, K], features [N, D])``."""
        self._require_setup()
        x = torch.as_tensor(np.array(images, dtype=np.float32))
        parts = [self.evaluator(x[s:s + self.eval_batch_size]) for s in range(0, len(x), self.eval_batch_size)]
        if not parts:
            return torch.zeros((0, 1)), torch.zeros((0, self.evaluator.num_features))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).float()

    # -- experts (verifier, corrector) ------------------------------------------------------------
    def expert_data(self) -> ExpertData:
        """Real images for the verifier (those neither in training nor held out) and the corrector (the
        training images), flattened; labelled data only."""
        self._require_setup()
        if not self.conditional:
            raise CollapsekitError("image-diffusion: the verifier and the corrector need labelled data "
                                   "(label_key); this run's data are unlabelled")
        images, labels, _ = _load_cached(json.dumps(self.data, sort_keys=True), self.image_key, self.label_column,
                                         self.resolution)
        spare = spare_indices(len(labels), self.train_index, self.heldout_index)
        flat = lambda a: np.asarray(a).reshape(len(a), -1)
        return ExpertData(flat(self.train_x), self.train_y, flat(images[spare]), labels[spare], self.input_key,
                          "label", int(self.num_classes), int(self.seed))

    # -- probes -----------------------------------------------------------------------------------
    def _make_evaluator(self, seed: int) -> nn.Module:
        if self.inception_path is not None:
            if not Path(self.inception_path).is_file():
                raise _error(f"inception_path {self.inception_path!r} is not a file")
            return InceptionFeatures(self.inception_path).eval()
        key = (json.dumps(self.data, sort_keys=True), self.label_column, self.resolution, tuple(self.train_index),
               seed, self.evaluator_kind, self.evaluator_hidden, self.evaluator_steps)
        if key not in _EVALUATORS:
            _EVALUATORS.clear()
            _EVALUATORS[key] = train_evaluator(self.train_x, self.train_y, self.num_classes or 0, seed,
                                               self.evaluator_hidden, self.evaluator_steps, kind=self.evaluator_kind)
        return _EVALUATORS[key]

    def _make_metrics(self):
        """torchmetrics FID and KID over the evaluator's features, real side = the held-out images."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        real_features = self.evaluate_images(self.heldout_x)[1].double()
        scale = float(real_features.std()) or 1.0
        net = FeatureNet(self.evaluator, int(self.evaluator.num_features), real_features.mean(0), scale)
        # not split over ranks: every process measures the whole FID / KID itself, so no cross-rank sync
        # (the real side is filled at setup, before a process group exists; KID draws subsets by position)
        fid = FrechetInceptionDistance(feature=net, reset_real_features=False, sync_on_compute=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=net, reset_real_features=False, subsets=self.kid_subsets,
                                          subset_size=self.kid_subset_size, sync_on_compute=False)
        real = torch.as_tensor(self.heldout_x)
        for s in range(0, len(real), self.eval_batch_size):
            fid.update(real[s:s + self.eval_batch_size], real=True)
            kid.update(real[s:s + self.eval_batch_size], real=True)
        return fid, kid

    def fid_kid(self, images: np.ndarray | torch.Tensor) -> tuple[float, float]:
        """``(FID, KID mean)`` of ``images`` against the held-out real images (KID's subsets are drawn
        from a generator fixed by the task seed)."""
        self._require_setup()
        x = torch.as_tensor(np.array(images, dtype=np.float32))
        self._fid.reset()
        self._kid.reset()
        for s in range(0, len(x), self.eval_batch_size):
            self._fid.update(x[s:s + self.eval_batch_size], real=False)
            self._kid.update(x[s:s + self.eval_batch_size], real=False)
        self._kid.subset_size = min(self.kid_subset_size, len(x), len(self.heldout_x))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(int(self.seed), 0, "image-diffusion/kid"))
            kid = float(self._kid.compute()[0])
        return float(self._fid.compute()), kid

    def _eval_generator(self, role: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(int(self.seed), 0, f"image-diffusion/probe{role}"))

    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> float:
        """Mean training loss on the held-out images with ``(t, eps)`` fixed by the task seed (true labels)."""
        self._require_setup()
        g = self._eval_generator(2)
        x0 = torch.as_tensor(self.heldout_x)
        t = torch.randint(0, self.timesteps, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        y = torch.as_tensor(self.heldout_y) if self.conditional else torch.full((len(x0),), self.null_label)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total = 0.0
        for s in range(0, len(x0), self.eval_batch_size):
            sl = slice(s, s + self.eval_batch_size)
            xt = self.noise.add_noise(x0[sl], noise[sl], t[sl])
            out = self.predict(model, xt.to(device), t[sl].to(device), y[sl].to(device))[0].float().cpu()
            total += float(F.mse_loss(out, self.target(x0[sl], noise[sl], t[sl]), reduction="sum"))
        model.train(was_training)
        return total / x0.numel()

    def evaluate(self, model: nn.Module, samples: Pool | None) -> dict[str, float]:
        """The probes of the module docstring on fresh model samples (``samples`` is not used: a filtered
        pool would flatter the model)."""
        self._require_setup()
        drawn = self.sample(model, self.eval_samples, self._eval_generator(1))
        return {**self.image_metrics(drawn["image"], drawn["label"]), "heldout_loss": self.heldout_loss(model)}

    def image_metrics(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``fid``, ``kid``, ``effective_rank`` and, for labelled data, ``class_accuracy`` and ``ole`` of
        ``images`` generated for ``labels``."""
        logits, feats = self.evaluate_images(images)
        fid, kid = self.fid_kid(images)
        metrics = {"fid": fid, "kid": kid, "effective_rank": effective_rank(feats)}
        if self.conditional and self.inception_path is None:
            y = torch.as_tensor(np.asarray(labels))
            metrics["class_accuracy"] = float((logits.argmax(1) == y).double().mean())
            metrics["ole"] = ole_objective(feats, y)
        return metrics

    def reference_metrics(self) -> dict[str, float]:
        """The probes of the real training images: the floor a perfect model would reach."""
        self._require_setup()
        return self.image_metrics(self.train_x, self.train_y)

    # -- files --------------------------------------------------------------------------------------
    def write_samples(self, samples: Pool, directory: Path) -> list[str]:
        """``samples.png``: a grid of up to 100 samples, up to 10 per label, one row per label (:func:`image_grid`)."""
        if len(samples) == 0:
            return []
        path = Path(directory) / "samples.png"
        image_grid(np.asarray(samples.arrays["image"]), np.asarray(samples.arrays["label"])).save(path)
        return ["samples.png"]


_EVALUATORS: dict[tuple, nn.Module] = {}
"""The last trained evaluator (runs and tests reuse it for the same data, split and settings)."""


def make_scheduler(config: Mapping[str, Any] | None):
    """The training noise scheduler (``DDPMScheduler``) of a config dict; unknown names or settings raise."""
    from diffusers import DDPMScheduler

    config = dict(config or {})
    name = config.pop("class_name", "DDPMScheduler")
    if name not in SCHEDULERS:
        raise ValueError(f"image-diffusion: unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)} "
                         "(sampling uses the sampler setting: ddpm or ddim)")
    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"image-diffusion: unknown DDPMScheduler settings {unknown}; known: {sorted(known)}")
    if config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise ValueError(f"image-diffusion: prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                         f"got {config['prediction_type']!r}")
    try:
        return DDPMScheduler(**config)
    except (NotImplementedError, ValueError) as exc:
        raise ValueError(f"image-diffusion: bad scheduler settings {config}: {exc}") from None


def image_grid(images: np.ndarray, labels: np.ndarray, limit: int = 100, columns: int = 10, min_side: int = 32):
    """A PIL image of up to ``limit`` images ``[N, C, H, W]`` in [-1, 1]: the first
    ``k = min(columns, limit // classes)`` items of each label, by label (so with at most
    ``limit // columns`` classes each row is one class), ``columns`` per row, each upscaled (nearest)
    to at least ``min_side`` pixels, 2 px gaps."""
    from PIL import Image

    classes = np.unique(labels)
    k = max(1, min(columns, limit // max(1, len(classes))))
    order = np.concatenate([np.flatnonzero(labels == c)[:k] for c in classes])[:limit]
    tiles = ((np.clip(images[order], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    n, c, h, w = tiles.shape
    scale = max(1, -(-min_side // max(h, w)))
    rows = -(-n // columns)
    gap = 2
    canvas = np.full((rows * (h * scale + gap) + gap, min(n, columns) * (w * scale + gap) + gap, c), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        big = tile.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
        y0, x0 = gap + r * (h * scale + gap), gap + col * (w * scale + gap)
        canvas[y0:y0 + h * scale, x0:x0 + w * scale] = big
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)
