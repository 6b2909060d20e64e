"""The shared benchmark suite: every (task, method, seed) cell run through the real engine.

A task class takes part by declaring ``bench_methods`` (methods that make sense on
it; ``"baseline"`` = no extra plugins), ``headline`` (metrics plotted first) and
a classmethod ``preset(name) -> dict`` of shape::

    {"task": {init_args}, "trainer": {Trainer kwargs}, "generations": G,
     # optional:
     "seeds": [0, 1], "methods": [...], "init": "scratch", "samples_per_generation": N,
     "opt_in": "why, e.g. its cost",   # left out unless named in ``tasks``
     "plugin_args": {"token-editing": {"threshold": 0.99}},
     "variants": {"latent-filter-random": {"plugin": "latent-filter", "init_args": {"scorer": "random"}},
                  "vllm": {"task_args": {"backend": "vllm"}}}}

Every method of a task gets the same preset (same budget). A method is a plugin
short name or several joined by ``+``; a part may also be a *variant* the preset declares (another
name for a plugin with other init_args, e.g. a control such as a random filter; its init_args are
merged over the plugin's ``plugin_args``, so the rest of its settings stay the same), or a variant of
the task's settings (``task_args`` merged over the preset's, no plugin: e.g. another inference backend). Each cell is an
ordinary run directory ``OUT/runs/<preset>/<task>/<method>-s<seed>/`` (its ``config.yaml`` re-runs it
with ``collapsekit run --config``), so a re-run skips finished generations and
cells. Results: ``OUT/results.json`` (long format, documented in ``configs/bench/README.md``),
``OUT/RESULTS.md`` and ``OUT/plots/<task>.png``.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import CollapsekitError, ConfigError, PluginLoadError, PluginNotFound
from ..fileio import atomic_write_bytes
from ..quiet import silence_lightning

PRESETS = ("smoke", "cpu", "gpu", "gpu-quick")
DEFAULT_SEEDS = {"smoke": (0,), "cpu": (0, 1), "gpu": (0, 1, 2), "gpu-quick": (0,)}
GPU_PRESETS = ("gpu", "gpu-quick")
BASELINE = "baseline"


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


def method_parts(method: str) -> list[str]:
    """Plugin names of a method: ``"a+b"`` -> ``["a", "b"]``; ``"baseline"`` -> ``[]``."""
    parts = [p.strip() for p in method.split("+")]
    if not method.strip() or any(not p for p in parts):
        raise ConfigError(f"bad method {method!r}: give a plugin name or names joined by '+'")
    if BASELINE in parts:
        if len(parts) > 1:
            raise ConfigError(f"method {method!r}: 'baseline' means no extra plugin and cannot be combined; "
                              f"write {'+'.join(p for p in parts if p != BASELINE)!r}")
        return []
    return parts


def _variant_plugin(part: str, variants: Mapping[str, Mapping] | None) -> str | None:
    """The plugin name behind ``part``: a variant's ``plugin`` (None for a variant of task settings only),
    else ``part`` itself."""
    from ..registry import normalize

    found = {normalize(k): v for k, v in (variants or {}).items()}
    entry = found.get(normalize(part))
    if entry is None:
        return part
    if not isinstance(entry, Mapping) or not (isinstance(entry.get("plugin"), str)
                                              or (entry.get("plugin") is None and "task_args" in entry)):
        raise ConfigError(f"variant {part!r} must be {{'plugin': <plugin name>, 'init_args': {{...}}}} and/or "
                          f"{{'task_args': {{...}}}}, got {entry!r}")
    return entry.get("plugin")


def method_task_args(method: str, variants: Mapping[str, Mapping] | None = None) -> dict:
    """The task settings the variants among ``method``'s parts change (their ``task_args``, merged in order)."""
    from ..registry import normalize

    found = {normalize(k): v for k, v in (variants or {}).items()}
    out: dict = {}
    for part in method_parts(method):
        out.update((found.get(normalize(part)) or {}).get("task_args") or {})
    return out


