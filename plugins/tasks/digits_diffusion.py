"""``digits-diffusion``: a small class-conditional DDPM on the 8x8 scikit-learn digits (LSF's home).

Generation 0 trains a denoiser on real digits (pixels scaled to [-1, 1], flattened
to 64 values); every later generation trains on images the previous models
generated, so sample quality and class fidelity drift (the self-consuming loop
of Alemohammad et al. 2024; Cai et al. 2025 study it in latent space).

Model: an MLP noise predictor ``eps(x_t, t, y)`` with a sinusoidal time embedding
and a label embedding added before every residual block; the label is replaced by
a *null* label with probability ``label_dropout`` during training (as in
classifier-free guidance), which gives the unconditional encoder
:meth:`DigitsDiffusion.encode` used by latent-space filtering. Training loss:
``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, y) ||^2`` with
``t`` uniform (Ho et al. 2020). Sampling: DDPM ancestral reverse process with the
posterior variance ``beta~_t`` and the predicted ``x0`` clipped to [-1, 1].

Probes, on ``eval_samples`` class-balanced images that the model draws with a
generator fixed by the task seed (so they measure the *model*, not the possibly
filtered pool), in the feature space of a *frozen evaluator*: an MLP classifier
trained once at ``setup`` on the real training digits (deterministic, never
updated):

* ``fid`` -- Fréchet distance between evaluator features of generated and of
  held-out real digits (FID-style; lower is better);
* ``class_accuracy`` -- share of generated digits the evaluator assigns to the
  label they were generated for;
* ``effective_rank`` -- effective rank (Roy & Vetterli) of the generated features;
* ``ole`` -- the Orthogonal Low-rank Embedding objective (Lezama et al. 2018) of the
  generated features grouped by label, :func:`ole_objective` (lower: class
  subspaces closer to low-rank and mutually orthogonal);
* ``heldout_loss`` -- the denoising loss on held-out real digits with fixed
  ``(t, eps)`` draws (a likelihood-like fit of real data).

Pools hold ``x`` float32 ``[N, 64]`` and ``y`` int64 ``[N]``. Step outputs:
``loss`` and ``features`` (the denoiser's last hidden layer ``[B, hidden]``).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.capabilities import FrozenFeatures, LatentEncoder, Sampler, StepFeatures
from collapsekit.errors import CollapsekitError
from collapsekit.plugins.probes import effective_rank
from collapsekit.plugins.tasks.digits import check_split, load_digit_images
from collapsekit.plugins.tasks.experts import ExpertData, RealDataCorrector, RealDataVerifier, spare_indices
from collapsekit.pool import REAL, Pool
from collapsekit.seeds import derive_seed
from collapsekit.task import Task
from ._bench import CHEAP_SEEDS, DETECTOR_VARIANTS, SELECTION_CONTROLS, VERIFIER_VARIANTS

NUM_CLASSES = 10
DIM = 64
SCHEDULES = ("cosine", "linear")


@lru_cache(maxsize=1)
def load_digit_vectors() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits as float32 vectors [N, 64] in [-1, 1] and int64 labels [N]."""
    images, labels = load_digit_images()
    return (images.reshape(len(images), DIM) / 8.0 - 1.0).astype(np.float32), labels


# -- pure functions ------------------------------------------------------------------------------
def beta_schedule(timesteps: int, kind: str = "cosine") -> torch.Tensor:
    """Noise schedule ``beta_t`` (float64, ``[timesteps]``).

    ``cosine`` (Nichol & Dhariwal 2021): ``abar(t) = f(t) / f(0)`` with
    ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2``, ``s = 0.008`` and
    ``beta_t = min(1 - abar(t + 1) / abar(t), 0.999)``. ``linear`` (Ho et al. 2020):
    from ``1e-4`` to ``0.02`` for ``T = 1000``, both scaled by ``1000 / T``.
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if kind == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; choose from {', '.join(SCHEDULES)}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]``, ``w_k = 10000^(-k / (dim/2))``, of ``t`` [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance of Gaussians fitted to ``a`` [N, D] and ``b`` [M, D] (as in FID).

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})`` with unbiased
    covariances (denominator N - 1), computed in float64 through symmetric eigendecompositions.
    """
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs [N, D] and [M, D] with N, M >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root)


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


