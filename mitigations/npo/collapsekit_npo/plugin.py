"""The ``gradient-ascent``, ``npo``, ``npo-rt`` and ``simnpo`` plugins: unlearning as generations.

A run with one of them (and ``run.init: previous``) is an unlearning experiment:

* generation 0 learns everything: the pool is the task's real pool and the loss is
  the task's own loss (logged as ``loss/nll``);
* generation ``g >= 1`` is unlearning phase ``g``: ``compose_pool`` returns the
  task's ``forget_pool()`` and the loss is replaced by GA, NPO or NPO+RT. Each
  phase stops after ``steps`` optimizer steps (default: one pass over the forget
  set) or at the trainer's ``max_steps``, whichever comes first -- the trainer's
  ``max_steps`` is the budget of generation 0. ``lr`` sets the phases' learning rate.
* With ``continue_optimizer`` (default) the phases are slices of *one* unlearning
  run: phase ``g >= 2`` starts from the optimizer state (Adam moments, step count)
  phase ``g - 1`` ended with, saved through the engine as
  ``gen_<g>/plugins/unlearning_optimizer.pt`` (checksummed in the manifest) so that a
  resumed run continues identically. Without it every phase restarts the optimizer,
  and Adam's first steps are then as large for NPO's shrinking gradient as for GA's.

The task must have the capability :class:`collapsekit.capabilities.ForgetRetain`
(e.g. :mod:`collapsekit.plugins.tasks.facts_unlearning`): ``forget_pool()``,
``retain_pool()``, ``answer_mask(batch)`` and a batch key ``"example_id"``; its
``step`` returns ``"logits"`` and ``"labels"``.

NPO's reference is the model at the start of unlearning (generation 0's final
weights). Its summed answer log-prob of every forget example is computed once, in the
first unlearning step, and kept on the device by ``example_id`` for the whole run, so
that a training step never waits for the device to look one up.
"""
from __future__ import annotations

import io
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import ConfigError, RunStateError, TaskIncompatible

from .cache import RefLogpTable
from .losses import gradient_ascent_loss, masked_nll, npo_loss, sequence_logprob, simnpo_loss

OPTIMIZER_FILE = "unlearning_optimizer.pt"