def check_method(method: str, available: Mapping[str, Any], known_methods: Iterable[str] = (),
                 variants: Mapping[str, Mapping] | None = None) -> None:
    """Raise ``PluginNotFound`` (with "did you mean") or ``PluginLoadError`` if a part is not installed.

    A part named in ``variants`` is checked as the plugin it stands for.
    """
    import difflib

    from ..registry import normalize, resolve

    for part in [_variant_plugin(p, variants) for p in method_parts(method)]:
        if part is None:                     # a variant of task settings: no plugin to check
            continue
        if normalize(part) not in {normalize(k) for k in available}:
            candidates = sorted(c for c in set(available) | {BASELINE} | set(known_methods)
                                if normalize(c) != normalize(part))
            close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            if normalize(part) in {normalize(k) for k in known_methods}:
                hint = " It is a bench method of a task, but no installed distribution provides it."
            raise PluginNotFound(
                f"method {method!r}: plugin {part!r} is not installed.{hint} Installed plugins: "
                f"{', '.join(sorted(available)) or 'none'}. Install its distribution "
                f"(e.g. pip install ./mitigations/<name>) or fix the name.")
        resolve(part, dict(available))  # raises PluginLoadError naming the distribution


def method_plugins(method: str, plugin_args: Mapping[str, Mapping] | None = None,
                   variants: Mapping[str, Mapping] | None = None) -> list[Any]:
    """The ``run.plugins`` list of ``method``, with ``plugin_args[name]`` as init_args where given.

    A part named in ``variants`` becomes its ``plugin`` with ``{**plugin_args[plugin], **init_args}``.
    """
    from ..registry import normalize

    args = {normalize(k): dict(v) for k, v in (plugin_args or {}).items()}
    found = {normalize(k): v for k, v in (variants or {}).items()}
    out: list[Any] = []
    for part in method_parts(method):
        plugin = _variant_plugin(part, variants)
        if plugin is None:                   # a variant of task settings only (see method_task_args)
            continue
        init = {**args.get(normalize(plugin), {}), **dict((found.get(normalize(part)) or {}).get("init_args") or {})}
        out.append({"class_path": plugin, "init_args": init} if init else plugin)
    return out


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
         progress: bool = True, require_installed: bool = True,
         include_opt_in: bool = False) -> tuple[list[dict], dict]:
    """Resolve tasks, methods and seeds into cell specs; return ``(cells, plan meta)``.

    Without ``tasks``, every task whose preset exists and is not ``opt_in`` (those are listed
    as skipped unless ``include_opt_in``).
    Raises for a requested task/method that is unknown or not installed; a default
    method that is not installed is skipped with a printed note
    (``require_installed=False``: no plugin check at all, e.g. to write configs).
    """
    from ..registry import discover, normalize
    from .report import declared_directions

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    classes, task_errors = load_tasks(tasks)
    for name, err in task_errors.items():
        _note(progress, f"task {name!r} failed to import and is left out: {err}")
    available = {n: i for n, i in discover().items()}
    installed = {normalize(n) for n in available}
    known = {m for cls in classes.values() for m in getattr(cls, "bench_methods", ())}
    all_variants: dict[str, Mapping] = {}
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
        task_methods = list(methods or spec.get("methods") or getattr(cls, "bench_methods", None) or [BASELINE])
        runnable = []
        for m in task_methods:
            if methods is None and require_installed:
                try:
                    check_method(m, available, known, spec.get("variants"))
                except PluginNotFound:
                    missing = [p for p in method_parts(m) if _variant_plugin(p, spec.get("variants")) is not None
                               and normalize(_variant_plugin(p, spec.get("variants"))) not in installed]
                    reason = f"plugin {', '.join(missing)} not installed"
                    skipped.append({"task": name, "method": m, "reason": reason})
                    _note(progress, f"{name}: method {m!r} skipped ({reason})")
                    continue
                except PluginLoadError as exc:
                    skipped.append({"task": name, "method": m, "reason": str(exc)})
                    _note(progress, f"{name}: method {m!r} skipped ({exc})")
                    continue
            elif methods is not None and m not in getattr(cls, "bench_methods", (m,)):
                _note(progress, f"{name}: method {m!r} is not in its bench_methods; running it as asked")
            runnable.append(m)
        task_seeds = [int(s) for s in (seeds if seeds is not None else spec.get("seeds", DEFAULT_SEEDS[preset]))]
        trainer = _trainer_args(preset, spec)
        meta_tasks[name] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "methods": runnable,
                            "seeds": task_seeds, "preset": {k: v for k, v in spec.items() if k != "seeds"},
                            "metrics": sorted(getattr(cls, "higher_is_better", {}) or {}),
                            "directions": declared_directions(cls),
                            "report_metrics": list(getattr(cls, "report_metrics", ()) or ()),
                            "controls": dict(getattr(cls, "bench_controls", {}) or {})}
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
                    "headline": list(getattr(cls, "headline", ()) or ()),
                })
    info = {"tasks": meta_tasks, "skipped": skipped, "task_errors": task_errors,
            "headline": {n: list(getattr(c, "headline", ()) or ()) for n, c in classes.items()},
            "directions": _directions(classes.values(), available)}
    return cells, info


