"""The task contract: data, model, loss, sampler and probes of one benchmark.

A task is plain Python (no Lightning): the engine wraps it in a
:class:`~collapsekit.module.GenerationalModule`. Tasks are found through the
entry-point group ``collapsekit.tasks`` (short names such as ``markov-text``)
and configured in YAML under ``task:`` with ``class_path``/``init_args``.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .capabilities import provided_by
from .pool import WEIGHT_KEY, Pool


QUICK = "gpu-quick"
"""The GPU slice: every task and mitigation at GPU sizes with budgets cut to minutes."""


MODEL_DIR = "model"
"""Folder of a generation that holds its model (``gen_<k>/model/``)."""
WEIGHTS = "model.safetensors"
"""File of :meth:`Task.save_model`'s default format in ``model/``: the state dict as safetensors."""


def legacy_state_dict(directory: Path) -> dict[str, torch.Tensor] | None:
    """The state dict in ``directory/model.pt``, where generation folders written before models went into
    ``model/`` keep their weights; ``None`` when ``directory`` has a ``model/`` folder or no ``model.pt``."""
    directory = Path(directory)
    legacy = directory / "model.pt"
    if (directory / MODEL_DIR).exists() or not legacy.is_file():
        return None
    return torch.load(legacy, map_location="cpu", weights_only=True)


def save_pretrained(directory: Path, *objects: Any) -> list[str]:
    """``obj.save_pretrained(directory / "model")`` for each of ``objects`` (a model, its tokenizer, ...) into a
    fresh ``model/`` folder; return the written files' paths relative to ``directory`` (for the manifest)."""
    directory = Path(directory)
    target = directory / MODEL_DIR
    if target.exists():
        shutil.rmtree(target)
    for obj in objects:
        obj.save_pretrained(target)
    return sorted(p.relative_to(directory).as_posix() for p in target.rglob("*") if p.is_file())


