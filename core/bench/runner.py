"""The shared benchmark suite: every (task, method, seed) cell run through the real engine.

A task class takes part by declaring ``bench_methods`` (methods that make sense on
it; ``"baseline"`` = no extra plugins), ``headline`` (metrics plotted first) and
a classmethod ``preset(name) -> dict`` of shape::

    {"task": {init_args}, "trainer": {Trainer kwargs}, "generations": G,
     # optional:
     "seeds": [0, 1], "methods": [...], "init": "scratch", "samples_per_generation": N,
     "opt_in": "why, e.g. its cost",   # left out unless named in ``tasks``
     "opt_in_methods": {"method": "why"},   # left out unless named in ``methods``
     "plugin_args": {"token-editing": {"threshold": 0.99}},
     "variants": {"latent-filter-random": {"plugin": "latent-filter", "init_args": {"scorer": "random"}},
                  "vllm": {"task_args": {"backend": "vllm"}}}}

Every method of a task gets the same preset (same budget). A method is a plugin
short name or several joined by ``+``; a part may also be a *variant* the preset declares (another
name for a plugin with other init_args, e.g. a control such as a random filter; its init_args are
merged over the plugin's ``plugin_args``, so the rest of its settings stay the same), or a variant of
the task's settings (``task_args`` merged over the preset's, no plugin: e.g. another inference backend). Instead of the
presets, a bench may run a user's own run config (``config=``, :mod:`.configplan`). Each cell is an
ordinary run directory ``OUT/runs/<preset or config name>/<task>/<method>-s<seed>/`` (its
``config.yaml`` re-runs it with ``collapsekit run --config``); a re-run skips finished cells
(:mod:`.cells`) and resumes unfinished ones. Cells run in this process, in worker processes or as
submitit jobs (:mod:`.executors`). Results: ``OUT/results.json`` (long format, documented in
``configs/bench/README.md``), ``OUT/RESULTS.md`` and ``OUT/plots/<task>.png``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import CollapsekitError, ConfigError, Preempted
from .cells import cell_config, run_cell  # noqa: F401 - run_cell re-exported
from .cells import quiet as _quiet  # noqa: F401 - used by .perf
from .methods import (BASELINE, check_method, check_plugin_args, check_variants, directions, method_parts,
                      method_plugins, method_task_args, select_methods)

PRESETS = ("smoke", "cpu", "gpu", "gpu-quick")
DEFAULT_SEEDS = {"smoke": (0,), "cpu": (0, 1), "gpu": (0, 1, 2), "gpu-quick": (0,)}
GPU_PRESETS = ("gpu", "gpu-quick")
CELL_FUNCTION = "collapsekit.bench.cells:run_cell_safe"


# -- plan --------------------------------------------------------------------------------------
def _deep_merge(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_tasks(names: Sequence[str] | None = None) -> tuple[dict[str, type], dict[str, str]]:
    """Task classes of the entry-point group ``collapsekit.tasks`` and import errors ``{name: error}``.

    With ``names``, exactly those tasks (any case, ``-``/``_`` ignored); an unknown name raises
    ``PluginNotFound`` with suggestions and a task that fails to import raises ``PluginLoadError``.
    """
    from ..registry import TASK_GROUP, discover, resolve

    found = discover(TASK_GROUP)
    if names is None:
        return ({n: i.target for n, i in found.items() if not i.error},
                {n: f"{i.distribution}: {i.error}" for n, i in found.items() if i.error})
    classes = {}
    for name in names:
        info = resolve(name, found, kind="task")
        classes[info.name] = info.target
    return classes, {}


def task_preset(cls: type, preset: str, overrides: Mapping[str, Mapping] | None, name: str) -> dict:
    """``cls.preset(preset)`` with ``overrides["*"]`` and ``overrides[name]`` deep-merged on top."""
    if not hasattr(cls, "preset"):
        raise ConfigError(f"task {name!r} ({cls.__module__}.{cls.__qualname__}) declares no preset(); "
                          "add a classmethod preset(name) -> {task, trainer, generations}")
    try:
        spec = dict(cls.preset(preset))
    except ValueError as exc:
        raise ConfigError(f"task {name!r} has no {preset!r} preset: {exc}") from None
    for key in ("*", name):
        spec = _deep_merge(spec, (overrides or {}).get(key) or {})
    missing = [k for k in ("task", "trainer", "generations") if k not in spec]
    if missing:
        raise ConfigError(f"task {name!r}: preset {preset!r} lacks {missing}; "
                          "expected {task: {...}, trainer: {max_steps: N}, generations: G}")
    return spec


def _trainer_args(preset: str, spec: Mapping) -> dict:
    base = {"accelerator": "auto" if preset in GPU_PRESETS else "cpu", "devices": 1, "enable_progress_bar": False,
            "logger": False, "enable_model_summary": False, "enable_checkpointing": False}
    return {**base, **dict(spec["trainer"])}


def plan(preset: str = "cpu", tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None, overrides: Mapping[str, Mapping] | None = None,
         progress: bool = True, require_installed: bool = True, include_opt_in: bool = False,
         plugin_args: Mapping[str, Mapping] | None = None, variants: Mapping[str, Mapping] | None = None,
         controls: Mapping[str, str] | None = None, threads: int | None = None) -> tuple[list[dict], dict]:
    """Resolve tasks, methods and seeds into cell specs; return ``(cells, plan meta)``.

    Without ``tasks``, every task whose preset exists and is not ``opt_in``; without ``methods``, each
    task's methods but its preset's ``opt_in_methods`` (both listed as skipped unless ``include_opt_in``).
    Raises for a requested task/method that is unknown or not installed; a default
    method that is not installed is skipped with a printed note
    (``require_installed=False``: no plugin check at all, e.g. to write configs).
    ``plugin_args`` are merged over each preset's (per plugin, key by key), ``variants`` and ``controls``
    (``{method: its control method}``) added to each task's. Every cell runs with ``threads`` torch
    threads (default 1: the numbers of a preset do not depend on the machine).
    """
    from ..registry import discover
    from ..threads import resolve_threads
    from .report import declared_directions

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    plugin_args, variants = check_plugin_args(plugin_args or {}), check_variants(variants or {})
    threads = resolve_threads(threads)[0] if threads is not None else 1
    classes, task_errors = load_tasks(tasks)
    for name, err in task_errors.items():
        _note(progress, f"task {name!r} failed to import and is left out: {err}")
    available = {n: i for n, i in discover().items()}
    known = {m for cls in classes.values() for m in getattr(cls, "bench_methods", ())}
    all_variants: dict[str, Mapping] = dict(variants)
    for name, cls in classes.items():
        try:
            all_variants.update(task_preset(cls, preset, overrides, name).get("variants") or {})
        except ConfigError:
            pass
    for m in methods or ():
        if require_installed:
            check_method(m, available, known, all_variants)
        else:
            method_parts(m)
    cells: list[dict] = []
    meta_tasks: dict[str, dict] = {}
    skipped: list[dict] = []
    for name, cls in classes.items():
        try:
            spec = task_preset(cls, preset, overrides, name)
        except ConfigError as exc:
            if tasks is not None:
                raise
            skipped.append({"task": name, "reason": str(exc)})
            _note(progress, f"task {name!r} skipped: {exc}")
            continue
        if tasks is None and spec.get("opt_in") and not include_opt_in:
            reason = f"opt-in ({spec['opt_in']}); name it to run it: --tasks {name}"
            skipped.append({"task": name, "reason": reason})
            _note(progress, f"task {name!r} skipped: {reason}")
            continue
        if plugin_args:
            spec["plugin_args"] = _deep_merge(spec.get("plugin_args") or {}, plugin_args)
        if variants:
            spec["variants"] = {**(spec.get("variants") or {}), **variants}
        defaults = list(spec.get("methods") or getattr(cls, "bench_methods", None) or [BASELINE])
        if not methods and not include_opt_in:
            defaults = _without_opt_in_methods(name, defaults, spec.get("opt_in_methods") or {}, skipped, progress)
        runnable = select_methods(name, cls, list(methods) if methods else None, defaults, spec.get("variants"),
                                  available, known, require_installed, skipped, lambda text: _note(progress, text))
        task_seeds = [int(s) for s in (seeds if seeds is not None else spec.get("seeds", DEFAULT_SEEDS[preset]))]
        trainer = _trainer_args(preset, spec)
        task_controls = {**dict(getattr(cls, "bench_controls", {}) or {}), **dict(controls or {})}
        meta_tasks[name] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "methods": runnable,
                            "seeds": task_seeds, "preset": {k: v for k, v in spec.items() if k != "seeds"},
                            "metrics": sorted(getattr(cls, "higher_is_better", {}) or {}),
                            "directions": declared_directions(cls),
                            "report_metrics": list(getattr(cls, "report_metrics", ()) or ()),
                            "controls": {m: c for m, c in task_controls.items() if m in runnable}}
        for m in runnable:
            for s in task_seeds:
                cells.append({
                    "task": name, "method": m, "seed": s,
                    "class_path": meta_tasks[name]["class_path"],
                    "task_args": {**spec["task"], **method_task_args(m, spec.get("variants"))},
                    "trainer": trainer, "generations": int(spec["generations"]),
                    "init": spec.get("init", "scratch"),
                    "samples_per_generation": spec.get("samples_per_generation"),
                    "plugins": method_plugins(m, spec.get("plugin_args"), spec.get("variants")),
                    "headline": list(getattr(cls, "headline", ()) or ()), "threads": threads,
                })
    info = {"tasks": meta_tasks, "skipped": skipped, "task_errors": task_errors,
            "headline": {n: list(getattr(c, "headline", ()) or ()) for n, c in classes.items()},
            "directions": directions([i.target for i in available.values() if not i.error] + list(classes.values()))}
    return cells, info


def _without_opt_in_methods(task: str, methods: list[str], opt_in: Mapping[str, str], skipped: list[dict],
                            progress: bool) -> list[str]:
    """``methods`` less the preset's opt-in ones, each appended to ``skipped`` with its reason."""
    for m in (m for m in methods if m in opt_in):
        reason = f"opt-in ({opt_in[m]}); name it to run it: --methods {m}"
        skipped.append({"task": task, "method": m, "reason": reason})
        _note(progress, f"{task}: method {m!r} skipped: {reason}")
    return [m for m in methods if m not in opt_in]


