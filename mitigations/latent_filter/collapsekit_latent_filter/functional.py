"""Pure functions of Latent Space Filtering (LSF; Cai, Wang, Liu, Zhang, AAAI 2026, arXiv 2511.12742).

torch only (no Lightning, no collapsekit). LSF trains a *probing classifier* on
latents of real data and scores a synthetic item ``x`` generated for label ``y``
by the probe's confidence ``xi(x, y) = softmax(probe(latent(x)))_y``; the most
realistic items (highest ``xi``) are kept. Also here: an alternative score, the
relative residual of a latent off the real data's (per-class) principal subspace.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check_latents(latents: torch.Tensor, labels: torch.Tensor | None, what: str) -> None:
    if latents.ndim != 2:
        raise ValueError(f"{what}: latents must be [N, D], got shape {tuple(latents.shape)}")
    if labels is not None and labels.shape != (latents.shape[0],):
        raise ValueError(f"{what}: labels must be [N] = [{latents.shape[0]}], got shape {tuple(labels.shape)}")


# -- probing classifier ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """A multinomial logistic-regression probe on standardised latents.

    ``logits(z) = ((z - mean) / scale) @ weight.T + bias``; ``weight`` [C, D], ``bias`` [C],
    ``mean`` and ``scale`` [D] (the real latents' statistics), all float64.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, C]`` (float64) of ``latents`` [N, D]."""
        z = torch.as_tensor(latents).to(torch.float64)
        _check_latents(z, None, "Probe.logits")
        if z.shape[1] != self.weight.shape[1]:
            raise ValueError(f"Probe.logits: the probe was trained on {self.weight.shape[1]}-dimensional latents, "
                             f"got {z.shape[1]}-dimensional ones")
        return ((z - self.mean) / self.scale) @ self.weight.T + self.bias


def probe_loss(weight: torch.Tensor, bias: torch.Tensor, latents: torch.Tensor, labels: torch.Tensor,
               l2: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``latents @ weight.T + bias`` against ``labels`` plus ``l2 / 2 * ||weight||_F^2``."""
    return F.cross_entropy(latents @ weight.T + bias, labels) + 0.5 * l2 * (weight * weight).sum()


def train_probe(latents: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, l2: float = 1e-3,
                max_iter: int = 100, standardize: bool = True) -> Probe:
    """Fit a :class:`Probe` to real ``latents`` [N, D] with integer ``labels`` [N] (deterministic).

    Minimises :func:`probe_loss` from zero weights by full-batch L-BFGS (strong Wolfe line
    search, ``max_iter`` iterations) in float64 on latents standardised by their mean and
    standard deviation (``standardize``; constant dimensions get scale 1). ``num_classes``
    defaults to ``max(labels) + 1``.
    """
    z = torch.as_tensor(latents).detach().to(torch.float64)
    y = torch.as_tensor(labels).detach().long()
    _check_latents(z, y, "train_probe")
    if len(z) == 0:
        raise ValueError("train_probe: no latents to train on")
    if l2 < 0:
        raise ValueError(f"train_probe: l2 must be >= 0, got {l2}")
    classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise ValueError(f"train_probe: labels must lie in [0, {classes}), got [{int(y.min())}, {int(y.max())}]")
    mean = z.mean(0) if standardize else torch.zeros(z.shape[1], dtype=torch.float64)
    scale = z.std(0, unbiased=False) if standardize else torch.ones(z.shape[1], dtype=torch.float64)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    zs = (z - mean) / scale
    weight = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = probe_loss(weight, bias, zs, y, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, scale)


def confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LSF's score ``xi_i = softmax(logits_i)[labels_i]`` (``[N]``, in the dtype of ``logits``)."""
    logits = torch.as_tensor(logits)
    y = torch.as_tensor(labels).long()
    if logits.ndim != 2 or y.shape != (logits.shape[0],):
        raise ValueError(f"confidence needs logits [N, C] and labels [N], got {tuple(logits.shape)} and "
                         f"{tuple(y.shape)}")
    return torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)


# -- selection -------------------------------------------------------------------------------------
def top_n_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask of the ``n`` highest ``scores`` (ties: the lower index wins; ``n`` clipped to [0, N]).

    NaN scores rank last.
    """
    s = torch.as_tensor(scores).detach().to(torch.float64).reshape(-1)
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"top_n_mask: n must be an integer, got {n!r}")
    n = max(0, min(int(n), len(s)))
    s = torch.where(torch.isnan(s), torch.full_like(s, -torch.inf), s)
    order = torch.sort(-s, stable=True).indices                     # descending, stable on ties
    mask = torch.zeros(len(s), dtype=torch.bool)
    mask[order[:n]] = True
    return mask


def keep_count(total: int, keep: float) -> int:
    """Items kept of ``total`` at share ``keep``: ``floor(keep * total + 1/2)``, in [0, total]."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep!r}")
    return min(total, int(keep * total + 0.5))


