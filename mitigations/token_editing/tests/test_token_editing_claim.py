"""The ToEdit claim on markov-text: editing real text keeps KL(true || model) and the lost tail mass
near generation 0, while replace + ancestral sampling drifts away generation after generation.

Fast variant: the whole loop with an add-0.1 bigram counting model as the prior (exact KL from
the known source, ~2 s). Slow variant: the real engine, GPT-2, markov-text ``cpu`` preset.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.markov_text import MarkovText, sample_chain
from collapsekit_token_editing import edit_statistics, edit_tokens


def fit_bigram(x: np.ndarray, vocab: int, alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Add-alpha transition matrix and first-token distribution of sequences ``x`` [N, T]."""
    counts = np.full((vocab, vocab), alpha)
    np.add.at(counts, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1.0)
    first = np.full(vocab, alpha)
    np.add.at(first, x[:, 0], 1.0)
    return counts / counts.sum(1, keepdims=True), first / first.sum()


def divergence(P: np.ndarray, pi: np.ndarray, Q: np.ndarray, tail: float = 1e-3) -> tuple[float, float]:
    """Stationary-weighted KL(P || Q) per token and true mass that Q gives less than ``tail``."""
    w = pi[:, None] * P
    return float((w * (np.log(P) - np.log(Q))).sum()), float((w * (Q < tail)).sum())


def test_claim_fast_bigram_prior():
    task = MarkovText(train_size=1000, seq_len=64)           # the source of the markov-text task
    P, pi, V = task.transition, task.initial, task.vocab_size
    real, _ = task.build_data(0)
    generations = 5
    curves = {}
    for arm in ("replace", "token-editing"):
        rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(1)
        data, kl, tail, shares = real, [], [], []
        for _ in range(generations):
            Q, q0 = fit_bigram(data, V)
            k, t = divergence(P, pi, Q)
            kl.append(k)
            tail.append(t)
            if arm == "replace":                                  # ancestral sampling of the fitted model
                data = sample_chain(Q, q0, len(real), real.shape[1], rng)
            else:                                                 # edit the real rows with the fitted model
                tokens = torch.from_numpy(real)
                logits = torch.from_numpy(np.concatenate(
                    [np.broadcast_to(np.log(q0), (len(real), 1, V)), np.log(Q)[real[:, :-1]]], axis=1))
                edited = edit_tokens(tokens, logits, 0.99, 8, gen, temperature=1.0)
                shares.append(edit_statistics(tokens, edited, logits, 0.99))
                data = edited.numpy()
        curves[arm] = (np.array(kl), np.array(tail), shares)
    kl_r, tail_r, _ = curves["replace"]
    kl_e, tail_e, shares = curves["token-editing"]
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
def test_claim_engine_gpt2_cpu_preset(tmp_path):
    """About 2-3 minutes on 1 core: 3 generations of each arm on the ``cpu`` preset (see README)."""
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.run import Run, RunConfig

    torch.set_num_threads(1)
    preset = MarkovText.preset("cpu")
    results = {}
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
