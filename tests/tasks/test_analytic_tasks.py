"""The analytic tasks ``gaussian`` and ``linear-regression``: exact fits through the real engine,
metrics against independent float64 implementations, and the replace closed forms.

The fits are exact (closed form inside the training step), so one Lightning step per
generation suffices and many replicates / seeds are cheap.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from collapsekit.errors import CollapsekitError
from collapsekit.plugins.tasks.gaussian import (Gaussian, GaussianModel, replace_mean_error,
                                                replace_variance_retained)
from collapsekit.plugins.tasks.linear_regression import LinearRegression, ReplicatedLinear
from collapsekit.pool import REAL, Pool
from collapsekit.testing import run_tiny

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def gen_state(root: Path, name: str, generation: int) -> dict[str, np.ndarray]:
    state = load_file(root / name / f"gen_{generation}" / "model" / "model.safetensors")
    return {k: v.numpy() for k, v in state.items()}


def gen_metrics(root: Path, name: str, generation: int) -> dict[str, float]:
    return json.loads((root / name / f"gen_{generation}" / "metrics.json").read_text())


def ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Independent OLS: one ``numpy.linalg.lstsq`` per replicate of ``x [N, R, d]``, ``y [N, R]``."""
    return np.stack([np.linalg.lstsq(x[:, r], y[:, r], rcond=None)[0] for r in range(x.shape[1])])


def z_ok(samples: np.ndarray, expected: float, z: float = 4.0) -> tuple[bool, str]:
    mean, se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    return abs(mean - expected) <= z * se, f"measured {mean:.4f} +- {se:.4f} (1 SE), expected {expected:.4f}"


# -- construction and presets -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 4, "train_size": 5}, r"train_size must be an integer >= dim \+ 2 = 6"),
    ({"dim": 0}, "dim must be an integer >= 1"),
    ({"replicates": 0}, "replicates must be an integer >= 1"),
    ({"noise_std": 0.0}, "noise_std must be > 0"),
])
def test_linear_regression_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearRegression(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 3, "train_size": 3}, r"train_size must be an integer >= dim \+ 1 = 4"),
    ({"replicates": -1}, "replicates must be an integer >= 1"),
    ({"condition": 0.5}, "condition must be >= 1"),
])
def test_gaussian_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gaussian(**kwargs)


@pytest.mark.parametrize("cls", [Gaussian, LinearRegression])
def test_presets_benchmark_declarations_and_entry_point(cls):
    from collapsekit.registry import TASK_GROUP, discover

    assert discover(TASK_GROUP)[cls.name].target is cls
    assert "baseline" in cls.bench_methods and "accumulate" in cls.bench_methods
    assert 2 <= len(cls.headline) <= 4 and set(cls.headline) <= set(cls.higher_is_better)
    for preset in ("smoke", "cpu", "gpu"):
        spec = cls.preset(preset)
        assert {"task", "trainer", "generations"} <= set(spec) <= {"task", "trainer", "generations", "seeds", "variants"}
        assert spec["trainer"]["max_steps"] >= 1 and len(spec.get("seeds", ())) in ((0,) if preset != "cpu" else (5,))
        task = cls(**spec["task"])
        task.setup(0)
        assert len(task.real_pool()) == spec["task"]["train_size"]
    with pytest.raises(ValueError, match="unknown preset 'laptop'"):
        cls.preset("laptop")


@pytest.mark.parametrize("cls", [Gaussian, LinearRegression])
def test_data_is_a_function_of_the_seed(cls):
    a, b, c = cls(), cls(), cls()
    a.setup(3), b.setup(3), c.setup(4)
    pa, pb, pc = a.real_pool(), b.real_pool(), c.real_pool()
    assert pa.keys == tuple(sorted(cls.pool_keys)) and (pa.origin_generation == REAL).all()
    for k in pa.keys:
        np.testing.assert_array_equal(pa.arrays[k], pb.arrays[k])
        assert not np.allclose(pa.arrays[k], pc.arrays[k])
    with pytest.raises(RuntimeError, match=r"call setup\(seed\)"):
        cls().real_pool()


