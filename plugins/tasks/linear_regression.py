"""``linear-regression``: ordinary least squares relabelled by its own predictions (analytic task).

The setting of *Model Collapse Demystified* (Dohmatob, Feng, Kempe 2024) and of
Gerstgrasser et al. 2024 ("Is Model Collapse Inevitable?"): a **fixed design**
``X`` (``T x d`` rows drawn once from ``N(0, Sigma)``, ``T >= d + 2``) with real
labels ``y = X w* + noise``. Every generation fits OLS on its pool; its synthetic
data is the same design relabelled by the fitted model, ``y = X w_hat + noise``
(noise ``N(0, sigma^2)`` as for the real labels).

The metric is the **excess** test error ``||w_hat - w*||^2_Sigma`` (the test
error on fresh real data minus the noise floor ``sigma^2``), computed exactly
from the known ``w*`` and ``Sigma``. With the real-data fit as ``n = 1``
(collapsekit's generation ``n - 1``) its expectation over noise and design is
``sigma^2 d / (T - d - 1) * n`` under *replace* and
``sigma^2 d / (T - d - 1) * sum_{i<=n} 1/i^2`` under *accumulate*
(see ``collapsekit_accumulate.replace_excess_error`` / ``accumulate_excess_error``).

The fit is exact and still runs through the engine's Lightning ``Trainer``: the
data loader yields the whole pool as one batch and the training step sets the
weights to ``torch.linalg.lstsq`` of that batch before computing the squared
loss, whose gradient vanishes at the OLS solution, so the optimizer step leaves
it there. One step per generation suffices (``trainer.max_steps: 1``).

``replicates`` independent problems (own ``X``, ``w*`` and noise) are solved
side by side; metrics are their mean. Pools hold ``x`` ``[N, R, d]`` and ``y``
``[N, R]`` (``R = replicates``): item ``i`` is design row ``i`` of every replicate.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from collapsekit.capabilities import ItemWeights
from collapsekit.plugins.tasks.exact_fit import ExactFitTask, check_int
from collapsekit.pool import REAL, Pool
from ._bench import CHEAP_SEEDS, MIX_CONTROLS, MIX_VARIANTS


class ReplicatedLinear(nn.Module):
    """``R`` independent linear maps without bias: ``y[:, r] = x[:, r] @ weight[r]``."""

    def __init__(self, replicates: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(replicates, dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nrd,rd->nr", x.to(self.weight.dtype), self.weight)

    @torch.no_grad()
    def fit_(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Set every replicate's weights to the least-squares solution on ``x [N, R, d]``, ``y [N, R]``; with
        per-item ``weight [N]`` the weighted least squares ``argmin_w sum_i w_i (y_i - x_i w)^2``."""
        a = x.to(torch.float64).transpose(0, 1)                       # [R, N, d]
        b = y.to(torch.float64).transpose(0, 1).unsqueeze(-1)         # [R, N, 1]
        if weight is not None:                                        # rows scaled by sqrt(w_i)
            root = weight.to(torch.float64).sqrt()[None, :, None]
            a, b = a * root, b * root
        driver = "gelsd" if a.device.type == "cpu" else None      # CUDA offers only "gels" (full rank)
        self.weight.copy_(torch.linalg.lstsq(a, b, driver=driver).solution.squeeze(-1))


