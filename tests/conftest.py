"""Shared fixtures: tiny real configs that run a real Lightning Trainer in about a second."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

TINY_TASK = {
    "class_path": "collapsekit.plugins.tasks.markov_text.MarkovText",
    "init_args": {"vocab_size": 16, "seq_len": 16, "train_size": 64, "heldout_size": 32,
                  "n_layer": 1, "n_embd": 16, "n_head": 2, "batch_size": 16},
}


def tiny_config(root: Path, name: str = "tiny", generations: int = 2, plugins=None, max_steps: int = 8,
                **run) -> dict:
    """A complete config dict (run/task/trainer) for a run of a few seconds."""
    return {
        "run": {"name": name, "root": str(root), "generations": generations, "seed": 0,
                "plugins": list(plugins or []), **run},
        "task": {"class_path": TINY_TASK["class_path"], "init_args": dict(TINY_TASK["init_args"])},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                    "log_every_n_steps": 1},
    }


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict to a YAML file and return its path."""

    def write(config: dict, filename: str = "config.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def tiny_task():
    from collapsekit.plugins.tasks.markov_text import MarkovText

    return MarkovText(**TINY_TASK["init_args"])


@pytest.fixture
def make_config(tmp_path):
    """``make_config(**kw)``: :func:`tiny_config` rooted in this test's ``tmp_path / "runs"``."""

    def make(**kwargs) -> dict:
        return tiny_config(tmp_path / "runs", **kwargs)

    return make


@pytest.fixture
def cli(capsys):
    """Call ``collapsekit.cli.main(argv)`` in-process; return ``(exit code, stdout, stderr)``."""
    from collapsekit.cli import main

    def call(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call
