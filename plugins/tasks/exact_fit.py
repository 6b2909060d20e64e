"""Base of the analytic tasks (gaussian, linear-regression): models fitted exactly on the whole pool.

Each training step sees the full pool as one batch; the task's ``step`` fits the closed-form
estimate in place (maximum likelihood, least squares) and returns its loss, so the SGD step the
engine then takes sits at the optimum and changes nothing.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from collapsekit.errors import CollapsekitError
from collapsekit.pool import Pool
from collapsekit.capabilities import Sampler
from collapsekit.task import Task, pool_batch


def check_int(task: str, name: str, value: Any, minimum: int = 1, floor: str = "", why: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum`` (``floor`` spells the bound out, ``why``
    says what needs it)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{task}: {name} must be an integer >= {floor or minimum}{why}, got {value!r}")


class FullBatch(Dataset):
    """A dataset of one item: every array of ``pool`` as a tensor, plus ``"weight"`` when the pool carries
    per-item loss weights (full-batch training)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i != 0:
            raise IndexError(i)
        return pool_batch(self.pool, slice(None))


def full_batch_loader(pool: Pool, task_name: str) -> DataLoader:
    """A loader yielding the whole ``pool`` as a single batch (no collation, no shuffling)."""
    if len(pool) == 0:
        raise CollapsekitError(f"task {task_name!r}: the training pool is empty; nothing to train on")
    return DataLoader(FullBatch(pool), batch_size=None, shuffle=False)


class ExactFitTask(Task, Sampler):
    """A task whose ``step`` fits its model exactly on the full pool (one batch per step)."""

    def require_setup(self) -> None:
        """Raise ``RuntimeError`` unless :meth:`setup` has built the data."""
        if self.seed is None:
            raise RuntimeError(f"{self.name}: call setup(seed) before using the task's data")

    def dataloader(self, pool: Pool, shuffle: bool, seed: int) -> DataLoader:
        """The whole pool as one batch: the exact fit needs all of it (``shuffle``/``seed`` unused)."""
        return full_batch_loader(pool, self.name)

    def configure_optimizers(self, model: nn.Module) -> Any:
        return torch.optim.SGD(model.parameters(), lr=self.lr)