# -- linear regression: exact OLS through the engine --------------------------------------------------
def test_linear_regression_fits_ols_exactly_each_generation(tmp_path):
    task = LinearRegression(dim=3, train_size=7, replicates=5, spectrum_decay=1.0)
    run_tiny(tmp_path, [], task, name="ols", generations=3, max_steps=3)
    pools = [task.real_pool()] + [Pool.load(tmp_path / "ols" / f"gen_{g}" / "pool") for g in range(2)]
    eig = np.array([1.0, 1 / 2, 1 / 3])
    for g in range(3):
        w = gen_state(tmp_path, "ols", g)["weight"]
        np.testing.assert_allclose(w, ols(np.asarray(pools[g].arrays["x"]), np.asarray(pools[g].arrays["y"])),
                                   rtol=0, atol=1e-10)    # replace: generation g trains on pool g
        excess = [sum(eig[k] * (w[r, k] - task.w_star[r, k]) ** 2 for k in range(3)) for r in range(5)]
        metrics = gen_metrics(tmp_path, "ols", g)
        assert metrics["excess_error"] == pytest.approx(np.mean(excess), rel=1e-12)
        assert metrics["test_error"] == pytest.approx(np.mean(excess) + 1.0, rel=1e-12)
        assert metrics["excess_error_normalized"] == pytest.approx(np.mean(excess) / (3 / (7 - 3 - 1)), rel=1e-12)
        assert metrics["pool/size"] == 7
    # synthetic data: the fixed design relabelled by the fitted weights plus N(0, sigma^2) noise
    syn = pools[1]
    np.testing.assert_array_equal(syn.arrays["x"], task.x)
    assert (syn.origin_generation == 0).all()