# -- subspace residual -----------------------------------------------------------------------------
def fit_subspaces(latents: torch.Tensor, labels: torch.Tensor | None = None, rank: int = 8,
                  num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and top-``rank`` principal directions of the real ``latents`` per class (float64).

    Returns ``means`` [C, D] and orthonormal ``bases`` [C, D, rank] (right singular vectors of
    each class's centred latents; zero columns where a class has fewer directions). Without
    ``labels`` there is one subspace (C = 1).
    """
    z = torch.as_tensor(latents).detach().to(torch.float64)
    y = torch.zeros(len(z), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    _check_latents(z, y, "fit_subspaces")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= z.shape[1]:
        raise ValueError(f"fit_subspaces: rank must be an integer in [1, D={z.shape[1]}], got {rank!r}")
    classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    means = torch.zeros(classes, z.shape[1], dtype=torch.float64)
    bases = torch.zeros(classes, z.shape[1], rank, dtype=torch.float64)
    for c in range(classes):
        members = z[y == c]
        if len(members) == 0:
            raise ValueError(f"fit_subspaces: class {c} has no real latents; pass labels covering every class")
        means[c] = members.mean(0)
        _, s, vh = torch.linalg.svd(members - means[c], full_matrices=False)
        k = min(rank, int((s > s.max() * 1e-10).sum()) if len(s) else 0)
        bases[c, :, :k] = vh[:k].T
    return means, bases


def subspace_residual(latents: torch.Tensor, means: torch.Tensor, bases: torch.Tensor,
                      labels: torch.Tensor | None = None) -> torch.Tensor:
    """Relative residual ``||(I - U U^T)(z - mu)|| / ||z - mu||`` of each latent off its class subspace.

    ``U = bases[y]``, ``mu = means[y]`` (``y = labels``, or 0 for a single subspace). In [0, 1];
    0 means the latent lies in the real data's subspace (0 too when ``z = mu``). Lower is more realistic.
    """
    z = torch.as_tensor(latents).to(torch.float64)
    y = torch.zeros(len(z), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    _check_latents(z, y, "subspace_residual")
    if len(z) and (int(y.min()) < 0 or int(y.max()) >= len(means)):
        raise ValueError(f"subspace_residual: labels must lie in [0, {len(means)}) (one subspace per class)")
    centred = z - means[y]
    u = bases[y]                                                   # [N, D, k]
    projected = torch.einsum("ndk,nk->nd", u, torch.einsum("ndk,nd->nk", u, centred))
    norm = centred.norm(dim=1)
    residual = (centred - projected).norm(dim=1)
    return torch.where(norm > 0, residual / torch.where(norm > 0, norm, torch.ones_like(norm)),
                       torch.zeros_like(norm))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [N, T, D] over the positions where ``attention_mask`` [N, T] is 1 -> [N, D].

    The pooling of sentence-transformers' ``Pooling(mean)``; a row with no position kept gives zeros.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"mean_pool: need hidden [N, T, D] and attention_mask [N, T], got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def l2_normalize(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``z`` [N, D] scaled to unit Euclidean norm (rows of zeros stay zero)."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


# -- the paper's selection over the accumulated pool --------------------------------------------------
def split_budget(budget: int, n_real: int, n_synthetic: int) -> tuple[int, int]:
    """``(real items, synthetic items)`` of a training pool of ``budget`` items drawn from ``n_real`` real
    and ``n_synthetic`` accumulated synthetic items with the real share they have in the accumulated
    pool: ``r = min(n_real, round(budget * n_real / (n_real + n_synthetic)))`` real items (the expected
    count under a uniform draw, as accumulate-subsample makes), then ``min(n_synthetic, budget - r)``
    synthetic ones (and more real ones if the synthetic items run out)."""
    if budget < 0 or n_real < 0 or n_synthetic < 0:
        raise ValueError(f"split_budget needs non-negative counts, got {budget}, {n_real}, {n_synthetic}")
    total = n_real + n_synthetic
    if total == 0:
        return 0, 0
    r = min(n_real, int(budget * n_real / total + 0.5))
    s = min(n_synthetic, budget - r)
    return min(n_real, budget - s), s
