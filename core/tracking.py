"""One tracker run per collapsekit run: the user's Lightning loggers across all generations.

The loggers named in ``trainer.logger`` (TensorBoard, MLflow, W&B, CSV or any Lightning ``Logger``)
are built once per process and shared by every generation's ``Trainer``, each wrapped in a
:class:`ContinuousStepLogger`:

* **one step axis**: generation ``g`` logs its training step ``s`` at ``offset(g) + s``, where
  ``offset(g)`` is the sum of ``train/steps`` of the generations before it;
* **generation metrics** (every key of ``gen_<g>/metrics.json``) are logged once per generation at
  ``step = g``; the per-generation means ``loss/<term>`` go in as ``loss_mean/<term>``, since
  ``loss/<term>`` is the per-step curve (W&B: against its own ``generation`` axis);
* **hyperparameters**: the resolved config, once, when the tracker run is created (Lightning's
  per-fit ``log_hyperparams`` call with the module's empty hyperparameters and its ``finalize`` are
  absorbed; :meth:`Tracking.close` finalizes);
* **resume**: ``tracking.json`` in the run directory pins each logger's run identity (TensorBoard
  ``version``, MLflow ``run_id``, W&B ``id``; the constructor argument is set on resume, so the same
  event folder / MLflow run / W&B run continues), the generations already sent (a generation read
  back from disk is sent only if it never was) and the last training step sent: a resumed process
  sends only later steps, so the steps of a generation redone after a crash are not logged twice
  (the redo reproduces them from the same seeds; the tracker keeps the first attempt's points).

Only global rank 0 logs and writes ``tracking.json`` (Lightning's ``rank_zero_only``).
Lightning's ``CSVLogger`` is not pinned: it deletes the ``metrics.csv`` of an existing version
folder, so a resumed process writes its next version folder.
"""
from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from .distributed import process_rank
from .errors import RunStateError
from .fileio import atomic_write_json

STATE_FILE = "tracking.json"