def excess_error(w_hat: np.ndarray, w_star: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """Per-replicate ``(w_hat - w*)^T Sigma (w_hat - w*)`` for diagonal ``Sigma = diag(eigenvalues)``."""
    diff = np.asarray(w_hat, dtype=np.float64) - np.asarray(w_star, dtype=np.float64)
    return (diff ** 2 * np.asarray(eigenvalues, dtype=np.float64)).sum(-1)


class LinearRegression(ExactFitTask, ItemWeights):
    """Self-consuming OLS on a fixed design: excess test error against the closed forms.

    Args:
        dim: number of features ``d``.
        train_size: design rows ``T`` (``>= dim + 2`` so that the closed forms hold).
        noise_std: label noise ``sigma`` of real and synthetic labels.
        replicates: independent problems solved side by side (metrics are their mean).
        spectrum_decay: feature covariance ``Sigma = diag(k^-decay)``, ``k = 1..d`` (0: identity);
            the closed forms do not depend on it.
        lr: learning rate of the (no-op at the optimum) SGD step after the exact fit.
    """

    name: ClassVar[str] = "linear-regression"
    pool_keys: ClassVar[tuple[str, ...]] = ("x", "y")
    headline: ClassVar[tuple[str, ...]] = ("excess_error", "excess_error_normalized", "test_error")
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline", "accumulate", "accumulate-subsample", "fresh-mix",
                                                "fresh-mix-golden")
    #: fresh-mix with He et al.'s golden-ratio loss weight of the real data, compared with plain 1:1 fresh-mix
    bench_variants: ClassVar[dict[str, dict]] = dict(MIX_VARIANTS)
    bench_controls: ClassVar[dict[str, str]] = dict(MIX_CONTROLS)
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "excess_error": False, "excess_error_normalized": False, "test_error": False}

    def __init__(self, dim: int = 8, train_size: int = 32, noise_std: float = 1.0, replicates: int = 1,
                 spectrum_decay: float = 0.0, lr: float = 0.1) -> None:
        check_int("linear-regression", "dim", dim)
        check_int("linear-regression", "train_size", train_size, dim + 2, f"dim + 2 = {dim + 2}",
                  " (the closed forms need T >= d + 2)")
        if not noise_std > 0:
            raise ValueError(f"linear-regression: noise_std must be > 0, got {noise_std!r}")
        check_int("linear-regression", "replicates", replicates)
        super().__init__(batch_size=train_size, lr=lr)
        self.dim, self.train_size, self.noise_std = dim, train_size, float(noise_std)
        self.replicates, self.spectrum_decay = replicates, float(spectrum_decay)
        self.eigenvalues = np.arange(1, dim + 1, dtype=np.float64) ** -self.spectrum_decay

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"dim": 4, "train_size": 16, "replicates": 16}, "trainer": {"max_steps": 1},
                  "generations": 3, "variants": bench_variants},
        "cpu": {"task": {"dim": 8, "train_size": 32, "replicates": 256}, "trainer": {"max_steps": 1},
                "generations": 10, "seeds": CHEAP_SEEDS,
                "variants": bench_variants},
        "gpu": {"task": {"dim": 32, "train_size": 128, "replicates": 2048}, "trainer": {"max_steps": 1},
                "generations": 20, "variants": bench_variants},
    }
    """Run settings per bench preset:
    ``smoke`` (tests), ``cpu`` (under a second per method-seed) and ``gpu`` (larger, more
    replicates)."""

    @property
    def unit(self) -> float:
        """``sigma^2 d / (T - d - 1)``: the expected excess error of the real-data fit."""
        return self.noise_std ** 2 * self.dim / (self.train_size - self.dim - 1)

    # -- data ---------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Draw design ``x [T, R, d]``, truth ``w_star [R, d]`` and real labels ``y [T, R]`` from ``seed``."""
        super().setup(seed)
        rng = np.random.default_rng([seed, 7])
        t, r, d = self.train_size, self.replicates, self.dim
        self.x = rng.standard_normal((t, r, d)) * np.sqrt(self.eigenvalues)
        self.w_star = rng.standard_normal((r, d)) / np.sqrt(d)
        self.y = np.einsum("nrd,rd->nr", self.x, self.w_star) + self.noise_std * rng.standard_normal((t, r))

    def real_pool(self) -> Pool:
        self.require_setup()
        return Pool.fresh({"x": self.x, "y": self.y}, REAL)

    # -- model --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return ReplicatedLinear(self.replicates, self.dim)

    def step(self, model: nn.Module, batch: Mapping[str, torch.Tensor], requirements: frozenset[str]) -> dict:
        """Fit OLS exactly on the batch (in training mode; weighted least squares when the batch has per-item
        ``"weight"``), then return the mean (weighted) squared error."""
        x, y = batch["x"].to(torch.float64), batch["y"].to(torch.float64)
        weight = batch.get("weight")
        if model.training:
            model.fit_(x, y, weight)
        pred = model(x)
        loss = ((pred - y) ** 2).mean() if weight is None else \
            (weight.to(torch.float64) * ((pred - y) ** 2).mean(-1)).mean()
        return {"loss": loss, "logits": pred, "labels": y}

    # -- synthesis and probes ----------------------------------------------
    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, generator: torch.Generator, **options: Any) -> dict[str, np.ndarray]:
        """The fixed design (row ``i % T`` for item ``i``) relabelled by ``model`` plus fresh noise."""
        self.require_setup()
        x = self.x[np.arange(n) % self.train_size]
        noise = torch.randn((n, self.replicates), generator=generator, dtype=torch.float64) * self.noise_std
        y = model(torch.from_numpy(x).to(model.weight.device)).cpu() + noise
        return {"x": x, "y": y.numpy()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Pool | None) -> dict[str, float]:
        """``excess_error`` = mean ``||w_hat - w*||^2_Sigma``; ``test_error`` adds ``sigma^2``;
        ``excess_error_normalized`` divides by ``sigma^2 d / (T - d - 1)``."""
        self.require_setup()
        err = float(excess_error(model.weight.detach().cpu().numpy(), self.w_star, self.eigenvalues).mean())
        return {"excess_error": err, "excess_error_normalized": err / self.unit,
                "test_error": err + self.noise_std ** 2}