def _note(progress: bool, text: str) -> None:
    if progress:
        print(f"collapsekit bench: {text}", flush=True)


# -- configs of cells ----------------------------------------------------------------------------
def write_bench_configs(directory: str | Path, preset: str, tasks: Sequence[str] | None = None,
                        methods: Sequence[str] | None = None, root: str = "runs") -> list[Path]:
    """Write ``<task>-<preset>[-<method>].yaml`` for every planned cell of seed 0 (run root ``root``)."""
    import yaml

    cells, _ = plan(preset, tasks, methods, [0], progress=False, require_installed=False, include_opt_in=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cell in cells:
        config = cell_config(cell, root)
        suffix = "" if cell["method"] == BASELINE else f"-{cell['method']}"
        config["run"]["name"] = f"{cell['task']}-{preset}{suffix}"
        path = directory / f"{cell['task']}-{preset}{suffix}.yaml"
        try:
            shown = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            shown = path.as_posix()
        header = (f"# {cell['task']}, bench preset {preset!r}, method {cell['method']!r} (seed 0).\n"
                  f"# Written by collapsekit.bench.write_bench_configs from {cell['class_path']}.preset(); "
                  f"run: collapsekit run --config {shown}\n")
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


# -- results ----------------------------------------------------------------------------------------
def _value(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def cell_rows(task: str, method: str, seed: int, metrics: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Long-format rows of one cell, metrics sorted by name (non-finite values become ``null``)."""
    return [{"task": task, "method": method, "seed": seed, "generation": g, "metric": k, "value": _value(v)}
            for g, m in enumerate(metrics) for k, v in sorted(m.items()) if isinstance(v, (int, float))]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(preset: str | None, jobs: int = 1, threads: int | None = None, where: str | None = None) -> dict:
    """Versions, commit and device for ``meta`` (``jobs`` parallel cells of ``threads`` torch threads each;
    ``where``: how the cells run, e.g. "as submitit jobs on slurm")."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    threads = torch.get_num_threads() if threads is None else threads
    if preset in GPU_PRESETS and torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        device = f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores visible, " \
                 f"{jobs} job(s) x {threads} torch thread(s))"
    if where and where.startswith("as submitit"):
        device = f"cells run {where}, {threads} torch thread(s) each; this process: {device}"
    return {"version": ver("collapsekit"), "commit": commit, "dirty": bool(status) if commit else None,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": ver("lightning"),
            "transformers": ver("transformers"), "numpy": ver("numpy"), "platform": platform.platform(),
            "device": device}


def _previous(out: Path, source: Mapping[str, Any], progress: bool) -> dict | None:
    """The ``results.json`` of an earlier call on ``out`` when it ran the same preset or config (``source``:
    ``{"preset": ..., "config": ...}``), else ``None`` (it is replaced; its runs stay)."""
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except ValueError:
        _note(progress, f"{path} is unreadable; it is rewritten")
        return None
    meta = old.get("meta") or {}
    if (meta.get("preset"), meta.get("config")) != (source.get("preset"), source.get("config")):
        what = f"preset {meta.get('preset')!r}" if meta.get("preset") else f"config {meta.get('config')!r}"
        _note(progress, f"{path} holds {what}; it is replaced (its runs stay under {out / 'runs'})")
        return None
    return old


def _launches_processes(cell: Mapping) -> str | None:
    """How a cell's trainer asks for several processes (several devices or nodes, not a spawn strategy), or None."""
    trainer = cell["config"].get("trainer") or {} if "config" in cell else cell["trainer"]
    strategy = json.dumps(trainer.get("strategy") or "auto")
    if "spawn" in strategy.lower():
        return None
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes") or 1
    if isinstance(devices, (list, tuple)):
        many = len(devices) > 1
    else:
        text = str(devices).strip()
        many = text.lstrip("-").isdigit() and (int(text) > 1 or int(text) == -1)
    if many or int(nodes) > 1:
        return f"trainer.devices={devices!r}, trainer.num_nodes={nodes!r}, strategy {strategy}"
    return None


def _versions(cells: Sequence[Mapping]) -> dict[int, dict[str, str]]:
    """``{id(cell): {distribution: version}}``: collapsekit and the distributions of each cell's task and plugins."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    from ..registry import discover, normalize

    available = {normalize(n): i for n, i in discover().items()}
    top = packages_distributions()

    def of_path(path: str) -> dict[str, str]:
        out = {}
        for dist in top.get(path.split(".")[0], []):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                pass
        return out

    result = {}
    for cell in cells:
        found = of_path("collapsekit")
        found.update(of_path(cell["class_path"]))
        for entry in cell["plugins"]:
            name = entry if isinstance(entry, str) else entry.get("class_path", "")
            info = available.get(normalize(name))
            if info is not None:
                found[info.distribution] = info.version
            elif "." in name:
                found.update(of_path(name))
        result[id(cell)] = dict(sorted(found.items()))
    return result


def run_bench(preset: str = "cpu", tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, out: str | Path = "bench", progress: bool = True,
              overrides: Mapping[str, Mapping] | None = None, jobs: int = 1, fail_fast: bool = False, *,
              config: str | Path | Mapping | None = None, config_name: str | None = None,
              config_overrides: Sequence[str] = (), plugin_args: Mapping[str, Mapping] | str | None = None,
              variants: Mapping[str, Mapping] | str | None = None, controls: Mapping[str, str] | str | None = None,
              threads: int | None = None, executor: str = "processes", submitit: Mapping[str, Any] | None = None,
              overwrite: bool = False) -> dict:
    """Run every (task, method, seed) cell and write ``results.json``, ``RESULTS.md`` and plots under ``out``.

    Args:
        preset: ``smoke`` | ``cpu`` | ``gpu`` | ``gpu-quick``; each task's ``preset(name)`` gives its sizes and
            budget (ignored with ``config``).
        tasks: task entry-point names (default: every task that imports; import failures are reported).
        methods: methods for every selected task (default: each task's ``bench_methods``; those whose
            plugins are not installed are skipped with a note). A requested method that is not
            installed raises ``PluginNotFound`` with suggestions.
        seeds: run seeds (default: the preset's ``seeds`` or :data:`DEFAULT_SEEDS`; with ``config``, its ``run.seed``).
        out: output folder; runs go to ``out/runs/<preset or config name>/<task>/<method>-s<seed>/``.
        overrides: ``{task name or "*": partial preset}`` deep-merged into the presets (tests, tuning).
        jobs: cells run in parallel in that many worker processes (1: in this process).
            In-process plugins (``collapsekit.register``) need ``jobs=1``.
        fail_fast: re-raise a cell's error instead of recording it in ``meta["failures"]``.
        config: a run config (a YAML path, or the resolved dict ``collapsekit run`` would use) whose cells are
            that config with each method's plugins and each seed, instead of the presets (:mod:`.configplan`).
        config_name: the name of its runs folder and of the bench in ``meta.config`` (default: the file's stem).
        config_overrides: ``collapsekit run`` options applied to a config file, e.g. ``["--trainer.max_steps", "50"]``.
        plugin_args: ``{plugin: {init arg: value}}`` for the methods' plugins (over a preset's own), e.g. a
            filter's ``oversample``; a mapping, or inline YAML/JSON, or a YAML/JSON file path.
        variants: ``{name: {"plugin": plugin, "init_args": {...}}}``: more method names (e.g. controls).
        controls: ``{method: control method}``: each method is also compared with its control, paired by seed.
        threads: torch threads of every cell (default: the config's ``run.threads``, else ``$OMP_NUM_THREADS``,
            else 1; presets: 1). It is written into each cell's config, so a cell's numbers do not depend on
            the executor or the machine's load.
        executor: ``processes`` (this machine) or ``submitit`` (one job per cell, ``submitit`` = AutoExecutor
            parameters plus ``cluster``: ``slurm``, ``local`` or ``debug``; logs in ``out/submitit/<job id>/``).
        overwrite: recompute cells that an earlier call made with another config or other package versions
            (their run directories are deleted); without it such cells are an error.

    Returns the results dict written to ``results.json``. Re-running the same call skips finished cells
    (same config and versions) and resumes unfinished ones at their last finished generation. Cells of
    the same preset or config from earlier calls with other tasks/methods/seeds are kept. ``SIGTERM`` or
    ``SIGINT`` stop every worker and job of the bench; finished cells stay (``SIGTERM`` raises
    :class:`~collapsekit.errors.Preempted`, the CLI's exit status 75).
    """
    from ..registry import in_process
    from .cells import cell_state, finished_result, remove_cell, write_record
    from .configplan import config_plan, read_run_config
    from .executors import Job, Stopped, make_executor, stop_on_sigterm
    from .methods import read_mapping
    from .report import render_bench, write_results

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if (jobs > 1 or executor != "processes") and in_process():
        raise ConfigError(f"in-process plugins {sorted(in_process())} are not visible to worker processes or jobs; "
                          "use jobs=1 or install them as entry points")
    pool = make_executor(executor, jobs, submitit, Path(out) / "submitit")
    plugin_args = read_mapping(plugin_args, "--plugin-args")
    variants = read_mapping(variants, "--variants")
    controls = read_mapping(controls, "--controls")
    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    out = Path(out)
    if config is not None:
        if tasks:
            raise ConfigError("--tasks and --config exclude each other: the config names its task")
        resolved = dict(config) if isinstance(config, Mapping) else read_run_config(config, config_overrides)
        label = config_name or (Path(config).stem if not isinstance(config, Mapping)
                                else str((resolved.get("run") or {}).get("name") or "config"))
        cells, info = config_plan(resolved, label, methods, seeds, plugin_args, variants, controls, threads,
                                  note=lambda text: _note(progress, text))
    else:
        if config_overrides:
            raise ConfigError("config overrides (--run.*, --task.*, --trainer.*) need --config")
        cells, info = plan(preset, tasks, methods, seeds, overrides, progress, plugin_args=plugin_args,
                           variants=variants, controls=controls, threads=threads)
        label = preset
    source = {"preset": None, "config": label} if config is not None else {"preset": preset, "config": None}
    if not cells:
        raise ConfigError("nothing to run: no task/method/seed cell was selected (see the notes above)")
    if executor == "processes":
        for cell in cells:
            many = _launches_processes(cell)
            if many:
                raise ConfigError(
                    f"{cell['task']} {cell['method']}: the trainer asks for several processes ({many}); Lightning "
                    "starts them by re-running the command, which a bench cell cannot be. Run such cells with "
                    "--executor submitit (one job per cell; on SLURM set tasks_per_node and gpus_per_node to the "
                    "devices), or use trainer.strategy: ddp_spawn")
    cell_threads = cells[0]["threads"]
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous(out, source, progress)
    keys = {(c["task"], c["method"], c["seed"]) for c in cells}
    old_rows = [r for r in (previous or {}).get("rows", []) if (r["task"], r["method"], r["seed"]) not in keys]
    old_meta = (previous or {}).get("meta") or {}
    old_cells = [c for c in (old_meta.get("wall_time_s") or {}).get("cells", [])
                 if (c["task"], c["method"], c["seed"]) not in keys]
    env = environment(preset if config is None else None, jobs, cell_threads, pool.description)
    rows: dict[tuple, list[dict]] = {}
    times: dict[tuple, tuple[float, float]] = {}
    failures: list[dict] = []

    def results_now(finished: bool) -> dict:
        all_rows = old_rows + [r for k in sorted(rows, key=_cell_order(cells)) for r in rows[k]]
        cell_times = old_cells + [{"task": t, "method": m, "seed": s, "seconds": round(times[(t, m, s)][0], 3),
                                   "cpu_seconds": round(times[(t, m, s)][1], 3)}
                                  for (t, m, s) in sorted(times, key=_cell_order(cells))]
        task_meta = _merge_task_meta(old_meta.get("tasks") or {}, info["tasks"])
        all_seeds = sorted({r["seed"] for r in all_rows} | {s for t in info["tasks"].values() for s in t["seeds"]})
        declared = info["directions"]
        names = sorted({r["metric"] for r in all_rows})
        old_dirs = previous.get("metrics", {}) if previous else {}
        metric_meta = {n: {"higher_is_better": declared.get(n, (old_dirs.get(n) or {}).get("higher_is_better"))}
                       for n in names}
        meta = {**env, **source, "seeds": all_seeds, "jobs": jobs, "executor": executor,
                "tasks": task_meta, "headline": {**(old_meta.get("headline") or {}), **info["headline"]},
                "skipped": info["skipped"], "task_errors": info["task_errors"], "failures": failures,
                "wall_time_s": {"total": round(sum(c["seconds"] for c in cell_times), 3),
                                "total_cpu": round(sum(c.get("cpu_seconds", 0.0) for c in cell_times), 3),
                                "invocation": round(time.perf_counter() - t0, 3), "cells": cell_times},
                "started": started.isoformat(timespec="seconds"),
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds") if finished else None}
        return {"meta": meta, "metrics": metric_meta, "rows": all_rows}

    roots = {id(c): str(out / "runs" / label / c["task"]) for c in cells}
    configs = {id(c): cell_config(c, roots[id(c)]) for c in cells}
    versions = _versions(cells)
    states = {id(c): cell_state(roots[id(c)], c, configs[id(c)], versions[id(c)]) for c in cells}
    stale = [c for c in cells if states[id(c)][0] == "stale"]
    if stale and not overwrite:
        shown = "; ".join(f"{c['task']} {c['method']} seed {c['seed']} ({states[id(c)][1]})" for c in stale[:3])
        raise ConfigError(f"{len(stale)} cell(s) in {out} were made by another config or other package versions: "
                          f"{shown}{' ...' if len(stale) > 3 else ''}. Use another --out, or pass --overwrite to "
                          f"recompute them (their run directories are deleted)")
    for cell in stale:
        remove_cell(roots[id(cell)], cell)
    labels = {id(c): f"[{i}/{len(cells)}] {c['task']} {c['method']} seed {c['seed']}" for i, c in enumerate(cells, 1)}

    def record(cell: Mapping, result: Mapping, skipped: bool = False) -> None:
        key = (cell["task"], cell["method"], cell["seed"])
        if "error" in result:
            failures.append({"task": key[0], "method": key[1], "seed": key[2], "error": result["error"]})
            print(f"collapsekit bench: {labels[id(cell)]} FAILED: {result['detail']}", file=sys.stderr, flush=True)
            if fail_fast:
                raise CollapsekitError(f"{labels[id(cell)]} failed: {result['detail']}")
            return
        rows[key] = cell_rows(*key, result["metrics"])
        times[key] = (result["seconds"], result["cpu_seconds"])
        if skipped:
            return
        write_record(roots[id(cell)], cell, configs[id(cell)], versions[id(cell)])
        _note(progress, f"{labels[id(cell)]} done ({result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU, "
                        f"{time.perf_counter() - t0:.0f} s elapsed)")
        write_results(out, results_now(False))

    todo = []
    for cell in cells:
        if states[id(cell)][0] == "finished":
            record(cell, finished_result(roots[id(cell)], cell), skipped=True)
        else:
            todo.append(cell)
    if len(todo) < len(cells):
        _note(progress, f"{len(cells) - len(todo)} of {len(cells)} cells already finished (same config and "
                        f"versions): skipped")
    if stale:
        _note(progress, f"{len(stale)} cell(s) made by another config or other versions: recomputed (--overwrite)")
    if todo:
        _note(progress, f"running {len(todo)} cell(s) {pool.description}, {cell_threads} torch thread(s) each")
    if executor == "processes" and jobs * cell_threads > (os.cpu_count() or 1):
        _note(progress, f"{jobs} jobs x {cell_threads} threads exceed the {os.cpu_count()} cores visible: they slow "
                        "each other down; lower --jobs or run.threads")
    work = [Job(id(c), CELL_FUNCTION, (c, roots[id(c)], labels[id(c)], progress, fail_fast)) for c in todo]
    by_id = {id(c): c for c in todo}
    try:
        with stop_on_sigterm():
            for job, result in pool.run(work):
                record(by_id[job.key], result)
    except (KeyboardInterrupt, Preempted) as exc:
        pool.stop()
        write_results(out, results_now(False))
        render_bench(out)
        left = len(cells) - len(rows) - len(failures)
        why = "by SIGINT" if isinstance(exc, KeyboardInterrupt) else "by SIGTERM" if isinstance(exc, Stopped) \
            else f"({exc})"
        message = (f"bench stopped {why}: {len(rows)} of "
                   f"{len(cells)} cells finished and kept in {out}; re-run the same command to run the other {left} "
                   "(finished cells are skipped, unfinished ones resume from their last finished generation)")
        if isinstance(exc, KeyboardInterrupt):
            print(f"collapsekit bench: {message}", file=sys.stderr, flush=True)
            raise
        raise Stopped(message) from None
    results = results_now(True)
    write_results(out, results)
    written = render_bench(out)
    _note(progress, f"{len(cells)} cells in {time.perf_counter() - t0:.0f} s; "
                    f"{len(failures)} failed; results: {', '.join(str(p) for p in written[:1])}, {out / 'results.json'}")
    return results


def _merge_task_meta(old: Mapping[str, Mapping], new: Mapping[str, Mapping]) -> dict:
    """Task entries of this call replace earlier ones, keeping the earlier methods and seeds too."""
    out = {k: dict(v) for k, v in old.items()}
    for name, entry in new.items():
        before = out.get(name) or {}
        out[name] = {**entry,
                     "methods": list(dict.fromkeys([*before.get("methods", []), *entry["methods"]])),
                     "seeds": sorted({*before.get("seeds", []), *entry["seeds"]})}
    return out


def _cell_order(cells: Sequence[Mapping]):
    order = {(c["task"], c["method"], c["seed"]): i for i, c in enumerate(cells)}
    return lambda key: order.get(key, len(order))
