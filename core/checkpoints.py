"""Step checkpoints inside a generation, and a clean stop when the job is preempted.

One generation can train for hours, so a killed run should not redo all of it. With
``run.checkpoint_every: N`` the engine saves a Lightning checkpoint every ``N`` optimizer steps, and on
``SIGTERM`` / ``SIGUSR1`` (what SLURM sends before preempting or at the time limit) it saves one at the
end of the current step and stops with :class:`~collapsekit.errors.Preempted`. A re-run of the same
command continues the unfinished generation from its newest checkpoint and ends with the numbers of an
uninterrupted run.

Layout of ``gen_<k>/checkpoints/`` (deleted once ``gen_<k>/done`` is written)::

    step_<s>.ckpt    Lightning checkpoint after optimizer step s (whole or absent: written to a
                     temporary name, fsynced, renamed)
    latest.json      {"file", "step", "sha256"} of the newest checkpoint, written after it; older
                     checkpoints are deleted only after latest.json names the new one

What a checkpoint restores: weights, plugin trainables, optimizer and LR-scheduler states and loop
progress (Lightning); the loss-term running means, the non-finite watch and every global random
state (:class:`~collapsekit.module.GenerationalModule`); the data order (:class:`ResumableLoader`:
the generators behind the loader's shuffling, and the batches of the interrupted pass to skip).
"""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.callbacks import Callback

from .errors import Preempted, RunStateError
from .fileio import atomic_write_json, sha256_file

CHECKPOINTS = "checkpoints"
"""Folder of a generation that holds its step checkpoints."""
LATEST = "latest.json"
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")
PREEMPTION_SYNC_STEPS = 10
"""Under several processes, how often (in optimizer steps) the ranks agree whether one was signalled:
a signal stops the run at the next such step (or checkpoint step), not at the very next step."""
"""Signals that stop training cleanly with a checkpoint (SLURM's preemption and time-limit warnings)."""


def checkpoint_dir(gen_dir: Path) -> Path:
    return Path(gen_dir) / CHECKPOINTS


