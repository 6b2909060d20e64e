"""Unlearning losses: gradient ascent (GA), NPO, NPO+RT and SimNPO. Plain torch, no collapsekit import.

Conventions (as open-unlearning computes them):

* ``sequence_logprob`` sums token log-probabilities over the masked positions of each
  sequence: ``log pi(y|x)`` of the whole answer, not a per-token mean.
* ``masked_nll`` is the mean token NLL over all masked positions of the batch (what a
  Hugging Face ``model(...).loss`` gives with ``-100`` labels outside the answer); GA
  negates it on the forget set and NPO+RT adds it on the retain set.
* ``npo_loss`` = ``-(2/beta) * mean_i log sigmoid(-beta * (logp_i - ref_logp_i))``
  (Zhang et al. 2024, eq. 3), with ``ref_logp`` a constant (no gradient).
* ``simnpo_loss`` = ``-(2/beta) * mean_i log sigmoid(-(beta / |y_i|) logp_i - gamma)`` (Fan et al. 2024):
  no reference model, the answer log-prob divided by its length, a reward margin ``gamma``.

Half-precision inputs (float16 / bfloat16) are computed and returned in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probability of ``labels`` per sequence: [N].

    ``logits`` [N, T, V] where ``logits[:, t]`` predicts ``labels[:, t]`` (already shifted);
    ``labels`` [N, T] int; ``mask`` [N, T] bool or 0/1 (``None``: every position). Masked-out
    positions count zero and may hold any label (e.g. ``-100`` padding).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"sequence_logprob: logits must be [N, T, V] and labels [N, T], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    if mask.shape != labels.shape:
        raise ValueError(f"sequence_logprob: mask must have the labels' shape {tuple(labels.shape)}, "
                         f"got {tuple(mask.shape)}")
    mask = mask.bool()
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    check_on_device(((safe >= 0) & (safe < logits.shape[-1])).all(),
                    f"sequence_logprob: a label at an unmasked position is outside [0, {logits.shape[-1]})")
    logp = F.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)
    token = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, token, torch.zeros_like(token)).sum(-1)


def masked_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token NLL over every masked position of the batch (scalar); arguments as :func:`sequence_logprob`."""
    if mask is None:
        return -sequence_logprob(logits, labels, mask).sum() / labels.numel()
    count = mask.bool().sum()
    check_on_device(count > 0, "masked_nll: the mask selects no token")
    return -sequence_logprob(logits, labels, mask).sum() / count


def gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Gradient ascent on the forget set: ``-masked_nll`` (unbounded below)."""
    return -masked_nll(logits, labels, mask)


def _check_pair(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, who: str) -> None:
    if logp.dim() != 1 or logp.shape != ref_logp.shape or logp.numel() == 0:
        raise ValueError(f"{who}: logp and ref_logp must be non-empty [N] tensors of the same shape, got "
                         f"{tuple(logp.shape)} and {tuple(ref_logp.shape)}")
    if not beta > 0:
        raise ValueError(f"{who}: beta must be > 0, got {beta}")


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO: ``-(2/beta) * mean log sigmoid(-beta * (logp - ref_logp))`` (scalar).

    ``logp`` [N]: summed answer log-probs under the model being unlearned;
    ``ref_logp`` [N]: the same under the frozen reference (treated as a constant).
    At ``logp == ref_logp`` the loss is ``(2/beta) log 2``; its gradient in ``logp_i`` is
    ``(2/N) * sigmoid(beta * (logp_i - ref_logp_i))``, i.e. gradient ascent weighted by a
    factor that vanishes as the example is forgotten (GA is the ``beta -> 0`` limit).
    """
    _check_pair(logp, ref_logp, beta, "npo_loss")
    dtype = _compute_dtype(logp)
    ratio = logp.to(dtype) - ref_logp.detach().to(dtype)
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float = 2.5, gamma: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): ``-(2/beta) * mean_i log sigmoid(-(beta / |y_i|) * logp_i - gamma)`` (scalar).

    Reference-free and length-normalised: ``logp`` [N] are summed answer log-probs under the model
    being unlearned, ``lengths`` [N] the answer lengths ``|y_i|`` (tokens, > 0), ``gamma >= 0`` the
    reward margin. open-unlearning writes the same loss with ``delta = gamma / beta``:
    ``-(2/beta) log sigmoid(beta * (NLL_i / |y_i| - delta))``. Its gradient in ``logp_i`` is
    ``(2 / (N |y_i|)) * sigmoid((beta / |y_i|) * logp_i + gamma)``.
    """
    if logp.dim() != 1 or logp.shape != lengths.shape or logp.numel() == 0:
        raise ValueError(f"simnpo_loss: logp and lengths must be non-empty [N] tensors of the same shape, got "
                         f"{tuple(logp.shape)} and {tuple(lengths.shape)}")
    if not beta > 0:
        raise ValueError(f"simnpo_loss: beta must be > 0, got {beta}")
    if not gamma >= 0:
        raise ValueError(f"simnpo_loss: gamma must be >= 0, got {gamma}")
    dtype = _compute_dtype(logp)
    check_on_device((lengths > 0).all(), "simnpo_loss: every answer length must be > 0")
    per_token = logp.to(dtype) / lengths.to(dtype)
    return -(2.0 / beta) * F.logsigmoid(-beta * per_token - gamma).mean()


def npo_rt_loss(logp: torch.Tensor, ref_logp: torch.Tensor, retain_nll: torch.Tensor, beta: float = 0.1,
                retain_coeff: float = 1.0, forget_coeff: float = 1.0) -> torch.Tensor:
    """NPO+RT: ``forget_coeff * npo_loss(logp, ref_logp, beta) + retain_coeff * retain_nll``.

    ``retain_nll`` is the retain batch's mean token NLL (:func:`masked_nll`). open-unlearning
    calls the coefficients ``gamma`` (forget, default 1) and ``alpha`` (retain, default 1).
    """
    if retain_nll.numel() != 1:
        raise ValueError(f"npo_rt_loss: retain_nll must be a scalar, got shape {tuple(retain_nll.shape)}")
    if retain_coeff < 0 or forget_coeff < 0:
        raise ValueError(f"npo_rt_loss: coefficients must be >= 0, got retain_coeff={retain_coeff}, "
                         f"forget_coeff={forget_coeff}")
    forget = npo_loss(logp, ref_logp, beta)
    return forget_coeff * forget + retain_coeff * retain_nll.reshape(()).to(forget.dtype)


def check_on_device(condition: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the bool tensor ``condition`` holds. On an accelerator the
    check runs on the device without the host waiting for it (a failure stops the kernel stream), so a
    training step that validates its inputs this way has no host sync."""
    try:
        torch._assert_async(condition, message)
    except RuntimeError:
        raise ValueError(message) from None
