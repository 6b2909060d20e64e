"""The claim, through real runs: on OLS with a fixed design, the excess test error per generation
follows sigma^2 d/(T-d-1) * n under replace (linear growth) and sigma^2 d/(T-d-1) * sum_{i<=n} 1/i^2
under accumulate (bounded by pi^2/6 of the unit); accumulate-subsample lies in between. On the
Gaussian, accumulate matches a plain NumPy simulation of the accumulate process and avoids the
variance collapse of replace.

Expectations are over noise and design; each run averages independent replicates, over 3 seeds,
and every comparison allows 4 standard errors of the measured mean.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.linear_regression import LinearRegression
from collapsekit.testing import run_tiny

D, T, SIGMA, G, SEEDS, R = 5, 20, 1.0, 6, (0, 1, 2), 300
UNIT = SIGMA ** 2 * D / (T - D - 1)          # written out here, independently of the package


def state(root: Path, name: str, g: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(root / name / f"gen_{g}" / "model" / "model.safetensors").items()}


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


@pytest.fixture(scope="module")
def linreg_errors(tmp_path_factory) -> dict[str, np.ndarray]:
    """Per-replicate excess errors ``[G, seeds * R]`` of each policy, read from the saved weights."""
    root = tmp_path_factory.mktemp("claim")
    out = {}
    for policy, plugins in [("replace", []), ("accumulate", ["accumulate"]),
                            ("accumulate-subsample", ["accumulate-subsample"])]:
        per_gen = [[] for _ in range(G)]
        for seed in SEEDS:
            task = LinearRegression(dim=D, train_size=T, noise_std=SIGMA, replicates=R)
            name = f"{policy}-{seed}"
            metrics = run_tiny(root, plugins, task, name=name, generations=G, max_steps=1, seed=seed)
            for g in range(G):
                err = ((state(root, name, g)["weight"] - task.w_star) ** 2).sum(-1)      # Sigma = I
                assert metrics[g]["excess_error"] == pytest.approx(err.mean(), rel=1e-9)
                per_gen[g].append(err)
        out[policy] = np.array([np.concatenate(e) for e in per_gen])
    return out


def test_replace_grows_linearly_as_the_closed_form(linreg_errors):
    for g in range(G):
        mean, se = mean_se(linreg_errors["replace"][g])
        expected = UNIT * (g + 1)
        assert abs(mean - expected) <= 4 * se, f"replace n={g + 1}: {mean:.4f} +- {se:.4f}, closed form {expected:.4f}"
    last, _ = mean_se(linreg_errors["replace"][-1])
    assert last > 3 * UNIT * math.pi ** 2 / 6          # far above anything accumulate can reach


def test_accumulate_matches_the_closed_form_and_stays_bounded(linreg_errors):
    bound = UNIT * math.pi ** 2 / 6
    for g in range(G):
        mean, se = mean_se(linreg_errors["accumulate"][g])
        expected = UNIT * sum(1 / i ** 2 for i in range(1, g + 2))
        assert abs(mean - expected) <= 4 * se, \
            f"accumulate n={g + 1}: {mean:.4f} +- {se:.4f}, closed form {expected:.4f}"
        assert mean < bound + 4 * se


def test_subsample_lies_between_accumulate_and_replace(linreg_errors):
    for g in range(2, G):
        acc, acc_se = mean_se(linreg_errors["accumulate"][g])
        sub, sub_se = mean_se(linreg_errors["accumulate-subsample"][g])
        rep, rep_se = mean_se(linreg_errors["replace"][g])
        assert acc + 4 * math.hypot(acc_se, sub_se) < sub < rep - 4 * math.hypot(sub_se, rep_se), (g, acc, sub, rep)


def simulate_gaussian_accumulate(mu: np.ndarray, cov: np.ndarray, n: int, generations: int,
                                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plain accumulate loop, one replicate at a time: fit (MLE) all data so far, sample n, repeat.
    Returns ``[generations, R]`` of ||mu_hat - mu*||^2 and tr(Sigma_hat)/tr(Sigma*)."""
    mse, retained = np.zeros((generations, len(mu))), np.zeros((generations, len(mu)))
    for r in range(len(mu)):
        data = rng.multivariate_normal(mu[r], cov[r], size=n)
        for g in range(generations):
            m, s = data.mean(0), np.cov(data.T, bias=True)
            mse[g, r], retained[g, r] = ((m - mu[r]) ** 2).sum(), np.trace(s) / np.trace(cov[r])
            data = np.concatenate([data, rng.multivariate_normal(m, s, size=n)])
    return mse, retained


def test_gaussian_accumulate_matches_a_plain_simulation_and_avoids_variance_collapse(tmp_path):
    d, n, gens, reps = 2, 10, 5, 1500
    runs = {}
    for policy, plugins in [("replace", []), ("accumulate", ["accumulate"])]:
        task = Gaussian(dim=d, train_size=n, replicates=reps)
        metrics = run_tiny(tmp_path, plugins, task, name=policy, generations=gens, max_steps=1, seed=3)
        runs[policy] = (task, metrics)
    task, metrics = runs["accumulate"]
    sim_mse, sim_ret = simulate_gaussian_accumulate(task.true_mean, task.true_cov, n, gens, np.random.default_rng(9))
    trace = np.trace(task.true_cov, axis1=-2, axis2=-1)
    for g in range(gens):
        s = state(tmp_path, "accumulate", g)
        low = np.tril(s["scale_tril"])
        retained = np.trace(low @ np.swapaxes(low, -1, -2), axis1=-2, axis2=-1) / trace
        mse = ((s["mean"] - task.true_mean) ** 2).sum(-1)
        for name, run_vals, sim_vals in [("variance retained", retained, sim_ret[g]), ("mean error", mse, sim_mse[g])]:
            (a, sa), (b, sb) = mean_se(run_vals), mean_se(sim_vals)
            assert abs(a - b) <= 4 * math.hypot(sa, sb), f"gen {g} {name}: run {a:.4f}+-{sa:.4f}, sim {b:.4f}+-{sb:.4f}"
    replace = runs["replace"][1]
    c = (n - 1) / n
    assert metrics[-1]["variance_retained"] > c ** 2 > replace[-1]["variance_retained"]   # replace: ~c^5
    assert metrics[-1]["kl"] < 0.5 * replace[-1]["kl"]