def latest(gen_dir: Path) -> tuple[Path, int] | None:
    """``(path, step)`` of the newest step checkpoint of a generation, checked against its SHA-256;
    ``None`` when there is none. A missing or corrupted file raises :class:`RunStateError` saying how
    to restart the generation from its beginning instead."""
    folder = checkpoint_dir(gen_dir)
    record = folder / LATEST
    if not record.is_file():
        return None
    fix = (f"Delete {folder} to redo generation {Path(gen_dir).name} from its start (or restore the file), "
           f"then re-run the same command.")
    try:
        info = json.loads(record.read_text())
        path, step, digest = folder / info["file"], int(info["step"]), str(info["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RunStateError(f"step checkpoint record {record} is unreadable. {fix}") from None
    if not path.is_file():
        raise RunStateError(f"step checkpoint {path} named by {record} is missing. {fix}")
    if sha256_file(path) != digest:
        raise RunStateError(f"step checkpoint {path} is corrupted (checksum mismatch). {fix}")
    return path, step


def resume_step(gen_dir: Path) -> int | None:
    """The step :func:`latest` would resume from, read without checking anything (``None``: none)."""
    try:
        return int(json.loads((checkpoint_dir(gen_dir) / LATEST).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(gen_dir: Path) -> None:
    """Delete a generation's step checkpoints (call it once the generation is done)."""
    shutil.rmtree(checkpoint_dir(gen_dir), ignore_errors=True)


def save(trainer: Any, gen_dir: Path, step: int) -> Path:
    """Save ``trainer``'s checkpoint as ``step_<step>.ckpt`` atomically and make it the latest.

    Every process must call it (Lightning gathers state and writes on global rank 0 only); rank 0 then
    fsyncs and renames the file, writes ``latest.json`` and deletes older checkpoints.
    """
    import os

    folder = checkpoint_dir(gen_dir)
    final = folder / f"step_{step}.ckpt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    if trainer.is_global_zero:
        folder.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(tmp))
    if trainer.is_global_zero:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        atomic_write_json(folder / LATEST, {"file": final.name, "step": step, "sha256": sha256_file(final)})
        for old in folder.glob("step_*.ckpt"):
            if old != final:
                old.unlink(missing_ok=True)
    return final


# -- data order -------------------------------------------------------------------------------
def _generators(obj: Any, depth: int = 0) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader's order draws from: ``generator`` attributes of the loader,
    its ``sampler`` and ``batch_sampler``, and theirs (e.g. a ``BatchSampler`` over a ``RandomSampler``)."""
    found: list[torch.Generator] = []
    if obj is None or depth > 3:
        return found
    gen = getattr(obj, "generator", None)
    if isinstance(gen, torch.Generator):
        found.append(gen)
    for name in ("sampler", "batch_sampler"):
        for g in _generators(getattr(obj, name, None), depth + 1):
            if all(g is not f for f in found):
                found.append(g)
    return found


class ResumableLoader:
    """A task's data loader that can continue a pass over the data where a checkpoint left it.

    Iterating it iterates ``loader`` unchanged (same batches, same random draws), so wrapping never
    changes a run's numbers. :meth:`state` describes the pass after ``batches`` batches; after
    :meth:`resume` with that state, the next pass is the rest of that pass: the generators behind the
    loader's shuffling and the global CPU generator are set to their states at the start of the
    interrupted pass, the iterator is rebuilt, ``batches`` batches are drawn and dropped, and the
    global generator is put back (its state at the checkpoint already includes those draws).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.generators = _generators(loader)
        self._pass_start: dict | None = None
        self._resume: dict | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def _states(self) -> dict:
        return {"generators": [g.get_state() for g in self.generators], "torch": torch.get_rng_state()}

    def _set_generators(self, states: list) -> None:
        if len(states) != len(self.generators):
            raise RunStateError(f"the step checkpoint holds {len(states)} data-order generators but the task's "
                                f"loader has {len(self.generators)}; was the task changed? Delete the generation's "
                                "checkpoints folder to redo it from its start.")
        for g, state in zip(self.generators, states):
            g.set_state(state)

    def __iter__(self) -> Iterator[Any]:
        # a generator function: nothing happens until the first batch is asked for
        resume, self._resume = self._resume, None
        if resume is not None and resume["batches"] > 0:
            start = resume["pass_start"]
            here = torch.get_rng_state()
            self._set_generators(start["generators"])
            torch.set_rng_state(start["torch"])
            iterator = iter(self.loader)
            for _ in range(resume["batches"]):
                next(iterator)
            torch.set_rng_state(here)
            self._pass_start = start
        else:
            if resume is not None:
                self._set_generators(resume["generators"])
            self._pass_start = self._states()
            iterator = iter(self.loader)
        yield from iterator

    def state(self, batches: int) -> dict:
        """What :meth:`resume` needs to continue after ``batches`` batches of the current pass (a pass
        that is complete continues with the next one)."""
        try:
            complete = batches >= len(self.loader)
        except (TypeError, NotImplementedError):   # a loader without a length: its passes never end here
            complete = False
        if self._pass_start is None or complete:
            return {"batches": 0, "generators": [g.get_state() for g in self.generators]}
        return {"batches": batches, "pass_start": self._pass_start}

    def resume(self, state: dict) -> None:
        """Make the next pass continue the one :meth:`state` described."""
        self._resume = state


# -- the callback ---------------------------------------------------------------------------
class StepCheckpoints(Callback):
    """Lightning callback: a step checkpoint every ``every`` optimizer steps (``None``: never) and,
    when a preemption signal arrives during training, a checkpoint at the end of the current step
    followed by :class:`Preempted`.

    It handles ``SIGTERM`` and ``SIGUSR1`` (and a ``SLURMEnvironment``'s ``requeue_signal``) from
    ``on_train_start`` to the end of training (it replaces Lightning's handlers there, whose SIGTERM
    stop and SLURM ``hpc_ckpt`` save come mid-step or without the engine's state); outside that window
    the signals keep their previous handlers (by default they end the process; the newest checkpoint
    stays). ``loader`` is the
    :class:`ResumableLoader` the trainer iterates (``None``: the data order is not checkpointed).
    """

    def __init__(self, gen_dir: Path, generation: int, every: int | None, loader: ResumableLoader | None) -> None:
        self.gen_dir, self.generation, self.every, self.loader = Path(gen_dir), generation, every, loader
        self.received: str | None = None
        self._batches = 0
        self._step_seen = 0
        self._previous: dict[int, Any] = {}
        self.resumed_step: int | None = None

    # signals
    def _signals(self, trainer: Any) -> list[int]:
        nums = [getattr(signal, name) for name in PREEMPT_SIGNALS if hasattr(signal, name)]
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        extra = getattr(env, "requeue_signal", None)
        if extra is not None and extra not in nums:
            nums.append(extra)
        return nums

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        import threading

        self._step_seen = int(trainer.global_step)

        if threading.current_thread() is not threading.main_thread():
            return
        for num in self._signals(trainer):
            self._previous[num] = signal.signal(num, self._handle)

    def restore_signals(self) -> None:
        """Give the signals back their handlers from before training (Lightning's, which its teardown
        replaces in turn by those from before ``fit``); idempotent."""
        for num, handler in self._previous.items():
            signal.signal(num, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.restore_signals()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.restore_signals()

    # checkpoints
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        stepped, self._step_seen = step != self._step_seen, step
        if not stepped:                   # inside a gradient-accumulation window: no consistent state yet
            return
        due = bool(self.every and step % self.every == 0)
        preempt = self.received is not None
        if trainer.world_size > 1:
            # every rank must stop (and save) at the same step; they agree every PREEMPTION_SYNC_STEPS
            # steps (and at checkpoint steps) so that no step waits for a cross-rank reduction
            preempt = (due or step % PREEMPTION_SYNC_STEPS == 0) and bool(
                trainer.strategy.reduce_boolean_decision(preempt, all=False))
        if not (preempt or due):
            return
        self._batches = batch_idx + 1
        save(trainer, self.gen_dir, step)
        if preempt:
            self.restore_signals()
            raise Preempted(f"preempted ({self.received or 'signal on another rank'}) at generation "
                            f"{self.generation}, step {step}; a checkpoint is saved in "
                            f"{checkpoint_dir(self.gen_dir)}. Re-run the same command to resume.")

    def state_dict(self) -> dict:
        return {"loader": self.loader.state(self._batches) if self.loader is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.loader is not None and state.get("loader") is not None:
            self.loader.resume(state["loader"])

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        self.resumed_step = int(checkpoint.get("global_step", 0))

