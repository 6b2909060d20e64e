"""Score items under any model: per-item log-likelihood and class scores.

A plugin that ranks or weighs items by a model's opinion of them (a filter, a verifier, a detector)
calls :func:`score_items` instead of driving the task's data loader and ``step`` by hand::

    from collapsekit.scoring import score_items

    scores = score_items(run.task, run.model_of(0), samples)     # generation 0's opinion of the samples
    scores.log_likelihood         # float64 [N]: sum of log p(target) over each item's scored positions
    scores.mean_log_likelihood    # float64 [N]: the same per scored position
    scores.logits                 # float32 [N, C] class scores, when the task predicts one label per item

It works for every task with the capability :class:`~collapsekit.capabilities.LabelledLogits`
(its ``step`` returns ``"logits"`` and ``"labels"``, ``-100`` marking positions left out): the
language tasks (next-token log-likelihood of each sequence, over the positions their loss counts)
and classifiers (log-probability of each item's label). Items are fed in order through
:meth:`~collapsekit.task.Task.item_batches` (no shuffling, none dropped), in evaluation mode and
without gradients, on the model's device; the model's training mode is restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .capabilities import LabelledLogits, require
from .pool import Pool

IGNORE_INDEX = -100
"""Label of a position that is not scored (as in ``torch.nn.functional.cross_entropy``)."""


@dataclass(frozen=True)
class ItemScores:
    """What a model thinks of each item.

    ``log_likelihood`` float64 ``[N]``: sum over the item's scored positions of ``log p(label)``;
    ``positions`` int64 ``[N]``: how many positions were scored; ``logits`` float32 ``[N, C]`` when
    the task's step scores one label per item (classification), else ``None``.
    """

    log_likelihood: np.ndarray
    positions: np.ndarray
    logits: np.ndarray | None = None

    @property
    def mean_log_likelihood(self) -> np.ndarray:
        """``log_likelihood / positions`` (0 where no position is scored)."""
        return np.where(self.positions > 0, self.log_likelihood / np.maximum(self.positions, 1), 0.0)


def label_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of log softmax(logits)[label], scored positions)`` per item: ``logits [N, ..., C]`` and
    ``labels [N, ...]`` (integers, :data:`IGNORE_INDEX` = not scored) -> two ``[N]`` tensors, float64 and int64."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match: "
                         "labels must have the logits' shape without the last (class) dimension")
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.double(), dim=-1)
    token = logp.gather(-1, torch.where(keep, labels, torch.zeros_like(labels)).long().unsqueeze(-1)).squeeze(-1)
    token = torch.where(keep, token, torch.zeros_like(token))
    n = len(labels)
    return token.reshape(n, -1).sum(1), keep.reshape(n, -1).sum(1)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def score_items(task: Any, model: torch.nn.Module, items: Pool, batch_size: int | None = None) -> ItemScores:
    """:class:`ItemScores` of every item of ``items`` under ``model`` (see the module docstring).

    Raises :class:`~collapsekit.errors.TaskIncompatible` when the task's step returns no logits and labels.
    """
    require(task, LabelledLogits, plugin="collapsekit.scoring.score_items", why="score items by their logits")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    loglik, positions, logits = [], [], []
    try:
        for batch in task.item_batches(items, batch_size):
            batch.pop("weight", None)                  # scoring is per item: loss weights do not apply
            out = task.step(model, _to(batch, device), frozenset())
            if "logits" not in out or "labels" not in out:
                raise ValueError(f"task {task.name!r} declares LabelledLogits but its step returned "
                                 f"{sorted(out)}, without 'logits' and 'labels'")
            ll, count = label_log_likelihood(out["logits"], out["labels"])
            loglik.append(ll.cpu())
            positions.append(count.cpu())
            if out["labels"].ndim == 1:
                logits.append(out["logits"].float().cpu())
    finally:
        model.train(was_training)
    if not loglik:
        return ItemScores(np.zeros(0), np.zeros(0, dtype=np.int64))
    return ItemScores(torch.cat(loglik).numpy(), torch.cat(positions).numpy().astype(np.int64),
                      torch.cat(logits).numpy() if logits else None)
