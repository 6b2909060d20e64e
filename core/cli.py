"""The ``collapsekit`` command line.

Subcommands: ``run`` (a generational experiment from a LightningCLI-style YAML),
``fit`` (one plain Lightning fit of a task, through ``LightningCLI``), ``plugins``,
``tasks``, ``hooks``, ``bench``, ``report``, ``new-plugin``. Errors a user can
cause print one message (``collapsekit: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

from .errors import PREEMPTED_EXIT_CODE, CollapsekitError, ConfigError, Preempted
from .quiet import silence_lightning

USAGE = """usage: collapsekit COMMAND [options]

commands:
  run         train generations from a YAML config   (collapsekit run --config configs/quickstart.yaml)
  fit         one plain Lightning fit of a task        (collapsekit fit --model.task MarkovText)
  plugins     list discovered plugins                  (--verbose for hooks, requirements, source)
  tasks       list discovered benchmark tasks
  hooks       print the hook reference                 (--markdown for the README table)
  bench       run the shared benchmark suite           (--preset smoke|cpu|gpu|gpu-quick, --perf)
  report      redraw the plots of a run or bench directory; compare several runs (paired by seed)
  new-plugin  write a ready plugin distribution from the template

`collapsekit COMMAND --help` shows each command's options."""


def load_task_classes() -> dict[str, Any]:
    """Import every task entry point (group ``collapsekit.tasks``); failures are reported, not raised."""
    from .registry import TASK_GROUP, discover

    tasks = discover(TASK_GROUP)
    for info in tasks.values():
        if info.error:
            print(f"collapsekit: warning: task {info.name!r} from {info.distribution} failed to import: "
                  f"{info.error}", file=sys.stderr)
    return {name: info.target for name, info in tasks.items() if not info.error}


# -- run -------------------------------------------------------------------------
def build_run_parser():
    """The jsonargparse parser of ``collapsekit run``: ``run:``, ``task:`` and ``trainer:``."""
    from jsonargparse import ActionConfigFile
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    from .run import RunConfig
    from .task import Task

    load_task_classes()
    parser = LightningArgumentParser(
        prog="collapsekit run", exit_on_error=False,
        description="Train generations of a task on its own synthetic data, with plugins. "
                    "Every config value can be overridden, e.g. --run.generations 5 --trainer.max_steps 100.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (run:, task:, trainer:)")
    parser.add_class_arguments(RunConfig, "run", instantiate=True)
    parser.add_subclass_arguments(Task, "task", required=True)
    parser.add_lightning_class_args(Trainer, "trainer")
    return parser


def _instantiate(parser, cfg):
    """``parser.instantiate`` (jsonargparse >= 4.49) or its older name ``instantiate_classes``."""
    method = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return method(cfg)


def _known_keys(parser) -> list[str]:
    keys = []
    for action in parser._actions:  # noqa: SLF001 - jsonargparse exposes no public key list
        keys += [s.lstrip("-") for s in action.option_strings if s.startswith("--")]
    return keys


def explain_parse_error(exc: BaseException, parser) -> str:
    """One line for a jsonargparse error: the key at fault and what it accepts
    (:func:`collapsekit.config_errors.explain`), or "did you mean" for unknown top-level keys."""
    from .config_errors import explain

    located = explain(exc)
    if located is not None:
        return located
    message = str(exc).strip()
    unknown = re.findall(r"--([\w.]+)", message) if "unrecognized" in message else []
    m = re.search(r"Group '(\w+)' does not accept (?:nested key|option) '([\w.]+)'", message)
    if m:
        unknown = [f"{m.group(1)}.{m.group(2)}"]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, _known_keys(parser), n=3, cutoff=0.6)
        if close:
            hints.append(f"did you mean {', '.join(close)}?")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = " ".join(lines[:3])
    return f"invalid config: {text}" + (f" ({'; '.join(hints)})" if hints else "") + \
        " See `collapsekit run --help`."


