"""digits-classify: probes against independent implementations, data and sampling contracts, real runs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits_classify import (DigitsClassify, cosine_class_variation,
                                                       expected_calibration_error, nc1, perturb, shift_images)
from collapsekit.pool import REAL, Pool
from collapsekit.run import Run, RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"train_size": 120, "heldout_size": 60, "hidden": 64, "feature_dim": 8, "batch_size": 32, "lr": 1e-2}


# -- independent references ---------------------------------------------------------------------------
def ref_nc1(h, y):
    h = np.asarray(h, dtype=np.float64)
    classes = sorted(set(int(c) for c in y))
    n, d = h.shape
    mu_g = h.mean(0)
    mu = {c: h[np.asarray(y) == c].mean(0) for c in classes}
    sw = np.zeros((d, d))
    for i in range(n):
        v = h[i] - mu[int(y[i])]
        sw += np.outer(v, v)
    sw /= n
    sb = np.zeros((d, d))
    for c in classes:
        v = mu[c] - mu_g
        sb += np.outer(v, v)
    sb /= len(classes)
    return float(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-8, hermitian=True)) / len(classes))


def ref_ece(probs, labels, bins=15):
    total, n = 0.0, len(labels)
    edges = [b / bins for b in range(bins + 1)]
    for b in range(bins):
        idx = [i for i in range(n) if edges[b] < max(probs[i]) <= edges[b + 1]]
        if idx:
            acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in idx) / len(idx)
            conf = sum(max(probs[i]) for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def test_nc1_hand_computed():
    # 1-D: class 0 at {0, 2}, class 1 at {4, 6}: Sigma_W = 1, Sigma_B = ((1-3)^2 + (5-3)^2) / 2 = 4, C = 2
    h = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert nc1(h, np.array([0, 0, 1, 1])) == pytest.approx(1.0 / 4.0 / 2.0, abs=1e-12)


def test_nc1_matches_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=40)
    h = rng.normal(size=(40, 6)) + 2.0 * rng.normal(size=(4, 6))[y]
    assert nc1(h, y) == pytest.approx(ref_nc1(h, y), rel=1e-9)
    assert nc1(torch.tensor(h, dtype=torch.float32), torch.tensor(y)) == pytest.approx(ref_nc1(h, y), rel=1e-4)


def test_nc1_needs_two_classes_and_matching_shapes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc1(np.ones((3, 2)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        nc1(np.ones((3, 2)), np.zeros(4, dtype=int))


def ref_cosine_variation(h, y):
    h = np.asarray(h, dtype=np.float64)
    classes = sorted(set(int(c) for c in y))
    members = {c: [h[i] for i in range(len(h)) if y[i] == c] for c in classes}

    def dist(a, b):
        return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))

    def mean_dist(xs, ys):
        return sum(dist(a, b) for a in xs for b in ys) / (len(xs) * len(ys))

    d_within = sum(mean_dist(members[c], members[c]) for c in classes) / len(classes)
    d_total = sum(mean_dist(members[j], members[k]) for j in classes for k in classes) / len(classes) ** 2
    return d_within, 1.0 - d_within / d_total


def test_cosine_class_variation_matches_reference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=24)
    h = rng.normal(size=(24, 5)) + 1.5 * rng.normal(size=(3, 5))[y]
    got = cosine_class_variation(h, y)
    want = ref_cosine_variation(h, y)
    assert got[0] == pytest.approx(want[0], rel=1e-10) and got[1] == pytest.approx(want[1], rel=1e-10)
    # identical directions within each class: no within-class variation, full separation
    same = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    assert cosine_class_variation(same, np.array([0, 0, 1, 1])) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_ece_hand_computed_and_reference():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert expected_calibration_error(probs, np.array([0, 1, 0])) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 10)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 10, size=50)
    assert expected_calibration_error(p, y) == pytest.approx(ref_ece(p, y), abs=1e-12)


def test_shift_images_matches_loop():
    rng = np.random.default_rng(2)
    images = rng.random((5, 8, 8)).astype(np.float32)
    dx, dy = np.array([1, -1, 0, 2, 0]), np.array([0, 1, -2, 1, 0])
    got = shift_images(torch.tensor(images), torch.tensor(dx), torch.tensor(dy)).numpy()
    for n in range(5):
        for r in range(8):
            for c in range(8):
                sr, sc = r - dy[n], c - dx[n]
                want = images[n, sr, sc] if 0 <= sr < 8 and 0 <= sc < 8 else 0.0
                assert got[n, r, c] == want


def test_perturb_is_seeded_and_clipped():
    x = torch.rand(10, 8, 8)
    a = perturb(x, 0.5, 1, torch.Generator().manual_seed(3))
    b = perturb(x, 0.5, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    assert torch.equal(perturb(x, 0.0, 0), x.clamp(0, 1))


# -- data, step, sample ---------------------------------------------------------------------------------
@pytest.fixture
def task():
    t = DigitsClassify(**TINY)
    t.setup(0)
    return t


def test_split_is_deterministic_and_disjoint(task):
    other = DigitsClassify(**TINY)
    other.setup(0)
    assert np.array_equal(task.train_images, other.train_images)
    other.setup(1)
    assert not np.array_equal(task.train_images, other.train_images)
    assert task.train_images.shape == (120, 8, 8) and task.heldout_images.shape == (60, 8, 8)
    assert not set(task.train_index) & set(task.heldout_index)
    pool = task.real_pool()
    assert pool.keys == ("images", "labels", "source") and len(pool) == 120
    assert (pool.origin_generation == REAL).all() and np.array_equal(pool.arrays["source"], np.arange(120))


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="exceeds the 1797"):
        DigitsClassify(train_size=1500, heldout_size=500)
    with pytest.raises(ValueError, match=">= 2"):
        DigitsClassify(train_size=1)


def test_step_outputs(task):
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(task.dataloader(task.real_pool(), shuffle=False, seed=0)))
    out = task.step(model, batch, frozenset())
    assert out["logits"].shape == (32, 10) and out["features"].shape == (32, 8)
    assert len(out["hidden_states"]) == 2 and out["hidden_states"][-1] is out["features"]
    assert out["loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out["logits"], batch["labels"]).item())
    views = task.augmented_views(model, batch)
    assert len(views) == 2 and len(views[0]["hidden_states"]) == 2
    a, b = (v["features"] for v in views)
    assert a.shape == b.shape == (32, 8) and not torch.equal(a, b) and a.requires_grad
    torch.manual_seed(1)
    again = task.augmented_views(model, batch)
    torch.manual_seed(1)
    assert torch.equal(again[0]["features"], task.augmented_views(model, batch)[0]["features"])


def test_sample_pseudo_labels(task):
    torch.manual_seed(0)
    model = task.build_model()
    s1 = task.sample(model, 250, torch.Generator().manual_seed(5))
    s2 = task.sample(model, 250, torch.Generator().manual_seed(5))
    for key in ("images", "labels", "source"):
        assert np.array_equal(s1[key], s2[key])
    assert s1["images"].dtype == np.float32 and s1["images"].shape == (250, 8, 8)
    assert s1["labels"].dtype == np.int64 and s1["source"].dtype == np.int64
    assert np.bincount(s1["source"], minlength=120).min() == 2      # every real image twice, 10 thrice
    greedy = task.sample(model, 120, torch.Generator().manual_seed(5), temperature=0)
    with torch.no_grad():
        expected = model(torch.tensor(greedy["images"])).argmax(1).numpy()
    assert np.array_equal(greedy["labels"], expected)
    with pytest.raises(ValueError, match="temperature"):
        task.sample(model, 4, torch.Generator(), temperature=-1)


def test_evaluate_reports_every_declared_metric(task):
    torch.manual_seed(0)
    model = task.build_model()
    labels = task.train_labels[:10].copy()
    labels[:3] = (labels[:3] + 1) % 10                                   # 3 of 10 pseudo-labels wrong
    samples = Pool.fresh({"images": task.train_images[:10], "labels": labels,
                          "source": np.arange(10, dtype=np.int64)}, 0)
    metrics = task.evaluate(model, samples)
    assert set(metrics) == set(DigitsClassify.higher_is_better)
    assert metrics["label_agreement"] == pytest.approx(0.7)
    assert all(math.isfinite(v) for v in metrics.values())
    assert set(DigitsClassify.headline) <= set(metrics)


def test_presets():
    for name in ("smoke", "cpu", "gpu"):
        p = DigitsClassify.preset(name)
        DigitsClassify(**p["task"])
        assert p["trainer"]["max_steps"] > 0 and p["generations"] >= 2
    with pytest.raises(ValueError, match="unknown preset"):
        DigitsClassify.preset("huge")
    assert DigitsClassify.bench_methods[0] == "baseline"


# -- real runs ---------------------------------------------------------------------------------------------
def test_two_generation_self_training_run(tmp_path):
    task = DigitsClassify(**TINY)
    run = Run(RunConfig(name="digits", root=str(tmp_path), generations=2, seed=0), task, build_manager([]))
    metrics = execute(run, trainer_factory(max_steps=60, accelerator="cpu", enable_progress_bar=False,
                                           logger=False))
    assert len(metrics) == 2
    assert metrics[0]["accuracy"] > 0.5                                   # 60 steps already learn the digits
    assert metrics[0]["pool/real_share"] == 1.0 and metrics[1]["pool/real_share"] == 0.0
    synthetic = run.synthetic(0)
    assert len(synthetic) == 120 and synthetic.keys == ("images", "labels", "source")
    truth = task.train_labels[np.asarray(synthetic.arrays["source"])]
    assert metrics[0]["label_agreement"] == pytest.approx(float(np.mean(synthetic.arrays["labels"] == truth)))


def test_configs_parse_and_name_this_task():
    paths = sorted(CONFIGS.glob("digits-classify*.yaml"))
    assert {p.name for p in paths} >= {"digits-classify.yaml", "digits-classify-maxsup.yaml",
                                       "digits-classify-label-smoothing.yaml", "digits-classify-vicreg.yaml"}
    for path in paths:
        config = yaml.safe_load(path.read_text())
        assert config["task"]["class_path"] == "collapsekit.plugins.tasks.digits_classify.DigitsClassify"
        DigitsClassify(**config["task"].get("init_args", {}))
        assert config["run"]["name"] == path.stem


def test_cnn_arch_has_the_mlp_interface():
    from collapsekit.plugins.tasks.digits_classify import DigitsCNN

    task = DigitsClassify(train_size=64, heldout_size=32, hidden=4, feature_dim=8, batch_size=16, arch="cnn")
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, DigitsCNN)
    batch = next(iter(task.dataloader(task.real_pool(), shuffle=False, seed=0)))
    out = task.step(model, batch, frozenset())
    assert out["logits"].shape == (16, 10) and out["features"].shape == (16, 8)
    assert len(out["hidden_states"]) == 2 and out["hidden_states"][0].shape == (16, 2 * 4 * 16)
    assert (out["features"] >= 0).all() and out["hidden_states"][-1] is out["features"]
    out["loss"].backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="arch must be"):
        DigitsClassify(arch="resnet")