def quick_budget(steps: int) -> int:
    """Optimizer steps per generation in ``gpu-quick``: a twentieth of the full budget, 20 to 400."""
    return max(min(steps, 20), min(steps // 20, 400))


def quick_preset(gpu: Mapping[str, Any]) -> dict:
    """The ``gpu-quick`` slice of a task's ``gpu`` preset (sizes kept, budget cut, bf16, one seed)."""
    spec = copy.deepcopy(dict(gpu))
    trainer = dict(spec.get("trainer") or {})
    if "max_steps" in trainer:
        trainer["max_steps"] = quick_budget(int(trainer["max_steps"]))
    trainer.setdefault("precision", "bf16-mixed")
    spec.update(trainer=trainer, generations=min(int(spec.get("generations", 2)), 2), seeds=[0])
    return spec


def pool_batch(pool: Pool, index: Any) -> dict[str, torch.Tensor]:
    """The items ``index`` (an int, a slice or a list of positions) of ``pool`` as tensors, one per array,
    plus ``"weight"`` (float64) when the pool carries per-item loss weights."""
    batch = {k: torch.as_tensor(np.array(pool.arrays[k][index])) for k in pool.keys}
    if pool.weights is not None:
        batch[WEIGHT_KEY] = torch.as_tensor(np.array(pool.weights[index]))
    return batch


class PoolDataset(Dataset):
    """Map-style dataset over a pool's arrays (and weights, if any); items are dicts of tensors."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.keys = pool.keys

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return pool_batch(self.pool, i)


class _Batch(dict):
    """A batch that :class:`PoolBatches` fetched whole (``collate_fn=collate_batch`` passes it on)."""


class PoolBatches(PoolDataset):
    """:class:`PoolDataset` that a ``DataLoader`` asks for a whole batch at once (torch's
    ``__getitems__``): one indexed read per array instead of one per item and array, the same
    tensors as collating the items. Use it with ``collate_fn=collate_batch``."""

    def __getitems__(self, indices: list[int]) -> _Batch:
        return _Batch(pool_batch(self.pool, indices))


def collate_batch(data: Any) -> Any:
    """``collate_fn`` for :class:`PoolBatches`: a whole fetched batch as it is, anything else as torch collates it."""
    return dict(data) if isinstance(data, _Batch) else default_collate(data)


class Task:
    """Base class of every task. Subclasses set the class variables and override the methods.

    What a task can do for plugins is declared by inheriting capabilities
    (:mod:`collapsekit.capabilities`, e.g. ``class MyTask(Task, Sampler, TokenSequences)``);
    :attr:`provides` is derived from them.

    Lifecycle in a run: ``setup(seed)`` once; then per generation
    ``build_model()`` (under a seeded global RNG), ``dataloader(pool, ...)``,
    ``step(...)`` every training step, ``sample(...)`` to synthesize and
    ``evaluate(...)`` for the collapse probes.
    """

    name: ClassVar[str] = "task"
    #: names of the arrays in this task's pools (e.g. ``("tokens",)``)
    pool_keys: ClassVar[tuple[str, ...]] = ()
    #: requirement names of the capabilities this task inherits (derived, never set by hand)
    provides: ClassVar[frozenset[str]] = frozenset()
    #: direction of every metric :meth:`evaluate` returns
    higher_is_better: ClassVar[Mapping[str, bool]] = {}
    #: run settings per bench preset (``smoke``, ``cpu``, ``gpu``): ``{"task": init_args,
    #: "trainer": {...}, "generations": n}`` plus optional ``seeds``, ``init``,
    #: ``samples_per_generation``, ``plugin_args``, ``variants``, ``opt_in``, ``opt_in_methods``
    #: (see ``configs/bench/README.md``)
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: the metrics that sum up a run of this task, shown first in tables and plots
    headline: ClassVar[tuple[str, ...]] = ()
    #: the methods ``collapsekit bench`` compares on this task by default (``baseline`` first)
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "provides" in vars(cls):
            raise TypeError(f"{cls.__name__}.provides is derived from the capabilities the task inherits "
                            "(collapsekit.capabilities); inherit them instead of setting provides")
        cls.provides = provided_by(cls)

    @classmethod
    def preset(cls, name: str) -> dict:
        """A fresh copy of ``presets[name]``; an unknown name raises ``ValueError`` naming the known ones.

        ``gpu-quick``, unless the task declares it, is derived from ``gpu``: the same model and data
        sizes with the step budget cut (:func:`quick_budget`), at most 2 generations, one seed, bf16.
        """
        if name == QUICK and name not in cls.presets and "gpu" in cls.presets:
            return quick_preset(cls.preset("gpu"))
        if name not in cls.presets:
            raise ValueError(f"unknown preset {name!r} for task {cls.name!r}; choose from {sorted(cls.presets)}")
        return copy.deepcopy(dict(cls.presets[name]))

    def __init__(self, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed: int | None = None

    # -- data ---------------------------------------------------------------
    def setup(self, seed: int) -> None:
        """Build real training and held-out data deterministically from ``seed``."""
        self.seed = seed

    def real_pool(self) -> Pool:
        """The real training data, as a pool with generation ``REAL``."""
        raise NotImplementedError

    def real_arrays(self) -> Mapping[str, np.ndarray]:
        """Every array of real data :meth:`setup` built (training and held-out), by name. The engine
        records their SHA-256 in the run (``data.json``) and refuses to resume on other data, e.g. a
        corpus edited in place. Default: the real pool's arrays; tasks that read data from files
        add their held-out arrays."""
        return dict(self.real_pool().arrays)

    def dataloader(self, pool: Pool, shuffle: bool, seed: int) -> DataLoader:
        """Batches of ``pool``; shuffling draws from a generator seeded with ``seed``."""
        if len(pool) == 0:
            from .errors import CollapsekitError

            raise CollapsekitError(f"task {self.name!r}: the training pool is empty; nothing to train on")
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            PoolBatches(pool),
            batch_size=min(self.batch_size, len(pool)),
            shuffle=shuffle,
            generator=generator,
            drop_last=False,
            collate_fn=collate_batch,
        )

    def item_batches(self, pool: Pool, batch_size: int | None = None):
        """The items of ``pool`` in order, as ``step`` takes them: batches (dicts of tensors) of at most
        ``batch_size`` items (default: ``eval_batch_size`` if the task has one, else ``batch_size``),
        nothing shuffled and no item dropped. What :mod:`collapsekit.scoring` scores items with.

        Default: slices of the pool's arrays (:func:`pool_batch`). A task whose :meth:`dataloader`
        reshapes batches (renamed keys, extra tensors) overrides it the same way.
        """
        size = int(batch_size or getattr(self, "eval_batch_size", None) or self.batch_size)
        for start in range(0, len(pool), size):
            yield pool_batch(pool, slice(start, min(start + size, len(pool))))

    # -- model --------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (the global torch RNG is seeded by the engine)."""
        raise NotImplementedError

    def save_model(self, model: torch.nn.Module, directory: Path) -> list[str]:
        """Save ``model`` into ``directory/model/`` (``directory`` is a generation's folder); return the
        written files' paths relative to ``directory`` (the engine checksums them in the generation's manifest).

        Default: ``model/model.safetensors``, the ``state_dict`` (safetensors: no pickle). Tasks on a
        library's models save in that library's format instead (``save_pretrained`` into ``model/``).
        """
        from safetensors.torch import save

        from .fileio import atomic_write_bytes

        # copies: safetensors refuses tensors that share memory (e.g. tied weights)
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(Path(directory) / MODEL_DIR / WEIGHTS, save(state))
        return [f"{MODEL_DIR}/{WEIGHTS}"]

    def load_model(self, directory: Path) -> torch.nn.Module:
        """The model that :meth:`save_model` saved into ``directory``. Default: :meth:`build_model` with the
        weights of ``model/model.safetensors`` (or of a folder's ``model.pt``: :func:`legacy_state_dict`)."""
        from safetensors.torch import load_file

        model = self.build_model()
        state = legacy_state_dict(directory)
        model.load_state_dict(state if state is not None else load_file(Path(directory) / MODEL_DIR / WEIGHTS))
        return model

    def write_samples(self, samples: Pool, directory: Path) -> list[str]:
        """Write a person-readable view of a generation's synthetic ``samples`` into ``directory``
        (e.g. ``samples.jsonl`` of decoded text, ``samples.png`` of an image grid); return the
        files' relative paths. Default: nothing."""
        return []

    def configure_optimizers(self, model: torch.nn.Module) -> Any:
        """Optimizer (and optionally scheduler) in Lightning's ``configure_optimizers`` format."""
        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def step(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], requirements: frozenset[str]) -> dict[str, Any]:
        """Forward one batch; return a dict with at least ``"loss"`` (scalar tensor)."""
        raise NotImplementedError

    # -- probes -------------------------------------------------------------
    def evaluate(self, model: torch.nn.Module, samples: Pool | None) -> dict[str, float]:
        """The task's collapse probes for ``model`` and its synthetic ``samples``."""
        return {}

    def check_pool(self, pool: Pool) -> None:
        """Raise ``CollapsekitError`` if ``pool`` does not hold this task's arrays."""
        from .errors import CollapsekitError

        if pool.keys != tuple(sorted(self.pool_keys)):
            raise CollapsekitError(
                f"pool holds arrays {list(pool.keys)} but task {self.name!r} expects "
                f"{sorted(self.pool_keys)}; is it a pool from another task?"
            )
