"""Data pools: named arrays of equal length plus the lineage of every item.

A pool is what one generation trains on or what it synthesized. Its arrays are
NumPy arrays stored as ``.npy`` files (never pickles). Every item carries its
*lineage*: the generation that produced it (:data:`REAL` for real data) and its
index in that generation's own pool, so that subsampling, filtering and
accumulating never lose where an item came from.

A *training* pool may also carry per-item loss weights (:attr:`Pool.weights`, e.g. a
pool policy that weighs real data against synthetic data); a task whose ``step`` honours
them declares the capability :class:`~collapsekit.capabilities.ItemWeights`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import RunStateError
from .fileio import array_bytes, atomic_write_bytes

REAL = -1
"""Origin generation of real (non-synthetic) data."""

LINEAGE_KEYS = ("origin_generation", "origin_index")
WEIGHT_KEY = "weight"
"""Name of the per-item loss weights: the file ``weight.npy`` of a saved pool and the batch key the
task's ``step`` reads them from (reserved: no pool array may use it)."""


@dataclass(frozen=True)
class Pool:
    """Named arrays sharing their first dimension, with per-item lineage.

    ``weights`` (optional, float64 ``[N]``, finite and >= 0): per-item loss weights of a training
    pool; ``None`` means every item weighs 1. The engine passes them to the task's ``step`` as the
    batch key ``"weight"`` (:data:`WEIGHT_KEY`), which a task with the capability
    :class:`~collapsekit.capabilities.ItemWeights` honours.
    """

    arrays: Mapping[str, np.ndarray]
    origin_generation: np.ndarray
    origin_index: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.origin_generation)
        if len(self.origin_index) != n:
            raise ValueError("lineage arrays differ in length")
        for key, value in self.arrays.items():
            if key in LINEAGE_KEYS or key == WEIGHT_KEY:
                raise ValueError(f"pool array name {key!r} is reserved for "
                                 f"{'lineage' if key in LINEAGE_KEYS else 'per-item loss weights'}")
            if len(value) != n:
                raise ValueError(f"pool array {key!r} has {len(value)} items, lineage has {n}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.shape != (n,):
                raise ValueError(f"pool weights must have shape ({n},) (one per item), got {w.shape}")
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError("pool weights must be finite and >= 0")
            object.__setattr__(self, "weights", w)

    @classmethod
    def fresh(cls, arrays: Mapping[str, np.ndarray], generation: int) -> "Pool":
        """A pool whose items all come from ``generation``, indexed 0..N-1."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        return cls(arrays, np.full(n, generation, dtype=np.int64), np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.origin_generation)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.arrays))

    def select(self, index: np.ndarray | Sequence[int]) -> "Pool":
        """The items at ``index`` (integer positions or a boolean mask), lineage and weights kept."""
        index = np.asarray(index)
        return Pool(
            {k: np.asarray(v[index]) for k, v in self.arrays.items()},
            np.asarray(self.origin_generation[index]),
            np.asarray(self.origin_index[index]),
            None if self.weights is None else self.weights[index],
        )

    def with_weights(self, weights: np.ndarray | Sequence[float] | None) -> "Pool":
        """The same items with per-item loss ``weights`` (``None``: unweighted)."""
        return Pool(self.arrays, self.origin_generation, self.origin_index, weights)

    @staticmethod
    def concat(pools: Iterable["Pool"]) -> "Pool":
        """All items of ``pools`` in order (an unweighted pool's items weigh 1 when another one has weights).
        Pools must have the same array names."""
        pools = [p for p in pools]
        if not pools:
            raise ValueError("cannot concatenate zero pools")
        keys = pools[0].keys
        for p in pools[1:]:
            if p.keys != keys:
                raise ValueError(f"pools hold different arrays: {keys} vs {p.keys}")
        weighted = any(p.weights is not None for p in pools)
        return Pool(
            {k: np.concatenate([np.asarray(p.arrays[k]) for p in pools]) for k in keys},
            np.concatenate([p.origin_generation for p in pools]),
            np.concatenate([p.origin_index for p in pools]),
            np.concatenate([np.ones(len(p)) if p.weights is None else p.weights for p in pools]) if weighted else None,
        )

    def save(self, directory: Path) -> dict[str, str]:
        """Write each array, the lineage (and the weights, if any) as ``<name>.npy`` atomically; return file names."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        items = dict(self.arrays)
        items["origin_generation"] = self.origin_generation
        items["origin_index"] = self.origin_index
        if self.weights is not None:
            items[WEIGHT_KEY] = self.weights
        for key, value in items.items():
            name = f"{key}.npy"
            atomic_write_bytes(directory / name, array_bytes(np.asarray(value)))
            files[key] = name
        return files

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "Pool":
        """Read a pool written by :meth:`save`; ``mmap`` maps arrays instead of reading them."""
        directory = Path(directory)
        if not directory.is_dir():
            raise RunStateError(f"pool directory {directory} does not exist")
        arrays = {}
        for path in sorted(directory.glob("*.npy")):
            try:
                arrays[path.stem] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise RunStateError(
                    f"pool file {path} is unreadable ({exc}); delete that generation's "
                    "directory to redo it, or start a new run name"
                ) from None
        missing = [k for k in LINEAGE_KEYS if k not in arrays]
        if missing:
            raise RunStateError(f"pool {directory} lacks lineage files {missing}")
        gen, idx = arrays.pop("origin_generation"), arrays.pop("origin_index")
        weights = arrays.pop(WEIGHT_KEY, None)
        try:
            return cls(arrays, gen, idx, weights)
        except ValueError as exc:
            raise RunStateError(f"pool {directory} is inconsistent: {exc}") from None


class PoolHistory:
    """Read-only view of the synthetic pools of finished generations, loaded lazily.

    ``history[g]`` is the (filtered) pool that generation ``g``'s model
    synthesized, memory-mapped from disk; nothing is loaded until asked for.
    """

    def __init__(self, pool_dir_of, count: int) -> None:
        self._pool_dir_of = pool_dir_of
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, generation: int) -> Pool:
        if generation < 0:
            generation += self._count
        if not 0 <= generation < self._count:
            raise IndexError(f"no synthetic pool for generation {generation} (have {self._count})")
        return Pool.load(self._pool_dir_of(generation))

    def sizes(self) -> list[int]:
        """Number of items of each generation's pool, read from the lineage headers only."""
        return [len(self[g]) for g in range(self._count)]

    def __iter__(self):
        return (self[g] for g in range(self._count))
