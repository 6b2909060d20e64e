"""Pure functions of detector-weighted resampling (NumPy and torch only; no Lightning, no collapsekit).

Drayson, Yilmaz, Lampos (2025), "Machine-generated text detection prevents language model
collapse": a detector gives each training item its confidence ``conf`` that the item is
machine-generated; the training set is resampled with weights ``(1 - conf)^bias``
(:func:`resampling_weights`), up-sampling likely human items. Here the detector is a binary
logistic regression on the task's features (:func:`train_detector`), refitted every generation on
the real items against that generation's synthetic items, and every synthetic item's confidence
comes from a detector that did not see it (:func:`cross_fit_confidence`). The draw is without
replacement (a filter keeps or drops an item; it cannot repeat it): :func:`weighted_sample`, the
Efraimidis-Spirakis method, takes ``n`` items with the probabilities of successive weighted draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Detector:
    """Binary logistic regression on standardised features: ``P(synthetic | x) = sigmoid(((x - mean) / scale) . w + b)``
    (float64)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def confidence(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """``P(synthetic | x)`` of features ``x [N, D]`` -> float64 ``[N]``."""
        z = (torch.as_tensor(np.asarray(x), dtype=torch.float64) - self.mean) / self.scale
        return torch.sigmoid(z @ self.weight + self.bias).numpy()


def detector_loss(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  sample_weight: torch.Tensor, l2: float) -> torch.Tensor:
    """``sum_i s_i BCE(x_i . w + b, y_i) / sum_i s_i + l2 / 2 * ||w||^2`` (``y`` 1 = synthetic)."""
    bce = F.binary_cross_entropy_with_logits(x @ weight + bias, y, reduction="none")
    return (sample_weight * bce).sum() / sample_weight.sum() + 0.5 * l2 * (weight * weight).sum()


def train_detector(real: np.ndarray, synthetic: np.ndarray, l2: float = 1e-2, max_iter: int = 100) -> Detector:
    """A :class:`Detector` of ``synthetic [S, D]`` against ``real [R, D]`` features (deterministic).

    Both classes weigh the same in total (each item of a class ``1 / (2 * its count)``), so the
    confidence is calibrated for equal priors; features are standardised by the training items'
    mean and standard deviation; :func:`detector_loss` is minimised from zero by full-batch L-BFGS
    (strong Wolfe) in float64.
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    s = torch.as_tensor(np.asarray(synthetic), dtype=torch.float64)
    if r.ndim != 2 or s.ndim != 2 or r.shape[1] != s.shape[1] or len(r) == 0 or len(s) == 0:
        raise ValueError(f"train_detector needs real [R, D] and synthetic [S, D] features (R, S >= 1), got "
                         f"{tuple(r.shape)} and {tuple(s.shape)}")
    if l2 < 0:
        raise ValueError(f"train_detector: l2 must be >= 0, got {l2}")
    x = torch.cat([r, s])
    y = torch.cat([torch.zeros(len(r)), torch.ones(len(s))]).to(torch.float64)
    sample_weight = torch.cat([torch.full((len(r),), 0.5 / len(r)), torch.full((len(s),), 0.5 / len(s))]).double()
    mean, scale = x.mean(0), x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    xs = (x - mean) / scale
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = detector_loss(weight, bias, xs, y, sample_weight, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Detector(weight.detach(), bias.detach(), mean, scale)


def cross_fit_confidence(real: np.ndarray, synthetic: np.ndarray, folds: int, rng: np.random.Generator,
                         l2: float = 1e-2, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold ``P(synthetic)`` of every real and every synthetic item: both sets are split at random into
    ``folds`` parts; the items of part ``k`` are scored by a detector trained on the other parts.
    Returns ``(conf_real [R], conf_synthetic [S])``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"cross_fit_confidence: folds must be an integer >= 2, got {folds!r}")
    real, synthetic = np.asarray(real), np.asarray(synthetic)
    if min(len(real), len(synthetic)) < folds:
        raise ValueError(f"cross_fit_confidence: need at least {folds} real and synthetic items, got "
                         f"{len(real)} and {len(synthetic)}")
    part_r = rng.permutation(len(real)) % folds
    part_s = rng.permutation(len(synthetic)) % folds
    conf_r, conf_s = np.empty(len(real)), np.empty(len(synthetic))
    for k in range(folds):
        det = train_detector(real[part_r != k], synthetic[part_s != k], l2, max_iter)
        conf_r[part_r == k] = det.confidence(real[part_r == k])
        conf_s[part_s == k] = det.confidence(synthetic[part_s == k])
    return conf_r, conf_s


def resampling_weights(confidence: np.ndarray, bias: float) -> np.ndarray:
    """``(1 - conf)^bias`` (Drayson et al.): ``bias`` 0 gives equal weights (a blind draw)."""
    c = np.asarray(confidence, dtype=np.float64)
    if ((c < 0) | (c > 1)).any() or not np.isfinite(c).all():
        raise ValueError("resampling_weights: confidences must lie in [0, 1]")
    if isinstance(bias, bool) or not np.isfinite(bias) or bias < 0:
        raise ValueError(f"resampling_weights: bias must be a finite number >= 0, got {bias!r}")
    return np.power(1.0 - c, float(bias))


def weighted_sample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``n`` items drawn without replacement, each next draw with probability proportional to the
    ``weights`` of the items left (Efraimidis-Spirakis: the ``n`` largest keys ``log(u_i) / w_i``,
    ``u_i`` uniform; zero weights come last). ``n`` is clipped to [0, N]."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weighted_sample: weights must be finite and >= 0")
    n = max(0, min(int(n), len(w)))
    u = rng.random(len(w))
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(u) / np.where(w > 0, w, 1.0), -np.inf)
    order = np.argsort(-keys, kind="stable")
    mask = np.zeros(len(w), dtype=bool)
    mask[order[:n]] = True
    return mask


def hashed_bigrams(tokens: np.ndarray, vocab: int, dim: int = 4096) -> np.ndarray:
    """Bag of bigrams of token rows ``[N, T]`` (ids ``0 .. vocab``): counts of ``(a, b)`` in bucket
    ``(a * (vocab + 1) + b) % dim``, divided by ``T - 1`` -> float64 ``[N, dim]``."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] < 2:
        raise ValueError(f"hashed_bigrams needs token rows [N, T >= 2], got shape {t.shape}")
    buckets = (t[:, :-1] * (vocab + 1) + t[:, 1:]) % dim
    out = np.zeros((len(t), dim))
    np.add.at(out, (np.repeat(np.arange(len(t)), t.shape[1] - 1), buckets.reshape(-1)), 1.0)
    return out / (t.shape[1] - 1)


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores separating ``positives`` from ``negatives`` (ties count half):
    the Mann-Whitney statistic ``P(pos > neg) + P(pos = neg) / 2``."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("auc needs at least one score of each class")
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(sorted_scores[np.r_[False, np.diff(sorted_scores) == 0]]):   # average tied ranks
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size share ``(sum w)^2 / (N * sum w^2)`` in (0, 1] (1: equal weights)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w * w).sum() == 0:
        return 0.0
    return float(w.sum() ** 2 / (len(w) * (w * w).sum()))
