"""Seq-VCR: sequential variance-covariance regularization (pure torch, no Lightning).

Arefin et al., "Seq-VCR: Preventing Collapse in Intermediate Transformer
Representations for Enhanced Reasoning", ICLR 2025, Eq. 3. For hidden states
``h`` [N, T, D] (N sequences of a batch, T positions, D features), ``C_t`` is
the covariance over the batch (denominator N - 1) at position ``t``::

    L = 1/(T·D) · Σ_t Σ_k [ var_coeff · relu(1 − sqrt(C_t[k,k] + eps))
                            + cov_coeff · Σ_{k'≠k} C_t[k,k']² ]
"""
from __future__ import annotations

import torch

__all__ = ["seqvcr_loss", "seqvcr_terms", "batch_covariance"]


def _check(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"seqvcr: h must be a tensor [N, T, D] (batch, positions, features), got {shape}")
    if not h.is_floating_point():
        raise ValueError(f"seqvcr: h must be a floating-point tensor, got {h.dtype}")
    if mask is None:
        if h.shape[0] < 2:
            raise ValueError(
                f"seqvcr: the covariance over the batch needs at least 2 sequences, got h of shape "
                f"{tuple(h.shape)}; use a batch size >= 2 (and drop a last batch of 1)")
        return None
    if mask.shape != h.shape[:2]:
        raise ValueError(f"seqvcr: mask must have shape [N, T] = {tuple(h.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(device=h.device, dtype=torch.bool)


def batch_covariance(h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position covariance over the batch.

    Returns ``(C, valid)``: ``C`` [T, D, D] with ``C[t]`` the covariance (denominator
    ``N_t - 1``) of the rows ``h[n, t]`` whose ``mask[n, t]`` is true (all rows when
    ``mask`` is None), and ``valid`` [T] bool, true where ``N_t >= 2``. Half-precision
    inputs are computed in float32.
    """
    mask = _check(h, mask)
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    if mask is None:
        x = h - h.mean(dim=0, keepdim=True)
        cov = torch.einsum("ntd,nte->tde", x, x) / (h.shape[0] - 1)
        return cov, torch.ones(h.shape[1], dtype=torch.bool, device=h.device)
    m = mask.unsqueeze(-1)
    count = mask.sum(dim=0).to(h.dtype)                                   # [T]
    hm = torch.where(m, h, torch.zeros((), dtype=h.dtype, device=h.device))
    mean = hm.sum(dim=0) / count.clamp_min(1).unsqueeze(-1)               # [T, D]
    x = torch.where(m, hm - mean, torch.zeros((), dtype=h.dtype, device=h.device))
    cov = torch.einsum("ntd,nte->tde", x, x) / (count - 1).clamp_min(1).view(-1, 1, 1)
    return cov, count >= 2


def seqvcr_terms(h: torch.Tensor, eps: float = 1e-3, mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unweighted variance and covariance parts of :func:`seqvcr_loss`.

    Returns ``(var_part, cov_part)``, each already divided by ``T·D``:
    ``var_part = 1/(T·D) Σ_t Σ_k relu(1 − sqrt(C_t[k,k] + eps))`` and
    ``cov_part = 1/(T·D) Σ_t Σ_k Σ_{k'≠k} C_t[k,k']²``. With a ``mask`` only the
    positions holding at least two unmasked rows count, and ``T`` is their number.
    """
    if eps <= 0:
        raise ValueError(f"seqvcr: eps must be > 0 (it keeps sqrt differentiable at zero variance), got {eps}")
    cov, valid = batch_covariance(h, mask)
    n_valid = valid.sum()
    message = ("seqvcr: no position holds at least 2 unmasked sequences, so no covariance can be computed; "
               "check the mask or use a larger batch")
    try:   # checked on the device: no host sync per step (on a GPU a failure stops the kernel stream)
        torch._assert_async(n_valid > 0, message)
    except RuntimeError:
        raise ValueError(message) from None
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)                          # [T, D]
    var_per_t = torch.relu(1.0 - torch.sqrt(diag + eps)).sum(dim=-1)      # [T]
    cov_per_t = (cov ** 2).sum(dim=(-2, -1)) - (diag ** 2).sum(dim=-1)    # [T]
    zero = torch.zeros((), dtype=cov.dtype, device=cov.device)
    scale = n_valid * h.shape[-1]
    var_part = torch.where(valid, var_per_t, zero).sum() / scale
    cov_part = torch.where(valid, cov_per_t, zero).sum() / scale
    return var_part, cov_part


def seqvcr_loss(h: torch.Tensor, var_coeff: float = 1.0, cov_coeff: float = 0.004, eps: float = 1e-3,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Seq-VCR loss (paper Eq. 3) of hidden states ``h`` [N, T, D]; a scalar tensor.

    ``var_coeff``/``cov_coeff`` are λ1/λ2 (1.0/0.004: the paper's multiplication
    setting; its arithmetic and LIS settings use 0.1/0.5). ``mask`` [N, T] (true =
    real token) drops padded positions from the covariances. Needs N >= 2
    (``ValueError`` otherwise). fp16/bf16 inputs are computed and returned in float32.
    """
    var_part, cov_part = seqvcr_terms(h, eps=eps, mask=mask)
    return var_coeff * var_part + cov_coeff * cov_part