def _directions(classes: Iterable[type], available: Mapping[str, Any]) -> dict[str, bool | None]:
    """``higher_is_better`` declared by plugin classes and tasks (attribute of the same name).

    ``None`` = declared without a better direction (reported, not ranked). A name two tasks rank
    differently keeps the first here; each task's own directions are in ``meta.tasks[task].directions``.
    """
    from .report import declared_directions

    out: dict[str, bool | None] = {}
    for target in [i.target for i in available.values() if not i.error] + list(classes):
        for k, v in declared_directions(target).items():
            out.setdefault(k, v)
    return out


def _note(progress: bool, text: str) -> None:
    if progress:
        print(f"collapsekit bench: {text}", flush=True)


# -- one cell -------------------------------------------------------------------------------------
def cell_name(method: str, seed: int) -> str:
    """Run name of a cell: ``<method>-s<seed>`` (path separators replaced)."""
    return f"{method.replace('/', '_').replace(os.sep, '_')}-s{seed}"


def cell_config(cell: Mapping, root: str | Path) -> dict:
    """The run config (``run``/``task``/``trainer``) of a cell, as written to its ``config.yaml``.

    ``collapsekit run --config <that file>`` reproduces the cell.
    """
    from ..run import RunConfig

    config = RunConfig(name=cell_name(cell["method"], cell["seed"]), root=str(root),
                       generations=int(cell["generations"]), seed=int(cell["seed"]), init=cell["init"],
                       plugins=list(cell["plugins"]), samples_per_generation=cell.get("samples_per_generation"))
    return {"run": asdict(config), "task": {"class_path": cell["class_path"], "init_args": dict(cell["task_args"])},
            "trainer": dict(cell["trainer"])}


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


def _quiet() -> None:
    """Silence Lightning for a bench process (cells print their own one-line progress)."""
    silence_lightning(extra_warnings=(".*non-writable.*", ".*module\\(s\\) in eval mode.*"))


