"""One benchmark cell: its run config, its run through the engine, and whether it is already finished.

A cell is a dict made by :func:`collapsekit.bench.plan` (a task's preset) or
:func:`collapsekit.bench.config_plan` (a user's run config): ``task``, ``method``, ``seed``,
``plugins`` (the method's), ``threads``, ``generations``, ``headline`` and either ``config`` (the
user's resolved run config, run through the ``collapsekit run`` parser, and ``task_update``: task settings a
variant changes) or the preset's
``class_path``/``task_args``/``trainer``/``init``/``samples_per_generation``. Its run directory is
``<root>/<method>-s<seed>/``, an ordinary run (``collapsekit run --config <its config.yaml>`` re-runs it).

A cell that finishes gets a record ``<root>/<name>.cell.json`` holding its *key*: a hash of its
config (without the keys that do not change its numbers: ``run.root``, ``run.overwrite``,
``run.checkpoint_every``, the Trainer's progress bar, summary, logger and callbacks; ``run.generations``
is compared on its own) and of the versions of collapsekit and of the distributions providing its task
and plugins. A re-run skips a cell whose record has the same key and generations.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import importlib
import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from ..errors import CollapsekitError, Preempted
from ..fileio import atomic_write_bytes
from ..quiet import silence_lightning

RECORD_SUFFIX = ".cell.json"
WALL_SUFFIX = ".wall.json"
UNKEYED = ("run.root", "run.overwrite", "run.checkpoint_every", "run.generations", "trainer.enable_progress_bar",
           "trainer.enable_model_summary", "trainer.logger", "trainer.callbacks")
"""Config keys that do not enter a cell's key (``run.generations`` is compared on its own)."""


def cell_name(method: str, seed: int) -> str:
    """Run name of a cell: ``<method>-s<seed>`` (path separators replaced)."""
    return f"{method.replace('/', '_').replace(os.sep, '_')}-s{seed}"


def cell_config(cell: Mapping, root: str | Path) -> dict:
    """The run config (``run``/``task``/``trainer``) of a cell, as written to its ``config.yaml``.

    ``collapsekit run --config <that file>`` reproduces the cell. A cell of a user's config is that
    config with the cell's name, root, seed and threads, and the method's plugins after the config's own.
    """
    from ..run import RunConfig

    name = cell_name(cell["method"], cell["seed"])
    if "config" in cell:
        config = copy.deepcopy(dict(cell["config"]))
        run = dict(config.get("run") or {})
        run.update(name=name, root=str(root), seed=int(cell["seed"]), threads=cell.get("threads"),
                   plugins=[*(run.get("plugins") or []), *cell["plugins"]])
        if cell.get("task_update"):            # a variant of task settings (e.g. another inference backend)
            task = dict(config.get("task") or {})
            config["task"] = {**task, "init_args": {**(task.get("init_args") or {}), **cell["task_update"]}}
        return {**config, "run": run}
    config = RunConfig(name=name, root=str(root), generations=int(cell["generations"]), seed=int(cell["seed"]),
                       init=cell["init"], plugins=list(cell["plugins"]),
                       samples_per_generation=cell.get("samples_per_generation"), threads=cell.get("threads"))
    return {"run": asdict(config), "task": {"class_path": cell["class_path"], "init_args": dict(cell["task_args"])},
            "trainer": dict(cell["trainer"])}


# -- running a cell ---------------------------------------------------------------------------------
def quiet() -> None:
    """Silence Lightning for a bench process (cells print their own one-line progress)."""
    silence_lightning(extra_warnings=(".*non-writable.*", ".*module\\(s\\) in eval mode.*",
                                      ".*smaller than the logging interval.*"))


def _task_and_trainer(cell: Mapping, config_dict: Mapping):
    """``(task, trainer factory)`` of a cell: a user's config goes through the ``collapsekit run`` parser
    (so class_path callbacks, loggers and nested task arguments are built as ``collapsekit run`` builds them)."""
    from ..loop import trainer_factory

    if "config" not in cell:
        module, _, cls_name = cell["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        return cls(**cell["task_args"]), trainer_factory(**cell["trainer"])
    from ..runparser import build_run_parser, instantiate, trainer_kwargs

    parser = build_run_parser()
    cfg = parser.parse_object(copy.deepcopy(dict(config_dict)))
    task = instantiate(parser, cfg).task
    return task, lambda generation, gen_dir: trainer_factory(**trainer_kwargs(parser, cfg))(generation, gen_dir)


def run_cell(cell: Mapping, root: str | Path, label: str = "", progress: bool = True) -> dict:
    """Run (or resume) one cell through the engine.

    Returns ``{"metrics": [per generation], "seconds": wall s, "cpu_seconds": process CPU s}``;
    both times accumulate over all invocations (kept in ``<root>/<cell name>.wall.json``)
    and resumed generations add nothing.
    """
    from ..dispatch import build_manager
    from ..loop import execute
    from ..run import Run, RunConfig

    quiet()
    import lightning.pytorch  # noqa: F401 - imported before the clock starts, not billed to the first cell
    import transformers  # noqa: F401

    config_dict = cell_config(cell, root)
    config = RunConfig(**config_dict["run"])
    wall_file = Path(root) / f"{config.name}{WALL_SUFFIX}"
    spent = _spent(wall_file)
    headline = cell.get("headline") or []
    last = [time.perf_counter(), time.process_time()]
    task, make_trainer = _task_and_trainer(cell, config_dict)
    run = Run(config, task, build_manager(config.plugins), config_dict)

    def on_generation(generation: int, metrics: dict, resumed: bool) -> None:
        now = [time.perf_counter(), time.process_time()]
        if not resumed:
            spent["seconds"] += now[0] - last[0]
            spent["cpu_seconds"] += now[1] - last[1]
            if run.is_lead:
                Path(root).mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(wall_file, json.dumps(spent).encode())
        last[:] = now
        if progress and run.is_lead:
            shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in headline if k in metrics)
            state = "resumed" if resumed else f"{spent['seconds']:.0f} s"
            print(f"  {label} gen {generation + 1}/{cell['generations']}: {shown} ({state})", flush=True)

    last[:] = [time.perf_counter(), time.process_time()]
    metrics = execute(run, make_trainer, on_generation)
    return {"metrics": metrics, **spent}


