"""The cells of a bench over a user's own run config (``collapsekit bench --config RUN.yaml``).

Every cell is that config (the file ``collapsekit run --config`` takes) with one method's plugins added
after the config's own ``run.plugins``, one seed, and an explicit ``run.threads``. Any task works: a
built-in one such as ``hf-lm`` with a local model and data, or a third-party one given by entry-point
name or class path.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import CollapsekitError, ConfigError
from .methods import (BASELINE, check_method, check_plugin_args, check_variants, directions, method_parts,
                      method_plugins, method_task_args, plugin_targets, select_methods, variant_plugin)


def read_run_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The resolved config (``run``/``task``/``trainer``, every default filled in) of a run YAML, with
    ``overrides`` such as ``["--trainer.max_steps", "50"]``, checked by building it as ``collapsekit run`` does."""
    import yaml

    from ..runparser import build_run_parser, instantiate

    if not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    parser = build_run_parser()
    try:
        cfg = parser.parse_args(["--config", str(path), *overrides])
        instantiate(parser, cfg)
    except CollapsekitError:
        raise
    except (argparse.ArgumentError, ValueError, TypeError, KeyError, AttributeError) as exc:
        text = " ".join(" ".join(str(exc).split()).split(" ")[:80])
        raise ConfigError(f"invalid config {path}: {text} (`collapsekit run --config {path} --print_config` "
                          "shows how it resolves)") from None
    config = yaml.safe_load(parser.dump(cfg))
    config.pop("config", None)
    return config


def task_name(cls: type) -> str:
    """A task's bench name: its ``name``, else its entry-point name, else its class name."""
    from ..registry import TASK_GROUP, discover

    name = getattr(cls, "name", None)
    if isinstance(name, str) and name and name != "task":
        return name
    for entry, info in discover(TASK_GROUP).items():
        if info.target is cls:
            return entry
    return cls.__name__


def _plugin_name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("class_path"), str):
        return entry["class_path"]
    return None


def _trainer_class():
    from lightning.pytorch import Trainer

    return Trainer


def _set_by_user(values: Mapping, target: Any) -> dict:
    """``values`` without ``None`` and without what equals ``target``'s own default (the table shows the rest)."""
    import inspect

    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    return {k: v for k, v in values.items()
            if v is not None and not (k in params and params[k].default is not inspect.Parameter.empty
                                      and params[k].default == v)}


def config_plan(config: Mapping, label: str, methods: Sequence[str] | None = None,
                seeds: Sequence[int] | None = None, plugin_args: Mapping[str, Mapping] | None = None,
                variants: Mapping[str, Mapping] | None = None, controls: Mapping[str, str] | None = None,
                threads: int | None = None, note=lambda text: None) -> tuple[list[dict], dict]:
    """``(cells, plan meta)`` of the methods x seeds of ``config`` (a resolved run config, see
    :func:`read_run_config`), in the shape :func:`collapsekit.bench.plan` returns.

    Methods default to the task's ``bench_methods`` whose plugins are installed; seeds to the config's
    ``run.seed``; threads to the config's ``run.threads`` (else ``$OMP_NUM_THREADS``, else 1). A method
    plugin that the config already lists, an unknown method or a control that is not a method raise
    :class:`ConfigError` / :class:`~collapsekit.errors.PluginNotFound`.
    """
    from ..registry import discover, normalize
    from ..threads import resolve_threads
    from .report import declared_directions

    run = dict(config.get("run") or {})
    task_section = dict(config.get("task") or {})
    class_path = task_section.get("class_path")
    if not isinstance(class_path, str):
        raise ConfigError(f"config {label}: task.class_path is missing")
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config {label}: cannot import task {class_path!r}: {exc}") from None
    name = task_name(cls)
    plugin_args, variants = check_plugin_args(plugin_args or {}), check_variants(variants or {})
    available = discover()
    known = list(getattr(cls, "bench_methods", ()) or ())
    for m in methods or ():
        check_method(m, available, known, variants)
    skipped: list[dict] = []
    runnable = select_methods(name, cls, list(methods) if methods else None, known or [BASELINE], variants,
                              available, known, True, skipped, note)
    if not runnable:
        raise ConfigError(f"config {label}: no method to run (none of {known} is installed); name them with "
                          "--methods, e.g. --methods baseline")
    base = [n for n in map(_plugin_name, run.get("plugins") or []) if n]
    for m in runnable:
        clash = [p for p in method_parts(m) if variant_plugin(p, variants) is not None
                 and normalize(variant_plugin(p, variants)) in {normalize(b) for b in base}]
        if clash:
            raise ConfigError(f"method {m!r}: plugin {clash[0]!r} is already in the config's run.plugins; a method's "
                              "plugins are added to the config's, so remove it from one of them")
    controls = {**dict(getattr(cls, "bench_controls", {}) or {}), **dict(controls or {})}
    for method, control in (controls or {}).items():
        if method in runnable and control not in runnable:
            raise ConfigError(f"control {control!r} of method {method!r} is not among the methods {runnable}; "
                              "add it to --methods")
    seeds = [int(s) for s in (seeds if seeds is not None else [run.get("seed", 0)])]
    if threads is not None:
        resolve_threads(threads)
    count = threads if threads is not None else resolve_threads(run.get("threads"))[0]
    generations = int(run.get("generations") or 1)
    headline = list(getattr(cls, "headline", ()) or ())
    # cells print one line per generation: no per-step progress bars or model summaries (neither changes numbers)
    trainer = {**dict(config.get("trainer") or {}), "enable_progress_bar": False, "enable_model_summary": False}
    base_config = {**dict(config), "run": run, "trainer": trainer}
    cells = [{"task": name, "method": m, "seed": s, "config": base_config, "class_path": class_path,
              "plugins": method_plugins(m, plugin_args, variants), "task_update": method_task_args(m, variants),
              "threads": count, "generations": generations,
              "headline": headline}
             for m in runnable for s in seeds]
    used = [p for c in cells for p in c["plugins"]] + list(run.get("plugins") or [])
    meta = {"class_path": class_path, "methods": runnable, "seeds": seeds,
            "preset": {"config": label, "task": _set_by_user(task_section.get("init_args") or {}, cls),
                       "trainer": _set_by_user(config.get("trainer") or {}, _trainer_class()),
                       "generations": generations, "plugins": list(run.get("plugins") or []),
                       "plugin_args": plugin_args, "variants": variants},
            "metrics": sorted(getattr(cls, "higher_is_better", {}) or {}), "directions": declared_directions(cls),
            "report_metrics": list(getattr(cls, "report_metrics", ()) or ()),
            "controls": {m: c for m, c in controls.items() if m in runnable}}
    info = {"tasks": {name: meta}, "skipped": skipped, "task_errors": {}, "headline": {name: headline},
            "directions": directions([*plugin_targets(used, available), cls])}
    return cells, info
