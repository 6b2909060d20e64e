"""Experts built from a labelled task's real data: a verifier (a judge classifier) and a corrector (k-means).

Tasks mix these in to provide the capabilities :class:`~collapsekit.capabilities.Verifier` and
:class:`~collapsekit.capabilities.Corrector` without a model of their own:

* :class:`RealDataVerifier` -- a small classifier (the *judge*) trained on real items that neither the
  models nor the probes see: the items the task's split leaves over (at least ``MIN_SPARE`` of them;
  otherwise the real training items). An item's score is the judge's probability of the label it was
  generated for.
* :class:`RealDataCorrector` -- ``k`` k-means centres of each class's real training items; an item moves
  a share ``strength`` of the way to the nearest centre of its label, ``x + strength * (c - x)``
  (the "expert" of a self-correcting loop, Gillman et al. 2024).

A task says where its real data are by implementing :meth:`RealDataExperts.expert_data`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.capabilities import Corrector, Verifier
from collapsekit.seeds import derive_seed

MIN_SPARE = 100
"""Fewest left-over real items the judge trains on; with fewer it trains on the real training items."""


@dataclass(frozen=True)
class ExpertData:
    """The real data experts are built from: flattened items ``[N, D]`` and integer labels, for the real
    training split and for the items the split leaves over; ``input_key``/``label_key`` name the pool arrays."""

    train_x: np.ndarray
    train_y: np.ndarray
    spare_x: np.ndarray
    spare_y: np.ndarray
    input_key: str
    label_key: str
    num_classes: int
    seed: int


class Judge(nn.Module):
    """MLP ``D -> hidden -> hidden -> classes`` on inputs standardised by the training items' overall mean and
    standard deviation (two scalars: a per-feature scale would blow up noise on features that are constant in
    the real data, such as the blank border of a digit)."""

    def __init__(self, dim: int, classes: int, hidden: int, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.scale)


def train_judge(x: np.ndarray, y: np.ndarray, classes: int, seed: int, hidden: int = 64, steps: int = 400,
                noise: float = 0.25) -> Judge:
    """A :class:`Judge` fitted by full-batch AdamW (lr 3e-3, weight decay 1e-3) with Gaussian input noise of
    ``noise`` times the data's standard deviation (so that it also judges the noisy or blurred items a model
    makes); deterministic for fixed arguments (own seeded generators)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(len(x), -1)
    yt = torch.as_tensor(np.asarray(y)).long()
    mean, scale = xt.mean(), xt.std().clamp_min(1e-6)
    generator = torch.Generator().manual_seed(derive_seed(seed, 0, "experts/judge-noise"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, "experts/judge-init"))
        judge = Judge(xt.shape[1], classes, hidden, mean, scale)
    opt = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            noisy = xt + noise * scale * torch.randn(xt.shape, generator=generator)
            loss = F.cross_entropy(judge(noisy), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return judge.eval().requires_grad_(False)


def kmeans_centres(x: np.ndarray, y: np.ndarray, classes: int, k: int, seed: int) -> list[np.ndarray]:
    """Per class ``c``: the ``min(k, n_c)`` k-means centres (scikit-learn, k-means++, 4 inits, fixed seed) of
    the items of label ``c`` (``[k_c, D]``; empty for a class without items)."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    centres = []
    for c in range(classes):
        xc = x[np.asarray(y) == c]
        if len(xc) == 0:
            centres.append(np.zeros((0, x.shape[1])))
            continue
        km = KMeans(n_clusters=min(k, len(xc)), n_init=4, random_state=derive_seed(seed, c, "experts/kmeans") % 2**31)
        centres.append(km.fit(xc).cluster_centers_)
    return centres


def step_to_nearest(x: np.ndarray, labels: np.ndarray, centres: list[np.ndarray], strength: float) -> np.ndarray:
    """``x_i + strength * (c_i - x_i)``, ``c_i`` the centre of label ``labels[i]`` nearest to ``x_i`` in
    Euclidean distance (``x`` ``[N, D]`` float64; items of a label without centres stay)."""
    out = np.array(x, dtype=np.float64, copy=True)
    for c, cc in enumerate(centres):
        rows = np.flatnonzero(np.asarray(labels) == c)
        if len(rows) == 0 or len(cc) == 0:
            continue
        d = ((out[rows, None, :] - cc[None]) ** 2).sum(-1)
        out[rows] += strength * (cc[d.argmin(1)] - out[rows])
    return out


class RealDataExperts:
    """Shared state of the real-data experts: the task implements :meth:`expert_data`."""

    expert_clusters: ClassVar[int] = 10
    """k-means centres per class of :class:`RealDataCorrector`."""

    def expert_data(self) -> ExpertData:
        """The task's real data for its experts (after ``setup``)."""
        raise NotImplementedError

    def _expert_cache(self) -> dict:
        cache = self.__dict__.setdefault("_experts", {})
        data = self.expert_data()
        key = (data.seed, len(data.train_y), len(data.spare_y))
        if cache.get("key") != key:
            cache.clear()
            cache["key"] = key
        return cache


class RealDataVerifier(RealDataExperts, Verifier):
    """Verifier: a judge classifier trained on left-over real items (see the module docstring)."""

    verifier_kind: ClassVar[str] = ("probability of the item's label under a classifier trained on real items "
                                    "outside the training and held-out splits")

    def judge(self) -> Judge:
        """The trained judge (cached per split): on the spare real items when there are at least
        :data:`MIN_SPARE`, else on the real training items."""
        cache = self._expert_cache()
        if "judge" not in cache:
            data = self.expert_data()
            spare = len(data.spare_y) >= MIN_SPARE
            x, y = (data.spare_x, data.spare_y) if spare else (data.train_x, data.train_y)
            cache["judge"] = train_judge(x, y, data.num_classes, data.seed)
            cache["judge_data"] = "spare" if spare else "train"
        return cache["judge"]

    @torch.no_grad()
    def verify_items(self, items: Mapping[str, np.ndarray]) -> np.ndarray:
        data = self.expert_data()
        x = np.asarray(items[data.input_key], dtype=np.float32)
        y = torch.as_tensor(np.asarray(items[data.label_key])).long()
        if len(x) == 0:
            return np.zeros(0)
        logits = self.judge()(torch.as_tensor(x).reshape(len(x), -1))
        return torch.softmax(logits.double(), 1).gather(1, y[:, None]).squeeze(1).numpy()


class RealDataCorrector(RealDataExperts, Corrector):
    """Corrector: a step toward the nearest k-means centre of the item's label (see the module docstring)."""

    corrector_kind: ClassVar[str] = ("a step of the given strength toward the nearest k-means centre of the real "
                                     "training items of the item's label")

    def centres(self) -> list[np.ndarray]:
        """Per class, the k-means centres of the real training items (cached per split)."""
        cache = self._expert_cache()
        if "centres" not in cache:
            data = self.expert_data()
            cache["centres"] = kmeans_centres(data.train_x, data.train_y, data.num_classes, self.expert_clusters,
                                              data.seed)
        return cache["centres"]

    def correct_items(self, items: Mapping[str, np.ndarray], strength: float, generator: torch.Generator
                ) -> dict[str, np.ndarray]:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"correction strength must be in [0, 1], got {strength!r}")
        data = self.expert_data()
        x = np.asarray(items[data.input_key])
        moved = step_to_nearest(x.reshape(len(x), -1), items[data.label_key], self.centres(), strength)
        out = {k: np.asarray(v) for k, v in items.items()}
        out[data.input_key] = moved.reshape(x.shape).astype(x.dtype)
        return out


def spare_indices(n: int, *used: np.ndarray) -> np.ndarray:
    """Sorted indices of ``range(n)`` in none of ``used`` (the items a split leaves over)."""
    mask = np.ones(n, dtype=bool)
    for u in used:
        mask[np.asarray(u, dtype=np.int64)] = False
    return np.flatnonzero(mask)

