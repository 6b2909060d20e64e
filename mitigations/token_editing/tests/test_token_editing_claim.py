"""The ToEdit claim on markov-text: editing real text keeps KL(true || model) and the lost tail mass
near generation 0, while replace + ancestral sampling drifts away generation after generation.

Fast variant: the loop of ``examples/bigram_loop.py``, an add-0.1 bigram counting model as the
prior (exact KL from the known source, ~2 s). Slow variant: the real engine, GPT-2, markov-text ``cpu`` preset.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.markov_text import MarkovText
from collapsekit.testing import CLAIM_THREADS, torch_threads


def load_example():
    """``examples/bigram_loop.py`` as a module: the claim is checked on the loop the README shows."""
    path = Path(__file__).resolve().parents[1] / "examples" / "bigram_loop.py"
    spec = importlib.util.spec_from_file_location("bigram_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claim_fast_bigram_prior():
    task = MarkovText(train_size=1000, seq_len=64)           # the source of the markov-text task
    real, _ = task.build_data(0)
    loop = load_example().loop                               # bigram prior: replace vs editing, exact KL
    curves = {}
    for arm in ("replace", "edit"):
        rows = loop(task, real, 5, arm, threshold=0.99, top_k=8, temperature=1.0)
        curves[arm] = (np.array([r["kl"] for r in rows]), np.array([r["tail"] for r in rows]), rows)
    kl_r, tail_r, _ = curves["replace"]
    kl_e, tail_e, shares = curves["edit"]
    # editing is not vacuous: near-deterministic rows pass 0.99, a few of their tokens move
    assert all(s["share_above"] > 0.005 for s in shares)
    assert all(0 < s["share_changed"] < 0.05 * s["share_above"] for s in shares)
    # replace collapses: KL and lost tail mass keep growing
    assert np.all(np.diff(kl_r) > 0) and kl_r[-1] > 3 * kl_r[0]
    assert tail_r[-1] > 3 * tail_r[0]
    # token editing stays within 10% of generation 0 and far below replace
    assert kl_e.max() < 1.1 * kl_e[0] and tail_e.max() < 1.1 * tail_e[0]
    assert np.all(kl_e[1:] < 0.6 * kl_r[1:]) and np.all(tail_e[1:] < 0.6 * tail_r[1:])


@pytest.mark.slow
@pytest.mark.parametrize("threads", CLAIM_THREADS)
def test_claim_engine_gpt2_cpu_preset(tmp_path, threads):
    """About 2-3 minutes on 1 core: 3 generations of each arm on the ``cpu`` preset (see README)."""
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.run import Run, RunConfig

    preset = MarkovText.preset("cpu")
    results = {}
    with torch_threads(threads):   # the claim must hold on both floating-point paths
        for arm, plugins in (("replace", []), ("token-editing", ["token-editing"])):
            run = Run(RunConfig(name=arm, root=str(tmp_path), generations=3, seed=0, plugins=plugins),
                      MarkovText(**preset["task"]), build_manager(plugins))
            results[arm] = execute(run, trainer_factory(max_steps=preset["trainer"]["max_steps"], logger=False,
                                                        enable_progress_bar=False, accelerator="cpu"))
    rep, te = results["replace"], results["token-editing"]
    assert rep[0]["kl"] == pytest.approx(te[0]["kl"])            # generation 0 is the same model
    assert rep[-1]["kl"] > 1.5 * rep[0]["kl"]                      # replace collapses
    assert te[-1]["kl"] < 1.15 * te[0]["kl"]                       # token editing does not
    assert te[-1]["kl"] < rep[-1]["kl"] - 0.03
    assert te[-1]["tail_mass_lost"] < rep[-1]["tail_mass_lost"]
    assert all(m["token_editing/share_above"] > 0 for m in te)
    assert sum(m["token_editing/share_changed"] for m in te) > 0