def run_cell(cell: Mapping, root: str | Path, label: str = "", progress: bool = True) -> dict:
    """Run (or resume) one cell through the engine.

    Returns ``{"metrics": [per generation], "seconds": wall s, "cpu_seconds": process CPU s}``;
    both times accumulate over all invocations (kept in ``<root>/<cell name>.wall.json``)
    and resumed generations add nothing.
    """
    from ..dispatch import build_manager
    from ..loop import execute, trainer_factory
    from ..run import Run, RunConfig

    _quiet()
    import lightning.pytorch  # noqa: F401 - imported before the clock starts, not billed to the first cell
    import transformers  # noqa: F401

    module, _, cls_name = cell["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    config_dict = cell_config(cell, root)
    config = RunConfig(**config_dict["run"])
    wall_file = Path(root) / f"{config.name}.wall.json"
    try:
        spent = json.loads(wall_file.read_text())
        spent = {"seconds": float(spent["seconds"]), "cpu_seconds": float(spent.get("cpu_seconds", 0.0))}
    except (OSError, ValueError, KeyError, TypeError):
        spent = {"seconds": 0.0, "cpu_seconds": 0.0}
    headline = cell.get("headline") or []
    last = [time.perf_counter(), time.process_time()]

    def on_generation(generation: int, metrics: dict, resumed: bool) -> None:
        now = [time.perf_counter(), time.process_time()]
        if not resumed:
            spent["seconds"] += now[0] - last[0]
            spent["cpu_seconds"] += now[1] - last[1]
            Path(root).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(wall_file, json.dumps(spent).encode())
        last[:] = now
        if progress:
            shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in headline if k in metrics)
            state = "resumed" if resumed else f"{spent['seconds']:.0f} s"
            print(f"  {label} gen {generation + 1}/{cell['generations']}: {shown} ({state})", flush=True)

    task = cls(**cell["task_args"])
    run = Run(config, task, build_manager(config.plugins), config_dict)
    last[:] = [time.perf_counter(), time.process_time()]
    metrics = execute(run, trainer_factory(**cell["trainer"]), on_generation)
    return {"metrics": metrics, **spent}


def _run_cell_safe(cell: Mapping, root: str, label: str, progress: bool, fail_fast: bool) -> dict:
    try:
        return run_cell(cell, root, label, progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded per cell; the suite goes on
        if fail_fast:
            raise
        detail = str(exc) if isinstance(exc, CollapsekitError) else \
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
        return {"error": f"{type(exc).__name__}: {exc}", "detail": detail}


def _threads_per_job(jobs: int) -> int:
    """Torch threads of each of ``jobs`` parallel cell processes: the cores split evenly."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _quiet()


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


def environment(preset: str, jobs: int = 1) -> dict:
    """Versions, commit and device for ``meta`` (``jobs``: parallel cell processes)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if preset in GPU_PRESETS and torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        threads = torch.get_num_threads() if jobs == 1 else _threads_per_job(jobs)
        device = f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores visible, " \
                 f"{jobs} job(s) x {threads} torch thread(s))"
    return {"version": ver("collapsekit"), "commit": commit, "dirty": bool(status) if commit else None,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": ver("lightning"),
            "transformers": ver("transformers"), "numpy": ver("numpy"), "platform": platform.platform(),
            "device": device}


def _previous(out: Path, preset: str, progress: bool) -> dict | None:
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except ValueError:
        _note(progress, f"{path} is unreadable; it is rewritten")
        return None
    if (old.get("meta") or {}).get("preset") != preset:
        _note(progress, f"{path} holds preset {(old.get('meta') or {}).get('preset')!r}; it is replaced "
                        f"(its runs stay under {out / 'runs'})")
        return None
    return old


