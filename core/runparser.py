"""The jsonargparse parser of run configs (``run:``, ``task:``, ``trainer:``), shared by ``collapsekit run``
and the benchmark's cells; :mod:`collapsekit.cli` adds the command line's error messages around it."""
from __future__ import annotations

import sys
from typing import Any


def load_task_classes() -> dict[str, Any]:
    """Import every task entry point (group ``collapsekit.tasks``); failures are reported, not raised."""
    from .registry import TASK_GROUP, discover

    tasks = discover(TASK_GROUP)
    for info in tasks.values():
        if info.error:
            print(f"collapsekit: warning: task {info.name!r} from {info.distribution} failed to import: "
                  f"{info.error}", file=sys.stderr)
    return {name: info.target for name, info in tasks.items() if not info.error}


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


def instantiate(parser, cfg):
    """``parser.instantiate`` (jsonargparse >= 4.49) or its older name ``instantiate_classes``."""
    method = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return method(cfg)


def trainer_kwargs(parser, cfg) -> dict[str, Any]:
    """Fresh ``lightning.Trainer`` keyword arguments of a parsed config (callbacks and loggers newly
    instantiated; ``None`` values dropped so that the Trainer's and the engine's defaults apply)."""
    return {k: v for k, v in dict(instantiate(parser, cfg).trainer).items() if v is not None}
