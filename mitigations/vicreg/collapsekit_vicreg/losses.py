"""VICReg loss terms (Bardes, Ponce & LeCun, ICLR 2022) as plain torch functions.

For a batch of embeddings ``Z`` [N, D] (rows = samples):

* variance  ``v(Z) = 1/D * sum_j relu(gamma - sqrt(Var(Z[:, j]) + eps))``
  (unbiased variance, denominator N-1; gamma = 1);
* covariance ``c(Z) = 1/D * sum_{j != k} C(Z)[j, k]^2`` with
  ``C(Z) = (Z - mean)^T (Z - mean) / (N - 1)``;
* invariance between two views ``Z_a``, ``Z_b``.

Two published variants differ only in scale (``variant=``):

* ``"official"`` (default) -- facebookresearch/vicreg ``main_vicreg.py``:
  invariance ``F.mse_loss(Z_a, Z_b)`` (mean over N*D entries), variance
  ``(v(Z_a) + v(Z_b)) / 2``, covariance ``c(Z_a) + c(Z_b)``. The 25/25/1
  coefficients were tuned with this code.
* ``"paper"`` -- Eq. (1)-(6) of the paper: invariance ``1/N sum_i ||z_a,i - z_b,i||^2``
  (= D times the official one), variance ``v(Z_a) + v(Z_b)``, covariance ``c(Z_a) + c(Z_b)``.

Inputs in float16/bfloat16 are computed (and returned) in float32; other
floating dtypes are kept. No Lightning, no collapsekit import.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VARIANTS = ("official", "paper")


def _embeddings(z: torch.Tensor, name: str) -> torch.Tensor:
    """Validate one batch of embeddings [N >= 2, D] and upcast half precision to float32."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(z.shape)}; flatten leading dimensions "
                         f"first, e.g. z.reshape(-1, z.shape[-1])")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if z.shape[0] < 2:
        raise ValueError(f"{name} has N={z.shape[0]} sample(s); VICReg's variance and covariance are batch "
                         f"statistics with denominator N-1 and need at least 2 samples")
    if z.shape[1] < 1:
        raise ValueError(f"{name} has D=0 dimensions")
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def variance_loss(z: torch.Tensor, eps: float = 1e-4, gamma: float = 1.0) -> torch.Tensor:
    """``v(Z) = mean_j relu(gamma - sqrt(Var_j(Z) + eps))`` for ``z`` [N >= 2, D] (unbiased variance)."""
    z = _embeddings(z, "z")
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(gamma - std).mean()


def covariance_matrix(z: torch.Tensor) -> torch.Tensor:
    """Sample covariance [D, D] of ``z`` [N >= 2, D] with denominator N-1."""
    z = _embeddings(z, "z")
    centred = z - z.mean(dim=0, keepdim=True)
    return centred.T @ centred / (z.shape[0] - 1)


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """``c(Z) = 1/D * sum_{j != k} C(Z)[j, k]^2`` for ``z`` [N >= 2, D]."""
    cov = covariance_matrix(z)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return off.pow(2).sum() / cov.shape[0]


def invariance_loss(z_a: torch.Tensor, z_b: torch.Tensor, variant: str = "official") -> torch.Tensor:
    """Mean squared distance of paired rows: over N*D entries (official) or N rows (paper)."""
    _variant(variant)
    if not isinstance(z_a, torch.Tensor) or not isinstance(z_b, torch.Tensor) or z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must be tensors of the same shape [N, D], got "
                         f"{tuple(getattr(z_a, 'shape', ()))} and {tuple(getattr(z_b, 'shape', ()))}")
    z_a, z_b = _embeddings(z_a, "z_a"), _embeddings(z_b, "z_b")
    mse = F.mse_loss(z_a, z_b)
    return mse if variant == "official" else mse * z_a.shape[1]


def vicreg_terms(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                 cov_coeff: float = 1.0, eps: float = 1e-4, variant: str = "official",
                 gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """The three weighted VICReg terms ``{"invariance", "variance", "covariance"}``; they sum to :func:`vicreg_loss`."""
    _variant(variant)
    invariance = invariance_loss(z_a, z_b, variant)
    var = variance_loss(z_a, eps, gamma) + variance_loss(z_b, eps, gamma)
    if variant == "official":
        var = var / 2
    cov = covariance_loss(z_a) + covariance_loss(z_b)
    return {"invariance": sim_coeff * invariance, "variance": std_coeff * var, "covariance": cov_coeff * cov}


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, eps: float = 1e-4, variant: str = "official",
                gamma: float = 1.0) -> torch.Tensor:
    """VICReg loss of two views ``z_a``, ``z_b`` [N >= 2, D]; see the module docstring for the variants.

    ``sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance`` (paper: 25, 25, 1).
    """
    return sum(vicreg_terms(z_a, z_b, sim_coeff, std_coeff, cov_coeff, eps, variant, gamma).values())


def variance_covariance_terms(z: torch.Tensor, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                              eps: float = 1e-4, gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """Single-view regularizer terms ``{"variance": std_coeff * v(Z), "covariance": cov_coeff * c(Z)}``."""
    return {"variance": std_coeff * variance_loss(z, eps, gamma), "covariance": cov_coeff * covariance_loss(z)}


def variance_covariance_loss(z: torch.Tensor, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                             eps: float = 1e-4, gamma: float = 1.0) -> torch.Tensor:
    """Single-view VICReg regularizer (no invariance): ``std_coeff * v(Z) + cov_coeff * c(Z)``.

    The same for both variants (they differ only in how two views are averaged).
    Usable on any layer's representations [N, D] of an ordinary supervised batch.
    """
    return sum(variance_covariance_terms(z, std_coeff, cov_coeff, eps, gamma).values())