def run_bench(preset: str = "cpu", tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, out: str | Path = "bench", progress: bool = True,
              overrides: Mapping[str, Mapping] | None = None, jobs: int = 1, fail_fast: bool = False) -> dict:
    """Run every (task, method, seed) cell and write ``results.json``, ``RESULTS.md`` and plots under ``out``.

    Args:
        preset: ``smoke`` | ``cpu`` | ``gpu``; each task's ``preset(name)`` gives its sizes and budget.
        tasks: task entry-point names (default: every task that imports; import failures are reported).
        methods: methods for every selected task (default: each task's ``bench_methods``; those whose
            plugins are not installed are skipped with a note). A requested method that is not
            installed raises ``PluginNotFound`` with suggestions.
        seeds: run seeds (default: the preset's ``seeds`` or :data:`DEFAULT_SEEDS`).
        out: output folder; runs go to ``out/runs/<preset>/<task>/<method>-s<seed>/``.
        overrides: ``{task name or "*": partial preset}`` deep-merged into the presets (tests, tuning).
        jobs: cells run in parallel in that many spawned processes (torch threads split between them).
            In-process plugins (``collapsekit.register``) need ``jobs=1``.
        fail_fast: re-raise a cell's error instead of recording it in ``meta["failures"]``.

    Returns the results dict written to ``results.json``. Re-running the same call
    resumes: finished generations and cells are read back, not retrained. Cells of
    the same preset from earlier calls with other tasks/methods/seeds are kept.
    """
    from ..registry import in_process
    from .report import render_bench, write_results

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and in_process():
        raise ConfigError(f"in-process plugins {sorted(in_process())} are not visible to worker processes; "
                          "use jobs=1 or install them as entry points")
    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    out = Path(out)
    cells, info = plan(preset, tasks, methods, seeds, overrides, progress)
    if not cells:
        raise ConfigError("nothing to run: no task/method/seed cell was selected (see the notes above)")
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous(out, preset, progress)
    keys = {(c["task"], c["method"], c["seed"]) for c in cells}
    old_rows = [r for r in (previous or {}).get("rows", []) if (r["task"], r["method"], r["seed"]) not in keys]
    old_meta = (previous or {}).get("meta") or {}
    old_cells = [c for c in (old_meta.get("wall_time_s") or {}).get("cells", [])
                 if (c["task"], c["method"], c["seed"]) not in keys]
    env = environment(preset, jobs)
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
        directions = info["directions"]
        names = sorted({r["metric"] for r in all_rows})
        old_dirs = previous.get("metrics", {}) if previous else {}
        metric_meta = {n: {"higher_is_better": directions.get(n, (old_dirs.get(n) or {}).get("higher_is_better"))}
                       for n in names}
        meta = {**env, "preset": preset, "seeds": all_seeds, "jobs": jobs,
                "tasks": task_meta, "headline": {**(old_meta.get("headline") or {}), **info["headline"]},
                "skipped": info["skipped"], "task_errors": info["task_errors"], "failures": failures,
                "wall_time_s": {"total": round(sum(c["seconds"] for c in cell_times), 3),
                                "total_cpu": round(sum(c.get("cpu_seconds", 0.0) for c in cell_times), 3),
                                "invocation": round(time.perf_counter() - t0, 3), "cells": cell_times},
                "started": started.isoformat(timespec="seconds"),
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds") if finished else None}
        return {"meta": meta, "metrics": metric_meta, "rows": all_rows}

    def record(cell: Mapping, result: Mapping, index: int) -> None:
        key = (cell["task"], cell["method"], cell["seed"])
        label = f"[{index}/{len(cells)}] {cell['task']} {cell['method']} seed {cell['seed']}"
        if "error" in result:
            failures.append({"task": key[0], "method": key[1], "seed": key[2], "error": result["error"]})
            print(f"collapsekit bench: {label} FAILED: {result['detail']}", file=sys.stderr, flush=True)
        else:
            rows[key] = cell_rows(*key, result["metrics"])
            times[key] = (result["seconds"], result["cpu_seconds"])
            _note(progress, f"{label} done ({result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU, "
                            f"{time.perf_counter() - t0:.0f} s elapsed)")
        write_results(out, results_now(False))

    roots = {id(c): str(out / "runs" / preset / c["task"]) for c in cells}
    if jobs == 1:
        for i, cell in enumerate(cells, 1):
            label = f"[{i}/{len(cells)}] {cell['task']} {cell['method']} seed {cell['seed']}"
            _note(progress, f"{label} ...")
            record(cell, _run_cell_safe(cell, roots[id(cell)], label, progress, fail_fast), i)
    else:
        _run_parallel(cells, roots, jobs, progress, fail_fast, record)
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


def _run_parallel(cells, roots, jobs, progress, fail_fast, record) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = _threads_per_job(jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {}
        for i, cell in enumerate(cells, 1):
            label = f"[{i}/{len(cells)}] {cell['task']} {cell['method']} seed {cell['seed']}"
            futures[pool.submit(_run_cell_safe, cell, roots[id(cell)], label, progress, fail_fast)] = (cell, i)
        try:
            for future in as_completed(futures):
                cell, i = futures[future]
                record(cell, future.result(), i)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