def run_cell_safe(cell: Mapping, root: str, label: str, progress: bool, fail_fast: bool) -> dict:
    """:func:`run_cell`, with an error returned as ``{"error": ..., "detail": ...}`` instead of raised
    (``fail_fast``: raised). A stop (``KeyboardInterrupt``, :class:`~collapsekit.errors.Preempted`) is raised."""
    try:
        return run_cell(cell, root, label, progress)
    except (KeyboardInterrupt, Preempted):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded per cell; the suite goes on
        if fail_fast:
            raise
        detail = str(exc) if isinstance(exc, CollapsekitError) else \
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
        return {"error": f"{type(exc).__name__}: {exc}", "detail": detail}


# -- finished cells ------------------------------------------------------------------------------------
def keyed_config(config: Mapping) -> dict[str, Any]:
    """The flattened config entries that make a cell's numbers (all but :data:`UNKEYED`)."""
    from ..run import flatten

    return {k: v for k, v in flatten(json.loads(json.dumps(config, default=str))).items()
            if not any(k == u or k.startswith(u + ".") for u in UNKEYED)}


def cell_key(config: Mapping, versions: Mapping[str, str]) -> str:
    """Hash of :func:`keyed_config` and ``versions`` (``{distribution: version}``)."""
    blob = json.dumps({"config": keyed_config(config), "versions": dict(versions)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def record_path(root: str | Path, cell: Mapping) -> Path:
    return Path(root) / f"{cell_name(cell['method'], cell['seed'])}{RECORD_SUFFIX}"


def write_record(root: str | Path, cell: Mapping, config: Mapping, versions: Mapping[str, str]) -> None:
    """Mark a cell finished: its key, keyed config, versions and generations."""
    record = {"key": cell_key(config, versions), "generations": int(cell["generations"]),
              "versions": dict(versions), "config": keyed_config(config),
              "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(record_path(root, cell), json.dumps(record, indent=1, sort_keys=True, default=str).encode())


def cell_state(root: str | Path, cell: Mapping, config: Mapping, versions: Mapping[str, str]) -> tuple[str, str]:
    """``("finished" | "stale" | "todo", why)`` of a cell under ``root``.

    ``finished``: its record has this key and these generations, and its run directory all of them.
    ``stale``: its record (or, without a record, its run directory's ``config.yaml``) was made by another
    config or other versions; ``why`` names the differences. ``todo``: not started, unfinished, or asked
    for other generations (the engine resumes or extends it).
    """
    from ..run import config_differences, finished_generations

    run_dir = Path(root) / cell_name(cell["method"], cell["seed"])
    try:
        record = json.loads(record_path(root, cell).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and "key" in record:
        if record["key"] != cell_key(config, versions):
            return "stale", _differences(record, config, versions)
        if record.get("generations") == int(cell["generations"]) \
                and finished_generations(run_dir) >= int(cell["generations"]):
            return "finished", ""
        return "todo", ""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        import yaml

        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        diff = config_differences(old, json.loads(json.dumps(config, default=str)))
        if diff:
            return "stale", "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:4])
    return "todo", ""


def _differences(record: Mapping, config: Mapping, versions: Mapping[str, str]) -> str:
    old, new = dict(record.get("config") or {}), keyed_config(config)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    before = dict(record.get("versions") or {})
    diffs += [f"{d} {before.get(d)} -> {versions.get(d)}" for d in sorted(set(before) | set(versions))
              if before.get(d) != versions.get(d)]
    return "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "") \
        if diffs else "a different config"


def remove_cell(root: str | Path, cell: Mapping) -> None:
    """Delete a cell's run directory, record and time file (to recompute it from scratch)."""
    import shutil

    name = cell_name(cell["method"], cell["seed"])
    shutil.rmtree(Path(root) / name, ignore_errors=True)
    for suffix in (RECORD_SUFFIX, WALL_SUFFIX):
        (Path(root) / f"{name}{suffix}").unlink(missing_ok=True)


def finished_result(root: str | Path, cell: Mapping) -> dict:
    """The result of a finished cell read back from its run directory (as :func:`run_cell` returned it)."""
    from ..run import read_metrics

    name = cell_name(cell["method"], cell["seed"])
    metrics = [read_metrics(Path(root) / name, g) for g in range(int(cell["generations"]))]
    return {"metrics": metrics, **_spent(Path(root) / f"{name}{WALL_SUFFIX}")}


def _spent(wall_file: Path) -> dict[str, float]:
    """Wall and CPU seconds a cell has spent so far (its ``.wall.json``; zeros when there is none)."""
    try:
        spent = json.loads(wall_file.read_text())
        return {"seconds": float(spent["seconds"]), "cpu_seconds": float(spent.get("cpu_seconds", 0.0))}
    except (OSError, ValueError, KeyError, TypeError):
        return {"seconds": 0.0, "cpu_seconds": 0.0}