def _collapsekit_cause(exc: BaseException) -> CollapsekitError | None:
    """The :class:`CollapsekitError` that ``exc`` (a jsonargparse error) was raised from, if any."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None or isinstance(seen, CollapsekitError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_run_config(argv: Sequence[str]):
    """Parse and validate ``collapsekit run`` arguments without running anything.

    Returns ``(parser, cfg, run_config, task, config_dict)``; raises :class:`ConfigError`
    (one message) for any malformed, unknown or ill-typed value. ``SystemExit`` is
    passed through for ``--help`` and ``--print_config``.
    """
    import yaml

    from .run import RunConfig

    parser = build_run_parser()
    try:
        cfg = parser.parse_args(list(argv))
    except SystemExit:
        raise
    except (argparse.ArgumentError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(explain_parse_error(exc, parser)) from None
    config_dict = yaml.safe_load(parser.dump(cfg))
    config_dict.pop("config", None)
    try:
        objects = _instantiate(parser, cfg)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        cause = _collapsekit_cause(exc)
        if cause is not None:      # a class's own message (e.g. a task's ConfigError), without the union wall
            raise cause from None
        from .config_errors import innermost_message

        raise ConfigError(f"invalid config value: {innermost_message(exc)}") from None
    run_config = objects.run if isinstance(objects.run, RunConfig) else RunConfig(**vars(objects.run))
    run_config.validate()
    return parser, cfg, run_config, objects.task, config_dict


def cmd_run(argv: Sequence[str]) -> int:
    from .dispatch import build_manager
    from .loop import execute, trainer_factory
    from .progress import GenerationProgressBar
    from .run import Run

    silence_lightning()
    if not argv:
        build_run_parser().print_help()
        return 2
    try:
        parser, cfg, run_config, task, config_dict = load_run_config(argv)
    except SystemExit as exit_:  # --help, --print_config
        return int(exit_.code or 0)
    hooks = build_manager(run_config.plugins)
    run = Run(run_config, task, hooks, config_dict)
    want_bar = cfg.trainer.enable_progress_bar is not False
    tracking = None
    if cfg.trainer.logger not in (None, True, False, []):   # the user's loggers: one tracker run for the whole run
        from .tracking import Tracking

        tracking, cfg = Tracking(run, cfg.trainer.logger), cfg.clone()
        cfg.trainer.logger = None                       # built once by the Tracking, not per generation

    def make_trainer(generation, gen_dir):
        # None means "Trainer default"; dropping it lets trainer_factory's defaults apply
        kwargs = {k: v for k, v in dict(_instantiate(parser, cfg).trainer).items() if v is not None}
        if tracking is not None:
            kwargs["logger"] = tracking.loggers_for(generation)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if want_bar and sys.stderr.isatty():
            callbacks.append(GenerationProgressBar())
        kwargs.setdefault("enable_progress_bar", want_bar and sys.stderr.isatty())
        return trainer_factory(callbacks=callbacks, **kwargs)(generation, gen_dir)

    headline = list(getattr(task, "headline", ()) or [])
    started = time.time()
    if run.is_lead:
        print(f"collapsekit run {run_config.name!r}: task {task.name}, {run_config.generations} generations, "
              f"plugins {hooks.implementers('compose_pool')[0]}/{hooks.implementers('synthesize')[0]}"
              f"{' + ' + ', '.join(run_config.plugin_names()) if run_config.plugins else ''}, "
              f"dir {run.dir}", flush=True)

    def on_generation(generation: int, metrics: dict, resumed: bool) -> None:
        if tracking is not None:
            tracking.on_generation(generation, metrics, resumed)
        if not run.is_lead:
            return
        shown = headline or [k for k in metrics if "/" not in k][:5]
        note = " (finished earlier, resumed)" if resumed else f" ({time.time() - started:.1f} s)"
        print(f"generation {generation}: " + "  ".join(f"{k}={_fmt(metrics[k])}" for k in shown if k in metrics)
              + note, flush=True)

    with tracking if tracking is not None else contextlib.nullcontext():   # closes the trackers, also on errors
        results = execute(run, make_trainer, on_generation)
    if not run.is_lead:
        return 0
    _print_table(results, headline)
    try:
        from .bench.report import report
        from .fileio import writing

        with writing(run.dir / "plots"):
            plots = report(run.dir)
        if plots:
            print(f"plots: {', '.join(str(p) for p in plots)}")
    except ImportError:
        pass
    print(f"done in {time.time() - started:.1f} s; results in {run.dir}")
    return 0


def _print_table(results: list[dict], headline: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not results:
        return
    columns = headline or [k for k in results[0] if "/" not in k][:6]
    table = Table(title="metrics per generation")
    table.add_column("generation", justify="right")
    for c in columns:
        table.add_column(c, justify="right")
    for g, metrics in enumerate(results):
        table.add_row(str(g), *[_fmt(metrics.get(c, float("nan"))) for c in columns])
    Console(width=160).print(table)


# -- fit -------------------------------------------------------------------------
def cmd_fit(argv: Sequence[str]) -> int:
    """``LightningCLI`` over :class:`collapsekit.module.TaskFitModule`."""
    from lightning.pytorch.cli import LightningCLI

    from .module import TaskFitModule

    load_task_classes()
    LightningCLI(TaskFitModule, args=["fit", *argv], save_config_callback=None,
                 seed_everything_default=0, parser_kwargs={"prog": "collapsekit fit"})
    return 0


# -- plugins / tasks / hooks ----------------------------------------------------------
def cmd_plugins(argv: Sequence[str]) -> int:
    from .registry import discover, in_process

    p = argparse.ArgumentParser(prog="collapsekit plugins", description="List discovered plugins.")
    p.add_argument("--verbose", "-v", action="store_true", help="show hooks, requirements and source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    infos = list(discover().values()) + list(in_process().values())
    rows = []
    for info in infos:
        row = {"name": info.name, "distribution": info.distribution, "version": info.version,
               "hooks": info.hooks, "source": info.source, "error": info.error}
        if args.verbose or args.json:
            row["requirements"] = _static_requirements(info)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="collapsekit plugins (activate by listing them in run.plugins)")
    for col in ("name", "distribution", "version", "hooks"):
        table.add_column(col)
    if args.verbose:
        table.add_column("requirements")
        table.add_column("source")
    for r in rows:
        hooks = ", ".join(r["hooks"]) if not r["error"] else f"[red]failed to import: {r['error']}[/red]"
        cells = [r["name"], r["distribution"], r["version"], hooks]
        if args.verbose:
            cells += [", ".join(r["requirements"]) if isinstance(r["requirements"], list) else r["requirements"],
                      r["source"]]
        table.add_row(*cells)
    Console(width=200).print(table)
    return 0


def _static_requirements(info) -> Any:
    """Requirements a plugin declares with default settings (``requirements(task=None)``)."""
    import inspect

    if info.error or "requirements" not in info.hooks:
        return []
    try:
        obj = info.target() if inspect.isclass(info.target) else info.target
        return sorted(obj.requirements(task=None) or [])
    except Exception:  # noqa: BLE001 - depends on the task; listing must not fail
        return "depends on the task"


def cmd_tasks(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="collapsekit tasks", description="List benchmark tasks.").parse_args(argv)
    for ep in entry_points(group="collapsekit.tasks"):
        print(f"{ep.name:20s} {ep.value}")
    return 0


def cmd_hooks(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="collapsekit hooks", description="Print the hook reference.")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the README's) instead of the "
                                                           "full contracts")
    args = p.parse_args(argv)
    from .hookdocs import hook_reference, hook_text

    print(hook_reference() if args.markdown else hook_text())
    return 0


# -- bench / report / new-plugin -----------------------------------------------------
def default_jobs() -> int:
    """CPU cores this process may use (the bench's default number of parallel cells on CPU)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cmd_bench(argv: Sequence[str]) -> int:
    from .bench.runner import GPU_PRESETS, PRESETS

    p = argparse.ArgumentParser(prog="collapsekit bench", description="Run the shared benchmark suite.")
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="smoke (seconds), cpu (the committed CPU tables), gpu (full), gpu-quick (a GPU slice "
                        "of minutes: gpu sizes, cut budgets, bf16, one seed)")
    p.add_argument("--tasks", help="comma-separated task names (default: all)")
    p.add_argument("--methods", help="comma-separated methods, combos joined by + (default: each task's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--out", default="bench", help="output directory (default: bench)")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells run in parallel in that many processes (default: one per CPU core for the smoke "
                        "and cpu presets, 1 for gpu)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell instead of recording it")
    p.add_argument("--write-configs", metavar="DIR",
                   help="write one YAML per planned cell (seed 0) into DIR instead of running")
    p.add_argument("--perf", action="store_true", help="run the performance benchmarks instead (PERF.md)")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 1 if args.preset in GPU_PRESETS else default_jobs()
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")

    def split(s):
        return [x.strip() for x in s.split(",") if x.strip()] if s else None

    if args.perf:
        from .bench.perf import run_perf

        run_perf(out=args.out)
        return 0
    from .bench import run_bench, write_bench_configs

    if args.write_configs:
        for path in write_bench_configs(args.write_configs, args.preset, split(args.tasks), split(args.methods)):
            print(path)
        return 0
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in split(args.seeds)]
        except ValueError:
            raise ConfigError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    run_bench(preset=args.preset, tasks=split(args.tasks), methods=split(args.methods), seeds=seeds, out=args.out,
              jobs=args.jobs, fail_fast=args.fail_fast)
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="collapsekit report", description="Redraw plots of a run or bench dir; "
                                "with several run dirs, compare them (paired by seed) in OUT/RESULTS.md.")
    p.add_argument("path", nargs="+", help="a run dir, a bench dir, or several run dirs (e.g. runs/*-s*)")
    p.add_argument("--out", default=None, help="folder for the comparison of several runs (default: compare)")
    args = p.parse_args(argv)
    from .bench.report import report
    from .fileio import writing

    with writing(Path(args.out or args.path[0])):
        written = report(*args.path, out=args.out)
    for path in written:
        print(path)
    return 0


def cmd_new_plugin(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="collapsekit new-plugin", description="Write a plugin distribution.")
    p.add_argument("name")
    p.add_argument("--dest", default=".", help="folder in which collapsekit-NAME/ is created")
    args = p.parse_args(argv)
    from .template import create_plugin

    path = create_plugin(args.name, Path(args.dest))
    print(f"created {path}; next: pip install -e {path} && python -m pytest {path}")
    return 0


COMMANDS = {"run": cmd_run, "fit": cmd_fit, "plugins": cmd_plugins, "tasks": cmd_tasks, "hooks": cmd_hooks,
            "bench": cmd_bench, "report": cmd_report, "new-plugin": cmd_new_plugin}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"collapsekit {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"collapsekit: error: unknown command {argv[0]!r}.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except Preempted as exc:
        print(f"collapsekit: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except CollapsekitError as exc:
        print(f"collapsekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collapsekit: interrupted; finished generations are kept, re-run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