def test_linear_regression_sampling_tiles_the_design_and_adds_noise():
    task = LinearRegression(dim=2, train_size=4, replicates=3, noise_std=0.5)
    task.setup(0)
    model = ReplicatedLinear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(task.w_star))
    out = task.sample(model, 6000, torch.Generator().manual_seed(1))
    again = task.sample(model, 6000, torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(out["y"], again["y"])
    np.testing.assert_array_equal(out["x"][5], task.x[1])            # item i is design row i % T
    resid = out["y"] - np.einsum("nrd,rd->nr", out["x"], task.w_star)
    assert abs(resid.mean()) < 4 * 0.5 / math.sqrt(resid.size)
    assert resid.std() == pytest.approx(0.5, rel=0.03)


def test_eval_mode_step_does_not_refit():
    task = LinearRegression(dim=2, train_size=4)
    task.setup(0)
    model = ReplicatedLinear(1, 2).eval()
    batch = {k: torch.as_tensor(v) for k, v in task.real_pool().arrays.items()}
    out = task.step(model, batch, frozenset())
    assert torch.equal(model.weight, torch.zeros(1, 2))
    assert out["loss"].item() == pytest.approx(float((task.y ** 2).mean()))


# -- gaussian: exact MLE through the engine --------------------------------------------------------
def test_gaussian_fits_mle_exactly_and_metrics_match_independent_formulas(tmp_path):
    task = Gaussian(dim=3, train_size=9, replicates=4, condition=9.0)
    run_tiny(tmp_path, [], task, name="mle", generations=2, max_steps=2)
    pools = [task.real_pool(), Pool.load(tmp_path / "mle" / "gen_0" / "pool")]
    for g in range(2):
        state = gen_state(tmp_path, "mle", g)
        x = np.asarray(pools[g].arrays["x"])
        low = np.tril(state["scale_tril"])
        cov = low @ np.swapaxes(low, -1, -2)
        kls = []
        for r in range(4):
            np.testing.assert_allclose(state["mean"][r], x[:, r].mean(0), atol=1e-10)
            np.testing.assert_allclose(cov[r], np.cov(x[:, r].T, bias=True), atol=1e-10)
            truth = torch.distributions.MultivariateNormal(torch.tensor(task.true_mean[r]),
                                                           torch.tensor(task.true_cov[r]))
            model = torch.distributions.MultivariateNormal(torch.tensor(state["mean"][r]), torch.tensor(cov[r]))
            kls.append(torch.distributions.kl_divergence(truth, model).item())
        m = gen_metrics(tmp_path, "mle", g)
        assert m["kl"] == pytest.approx(np.mean(kls), rel=1e-9)
        assert m["mean_sq_error"] == pytest.approx(np.mean(((state["mean"] - task.true_mean) ** 2).sum(-1)), rel=1e-9)
        assert m["cov_frobenius_error"] == pytest.approx(
            np.mean([np.linalg.norm(cov[r] - task.true_cov[r], "fro") for r in range(4)]), rel=1e-9)
        assert m["variance_retained"] == pytest.approx(
            np.mean([np.trace(cov[r]) / np.trace(task.true_cov[r]) for r in range(4)]), rel=1e-9)
    np.testing.assert_allclose(np.linalg.eigvalsh(task.true_cov[0]), [1 / 3, 1, 3], rtol=1e-10)


def test_gaussian_log_density_and_samples():
    task = Gaussian(dim=2, train_size=5, replicates=2)
    task.setup(0)
    model = GaussianModel(2, 2)
    model.fit_(torch.tensor(task.x))
    x = torch.randn(7, 2, 2, dtype=torch.float64)
    for r in range(2):
        dist = torch.distributions.MultivariateNormal(model.mean[r].detach(), model.covariance()[r].detach())
        torch.testing.assert_close(model(x)[:, r].detach(), dist.log_prob(x[:, r]))
    big = task.sample(model, 20000, torch.Generator().manual_seed(0))["x"]
    np.testing.assert_allclose(big.mean(0), model.mean.detach().numpy(), atol=0.06)
    np.testing.assert_allclose(np.cov(big[:, 1].T), model.covariance()[1].detach().numpy(), atol=0.1)


def test_losses_are_differentiable_and_stationary_at_the_exact_fit():
    """gradcheck of both task losses; at the closed-form fit the gradient vanishes, so the optimizer
    step that Lightning takes after the fit cannot move it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, 3, dtype=torch.float64, generator=g)
    y = torch.randn(9, 2, dtype=torch.float64, generator=g)
    gauss, lin = GaussianModel(2, 3), ReplicatedLinear(2, 3)
    gauss.fit_(x)
    lin.fit_(x, y)
    mean, tril, w = (p.detach().clone().requires_grad_() for p in (gauss.mean, gauss.scale_tril, lin.weight))

    def nll(m, s):
        return -torch.func.functional_call(gauss, {"mean": m, "scale_tril": s}, (x,)).mean()

    assert torch.autograd.gradcheck(nll, (mean, tril))
    assert torch.autograd.gradcheck(lambda v: ((torch.einsum("nrd,rd->nr", x, v) - y) ** 2).mean(), (w,))
    for model, loss in ((gauss, lambda: -gauss(x).mean()),
                        (lin, lambda: ((lin(x) - y) ** 2).mean())):
        model.zero_grad()
        loss().backward()
        assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-12


def test_gaussian_singular_covariance_is_a_clear_error():
    with pytest.raises(CollapsekitError, match="covariance .* is singular"):
        GaussianModel(1, 2).fit_(torch.ones(5, 1, 2, dtype=torch.float64))


# -- the replace closed forms (built-in replace policy) ------------------------------------------------
def test_replace_linear_regression_matches_closed_form(tmp_path):
    """E||w_n - w*||^2_Sigma = sigma^2 d / (T - d - 1) * n (n = generation + 1), over 3 seeds x 400 replicates."""
    d, T, sigma, G = 5, 20, 0.7, 6
    errors = {g: [] for g in range(G)}
    for seed in (0, 1, 2):
        task = LinearRegression(dim=d, train_size=T, noise_std=sigma, replicates=400, spectrum_decay=0.5)
        run_tiny(tmp_path, [], task, name=f"s{seed}", generations=G, max_steps=1, seed=seed)
        eig = np.arange(1, d + 1) ** -0.5
        for g in range(G):
            w = gen_state(tmp_path, f"s{seed}", g)["weight"]
            errors[g].append(((w - task.w_star) ** 2 * eig).sum(-1))
    unit = sigma ** 2 * d / (T - d - 1)
    for g in range(G):
        ok, msg = z_ok(np.concatenate(errors[g]), unit * (g + 1))
        assert ok, f"replace, generation {g}: {msg}"


def test_replace_gaussian_matches_closed_forms(tmp_path):
    """Replace with the MLE: E tr(Sigma_n)/tr(Sigma*) = c^n, E||mu_n - mu*||^2 = tr(Sigma*)/N sum_{k<n} c^k."""
    d, N, G = 3, 10, 5
    task = Gaussian(dim=d, train_size=N, replicates=2000)
    run_tiny(tmp_path, [], task, name="g", generations=G, max_steps=1, seed=5)
    c = (N - 1) / N
    trace = np.trace(task.true_cov, axis1=-2, axis2=-1)
    for g in range(G):
        state = gen_state(tmp_path, "g", g)
        low = np.tril(state["scale_tril"])
        retained = np.trace(low @ np.swapaxes(low, -1, -2), axis1=-2, axis2=-1) / trace
        ok, msg = z_ok(retained, c ** (g + 1))
        assert ok, f"variance retained, generation {g}: {msg}"
        assert replace_variance_retained(N, g) == pytest.approx(c ** (g + 1))
        mse = ((state["mean"] - task.true_mean) ** 2).sum(-1)
        expected = trace.mean() / N * sum(c ** k for k in range(g + 1))
        ok, msg = z_ok(mse, expected)
        assert ok, f"mean error, generation {g}: {msg}"
        assert replace_mean_error(trace.mean(), N, g) == pytest.approx(expected)


# -- the shipped configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["gaussian.yaml", "linear-regression.yaml"])
def test_config_runs_through_the_cli(cli, tmp_path, config):
    code, out, err = cli("run", "--config", CONFIGS / config, "--run.root", tmp_path, "--run.generations", "2",
                         "--task.init_args.replicates", "4", "--trainer.logger", "false")
    assert code == 0, err
    head = Gaussian.headline[0] if config.startswith("gaussian") else LinearRegression.headline[0]
    assert f"generation 1: {head}=" in out
