"""``gaussian``: a multivariate Gaussian fitted by maximum likelihood, sampled, refitted (analytic task).

The simplest self-consuming loop (Shumailov et al. 2024; Gerstgrasser et al. 2024):
generation 0 fits the mean and covariance of ``N(mu*, Sigma*)`` by MLE on
``train_size`` real samples; every later generation fits its pool, and its
synthetic data are samples of its fitted Gaussian. Under *replace* the
covariance shrinks in expectation, ``E[Sigma_hat_n] = c^n Sigma*`` with
``c = (N - 1) / N`` (the MLE divides by ``N``), and the mean drifts as a random
walk: ``E||mu_hat_n - mu*||^2 = tr(Sigma*) / N * sum_{k<n} c^k`` (``n = 1`` is
the real-data fit, collapsekit's generation 0; ``N`` = pool size =
``samples_per_generation``); see :func:`replace_mean_error` and
:func:`replace_variance_retained`.

The fit is exact and runs through the engine's Lightning ``Trainer``: the
loader yields the whole pool as one batch and the training step sets the
parameters to the MLE before computing the negative log-likelihood, whose
gradient vanishes there, so the optimizer step leaves them (``max_steps: 1``).

Metrics (mean over ``replicates`` independent problems):

* ``kl`` -- ``KL(N(mu*, Sigma*) || N(mu_hat, Sigma_hat))`` in nats;
* ``mean_sq_error`` -- ``||mu_hat - mu*||^2``;
* ``cov_frobenius_error`` -- ``||Sigma_hat - Sigma*||_F``;
* ``variance_retained`` -- ``tr(Sigma_hat) / tr(Sigma*)`` (1 is the truth; collapse drives it to 0).

Pools hold ``x`` ``[N, R, d]`` (``R = replicates``).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from collapsekit.capabilities import ItemWeights
from collapsekit.errors import CollapsekitError
from collapsekit.plugins.tasks.exact_fit import ExactFitTask, check_int
from collapsekit.pool import REAL, Pool
from ._bench import CHEAP_SEEDS, MIX_CONTROLS, MIX_VARIANTS


def replace_variance_retained(n_samples: int, generation: int) -> float:
    """Expected ``tr(Sigma_hat) / tr(Sigma*)`` of 0-based ``generation`` under replace: ``c^(generation+1)``,
    ``c = (N - 1) / N``, with ``N = n_samples`` items in every pool (real and synthetic)."""
    if n_samples < 2 or generation < 0:
        raise ValueError(f"need n_samples >= 2 and generation >= 0, got {n_samples}, {generation}")
    return ((n_samples - 1) / n_samples) ** (generation + 1)


def replace_mean_error(trace: float, n_samples: int, generation: int) -> float:
    """Expected ``||mu_hat - mu*||^2`` of 0-based ``generation`` under replace:
    ``tr(Sigma*) / N * sum_{k=0}^{generation} c^k``, ``c = (N - 1) / N``."""
    if n_samples < 2 or generation < 0:
        raise ValueError(f"need n_samples >= 2 and generation >= 0, got {n_samples}, {generation}")
    c = (n_samples - 1) / n_samples
    return trace / n_samples * sum(c ** k for k in range(generation + 1))


def gaussian_kl(mu_p: np.ndarray, cov_p: np.ndarray, mu_q: np.ndarray, cov_q: np.ndarray) -> np.ndarray:
    """``KL(N(mu_p, cov_p) || N(mu_q, cov_q))`` over leading batch dimensions, float64."""
    mu_p, cov_p, mu_q, cov_q = (np.asarray(a, dtype=np.float64) for a in (mu_p, cov_p, mu_q, cov_q))
    d = mu_p.shape[-1]
    inv_q = np.linalg.inv(cov_q)
    diff = mu_q - mu_p
    trace = np.einsum("...ij,...ji->...", inv_q, cov_p)
    maha = np.einsum("...i,...ij,...j->...", diff, inv_q, diff)
    logdet = np.linalg.slogdet(cov_q)[1] - np.linalg.slogdet(cov_p)[1]
    return 0.5 * (trace + maha - d + logdet)


class GaussianModel(nn.Module):
    """``R`` independent Gaussians: ``mean [R, d]`` and lower Cholesky factor ``scale_tril [R, d, d]``."""

    def __init__(self, replicates: int, dim: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(replicates, dim, dtype=torch.float64))
        self.scale_tril = nn.Parameter(torch.eye(dim, dtype=torch.float64).repeat(replicates, 1, 1))

    def covariance(self) -> torch.Tensor:
        low = torch.tril(self.scale_tril)
        return low @ low.transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of ``x [N, R, d]`` under each replicate's Gaussian, ``[N, R]``."""
        low = torch.tril(self.scale_tril)
        z = torch.linalg.solve_triangular(low, (x.to(self.mean.dtype) - self.mean).unsqueeze(-1),
                                          upper=False).squeeze(-1)
        logdet = torch.log(torch.diagonal(low, dim1=-2, dim2=-1).abs()).sum(-1)
        return -0.5 * (z ** 2).sum(-1) - logdet - 0.5 * x.shape[-1] * math.log(2 * math.pi)

    @torch.no_grad()
    def fit_(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Set every replicate to the MLE (covariance divided by ``N``) of ``x [N, R, d]``; with per-item
        ``weight [N]`` the weighted MLE: ``mu = sum_i w_i x_i / sum_i w_i``, covariance
        ``sum_i w_i (x_i - mu)(x_i - mu)^T / sum_i w_i``."""
        x = x.to(torch.float64)
        w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device) if weight is None \
            else weight.to(torch.float64)
        w = w / w.sum()
        mean = torch.einsum("n,nri->ri", w, x) if weight is not None else x.mean(0)
        centred = x - mean
        if weight is None:
            cov = torch.einsum("nri,nrj->rij", centred, centred) / x.shape[0]
        else:
            cov = torch.einsum("n,nri,nrj->rij", w, centred, centred)
        low, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            raise CollapsekitError(
                f"gaussian: the MLE covariance of {x.shape[0]} items in {x.shape[-1]} dimensions is singular "
                "(the variance has collapsed or the pool has fewer than dim + 1 distinct items); "
                "use more samples per generation or fewer generations")
        self.mean.copy_(mean)
        self.scale_tril.copy_(low)


class Gaussian(ExactFitTask, ItemWeights):
    """Self-consuming Gaussian MLE: variance collapse and mean drift against the closed forms.

    Args:
        dim: dimension ``d``.
        train_size: real samples ``N`` (``>= dim + 1`` so that the MLE covariance is regular).
        replicates: independent problems (own ``mu*``, ``Sigma*``, data) side by side; metrics are their mean.
        condition: ``Sigma*`` has eigenvalues geometrically spaced in ``[1/sqrt(condition), sqrt(condition)]``
            and a random rotation (1: identity).
        lr: learning rate of the (no-op at the optimum) SGD step after the exact fit.
    """

    name: ClassVar[str] = "gaussian"
    pool_keys: ClassVar[tuple[str, ...]] = ("x",)
    headline: ClassVar[tuple[str, ...]] = ("kl", "mean_sq_error", "variance_retained")
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline", "accumulate", "accumulate-subsample", "fresh-mix",
                                                "fresh-mix-golden")
    #: fresh-mix with He et al.'s golden-ratio loss weight of the real data, compared with plain 1:1 fresh-mix
    bench_variants: ClassVar[dict[str, dict]] = dict(MIX_VARIANTS)
    bench_controls: ClassVar[dict[str, str]] = dict(MIX_CONTROLS)
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "kl": False, "mean_sq_error": False, "cov_frobenius_error": False, "variance_retained": True}

    def __init__(self, dim: int = 4, train_size: int = 64, replicates: int = 1, condition: float = 4.0,
                 lr: float = 0.1) -> None:
        check_int("gaussian", "dim", dim)
        check_int("gaussian", "train_size", train_size, dim + 1, f"dim + 1 = {dim + 1}",
                  " (else the MLE covariance is singular)")
        check_int("gaussian", "replicates", replicates)
        if not condition >= 1:
            raise ValueError(f"gaussian: condition must be >= 1, got {condition!r}")
        super().__init__(batch_size=train_size, lr=lr)
        self.dim, self.train_size, self.replicates = dim, train_size, replicates
        self.condition = float(condition)

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"dim": 2, "train_size": 16, "replicates": 16}, "trainer": {"max_steps": 1},
                  "generations": 3, "variants": bench_variants},
        "cpu": {"task": {"dim": 4, "train_size": 32, "replicates": 256}, "trainer": {"max_steps": 1},
                "generations": 10, "seeds": CHEAP_SEEDS,
                "variants": bench_variants},
        "gpu": {"task": {"dim": 16, "train_size": 128, "replicates": 2048}, "trainer": {"max_steps": 1},
                "generations": 20, "variants": bench_variants},
    }
    """Run settings per bench preset:
    ``smoke`` (tests), ``cpu`` (under a second per method-seed) and ``gpu`` (larger, more
    replicates)."""

    # -- data ---------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Draw ``true_mean [R, d]``, ``true_cov [R, d, d]`` and real samples ``x [N, R, d]`` from ``seed``."""
        super().setup(seed)
        rng = np.random.default_rng([seed, 11])
        r, d = self.replicates, self.dim
        eig = np.geomspace(self.condition ** -0.5, self.condition ** 0.5, d)
        q, _ = np.linalg.qr(rng.standard_normal((r, d, d)))
        self.true_mean = rng.standard_normal((r, d))
        self.true_cov = np.einsum("rij,j,rkj->rik", q, eig, q)
        low = np.linalg.cholesky(self.true_cov)
        z = rng.standard_normal((self.train_size, r, d))
        self.x = self.true_mean + np.einsum("rij,nrj->nri", low, z)

    def real_pool(self) -> Pool:
        self.require_setup()
        return Pool.fresh({"x": self.x}, REAL)

    # -- model --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return GaussianModel(self.replicates, self.dim)

    def step(self, model: nn.Module, batch: Mapping[str, torch.Tensor], requirements: frozenset[str]) -> dict:
        """Fit the MLE exactly on the batch (in training mode; the weighted MLE when the batch has per-item
        ``"weight"``), then return the mean (weighted) negative log-likelihood."""
        x = batch["x"].to(torch.float64)
        weight = batch.get("weight")
        if model.training:
            model.fit_(x, weight)
        if weight is None:
            return {"loss": -model(x).mean()}
        return {"loss": (weight.to(torch.float64) * -model(x).mean(-1)).mean()}

    # -- synthesis and probes ----------------------------------------------
    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, generator: torch.Generator, **options: Any) -> dict[str, np.ndarray]:
        """``n`` samples of every replicate's fitted Gaussian, ``x [n, R, d]``."""
        z = torch.randn((n, self.replicates, self.dim), generator=generator, dtype=torch.float64)
        x = model.mean + torch.einsum("rij,nrj->nri", torch.tril(model.scale_tril), z.to(model.mean.device))
        return {"x": x.cpu().numpy()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Pool | None) -> dict[str, float]:
        """``kl``, ``mean_sq_error``, ``cov_frobenius_error``, ``variance_retained`` (means over replicates)."""
        self.require_setup()
        mean = model.mean.detach().cpu().numpy()
        cov = model.covariance().detach().cpu().numpy()
        kl = gaussian_kl(self.true_mean, self.true_cov, mean, cov)
        return {
            "kl": float(kl.mean()),
            "mean_sq_error": float(((mean - self.true_mean) ** 2).sum(-1).mean()),
            "cov_frobenius_error": float(np.sqrt(((cov - self.true_cov) ** 2).sum((-1, -2))).mean()),
            "variance_retained": float((np.trace(cov, axis1=-2, axis2=-1)
                                        / np.trace(self.true_cov, axis1=-2, axis2=-1)).mean()),
        }
