"""The ``maxsup`` and ``label-smoothing`` plugins: they replace the task's cross-entropy.

Both set ``replaces_task_loss = True`` and return the whole classification loss
as one term computed from the step's ``outputs["logits"]`` [..., C] and
``outputs["labels"]`` [...] (any classification or token task that returns them).
Only one of them can be active in a run. In a generational run each generation's
training is one schedule: MaxSup's alpha ramps from ``alpha_start`` to
``alpha_end`` over that generation's optimizer steps.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible

from .losses import label_smoothing_loss, maxsup_alpha, maxsup_loss


def _logits_labels(outputs: Mapping[str, Any], plugin: str) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [k for k in ("logits", "labels") if k not in outputs]
    if missing:
        raise TaskIncompatible(
            f"{plugin} replaces the task's cross-entropy and needs the step outputs 'logits' and 'labels', but "
            f"the task's step gives no {' and no '.join(map(repr, missing))}; use a classification or token task "
            f"(digits-classify, markov-text, ...) or remove {plugin} from run.plugins")
    return outputs["logits"], outputs["labels"]


class MaxSup:
    """MaxSup (Zhou et al.) in place of the task's cross-entropy.

    Args:
        alpha_start: alpha at the first optimizer step of each generation (official: 0.1).
        alpha_end: alpha at the last step (official: 0.2); equal values give a constant alpha.
        ignore_index: target value left out of the loss (padding).

    Progress is ``step / (total_steps - 1)`` from the engine's ``module.progress``
    (the generation's step budget); before training starts alpha is ``alpha_start``. Loss term: ``maxsup`` (the whole loss).
    Metrics: ``maxsup/alpha_first`` and ``maxsup/alpha_last`` of the generation.
    """

    replaces_task_loss = True

    def __init__(self, alpha_start: float = 0.1, alpha_end: float = 0.2, ignore_index: int = -100) -> None:
        if alpha_start < 0 or alpha_end < 0:
            raise ValueError(f"maxsup: alpha_start and alpha_end must be >= 0, got {alpha_start} and {alpha_end}")
        self.alpha_start, self.alpha_end, self.ignore_index = float(alpha_start), float(alpha_end), ignore_index
        self._alphas: dict[int, tuple[float, float]] = {}   # generation -> (first, latest) alpha

    def alpha_at(self, step: int, total_steps: int | None) -> float:
        """Alpha at optimizer ``step`` (0-based) of a training of ``total_steps`` steps."""
        if not total_steps or total_steps <= 1:
            return maxsup_alpha(0.0 if not total_steps else 1.0, self.alpha_start, self.alpha_end)
        return maxsup_alpha(step / (total_steps - 1), self.alpha_start, self.alpha_end)

    @hookimpl
    def configure(self, run: Any) -> None:
        caps.require(run.task, caps.LabelledLogits, plugin="maxsup", why="replace the task's cross-entropy")

    @hookimpl
    def generation_start(self, generation: int) -> None:
        self._alphas.pop(generation, None)

    @hookimpl
    def loss_terms(self, module: Any, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        logits, labels = _logits_labels(outputs, "maxsup")
        progress = module.progress
        alpha = self.alpha_at(progress.step, progress.total_steps)
        generation = module.generation
        # the first alpha from the schedule, not from the first step seen: a generation may resume mid-way
        self._alphas[generation] = (self.alpha_at(0, progress.total_steps), alpha)
        return {"maxsup": maxsup_loss(logits, labels, alpha, ignore_index=self.ignore_index)}

    @hookimpl
    def metrics(self, generation: int) -> dict[str, float]:
        seen = self._alphas.get(generation)
        if not seen:
            return {}
        return {"maxsup/alpha_first": seen[0], "maxsup/alpha_last": seen[-1]}


class LabelSmoothing:
    """Label smoothing (Szegedy et al. 2016) in place of the task's cross-entropy: the baseline MaxSup fixes.

    Args:
        smoothing: mass spread uniformly over the C classes (0.1 as in the MaxSup paper's baseline).
        ignore_index: target value left out of the loss (padding).

    Loss term: ``label_smoothing`` (the whole loss).
    """

    replaces_task_loss = True

    def __init__(self, smoothing: float = 0.1, ignore_index: int = -100) -> None:
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"label-smoothing: smoothing must be in [0, 1], got {smoothing}")
        self.smoothing, self.ignore_index = float(smoothing), ignore_index

    @hookimpl
    def configure(self, run: Any) -> None:
        caps.require(run.task, caps.LabelledLogits, plugin="label-smoothing", why="replace the task's cross-entropy")

    @hookimpl
    def loss_terms(self, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        logits, labels = _logits_labels(outputs, "label-smoothing")
        return {"label_smoothing": label_smoothing_loss(logits, labels, self.smoothing,
                                                        ignore_index=self.ignore_index)}
