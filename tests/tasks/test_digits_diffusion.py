"""digits-diffusion: schedule, posterior and probes against independent implementations; sampling,
encoding and data contracts; a real two-generation run; configs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits_diffusion import (NUM_CLASSES, DigitsDiffusion, beta_schedule,
                                                         frechet_distance, load_digit_vectors, ole_objective,
                                                         timestep_embedding)
from collapsekit.pool import REAL, Pool
from collapsekit.run import Run, RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = DigitsDiffusion.preset("smoke")["task"]


@pytest.fixture(scope="module")
def task():
    t = DigitsDiffusion(**TINY)
    t.setup(0)
    return t


# -- independent references ------------------------------------------------------------------------
def ref_cosine_betas(T, s=0.008):
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    return np.array([min(1 - (f[t + 1] / f[0]) / (f[t] / f[0]), 0.999) for t in range(T)])


def ref_frechet(a, b):
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def ref_ole(z, y):
    z = np.asarray(z, dtype=np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    per_class = sum(np.linalg.norm(z[np.asarray(y) == c], "nuc") for c in sorted(set(y.tolist())))
    return (per_class - np.linalg.norm(z, "nuc")) / len(z)


# -- pure functions --------------------------------------------------------------------------------
def test_beta_schedules_match_formulas():
    assert np.allclose(beta_schedule(50, "cosine").numpy(), ref_cosine_betas(50), atol=1e-12)
    lin = beta_schedule(100, "linear").numpy()
    assert lin[0] == pytest.approx(1e-3) and lin[-1] == pytest.approx(0.2) and np.all(np.diff(lin) > 0)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule(10, "quadratic")
    with pytest.raises(ValueError, match="timesteps"):
        beta_schedule(1)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 3]), 7)
    assert emb.shape == (2, 7) and torch.all(emb[:, -1] == 0)
    assert torch.allclose(emb[0, :3], torch.ones(3)) and torch.allclose(emb[1, 3], torch.sin(torch.tensor(3.0)))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(150, 5)) * 2.0 + 1.0
    assert frechet_distance(a, b) == pytest.approx(ref_frechet(a, b), rel=1e-7)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # two Gaussians with equal covariance: the distance is the squared mean shift
    assert frechet_distance(a, a + 3.0) == pytest.approx(9.0 * 5, rel=1e-9)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        frechet_distance(a, b[:, :3])


def test_ole_matches_reference_and_is_zero_for_orthogonal_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=30)
    z = rng.normal(size=(30, 6)) + 2.0 * rng.normal(size=(3, 6))[y]
    assert ole_objective(z, y) == pytest.approx(ref_ole(z, y), rel=1e-10)
    assert ole_objective(z, y) > 0
    # each class spans its own coordinate block: orthogonal subspaces -> 0
    ortho = np.zeros((30, 6))
    for i, c in enumerate(y):
        ortho[i, 2 * c:2 * c + 2] = rng.normal(size=2)
    assert ole_objective(ortho, y) == pytest.approx(0.0, abs=1e-10)
    # every class on one line: the objective grows to (sum_c ||Z_c||_* - ||Z||_*) / N > 0
    line = np.ones((30, 6)) * rng.uniform(0.5, 1.5, size=(30, 1))
    assert ole_objective(line, y) == pytest.approx(ref_ole(line, y), rel=1e-10)


def test_posterior_coefficients_match_ho_et_al(task):
    """q(x_{t-1} | x_t, x0) mean coefficients and variance, Ho et al. (2020) eq. 7, from the betas."""
    betas = task.betas.numpy()
    for t in (0, 1, task.timesteps // 2, task.timesteps - 1):
        abar = np.prod(1 - betas[:t + 1])
        abar_prev = np.prod(1 - betas[:t])
        assert task.post_c0[t].item() == pytest.approx(np.sqrt(abar_prev) * betas[t] / (1 - abar), rel=1e-10)
        assert task.post_ct[t].item() == pytest.approx(np.sqrt(1 - betas[t]) * (1 - abar_prev) / (1 - abar),
                                                       rel=1e-10)
        assert task.post_var[t].item() == pytest.approx((1 - abar_prev) / (1 - abar) * betas[t], rel=1e-10,
                                                        abs=1e-15)


class Oracle(nn.Module):
    """The exact noise predictor for data that is one fixed image per class."""

    def __init__(self, task, images):
        super().__init__()
        self.task, self.images = task, images
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, t, y):
        abar = self.task.abar[t].float()[:, None]
        return (x - abar.sqrt() * self.images[y]) / (1 - abar).sqrt()


def test_reverse_process_recovers_the_data_under_an_exact_denoiser(task):
    images = torch.as_tensor(load_digit_vectors()[0][:NUM_CLASSES])
    out = task.sample(Oracle(task, images), 30, torch.Generator().manual_seed(0))
    assert np.allclose(out["x"], images[out["y"]].numpy(), atol=1e-4)


# -- task contracts -------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_scaled(task):
    other = DigitsDiffusion(**TINY)
    other.setup(0)
    assert np.array_equal(task.train_index, other.train_index)
    assert not set(task.train_index) & set(task.heldout_index)
    pool = task.real_pool()
    assert pool.keys == ("x", "y") and np.all(pool.origin_generation == REAL)
    x, y = pool.arrays["x"], pool.arrays["y"]
    assert x.shape == (TINY["train_size"], 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() == -1.0
    reseeded = DigitsDiffusion(**TINY)
    reseeded.setup(1)
    assert not np.array_equal(task.train_index, reseeded.train_index)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="exceeds"):
        DigitsDiffusion(train_size=1500, heldout_size=500)
    with pytest.raises(ValueError, match="encode_t"):
        DigitsDiffusion(timesteps=10, encode_t=10)
    with pytest.raises(ValueError, match="label_dropout"):
        DigitsDiffusion(label_dropout=1.0)
    with pytest.raises(Exception, match="setup"):
        DigitsDiffusion(**TINY).real_pool()


def test_dataloader_covers_the_pool_once_per_epoch_in_seeded_order(task):
    pool = task.real_pool()
    batches = list(task.dataloader(pool, shuffle=True, seed=3))
    assert [len(b["y"]) for b in batches[:-1]] == [task.batch_size] * (len(batches) - 1)
    seen = torch.cat([b["x"] for b in batches])
    assert sorted(map(tuple, seen.numpy().tolist())) == sorted(map(tuple, pool.arrays["x"].tolist()))
    again = list(task.dataloader(pool, shuffle=True, seed=3))
    assert all(torch.equal(a["y"], b["y"]) for a, b in zip(batches, again))


def test_step_outputs_and_gradients(task):
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(task.dataloader(task.real_pool(), shuffle=False, seed=0)))
    out = task.step(model, batch, frozenset({"features"}))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["features"].shape == (len(batch["y"]), TINY["hidden"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sample_contract_and_determinism(task):
    torch.manual_seed(0)
    model = task.build_model()
    a = task.sample(model, 25, torch.Generator().manual_seed(5))
    b = task.sample(model, 25, torch.Generator().manual_seed(5))
    c = task.sample(model, 25, torch.Generator().manual_seed(6))
    assert a["x"].shape == (25, 64) and a["x"].dtype == np.float32 and a["y"].dtype == np.int64
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    assert not np.array_equal(a["x"], c["x"])
    assert np.abs(a["x"]).max() <= 1.0
    counts = np.bincount(a["y"], minlength=NUM_CLASSES)
    assert counts.max() - counts.min() <= 1
    fixed = task.sample(model, 4, torch.Generator().manual_seed(0), labels=np.array([3, 3, 1, 0]))
    assert fixed["y"].tolist() == [3, 3, 1, 0]
    with pytest.raises(ValueError, match="top_k"):
        task.sample(model, 2, torch.Generator(), top_k=5)
    cold = task.sample(model, 3, torch.Generator().manual_seed(1), temperature=0.0)
    assert np.isfinite(cold["x"]).all()


def test_encode_is_deterministic_and_label_free(task):
    torch.manual_seed(0)
    model = task.build_model()
    x = task.real_pool().arrays["x"][:7]
    z = task.encode(model, x)
    assert z.shape == (7, TINY["hidden"]) and torch.equal(z, task.encode(model, x))
    assert not torch.equal(z[0], z[1])
    assert task.features(x).shape == (7, task.evaluator_hidden)


def test_evaluate_reports_every_declared_metric_deterministically(task):
    torch.manual_seed(0)
    model = task.build_model()
    m1, m2 = task.evaluate(model, None), task.evaluate(model, None)
    assert set(m1) == set(DigitsDiffusion.higher_is_better) and m1 == m2
    assert all(math.isfinite(v) for v in m1.values())
    assert 0.0 <= m1["class_accuracy"] <= 1.0 and m1["fid"] >= 0 and m1["ole"] >= -1e-9
    ref = task.reference_metrics()
    assert ref["fid"] < m1["fid"] and ref["class_accuracy"] > 0.9


def test_presets_and_bench_declarations():
    for name in ("smoke", "cpu", "gpu"):
        spec = DigitsDiffusion.preset(name)
        assert set(spec) >= {"task", "trainer", "generations"}
        DigitsDiffusion(**spec["task"])
    with pytest.raises(ValueError, match="unknown preset"):
        DigitsDiffusion.preset("huge")
    assert set(DigitsDiffusion.headline) <= set(DigitsDiffusion.higher_is_better)
    assert "baseline" in DigitsDiffusion.bench_methods


def test_two_generation_run(tmp_path):
    task = DigitsDiffusion(**TINY)
    run = Run(RunConfig(name="dd", root=str(tmp_path), generations=2, seed=0), task, build_manager([]))
    metrics = execute(run, trainer_factory(max_steps=10, accelerator="cpu", enable_progress_bar=False,
                                           logger=False))
    assert len(metrics) == 2 and all(set(DigitsDiffusion.higher_is_better) <= set(m) for m in metrics)
    pool = Pool.load(tmp_path / "dd" / "gen_0" / "pool")
    assert len(pool) == TINY["train_size"] and np.all(pool.origin_generation == 0)
    assert metrics[1]["pool/real_share"] == 0.0


def test_configs_parse_and_name_this_task():
    paths = sorted(CONFIGS.glob("digits-diffusion*.yaml"))
    assert paths
    for path in paths:
        config = yaml.safe_load(path.read_text())
        assert config["task"]["class_path"] == "collapsekit.plugins.tasks.digits_diffusion.DigitsDiffusion"
        DigitsDiffusion(**config["task"].get("init_args", {}))
        assert {"name", "generations", "plugins"} <= set(config["run"])
