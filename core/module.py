"""``GenerationalModule``: the LightningModule that trains one generation.

It delegates the forward and the task loss to the :class:`~collapsekit.task.Task`,
adds every plugin's ``loss_terms``, logs each term, keeps their running means
for ``metrics.json`` and stops with a clear message on a non-finite term.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from .task import Task

from .errors import CollapsekitError, NonFiniteLoss


class GenerationalModule(pl.LightningModule):
    """Train ``model`` on a task, with the loss terms of the run's plugins.

    ``hooks`` is a :class:`collapsekit.dispatch.Hooks` (``None``: task loss only);
    ``run`` and ``generation`` are exposed to plugins; ``reference_model`` is a
    frozen copy of ``model`` taken at construction when a plugin requires it.
    """

    def __init__(self, task: Any, model: torch.nn.Module | None = None, hooks: Any = None,
                 run: Any = None, generation: int = 0, requirements: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.task = task
        self.model = model if model is not None else task.build_model()
        self.hooks = hooks
        self.run = run
        self.generation = generation
        self.requirements = frozenset(requirements)
        self.reference_model = None
        if "reference_model" in self.requirements:
            import copy

            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._has_terms = bool(hooks and hooks.implementers("loss_terms"))
        self._replace_task_loss = bool(hooks and hooks.replaces_task_loss)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def configure_optimizers(self) -> Any:
        return self.task.configure_optimizers(self.model)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        outputs = self.task.step(self.model, batch, self.requirements)
        terms: dict[str, torch.Tensor] = {}
        owners: dict[str, str] = {}
        if not self._replace_task_loss:
            terms["task"] = outputs["loss"]
        if self._has_terms:
            extra, owners = self.hooks.merged_with_owners("loss_terms", module=self, batch=batch, outputs=outputs)
            for name, value in extra.items():
                if name in terms or name == "total":
                    raise CollapsekitError(f"plugin {self.hooks.plugin_label(owners[name])}: loss term name "
                                           f"{name!r} is reserved for the engine (loss/task, loss/total); rename it")
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise CollapsekitError(f"plugin {self.hooks.plugin_label(owners[name])}: loss term "
                                           f"{name!r} must be a scalar tensor, got {type(value).__name__}")
                terms[name] = value.reshape(())
        if not terms:
            raise CollapsekitError("no loss: the task loss is replaced but no plugin returned a loss term")
        total = sum(terms.values())
        self._check_finite(terms, owners, total, batch_idx)
        self._term_count += 1
        batch_size = self._batch_size(batch)
        for name, value in terms.items():
            v = float(value.detach())
            self._term_sums[name] = self._term_sums.get(name, 0.0) + v
            self.log(f"loss/{name}", v, batch_size=batch_size, on_step=True, on_epoch=False)
        self.log("loss/total", total.detach(), prog_bar=True, batch_size=batch_size)
        self._term_sums["total"] = self._term_sums.get("total", 0.0) + float(total.detach())
        return total

    @staticmethod
    def _batch_size(batch: Any) -> int:
        if isinstance(batch, dict) and batch:
            return len(next(iter(batch.values())))
        return 1

    def _check_finite(self, terms: dict[str, torch.Tensor], owners: dict[str, str], total: torch.Tensor,
                      batch_idx: int) -> None:
        if torch.isfinite(total).all():
            return
        bad = [n if n not in owners else f"{n!r} (from plugin {self.hooks.plugin_label(owners[n])})"
               for n, v in terms.items() if not torch.isfinite(v).all()]
        raise NonFiniteLoss(
            f"generation {self.generation}, step {self.global_step} (batch {batch_idx}): loss term "
            f"{', '.join(bad)} became non-finite. Finished generations are kept; lower the learning "
            f"rate or the term's coefficient and re-run the same command to resume.")

    def term_means(self) -> dict[str, float]:
        """Mean of every logged loss term over the training steps so far (``loss/<name>`` keys)."""
        if not self._term_count:
            return {}
        return {f"loss/{k}": v / self._term_count for k, v in self._term_sums.items()
                if math.isfinite(v)}


class TaskFitModule(GenerationalModule):
    """One plain Lightning fit of a task on its real data, without generations (``collapsekit fit``).

    Args:
        task: the task to fit (``class_path``/``init_args``).
        seed: seed of the task's data.
    """

    def __init__(self, task: Task, seed: int = 0) -> None:
        task.setup(seed)
        super().__init__(task)
        self.data_seed = seed

    def train_dataloader(self):
        return self.task.dataloader(self.task.real_pool(), shuffle=True, seed=self.data_seed)

    def on_train_end(self) -> None:
        metrics = self.task.evaluate(self.model.eval(), None)
        print("evaluation: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
