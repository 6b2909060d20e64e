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
from .runparser import build_run_parser, load_task_classes  # noqa: F401 - part of this module's API
from .runparser import instantiate as _instantiate

USAGE = """usage: collapsekit COMMAND [options]

commands:
  run         train generations from a YAML config   (collapsekit run --config configs/quickstart.yaml)
  fit         one plain Lightning fit of a task        (collapsekit fit --model.task MarkovText)
  plugins     list discovered plugins                  (--verbose for hooks, requirements, source)
  tasks       list discovered benchmark tasks
  hooks       print the hook reference                 (--markdown for the README table)
  bench       run the shared benchmark suite           (--preset smoke|cpu|gpu|gpu-quick, --config RUN.yaml, --perf)
  report      redraw the plots of a run or bench directory; compare several runs (paired by seed)
  new-plugin  write a ready plugin distribution from the template

`collapsekit COMMAND --help` shows each command's options."""


# -- run -------------------------------------------------------------------------
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
    from .threads import describe as describe_threads, resolve_threads

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
              f"dir {run.dir}, {describe_threads(*resolve_threads(run_config.threads))}", flush=True)

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


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; ``"0-4"`` -> ``[0, 1, 2, 3, 4]``; both may be mixed (``"0-2,7"``)."""
    seeds: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        try:
            seeds += list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(part)]
        except ValueError:
            raise ConfigError(f"--seeds must be integers or ranges separated by commas (e.g. 0,1 or 0-4), "
                              f"got {text!r}") from None
        if m and int(m.group(2)) < int(m.group(1)):
            raise ConfigError(f"--seeds: the range {part!r} is empty; write it low-high, e.g. 0-4")
    if not seeds:
        raise ConfigError(f"--seeds names no seed: {text!r}")
    return list(dict.fromkeys(seeds))


RUN_OPTION_PREFIXES = ("--run.", "--task.", "--trainer.")


def cmd_bench(argv: Sequence[str]) -> int:
    from .bench.runner import GPU_PRESETS, PRESETS

    p = argparse.ArgumentParser(
        prog="collapsekit bench", description="Run the shared benchmark suite (--preset), or methods x seeds on your "
        "own run config (--config RUN.yaml; --run.*, --task.*, --trainer.* options override it as in `collapsekit run`).")
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="smoke (seconds), cpu (the committed CPU tables), gpu (full), gpu-quick (a GPU slice "
                        "of minutes: gpu sizes, cut budgets, bf16, one seed)")
    p.add_argument("--config", metavar="RUN.yaml",
                   help="benchmark your own run config (the file `collapsekit run --config` takes) instead of the "
                        "presets: each cell is it with one method's plugins added and one seed")
    p.add_argument("--tasks", help="comma-separated task names (default: all)")
    p.add_argument("--methods", help="comma-separated methods, combos joined by + (default: each task's)")
    p.add_argument("--seeds", help="seeds: 0,1,2 or 0-4 (default: the preset's; with --config, its run.seed)")
    p.add_argument("--plugin-args", metavar="YAML",
                   help='init args of the methods\' plugins: \'{"token-editing": {"threshold": 0.99}}\' (YAML/JSON, '
                        "or a .yaml/.json file)")
    p.add_argument("--variants", metavar="YAML",
                   help='more method names: \'{"lf-random": {"plugin": "latent-filter", "init_args": '
                        '{"scorer": "random"}}}\' (YAML/JSON, or a file)')
    p.add_argument("--controls", metavar="YAML",
                   help='compare a method with its control too, paired by seed: \'{"latent-filter": "lf-random"}\'')
    p.add_argument("--out", default="bench", help="output directory (default: bench)")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells run in parallel in that many processes (default: one per CPU core for the smoke "
                        "and cpu presets and CPU configs, 1 for gpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each cell (default: the config's run.threads, else $OMP_NUM_THREADS, "
                        "else 1; presets: 1)")
    p.add_argument("--executor", choices=("processes", "submitit"), default="processes",
                   help="processes: this machine (default); submitit: one job per cell (SLURM, local)")
    p.add_argument("--submitit", metavar="JSON", default=None,
                   help='submitit AutoExecutor parameters, e.g. \'{"cluster": "slurm", "slurm_partition": "gpu", '
                        '"gpus_per_node": 1, "timeout_min": 240, "slurm_array_parallelism": 8}\'')
    p.add_argument("--overwrite", action="store_true",
                   help="recompute cells that an earlier call made with another config or other versions")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell instead of recording it")
    p.add_argument("--write-configs", metavar="DIR",
                   help="write one YAML per planned cell (seed 0) into DIR instead of running")
    p.add_argument("--perf", action="store_true", help="run the performance benchmarks instead (PERF.md)")
    args, extra = p.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") and not a.startswith(RUN_OPTION_PREFIXES)]
    if stray or (extra and not extra[0].startswith(RUN_OPTION_PREFIXES)):
        p.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra and not args.config:
        raise ConfigError(f"{extra[0]} overrides a run config: it needs --config RUN.yaml")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")

    def split(s):
        return [x.strip() for x in s.split(",") if x.strip()] if s else None

    if args.perf:
        from .bench.perf import run_perf

        run_perf(out=args.out)
        return 0
    from .bench import run_bench, write_bench_configs
    from .bench.methods import read_mapping

    if args.write_configs:
        for path in write_bench_configs(args.write_configs, args.preset, split(args.tasks), split(args.methods)):
            print(path)
        return 0
    mappings = {name: read_mapping(getattr(args, name), f"--{name.replace('_', '-')}")
                for name in ("plugin_args", "variants", "controls", "submitit")}
    seeds = parse_seeds(args.seeds) if args.seeds else None
    config = None
    if args.config:
        if not os.path.isfile(args.config):
            raise ConfigError(f"--config {args.config!r}: no such file")
        _, _, _, _, config = load_run_config(["--config", args.config, *extra])
    if args.jobs is None:      # one job per core (per `threads` cores), one job on a GPU
        from .threads import resolve_threads

        if config is None:
            threads = args.threads or 1
        else:
            threads = resolve_threads(args.threads if args.threads is not None
                                      else (config.get("run") or {}).get("threads"))[0]
        on_gpu = args.preset in GPU_PRESETS if config is None else _uses_gpu(config.get("trainer") or {})
        args.jobs = 1 if on_gpu else max(1, default_jobs() // threads)
    run_bench(preset=args.preset, tasks=split(args.tasks), methods=split(args.methods), seeds=seeds, out=args.out,
              jobs=args.jobs, fail_fast=args.fail_fast, config=config,
              config_name=os.path.splitext(os.path.basename(args.config))[0] if args.config else None,
              plugin_args=mappings["plugin_args"], variants=mappings["variants"], controls=mappings["controls"],
              threads=args.threads, executor=args.executor, submitit=mappings["submitit"] or None,
              overwrite=args.overwrite)
    return 0


def _uses_gpu(trainer: dict) -> bool:
    """Whether a config's trainer would run on a GPU here (its accelerator is not ``cpu`` and one is present)."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator == "cpu":
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


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
    print(f"created {path}; next: pip install -e '{path}[test]' && python -m pytest {path}")
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