# -- models --------------------------------------------------------------------------------------
class Denoiser(nn.Module):
    """Class-conditional noise predictor ``eps(x_t, t, y)`` for ``dim``-dimensional (flattened) images.

    ``h = W_in x``; per block ``h = h + W_k silu(h + c)`` with ``c = time(t) + label(y)``;
    output ``W_out silu(h)``. Label ``num_classes`` is the null (unconditional) label.
    """

    def __init__(self, hidden: int = 256, depth: int = 2, time_dim: int = 64,
                 num_classes: int = NUM_CLASSES, dim: int = DIM) -> None:
        super().__init__()
        self.time_dim, self.num_classes = time_dim, num_classes
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps prediction [B, dim], last hidden layer [B, hidden])``."""
        c = self.time(timestep_embedding(t, self.time_dim)) + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + c))
        return self.out(F.silu(h)), h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, t, y)[0]


class Evaluator(nn.Module):
    """Frozen MLP classifier ``64 -> hidden -> hidden -> 10`` whose last hidden layer gives the features."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, 10], features [B, hidden])``."""
        h = self.body(x)
        return self.head(h), h


@lru_cache(maxsize=8)
def train_evaluator(seed: int, train_size: int, hidden: int, steps: int) -> Evaluator:
    """The frozen evaluator of the split ``seed``: full-batch AdamW on the real training digits
    with light Gaussian pixel noise (std 0.1); deterministic for fixed arguments; cached."""
    x_all, y_all = load_digit_vectors()
    train = np.random.default_rng(seed).permutation(len(y_all))[:train_size]
    x, y = torch.as_tensor(x_all[train]), torch.as_tensor(y_all[train])
    generator = torch.Generator().manual_seed(derive_seed(seed, 0, "digits-diffusion/evaluator-noise"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, "digits-diffusion/evaluator-init"))
        model = Evaluator(hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
        loss = F.cross_entropy(model(noisy)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _ArrayBatches(torch.utils.data.Dataset):
    """Dataset whose item is a whole batch: ``ds[list_of_indices]`` -> dict of tensors (no collation)."""

    def __init__(self, pool: Pool) -> None:
        self.x = torch.from_numpy(np.array(pool.arrays["x"], dtype=np.float32))
        self.y = torch.from_numpy(np.array(pool.arrays["y"], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index)
        return {"x": self.x[index], "y": self.y[index]}


# -- task ----------------------------------------------------------------------------------------
class DigitsDiffusion(Task, Sampler, StepFeatures, LatentEncoder, FrozenFeatures, RealDataVerifier,
                      RealDataCorrector):
    """Class-conditional DDPM on 8x8 digits, trained generation after generation on its own samples.

    Args:
        train_size: real training digits (drawn from the 1797 by the run's data seed).
        heldout_size: held-out real digits for the probes (disjoint from training).
        timesteps: diffusion steps ``T``.
        schedule: ``cosine`` or ``linear`` beta schedule.
        hidden, depth, time_dim: denoiser width, residual blocks, time-embedding size.
        label_dropout: probability of training on the null label (gives the unconditional encoder).
        encode_t: timestep at which :meth:`encode` reads the denoiser's hidden layer.
        eval_samples: generated digits per probe evaluation (class-balanced).
        evaluator_hidden, evaluator_steps: size and full-batch training steps of the frozen evaluator.
        batch_size, lr, weight_decay: AdamW training settings.
        eval_batch_size: batch size of sampling, encoding and probes.
    """

    name: ClassVar[str] = "digits-diffusion"
    pool_keys: ClassVar[tuple[str, ...]] = ("x", "y")
    higher_is_better: ClassVar[dict[str, bool]] = {
        "fid": False, "class_accuracy": True, "effective_rank": True, "ole": False, "heldout_loss": False}
    headline: ClassVar[tuple[str, ...]] = ("fid", "class_accuracy", "ole", "effective_rank")
    bench_methods: ClassVar[tuple[str, ...]] = (
        "baseline", "accumulate", "accumulate-subsample", "accumulate-subsample+latent-filter",
        "accumulate-subsample+latent-filter-random", "verifier-filter", "verifier-filter-random", "self-correct",
        "detector-reweight", "detector-reweight-random")
    #: the controls of LSF, the verifier and the detector: the same plugins keeping the same share at random
    bench_variants: ClassVar[dict[str, dict]] = {
        "latent-filter-random": {"plugin": "latent-filter", "init_args": {"scorer": "random"}},
        "verifier-filter-random": VERIFIER_VARIANTS["verifier-filter-random"], **DETECTOR_VARIANTS}
    #: RESULTS.md also compares each with its control, paired by seed
    bench_controls: ClassVar[dict[str, str]] = {
        "accumulate-subsample+latent-filter": "accumulate-subsample+latent-filter-random",
        "verifier-filter": "verifier-filter-random", "detector-reweight": "detector-reweight-random"}
    #: pool keys of the input and of the class label (read by label-aware plugins such as latent-filter)
    input_key: ClassVar[str] = "x"
    label_key: ClassVar[str] = "y"
    num_classes: ClassVar[int] = NUM_CLASSES

    def __init__(self, train_size: int = 1000, heldout_size: int = 500, timesteps: int = 100,
                 schedule: str = "cosine", hidden: int = 256, depth: int = 2, time_dim: int = 64,
                 label_dropout: float = 0.1, encode_t: int = 10, eval_samples: int = 500,
                 evaluator_hidden: int = 64, evaluator_steps: int = 200, batch_size: int = 128,
                 lr: float = 2e-3, weight_decay: float = 0.0, eval_batch_size: int = 2048) -> None:
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        check_split(train_size, heldout_size)
        self.betas = beta_schedule(timesteps, schedule)
        if min(hidden, depth, time_dim, evaluator_hidden, evaluator_steps, eval_samples) < 1:
            raise ValueError("hidden, depth, time_dim, evaluator_hidden, evaluator_steps and eval_samples "
                             "must be >= 1")
        if eval_samples < NUM_CLASSES:
            raise ValueError(f"eval_samples must be >= {NUM_CLASSES} (one per class), got {eval_samples}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if not 0 <= encode_t < timesteps:
            raise ValueError(f"encode_t must be in [0, timesteps={timesteps}), got {encode_t}")
        self.train_size, self.heldout_size = train_size, heldout_size
        self.timesteps, self.schedule = timesteps, schedule
        self.hidden, self.depth, self.time_dim = hidden, depth, time_dim
        self.label_dropout, self.encode_t = float(label_dropout), int(encode_t)
        self.eval_samples = eval_samples
        self.evaluator_hidden, self.evaluator_steps = evaluator_hidden, evaluator_steps
        self.eval_batch_size = eval_batch_size
        alphas = 1.0 - self.betas
        self.abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        # posterior q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, var)
        self.post_var = self.betas * (1 - abar_prev) / (1 - self.abar)
        self.post_c0 = self.betas * abar_prev.sqrt() / (1 - self.abar)
        self.post_ct = (1 - abar_prev) * alphas.sqrt() / (1 - self.abar)

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"train_size": 200, "heldout_size": 100, "timesteps": 20, "hidden": 32, "depth": 1,
                           "time_dim": 16, "eval_samples": 100, "evaluator_steps": 60, "batch_size": 64},
                  "trainer": {"max_steps": 40}, "generations": 2, "variants": bench_variants},
        "cpu": {"task": {"train_size": 1000, "heldout_size": 500, "timesteps": 100, "hidden": 256,
                         "depth": 2},
                "trainer": {"max_steps": 1000}, "generations": 5, "variants": bench_variants,
                "seeds": CHEAP_SEEDS},
        "gpu": {"task": {"train_size": 1297, "heldout_size": 500, "timesteps": 200, "hidden": 512,
                         "depth": 4, "eval_samples": 2000, "evaluator_steps": 600, "batch_size": 256},
                "trainer": {"max_steps": 10000}, "generations": 10, "variants": bench_variants},
    }
    """Run settings per bench preset:
    ``smoke`` (tests, seconds), ``cpu`` (about 24 s per method-seed on one core) and
    ``gpu``."""

    # -- data -------------------------------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Split the digits by ``seed`` (train first, then held-out) and train the frozen evaluator."""
        super().setup(seed)
        x, y = load_digit_vectors()
        order = np.random.default_rng(seed).permutation(len(y))
        train, held = order[:self.train_size], order[self.train_size:self.train_size + self.heldout_size]
        self.train_index, self.heldout_index = train, held
        self.train_x, self.train_y = x[train], y[train]
        self.heldout_x, self.heldout_y = x[held], y[held]
        self.evaluator = train_evaluator(int(seed), self.train_size, self.evaluator_hidden, self.evaluator_steps)
        self.heldout_features = self.features(self.heldout_x)

    def _require_setup(self) -> None:
        if self.seed is None:
            raise CollapsekitError("digits-diffusion: call task.setup(seed) before using its data")

    def real_pool(self) -> Pool:
        self._require_setup()
        return Pool.fresh({"x": self.train_x, "y": self.train_y}, REAL)

    def dataloader(self, pool: Pool, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
        """Shuffled batches sliced straight from the pool's arrays (no per-item collation)."""
        if len(pool) == 0:
            raise CollapsekitError(f"task {self.name!r}: the training pool is empty; nothing to train on")
        dataset = _ArrayBatches(pool)
        generator = torch.Generator().manual_seed(seed)
        order = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
                 else torch.utils.data.SequentialSampler(dataset))
        sampler = torch.utils.data.BatchSampler(order, batch_size=min(self.batch_size, len(pool)), drop_last=False)
        return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return Denoiser(self.hidden, self.depth, self.time_dim)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
        abar = self.abar.to(x0.device)[t].to(x0.dtype)[:, None]
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def step(self, model: nn.Module, batch: Mapping[str, torch.Tensor], requirements: frozenset[str]) -> dict:
        """Denoising loss at a uniform timestep; labels dropped to null with ``label_dropout`` (global RNG)."""
        x0, y = batch["x"].float(), batch["y"].long()
        t = torch.randint(0, self.timesteps, (len(x0),)).to(x0.device)
        eps = torch.randn(x0.shape).to(x0.device)
        drop = (torch.rand(len(y)) < self.label_dropout).to(y.device)
        y = torch.where(drop, torch.full_like(y, NUM_CLASSES), y)
        pred, hidden = model.forward_features(self.noised(x0, t, eps), t, y)
        return {"loss": F.mse_loss(pred, eps), "features": hidden}

    # -- synthesis ----------------------------------------------------------------------------------
    @staticmethod
    def balanced_labels(n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` labels, each class ``n // 10`` or ``n // 10 + 1`` times, in an order drawn from ``generator``."""
        return (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=generator)]

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, generator: torch.Generator, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, labels: np.ndarray | None = None,
               **_: Any) -> dict[str, np.ndarray]:
        """``n`` digits by the DDPM reverse process, all randomness from ``generator``.

        Labels are class-balanced (or ``labels``). ``temperature`` scales the initial and
        per-step noise (1 = the model's distribution). ``top_k``/``top_p`` do not apply
        to a diffusion model and must stay off.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k or top_p < 1.0:
            raise ValueError("digits-diffusion samples by a diffusion reverse process: top_k and top_p do not "
                             "apply; leave them at 0 and 1")
        y = self.balanced_labels(n, generator) if labels is None else torch.as_tensor(np.asarray(labels)).long()
        if len(y) != n:
            raise ValueError(f"labels holds {len(y)} items, expected n = {n}")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = temperature * torch.randn((n, DIM), generator=generator)
        out = []
        for start in range(0, n, self.eval_batch_size):
            xb, yb = x[start:start + self.eval_batch_size], y[start:start + self.eval_batch_size]
            out.append(self._reverse(model, xb, yb, generator, temperature, device))
        model.train(was_training)
        samples = torch.cat(out) if out else torch.zeros((0, DIM))
        return {"x": samples.numpy().astype(np.float32), "y": y.numpy().astype(np.int64)}

    def _reverse(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                 temperature: float, device: torch.device) -> torch.Tensor:
        yd = y.to(device)
        for t in range(self.timesteps - 1, -1, -1):
            tt = torch.full((len(x),), t, dtype=torch.long, device=device)
            eps = model(x.to(device), tt, yd).double().cpu()
            abar = self.abar[t]
            x0 = ((x.double() - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            mean = self.post_c0[t] * x0 + self.post_ct[t] * x.double()
            if t > 0:
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
                mean = mean + temperature * self.post_var[t].sqrt() * noise
            x = mean.float()
        return x.clamp(-1, 1)

    # -- latents ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, model: nn.Module, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model's latent of images ``x`` [N, 64]: its last hidden layer at timestep ``encode_t``
        for the noise-free ``sqrt(abar_t) x`` and the null label (deterministic), ``[N, hidden]``."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = torch.from_numpy(np.array(x, dtype=np.float32))
        scale = float(self.abar[self.encode_t].sqrt())
        out = []
        for start in range(0, len(x), self.eval_batch_size):
            xb = x[start:start + self.eval_batch_size].to(device)
            t = torch.full((len(xb),), self.encode_t, dtype=torch.long, device=device)
            y = torch.full((len(xb),), NUM_CLASSES, dtype=torch.long, device=device)
            out.append(model.forward_features(scale * xb, t, y)[1].float().cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, self.hidden))

    @torch.no_grad()
    def features(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frozen evaluator features of images ``x`` [N, 64] -> ``[N, evaluator_hidden]`` (the probes' space)."""
        return self._evaluate_images(x)[1]

    @torch.no_grad()
    def _evaluate_images(self, x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_setup()
        x = torch.from_numpy(np.array(x, dtype=np.float32))
        logits, feats = [], []
        for start in range(0, len(x), self.eval_batch_size):
            lo, fe = self.evaluator(x[start:start + self.eval_batch_size])
            logits.append(lo)
            feats.append(fe)
        if not logits:
            return torch.zeros((0, NUM_CLASSES)), torch.zeros((0, self.evaluator_hidden))
        return torch.cat(logits), torch.cat(feats)

    # -- experts (verifier, corrector) ------------------------------------------------------------
    def expert_data(self) -> ExpertData:
        """Real digits for the verifier (the digits neither in training nor held out) and the corrector
        (the training digits), as ``[N, 64]`` vectors in [-1, 1]."""
        self._require_setup()
        x, y = load_digit_vectors()
        spare = spare_indices(len(y), self.train_index, self.heldout_index)
        return ExpertData(self.train_x, self.train_y, x[spare], y[spare], self.input_key, self.label_key,
                          NUM_CLASSES, int(self.seed))

    # -- probes -----------------------------------------------------------------------------------
    def _eval_generator(self, role: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(int(self.seed), 0, f"digits-diffusion/probe{role}"))

    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> float:
        """Mean denoising loss on the held-out digits with ``(t, eps)`` fixed by the task seed."""
        self._require_setup()
        g = self._eval_generator(2)
        x0 = torch.as_tensor(self.heldout_x)
        t = torch.randint(0, self.timesteps, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pred = model(self.noised(x0, t, eps).to(device), t.to(device),
                     torch.as_tensor(self.heldout_y).to(device)).float().cpu()
        model.train(was_training)
        return float(F.mse_loss(pred, eps))

    def evaluate(self, model: nn.Module, samples: Pool | None) -> dict[str, float]:
        """The probes of the module docstring, on fresh model samples (``samples`` is not used:
        a filtered pool would flatter the model)."""
        self._require_setup()
        drawn = self.sample(model, self.eval_samples, self._eval_generator(1))
        logits, feats = self._evaluate_images(drawn["x"])
        labels = torch.as_tensor(drawn["y"])
        return {
            "fid": frechet_distance(feats, self.heldout_features),
            "class_accuracy": float((logits.argmax(1) == labels).double().mean()),
            "effective_rank": effective_rank(feats),
            "ole": ole_objective(feats, labels),
            "heldout_loss": self.heldout_loss(model),
        }

    def reference_metrics(self) -> dict[str, float]:
        """The probes on real digits (training vs held-out): the floor a perfect model would reach."""
        self._require_setup()
        logits, feats = self._evaluate_images(self.train_x)
        y = torch.as_tensor(self.train_y)
        return {"fid": frechet_distance(feats, self.heldout_features),
                "class_accuracy": float((logits.argmax(1) == y).double().mean()),
                "effective_rank": effective_rank(feats), "ole": ole_objective(feats, y)}

