"""MaxSup (Zhou et al., "MaxSup: Overcoming Representation Collapse in Label Smoothing") and the
label-smoothing baseline, as plain torch functions.

For logits ``z`` [N, C] and targets ``y`` [N]:

* MaxSup: ``mean_i CE(z_i, y_i) + alpha * mean_i (max_c z_ic - mean_c z_ic)`` -- no
  stop-gradient, as in the official code (ZhouYuxuanYX/Maximum-Suppression-Regularization,
  ``MaxSuppression``); its alpha ramps linearly from 0.1 to 0.2 over training (:func:`maxsup_alpha`).
* Label smoothing: cross-entropy against ``(1 - eps) * onehot(y) + eps / C``, i.e.
  ``mean_i [(1 - eps) * (-log p_iy) + eps * mean_c (-log p_ic)]``, which equals
  CE + eps * (z_y - mean_c z) up to a constant: it suppresses the *target* logit,
  MaxSup the *top-1* logit.

Logits may have extra leading dimensions ([..., C] with targets [...], e.g. tokens);
entries whose target equals ``ignore_index`` (padding) are left out of every mean;
when all are, the loss is 0. float16/bfloat16 logits are computed in float32 and the
loss is returned in float32. No Lightning, no collapsekit import.
"""
from __future__ import annotations

import math

import torch

REDUCTIONS = ("mean", "sum", "none")


def _prepare(logits: torch.Tensor, target: torch.Tensor, ignore_index: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten to [M, C] / [M], validate, upcast half precision; return (logits, target, valid mask)."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("logits and target must be torch.Tensors")
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape [N, C] (or [..., C]), got {tuple(logits.shape)}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"target must have shape {tuple(logits.shape[:-1])} to match logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    num_classes = logits.shape[-1]
    if num_classes < 1:
        raise ValueError("logits have C=0 classes")
    z = logits.reshape(-1, num_classes)
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    y = target.reshape(-1).long()
    valid = y != ignore_index
    in_range = ~(valid & ((y < 0) | (y >= num_classes))).any()
    message = f"target holds a class index outside [0, {num_classes}) that is not ignore_index={ignore_index}"
    try:   # checked on the device: no host sync per step (on a GPU a bad index stops the kernel stream)
        torch._assert_async(in_range, message)
    except RuntimeError:
        raise ValueError(message) from None
    return z, y, valid


def _reduce(per_item: torch.Tensor, valid: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    per_item = torch.where(valid, per_item, torch.zeros_like(per_item))
    if reduction == "none":
        return per_item.reshape(shape)
    if reduction == "sum":
        return per_item.sum()
    return per_item.sum() / valid.sum().clamp(min=1)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def max_suppression(logits: torch.Tensor) -> torch.Tensor:
    """The MaxSup regularizer per item: ``max_c z_c - mean_c z_c`` over the last dimension."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return z.max(dim=-1).values - z.mean(dim=-1)


def maxsup_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, ignore_index: int = -100,
                reduction: str = "mean") -> torch.Tensor:
    """MaxSup loss: cross-entropy + ``alpha`` * (top-1 logit - mean logit), averaged over items.

    ``logits`` [N, C] (or [..., C]), ``target`` [N] (or [...]) class indices;
    ``reduction="none"`` gives the per-item losses (0 at ignored items).
    """
    _check_reduction(reduction)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    z, y, valid = _prepare(logits, target, ignore_index)
    logp = torch.log_softmax(z, dim=-1)
    nll = -logp.gather(1, torch.where(valid, y, torch.zeros_like(y))[:, None]).squeeze(1)
    per_item = nll + alpha * (z.max(dim=-1).values - z.mean(dim=-1))
    return _reduce(per_item, valid, reduction, target.shape)


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1,
                         ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against the smoothed target ``(1 - smoothing) * onehot + smoothing / C``.

    Equals ``torch.nn.functional.cross_entropy(..., label_smoothing=smoothing)``.
    """
    _check_reduction(reduction)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    z, y, valid = _prepare(logits, target, ignore_index)
    logp = torch.log_softmax(z, dim=-1)
    nll = -logp.gather(1, torch.where(valid, y, torch.zeros_like(y))[:, None]).squeeze(1)
    per_item = (1.0 - smoothing) * nll + smoothing * (-logp.mean(dim=-1))
    return _reduce(per_item, valid, reduction, target.shape)


def maxsup_alpha(progress: float, start: float = 0.1, end: float = 0.2) -> float:
    """Linear ramp of MaxSup's alpha: ``start + (end - start) * progress``, ``progress`` clipped to [0, 1].

    The official code uses progress = epoch / epochs with 0.1 -> 0.2.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(start) + (float(end) - float(start)) * p
