"""The LightningModules of collapsekit.

:class:`TaskModule` trains a task's model on the task's loss. :class:`GenerationalModule`
trains one generation of a run: it adds every plugin's ``loss_terms``, logs each term,
keeps their running means (torchmetrics, on the device) for ``metrics.json``, watches
for non-finite terms without stalling the device, and offers plugins the engine's
services (training progress, extra trainable modules, an early stop, optimizer state)
so that no plugin touches Lightning or the Trainer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from torchmetrics.aggregation import MeanMetric

from .errors import CollapsekitError, NonFiniteLoss
from .seeds import global_rng_states, set_global_rng_states
from .task import Task


@dataclass(frozen=True)
class TrainingProgress:
    """Where a generation's training stands: optimizer ``step`` (0-based, steps done so far) of
    ``total_steps``, and ``epoch_steps``, the batches of one pass over the training pool (this
    process's share under DDP); ``None`` when unknown, e.g. before training starts."""

    step: int
    total_steps: int | None
    epoch_steps: int | None = None

    @property
    def fraction(self) -> float:
        """``step / total_steps`` (0 when the total is unknown)."""
        return self.step / self.total_steps if self.total_steps else 0.0


class TaskModule(pl.LightningModule):
    """Train ``model`` (default: ``task.build_model()``) on the task's own loss."""

    def __init__(self, task: Any, model: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.task = task
        self.model = model if model is not None else task.build_model()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def configure_optimizers(self) -> Any:
        return self.task.configure_optimizers(self.model)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.task.step(self.model, batch, frozenset())["loss"]
        self.log("loss/task", loss.detach(), prog_bar=True, batch_size=_batch_size(batch))
        return loss


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and batch:
        return len(next(iter(batch.values())))
    return 1


def _term_mean() -> MeanMetric:
    """The running mean of one loss term: float64, no NaN check (a check would read the value back)."""
    metric = MeanMetric(nan_strategy="disable")
    metric.set_dtype(torch.float64)
    return metric


class _ModelWithTrainables(torch.nn.Module):
    """What the task's optimizer is built on when plugins added trainables: the model's parameters,
    then the trainables' (exactly as if they were submodules of the model)."""

    def __init__(self, model: torch.nn.Module, trainables: torch.nn.ModuleDict) -> None:
        super().__init__()
        self.model, self.trainables = model, trainables

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        yield from self.model.parameters(recurse)
        yield from self.trainables.parameters(recurse)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from self.model.named_parameters(prefix, recurse, remove_duplicate)
        yield from self.trainables.named_parameters(prefix, recurse, remove_duplicate)


class GenerationalModule(TaskModule):
    """Train generation ``generation`` of ``run`` from ``model``, with the loss terms of the run's plugins.

    ``reference_model`` is a frozen copy of ``model`` taken at construction when a plugin
    requires ``"reference_model"``. Services for plugins: :attr:`progress`,
    :meth:`add_trainable` / :meth:`trainable`, :meth:`request_stop`,
    :meth:`restore_optimizer` / :meth:`optimizer_state`.
    """

    def __init__(self, run: Any, generation: int, model: torch.nn.Module) -> None:
        super().__init__(run.task, model)
        self.run = run
        self.generation = generation
        self.hooks = run.hooks
        self.requirements = frozenset(run.requirements)
        self.reference_model = None
        if "reference_model" in self.requirements:
            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._has_terms = bool(self.hooks and self.hooks.implementers("loss_terms"))
        self._replace_task_loss = bool(self.hooks and self.hooks.replaces_task_loss)
        self.trainables = torch.nn.ModuleDict()
        self.term_means_metric = torch.nn.ModuleDict()
        self._first_nonfinite: dict[str, torch.Tensor] = {}
        self._owners: dict[str, str] = {}
        self._restore: tuple[list | None, float | None] | None = None
        self._final_means: dict[str, float] | None = None

    # -- services for plugins ------------------------------------------------------------
    @property
    def progress(self) -> TrainingProgress:
        """Optimizer steps done so far in this generation and the generation's step budget."""
        trainer = self._trainer_or_none()
        if trainer is None:
            return TrainingProgress(0, None)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None:
            estimate = trainer.estimated_stepping_batches
            total = int(estimate) if estimate != float("inf") else None
        batches = trainer.num_training_batches
        epoch = int(batches) if isinstance(batches, (int, float)) and batches != float("inf") else None
        return TrainingProgress(int(trainer.global_step), total, epoch)

    def add_trainable(self, name: str, module: torch.nn.Module) -> None:
        """Train ``module`` with the model from this generation on (call it in ``generation_start``);
        it joins the task's optimizer like a submodule of the model but is never saved with the model."""
        if self._trainer_or_none() is not None:
            raise CollapsekitError(f"add_trainable({name!r}) after training started; call it in generation_start")
        if name in self.trainables:
            raise CollapsekitError(f"a trainable named {name!r} was already added; pick another name")
        self.trainables[name] = module

    def trainable(self, name: str) -> torch.nn.Module:
        """The module added as ``name`` by :meth:`add_trainable` (on the model's device)."""
        return self.trainables[name]

    def request_stop(self) -> None:
        """End this generation's training after the current optimizer step."""
        trainer = self._trainer_or_none()
        if trainer is None:
            raise CollapsekitError("request_stop() outside training: the generation has not started training")
        trainer.should_stop = True

    def restore_optimizer(self, state: list | None = None, lr: float | None = None) -> None:
        """Before the first step, load ``state`` (as :meth:`optimizer_state` returned it) into the task's
        optimizers and/or set every parameter group's learning rate to ``lr``."""
        self._restore = (state, lr)

    def optimizer_state(self) -> list[dict]:
        """The ``state_dict`` of every optimizer of this generation (call it in ``generation_end``)."""
        trainer = self._trainer_or_none()
        if trainer is None:
            raise CollapsekitError("optimizer_state() before training: there are no optimizers yet")
        return [optimizer.state_dict() for optimizer in trainer.optimizers]

    def _trainer_or_none(self) -> Any:
        try:
            return self.trainer
        except RuntimeError:            # not attached to a Trainer
            return None

    # -- Lightning -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if len(self.trainables):
            return self.task.configure_optimizers(_ModelWithTrainables(self.model, self.trainables))
        return self.task.configure_optimizers(self.model)

    # -- step checkpoints (collapsekit.checkpoints) -------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what Lightning does not save: the loss-term running means, the non-finite watch and the
        global random states (torch CPU and CUDA, NumPy, Python), so that a resumed generation draws
        the same numbers as an uninterrupted one."""
        checkpoint["collapsekit"] = {
            "generation": self.generation,
            "term_means": {name: {"state": {k: v.detach().cpu() for k, v in metric.metric_state.items()},
                                  "updates": int(metric._update_count)}
                           for name, metric in self.term_means_metric.items()},
            "first_nonfinite": {name: int(step) for name, step in self._first_nonfinite.items()},
            "owners": dict(self._owners),
            "rng": global_rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` added (the random states at once: nothing draws from
        them between here and the first resumed step); an optimizer state given through
        :meth:`restore_optimizer` is not applied over the checkpoint's."""
        saved = checkpoint.get("collapsekit")
        if saved is None or saved.get("generation") != self.generation:
            raise CollapsekitError(f"the step checkpoint was not written by generation {self.generation} of "
                                   "collapsekit; delete the generation's checkpoints folder to redo it")
        for name, entry in saved["term_means"].items():
            metric = _term_mean()
            for key, value in entry["state"].items():
                setattr(metric, key, value.to(torch.float64))
            metric._update_count = entry["updates"]
            self.term_means_metric[name] = metric
        self._first_nonfinite = {name: torch.tensor(step, dtype=torch.long)
                                 for name, step in saved["first_nonfinite"].items()}
        self._owners.update(saved["owners"])
        self._restore = None
        set_global_rng_states(saved["rng"])

    def on_train_start(self) -> None:
        self._first_nonfinite = {k: v.to(self.device) for k, v in self._first_nonfinite.items()}
        if self._restore is None:
            return
        state, lr = self._restore
        optimizers = self.trainer.optimizers
        if state is not None:
            if len(state) != len(optimizers):
                raise CollapsekitError(f"restore_optimizer: the state holds {len(state)} optimizers, the task "
                                       f"builds {len(optimizers)}")
            for optimizer, saved in zip(optimizers, state):
                optimizer.load_state_dict(saved)
        if lr is not None:
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
        self._restore = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        outputs = self.task.step(self.model, batch, self.requirements)
        terms: dict[str, torch.Tensor] = {}
        if not self._replace_task_loss:
            terms["task"] = outputs["loss"]
        if self._has_terms:
            extra, owners = self.hooks.merged_with_owners("loss_terms", module=self, batch=batch, outputs=outputs)
            self._owners.update(owners)
            for name, value in extra.items():
                if name in terms:
                    raise CollapsekitError(f"plugin {self.hooks.plugin_label(owners[name])}: loss term name "
                                           f"{name!r} is reserved for the engine (loss/task, loss/total); rename it")
                terms[name] = value.reshape(())
        if not terms:
            raise CollapsekitError("no loss: the task loss is replaced but no plugin returned a loss term")
        terms["total"] = sum(terms.values())
        log = self._logs_this_step()
        batch_size = _batch_size(batch) if log else None
        for name, value in terms.items():
            value = value.detach()
            self._record(name, value)
            if log:
                self.log(f"loss/{name}", value, batch_size=batch_size, on_step=True, on_epoch=False,
                         prog_bar=name == "total")
        return terms["total"]

    def _logs_this_step(self) -> bool:
        """Hand the terms to Lightning's ``log`` only on the steps its loggers record (every
        ``trainer.log_every_n_steps`` optimizer steps), the first and the last: on a small model a
        ``log`` call per term and step costs a fifth of the step. The running means see every step."""
        trainer = self._trainer_or_none()
        every = trainer.log_every_n_steps if trainer is not None else 0
        if not every:                   # no Trainer (a step run by hand) or logging switched off
            return False
        step = self.global_step
        return step == 0 or (step + 1) % every == 0 or (trainer.max_steps > 0 and step + 1 >= trainer.max_steps)

    def _record(self, name: str, value: torch.Tensor) -> None:
        """Update the term's running mean and remember the first step it was non-finite, on the device."""
        if name not in self.term_means_metric:
            self.term_means_metric[name] = _term_mean().to(value.device)
            self._first_nonfinite[name] = torch.full((), -1, dtype=torch.long, device=value.device)
        self.term_means_metric[name].update(value)
        first = self._first_nonfinite[name]
        bad = ~torch.isfinite(value) & (first < 0)
        self._first_nonfinite[name] = torch.where(bad, torch.full_like(first, self.global_step), first)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50) or 50))
        if (self.global_step + 1) % every == 0 or self.trainer.should_stop:
            self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()
        self._final_means = {f"loss/{k}": float(m.compute()) for k, m in self.term_means_metric.items()}

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLoss` naming the generation, step, term and plugin of the first
        non-finite loss term so far (reads a few scalars from the device)."""
        bad = {name: int(step) for name, step in self._first_nonfinite.items() if int(step) >= 0}
        if not bad:
            return
        name, step = min(bad.items(), key=lambda item: item[1])
        owner = self._owners.get(name)
        where = f"{name!r}" + (f" (from plugin {self.hooks.plugin_label(owner)})" if owner else "")
        raise NonFiniteLoss(
            f"generation {self.generation}, step {step}: loss term {where} became non-finite. Finished "
            f"generations are kept; lower the learning rate or the term's coefficient and re-run the same "
            f"command to resume.")

    def term_means(self) -> dict[str, float]:
        """Mean of every loss term over this generation's training steps (``loss/<name>`` keys),
        reduced over all processes (computed when training ends)."""
        if self._final_means is not None:
            return dict(self._final_means)
        return {f"loss/{k}": float(m.compute()) for k, m in self.term_means_metric.items()}


class TaskFitModule(TaskModule):
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