def _positive_int_or_none(value: Any, what: str, who: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: {what} must be an integer >= 1 or null, got {value!r}")
    return value


def _number(value: Any, what: str, who: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok or not np.isfinite(value):
        raise ValueError(f"{who}: {what} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class _Unlearning:
    """Shared wiring: forget-set pool, phase budget and optimizer, generation-0 learning loss."""

    replaces_task_loss: ClassVar[bool] = True
    name: ClassVar[str] = "unlearning"
    needs: ClassVar[frozenset[str]] = frozenset({"forget_data"})

    def __init__(self, steps: int | None = None, lr: float | None = None, continue_optimizer: bool = True) -> None:
        self.steps = _positive_int_or_none(steps, "steps", self.name)
        self.lr = None if lr is None else _number(lr, "lr", self.name)
        if not isinstance(continue_optimizer, bool):
            raise ValueError(f"{self.name}: continue_optimizer must be true or false, got {continue_optimizer!r}")
        self.continue_optimizer = continue_optimizer

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def configure(self, run):
        caps.require(run.task, caps.ForgetRetain, plugin=self.name, why="unlearn its forget split")
        if run.config.init == "scratch":
            raise ConfigError(
                f"{self.name}: run.init is 'scratch', so every unlearning generation would start from random "
                f"weights instead of the model that learned the facts; set run.init: previous (or base)")
        self.reset()

    @hookimpl
    def requirements(self):
        return set(self.needs)

    @hookimpl
    def compose_pool(self, run, generation, real):
        return real if generation == 0 else run.task.forget_pool()

    @hookimpl
    def generation_start(self, run, generation, module):
        if generation >= 1:
            state = self.carried_state(run, generation) if generation >= 2 and self.continue_optimizer else None
            if state is not None or self.lr is not None:
                module.restore_optimizer(state, self.lr)
        self.start_phase(run, generation, module)

    @hookimpl
    def generation_end(self, run, generation, module):
        if generation >= 1 and self.continue_optimizer:
            buf = io.BytesIO()
            torch.save(module.optimizer_state(), buf)
            run.save_file(generation, OPTIMIZER_FILE, buf.getvalue())

    @hookimpl
    def loss_terms(self, module, batch, outputs):
        if module.generation == 0:
            return {"nll": outputs["loss"]}
        missing = [k for k in ("logits", "labels") if k not in outputs]
        if missing or "example_id" not in batch:
            raise TaskIncompatible(f"{self.name} needs step outputs 'logits' and 'labels' and a batch key "
                                   f"'example_id'; task {module.task.name!r} gives outputs {sorted(outputs)} "
                                   f"and batch keys {sorted(batch)}")
        progress = module.progress
        budget = self.steps if self.steps is not None else progress.epoch_steps
        if budget is not None and progress.step + 1 >= budget:
            module.request_stop()           # this is the phase's last optimizer step
        return self.unlearn_terms(module, batch, outputs)

    # -- helpers --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop per-run state (called in ``configure``)."""

    def start_phase(self, run: Any, generation: int, module: Any) -> None:
        """Per-generation state of subclasses (called in ``generation_start``)."""

    def carried_state(self, run: Any, generation: int) -> list:
        """The optimizer state unlearning generation ``generation - 1`` ended with (checked against its
        manifest when that generation is finished)."""
        try:
            data = run.read_file(generation - 1, OPTIMIZER_FILE)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (RuntimeError, ValueError, EOFError) as exc:
            raise RunStateError(
                f"{self.name}: cannot read the optimizer state that unlearning generation {generation} continues "
                f"from ({type(exc).__name__}: {exc}). Delete {run.gen_dir(generation - 1)} and the generations "
                f"after it and re-run, or set continue_optimizer: false") from None

    def unlearn_terms(self, module: Any, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, Any]
                      ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class RetainBatches:
    """Retain batches drawn uniformly with replacement from ``pool`` with ``generator``; the retain set is moved
    to the training device once and indexed there, so a training step does not wait for the device."""

    def __init__(self, who: str, pool: Any, generator: torch.Generator) -> None:
        if len(pool) == 0:
            raise TaskIncompatible(f"{who}: the task's retain_pool() is empty; give the task retain data "
                                   f"(or use a method without a retain term)")
        self.pool, self.generator = pool, generator
        self._on: dict[str, torch.Tensor] | None = None

    def draw(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """``n`` retain items on ``device``."""
        if self._on is None or next(iter(self._on.values())).device != device:
            self._on = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in self.pool.arrays.items()}
        idx = torch.randint(len(self.pool), (n,), generator=self.generator).to(device)
        return {k: v[idx] for k, v in self._on.items()}


def retain_term(module: Any, retain: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean answer-token NLL of the ``retain`` batch under the model being trained."""
    out = module.task.step(module.model, retain, module.requirements)
    return masked_nll(out["logits"], out["labels"], module.task.answer_mask(retain))


_COMMON_ARGS = """        steps: optimizer steps per unlearning generation (null: one pass over the forget set).
        lr: learning rate of the unlearning generations (null: the task's optimizer as built).
        continue_optimizer: unlearning generation g >= 2 continues the optimizer state of g - 1."""


class GradientAscent(_Unlearning):
    __doc__ = f"""Gradient ascent on the forget set: loss ``-NLL`` of the forget answers (the baseline that collapses).

    Args:
{_COMMON_ARGS}

    Loss terms: ``nll`` (generation 0), ``ga`` = minus the mean answer-token NLL (generations >= 1).
    """

    name = "gradient-ascent"

    def unlearn_terms(self, module, batch, outputs):
        mask = module.task.answer_mask(batch)
        return {"ga": gradient_ascent_loss(outputs["logits"], outputs["labels"], mask)}


class NPO(_Unlearning):
    __doc__ = f"""Negative Preference Optimization (Zhang et al. 2024) on the forget set, without a retain term.

    Args:
        beta: inverse temperature of NPO (open-unlearning's default 0.1).
{_COMMON_ARGS}
        cache_reference: compute every forget example's reference log-prob once, in the first
            unlearning step, and reuse it (default); false recomputes the batch's with a
            reference forward pass every step, as open-unlearning does (same values, slower).

    Loss terms: ``nll`` (generation 0), ``npo`` (generations >= 1). Metrics:
    ``<name>/ref_cached`` (forget examples with a cached reference log-prob) and
    ``<name>/ref_forwards`` (examples sent through the reference model by this process:
    each forget example once with the cache, so it equals ``ref_cached``).
    """

    name = "npo"
    needs = frozenset({"forget_data", "reference_model"})

    def __init__(self, beta: float = 0.1, steps: int | None = None, lr: float | None = None,
                 continue_optimizer: bool = True, cache_reference: bool = True) -> None:
        super().__init__(steps, lr, continue_optimizer)
        self.beta = _number(beta, "beta", self.name)
        if not isinstance(cache_reference, bool):
            raise ValueError(f"{self.name}: cache_reference must be true or false, got {cache_reference!r}")
        self.cache_reference = cache_reference
        self.cache = RefLogpTable()
        self.recomputed = 0
        self._reference_ready = False

    def reset(self) -> None:
        self.cache = RefLogpTable()
        self.recomputed = 0

    def start_phase(self, run, generation, module):
        # the engine's reference_model is the model this generation starts from: generation 0's final
        # weights only in the first unlearning generation (or always with init: base)
        self._reference_ready = generation == 1 or run.config.init == "base"

    def reference_model(self, module: Any) -> torch.nn.Module:
        """The frozen start-of-unlearning model (generation 0's weights, loaded when first needed)."""
        ref = module.reference_model
        if ref is None:
            raise TaskIncompatible(f"{self.name}: the module has no reference_model; the engine provides one "
                                   f"when a plugin requires 'reference_model'")
        if not self._reference_ready:
            ref.load_state_dict(module.run.model_of(0).state_dict())
            ref.eval().requires_grad_(False)
            self._reference_ready = True
        return ref

    def reference_logp(self, module: Any, batch: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Reference log-probs [N] of the batch's forget examples, from the table (filled on first use
        with the whole forget set) or, without ``cache_reference``, from a reference forward pass."""
        if not self.cache_reference:
            self.recomputed += len(batch["tokens"])
            return self._reference_pass(module, batch).to(like.dtype)
        if not self.cache.filled:
            self._fill_table(module, like.device)
        return self.cache.lookup(batch["example_id"], dtype=like.dtype)

    def _reference_pass(self, module: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            out = module.task.step(self.reference_model(module), batch, frozenset())
            return sequence_logprob(out["logits"], out["labels"], module.task.answer_mask(batch))

    def _fill_table(self, module: Any, device: torch.device) -> None:
        forget = module.task.forget_pool()
        if len(forget) == 0:
            raise TaskIncompatible(f"{self.name}: the task's forget_pool() is empty; there is nothing to unlearn")
        ids = np.asarray(forget.arrays["example_id"])
        if (ids < 0).any():
            raise TaskIncompatible(f"{self.name}: forget_pool() holds example ids < 0; a forget example needs a "
                                   "stable id >= 0")
        size = module.task.batch_size
        values = [self._reference_pass(module, {k: torch.as_tensor(np.array(v[s:s + size])).to(device)
                                                for k, v in forget.arrays.items()})
                  for s in range(0, len(forget), size)]
        self.cache.fill(torch.as_tensor(ids, device=device), torch.cat(values), size=int(ids.max()) + 1)

    def forget_logps(self, module, batch, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp, ref_logp)`` [N] of the forget batch: summed answer log-probs, model and reference."""
        logp = sequence_logprob(outputs["logits"], outputs["labels"], module.task.answer_mask(batch))
        return logp, self.reference_logp(module, batch, logp)

    def unlearn_terms(self, module, batch, outputs):
        logp, ref = self.forget_logps(module, batch, outputs)
        return {"npo": npo_loss(logp, ref, self.beta)}

    @hookimpl
    def metrics(self):
        return {f"{self.name}/ref_cached": float(len(self.cache)),
                f"{self.name}/ref_forwards": float(self.cache.forwarded + self.recomputed)}


class NPORT(NPO):
    __doc__ = f"""NPO+RT: NPO on the forget set plus the NLL of retain examples, as open-unlearning's NPO trainer.

    Loss ``forget_coeff * npo + retain_coeff * retain_nll`` (open-unlearning: ``gamma`` and
    ``alpha``, both 1 by default), where ``retain_nll`` is the mean answer-token NLL of a
    retain batch of the forget batch's size, drawn uniformly with replacement from
    ``task.retain_pool()`` (one random retain item per forget item, as open-unlearning
    pairs them) with ``run.torch_generator(generation, "npo-rt/retain")``.

    Args:
        beta: inverse temperature of NPO.
        cache_reference: as for ``npo``.
        retain_coeff: weight ``alpha`` of the retain NLL.
        forget_coeff: weight ``gamma`` of the NPO term.
{_COMMON_ARGS}

    Loss terms: ``nll`` (generation 0); ``npo`` (already times ``forget_coeff``) and
    ``retain_nll`` (already times ``retain_coeff``) in generations >= 1.
    """

    name = "npo-rt"

    def __init__(self, beta: float = 0.1, retain_coeff: float = 1.0, forget_coeff: float = 1.0,
                 steps: int | None = None, lr: float | None = None, continue_optimizer: bool = True,
                 cache_reference: bool = True) -> None:
        super().__init__(beta, steps, lr, continue_optimizer, cache_reference)
        self.retain_coeff = _number(retain_coeff, "retain_coeff", self.name, allow_zero=True)
        self.forget_coeff = _number(forget_coeff, "forget_coeff", self.name, allow_zero=True)
        self._retain: RetainBatches | None = None

    def start_phase(self, run, generation, module):
        super().start_phase(run, generation, module)
        self._retain = RetainBatches(self.name, run.task.retain_pool(), run.torch_generator(generation, "npo-rt/retain"))

    def retain_batch(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """``n`` retain items drawn uniformly with replacement (:class:`RetainBatches`)."""
        if self._retain is None:
            raise RuntimeError("npo-rt: generation_start was not called before loss_terms")
        return self._retain.draw(n, device)

    def unlearn_terms(self, module, batch, outputs):
        logp, ref = self.forget_logps(module, batch, outputs)
        retain_nll = retain_term(module, self.retain_batch(len(logp), outputs["logits"].device))
        return {"npo": self.forget_coeff * npo_loss(logp, ref, self.beta),
                "retain_nll": self.retain_coeff * retain_nll.to(logp.dtype)}


class SimNPO(_Unlearning):
    __doc__ = f"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO on the forget set.

    Loss ``simnpo_loss(logp, |y|, beta, gamma) + retain_coeff * retain_nll``: ``logp`` the summed
    answer log-prob of each forget example, ``|y|`` its answer length (tokens of ``answer_mask``);
    with ``retain_coeff > 0`` a retain batch is drawn as for ``npo-rt`` and its answer NLL added
    (the paper's regularised form). No reference model is kept.

    Args:
        beta: inverse temperature (default 2.5).
        gamma: reward margin ``gamma >= 0`` (open-unlearning's ``delta`` is ``gamma / beta``).
        retain_coeff: weight of the retain NLL (0: forget term only, like ``npo``).
{_COMMON_ARGS}

    Loss terms: ``nll`` (generation 0); ``simnpo`` and, with ``retain_coeff > 0``, ``retain_nll``
    (already times ``retain_coeff``) in generations >= 1.
    """

    name = "simnpo"

    def __init__(self, beta: float = 2.5, gamma: float = 0.0, retain_coeff: float = 0.0, steps: int | None = None,
                 lr: float | None = None, continue_optimizer: bool = True) -> None:
        super().__init__(steps, lr, continue_optimizer)
        self.beta = _number(beta, "beta", self.name)
        self.gamma = _number(gamma, "gamma", self.name, allow_zero=True)
        self.retain_coeff = _number(retain_coeff, "retain_coeff", self.name, allow_zero=True)
        self._retain: RetainBatches | None = None

    def start_phase(self, run, generation, module):
        if self.retain_coeff > 0:
            self._retain = RetainBatches(self.name, run.task.retain_pool(),
                                         run.torch_generator(generation, "simnpo/retain"))

    def unlearn_terms(self, module, batch, outputs):
        mask = module.task.answer_mask(batch)
        logp = sequence_logprob(outputs["logits"], outputs["labels"], mask)
        terms = {"simnpo": simnpo_loss(logp, mask.sum(-1), self.beta, self.gamma)}
        if self.retain_coeff > 0:
            retain_nll = retain_term(module, self._retain.draw(len(logp), outputs["logits"].device))
            terms["retain_nll"] = self.retain_coeff * retain_nll.to(logp.dtype)
        return terms