def generation_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics.json`` as the trackers get it: ``loss/<term>`` (a generation's mean) -> ``loss_mean/<term>``."""
    return {(f"loss_mean/{k[5:]}" if k.startswith("loss/") else k): float(v) for k, v in metrics.items()}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_loggers(specs: Iterable[Any], pins: Mapping[int, Mapping[str, Any]]) -> list[Logger]:
    """Instantiate logger ``specs`` (``{"class_path", "init_args"}`` or ready ``Logger`` objects);
    spec ``i`` gets the constructor arguments ``pins[i]["args"]`` when ``pins[i]["class"]`` is its class."""
    loggers = []
    for i, spec in enumerate(specs):
        if isinstance(spec, Logger):
            loggers.append(spec)
            continue
        if hasattr(spec, "as_dict"):                    # a jsonargparse Namespace
            spec = spec.as_dict()
        cls = _import_class(spec["class_path"])
        args = dict(spec.get("init_args") or {})
        pin = pins.get(i)
        if pin and pin.get("class") == _qualname(cls):
            args.update(pin["args"])
        loggers.append(cls(**args))
    return loggers


# -- what differs between trackers ----------------------------------------------------------------
def reopen_args(logger: Logger) -> dict[str, Any]:
    """The constructor arguments that reopen ``logger``'s tracker run in a later process (creating the
    run now if needed); ``{}`` when it cannot be reopened (CSV and unknown loggers)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    if isinstance(logger, TensorBoardLogger):
        return {"version": logger.version}
    if isinstance(logger, MLFlowLogger):
        return {"run_id": logger.run_id}
    if isinstance(logger, WandbLogger):
        return {"id": logger.experiment.id}
    return {}


def _reopened(logger: Logger, state_file: Path, pin: Mapping[str, Any]) -> None:
    """Check that a pinned tracker run can be continued; mark it running again (MLflow keeps the
    status the last process set)."""
    from lightning.pytorch.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        return
    try:
        logger.experiment.update_run(pin["run_id"], status="RUNNING")
    except Exception as exc:  # noqa: BLE001 - the store raises its own types; each becomes one message
        raise RunStateError(f"{state_file} continues MLflow run {pin['run_id']}, which the tracking store "
                            f"cannot give back ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Point "
                            f"the logger at the store that holds it, or delete {state_file} to log the rest of "
                            f"the run to a new tracker run.") from None


def _send_generation(logger: Logger, generation: int, metrics: Mapping[str, float]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):                 # W&B has one step counter: give these their own axis
        run = logger.experiment
        run.define_metric("generation")
        for key in metrics:
            run.define_metric(key, step_metric="generation")
        run.log({**metrics, "generation": generation})
    else:
        logger.log_metrics(dict(metrics), step=generation)
    _flush(logger)


def _flush(logger: Logger) -> None:
    """Hand what ``logger`` buffered to its store (TensorBoard buffers events up to ``flush_secs``)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    logger.save()
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.flush()


def _close(logger: Logger, status: str) -> None:
    from lightning.pytorch.loggers import WandbLogger

    logger.finalize(status)
    if isinstance(logger, WandbLogger) and process_rank() == 0:
        import wandb

        if wandb.run is not None:                       # Lightning leaves the W&B run open until exit
            wandb.run.finish(exit_code=0 if status == "success" else 1)


# -- the state file ----------------------------------------------------------------------------------
class TrackingState:
    """``tracking.json``: per logger (by position) its ``class``, reopening ``pin``, a token naming the
    tracker run (``opened``), the ``generations`` sent and the ``last_step`` sent. A write merges an entry
    with the file's entry of the same tracker run (generations joined, the larger ``last_step`` kept), so
    copies held by spawned processes never move it back."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.loggers: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.path.read_text()).get("loggers") or [])
        except (OSError, ValueError, AttributeError):
            return []

    def write(self) -> None:
        on_disk = self._read()
        for i, entry in enumerate(self.loggers):
            old = on_disk[i] if i < len(on_disk) else None
            if old and old.get("opened") == entry["opened"]:
                entry["generations"] = sorted(set(entry["generations"]) | set(old.get("generations") or []))
                entry["last_step"] = max(entry["last_step"], int(old.get("last_step", -1)))
        atomic_write_json(self.path, {"loggers": self.loggers})


class ContinuousStepLogger(Logger):
    """``inner`` as one generation's ``Trainer`` sees it: steps shifted by ``offset``; steps up to
    ``skip_through`` (sent by an earlier process) dropped; Lightning's per-fit (empty) hyperparameters
    and ``finalize`` absorbed (the :class:`Tracking` logs the config once and finalizes at the end).
    Everything else (``experiment``, ``save_dir``, ...) is ``inner``'s."""

    def __init__(self, inner: Logger, offset: int, skip_through: int, state: TrackingState | None,
                 index: int) -> None:
        super().__init__()
        self.inner, self.offset, self.skip_through = inner, offset, skip_through
        self._state, self._index = state, index
        self._sent: int | None = None

    @property
    def name(self) -> Any:
        return self.inner.name

    @property
    def version(self) -> Any:
        return self.inner.version

    @property
    def save_dir(self) -> Any:
        return self.inner.save_dir

    @property
    def root_dir(self) -> Any:
        return self.inner.root_dir

    @property
    def log_dir(self) -> Any:
        return self.inner.log_dir

    @property
    def group_separator(self) -> str:
        return self.inner.group_separator

    @property
    def experiment(self) -> Any:
        return self.inner.experiment

    def __getattr__(self, name: str) -> Any:
        if name == "inner":                             # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            self.inner.log_metrics(metrics, None)
            return
        step = self.offset + int(step)
        if step <= self.skip_through:
            return
        self.inner.log_metrics(metrics, step)
        self._sent = step

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Passed on unless empty: Lightning calls it at every fit with the module's (empty) hyperparameters,
        and the run's resolved config was logged once when the tracker run was created."""
        if params:
            self.inner.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.inner.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.inner.after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def save(self) -> None:
        _flush(self.inner)
        if self._sent is not None and self._state is not None:
            entry = self._state.loggers[self._index]
            if self._sent > entry["last_step"]:
                entry["last_step"] = self._sent
                self._state.write()

    def finalize(self, status: str) -> None:
        """End of one generation's fit: flush, but keep the tracker run open for the next generation."""
        self.save()


class Tracking:
    """The user's loggers for a whole run: one tracker run, one step axis, resumable.

    ``loggers``: specs as in ``trainer.logger`` (``{"class_path", "init_args"}``, a jsonargparse
    Namespace, or a list of them) or ready ``Logger`` objects (those cannot be reopened by a later
    process: give them their run id yourself). Use :meth:`loggers_for` as each generation's
    ``Trainer(logger=...)``, :meth:`on_generation` as :func:`collapsekit.loop.execute`'s
    ``on_generation`` and :meth:`close` (or ``with Tracking(...)``) when the run ends.
    Nothing touches the trackers before the first of these calls, i.e. after the run directory
    is prepared.
    """

    def __init__(self, run: Any, loggers: Any) -> None:
        self.run = run
        self.specs = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
        self._loggers: list[Logger] | None = None
        self._state: TrackingState | None = None
        self._skip: list[int] = []

    # -- opening ---------------------------------------------------------------------------------------
    def _open(self) -> list[Logger]:
        if self._loggers is not None:
            return self._loggers
        state = TrackingState(self.run.dir / STATE_FILE)
        pins = {i: {"class": e.get("class"), "args": e["pin"]} for i, e in enumerate(state.loggers) if e.get("pin")}
        loggers = build_loggers(self.specs, pins)
        lead = process_rank() == 0
        entries = []
        for i, logger in enumerate(loggers):
            cls = _qualname(type(logger))
            if i in pins and pins[i]["class"] == cls:
                entries.append(state.loggers[i])        # the same tracker run, reopened through its pin
                if lead:
                    _reopened(logger, state.path, pins[i]["args"])
                continue
            entries.append({"class": cls, "pin": reopen_args(logger) if lead else {}, "opened": uuid.uuid4().hex,
                            "generations": [], "last_step": -1})
            if lead:
                logger.log_hyperparams(self.run.config_dict)
                _flush(logger)
        state.loggers = entries
        if lead:
            state.write()
        self._state, self._loggers = state, loggers
        self._skip = [int(e["last_step"]) for e in entries]
        return loggers

    # -- the three calls of a run ------------------------------------------------------------------------
    def step_offset(self, generation: int) -> int:
        """Training steps of the generations before ``generation`` (their ``train/steps``)."""
        return sum(int(self.run.metrics_of(g).get("train/steps", 0)) for g in range(generation))

    def loggers_for(self, generation: int) -> list[Logger]:
        """The loggers of ``generation``'s ``Trainer``: the shared ones, on the run's step axis."""
        offset = self.step_offset(generation)
        return [ContinuousStepLogger(logger, offset, self._skip[i], self._state, i)
                for i, logger in enumerate(self._open())]

    def on_generation(self, generation: int, metrics: Mapping[str, float], resumed: bool = False) -> None:
        """Send ``generation``'s metrics at ``step = generation`` to every logger that has not had them."""
        if process_rank() != 0:
            return
        loggers = self._open()
        sent = False
        for logger, entry in zip(loggers, self._state.loggers):
            if generation in entry["generations"]:
                continue
            _send_generation(logger, generation, generation_metrics(metrics))
            entry["generations"] = sorted({*entry["generations"], generation})
            sent = True
        if sent:
            self._state.write()

    def close(self, status: str = "success") -> None:
        """Finalize every logger (``status``: ``success`` or ``failed``, as Lightning passes it)."""
        if self._loggers is None:
            return
        for logger in self._loggers:
            _close(logger, status)
        self._loggers = None

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.close("success" if kind is None else "failed")
