"""The claim: Seq-VCR + pause tokens beats plain training at equal steps (multiplication, CPU preset).

Slow (minutes): ``python -m pytest -m slow mitigations/seqvcr -s``. Measured numbers are in the README.
"""
from __future__ import annotations

import json

import pytest
import torch

from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.multiplication import Multiplication
from collapsekit.run import Run, RunConfig

METHODS = {"baseline": [], "seqvcr+pause-tokens": ["pause-tokens", "seqvcr"]}


def measure(root, seeds=(0, 1), generations=1):
    """Exact match etc. of both methods on the ``cpu`` preset; rows of (method, seed, generation, metrics)."""
    torch.set_num_threads(1)
    preset = Multiplication.preset("cpu")
    rows = []
    for seed in seeds:
        for method, plugins in METHODS.items():
            run = Run(RunConfig(name=f"{method}-{seed}", root=str(root), generations=generations, seed=seed,
                                plugins=plugins), Multiplication(**preset["task"]), build_manager(plugins))
            make = trainer_factory(max_steps=preset["trainer"]["max_steps"], enable_progress_bar=False,
                                   logger=False, accelerator="cpu")
            for g, m in enumerate(execute(run, make)):
                rows.append((method, seed, g, m))
                keep = ("exact_match", "digit_accuracy", "answer_nll", "rank_mean", "synthetic_exact_match")
                print(json.dumps({"method": method, "seed": seed, "generation": g,
                                  **{k: round(m[k], 4) for k in keep}}), flush=True)
    return rows


@pytest.mark.slow
def test_seqvcr_with_pause_beats_plain_training_at_equal_steps(tmp_path):
    rows = measure(tmp_path)
    score = {(meth, seed): m for meth, seed, g, m in rows if g == 0}
    for seed in (0, 1):
        plain, ours = score[("baseline", seed)], score[("seqvcr+pause-tokens", seed)]
        assert ours["exact_match"] > plain["exact_match"], (seed, plain["exact_match"], ours["exact_match"])
        assert ours["digit_accuracy"] > plain["digit_accuracy"] + 0.02
        assert ours["rank_mean"] > plain["rank_mean"]
