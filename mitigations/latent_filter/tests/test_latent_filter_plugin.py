"""The latent-filter and latent-filter-accumulated plugins: option checks, task checks, selection on a stub
task (two labelled blobs), latent-filter-accumulated's budget split and top-xi selection over the whole
accumulated history, conformance, and a real run under accumulate-subsample on digits-diffusion (a real run
of latent-filter-accumulated on image-diffusion is in tests/tasks/test_image_diffusion.py)."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from collapsekit.capabilities import Items
from collapsekit.errors import TaskIncompatible
from collapsekit.plugins.tasks.digits_diffusion import DigitsDiffusion
from collapsekit.pool import REAL, Pool
from collapsekit.seeds import numpy_rng
from collapsekit.testing import PluginConformance
from collapsekit_latent_filter.accumulated import LatentFilterAccumulated
from collapsekit_latent_filter.functional import split_budget
from collapsekit_latent_filter.plugin import LatentFilter

SMOKE = DigitsDiffusion.preset("smoke")["task"]


class Blobs(Items):
    """Two labelled Gaussian blobs in 2-D: class 0 near (-3, 0), class 1 near (3, 0)."""

    name = "blobs"
    pool_keys = ("x", "y")
    input_key, label_key, num_classes = "x", "y", 2

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.y = np.repeat([0, 1], 50)
        self.x = np.stack([np.where(self.y == 1, 3.0, -3.0), np.zeros(100)], 1) + 0.5 * rng.normal(size=(100, 2))

    def real_pool(self) -> Pool:
        return Pool.fresh({"x": self.x, "y": self.y}, REAL)


def stub_run(task, tmp_path: Path, seed: int = 0):
    return SimpleNamespace(task=task, dir=tmp_path, seed=seed, generations=3,
                           rng=lambda g, role: numpy_rng(seed, g, role), gen_dir=lambda g: tmp_path / f"gen_{g}")


def mixed_samples(n_good: int = 10, n_bad: int = 10, generation: int = 0, seed: int = 1) -> Pool:
    """``n_good`` items of ``generation`` in the blob of their label, then ``n_bad`` items in the other blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n_good + n_bad)
    centre = np.where(y == 1, 3.0, -3.0)
    centre[n_good:] *= -1
    x = np.stack([centre, np.zeros(len(y))], 1) + 0.5 * rng.normal(size=(len(y), 2))
    return Pool.fresh({"x": x, "y": y}, generation)


# -- options and task checks --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"scorer": "knn"}, "unknown scorer"),
    ({"latent": "pixels"}, "unknown latent"),
    ({"min_confidence": 1.0}, "min_confidence"), ({"rank": 0}, "rank"), ({"keep_size": "yes"}, "keep_size"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentFilter(**kwargs)


class Unlabelled(Items):
    name, pool_keys, input_key = "plain", ("tokens",), "tokens"


def test_configure_rejects_tasks_it_cannot_serve(tmp_path):
    with pytest.raises(TaskIncompatible, match=r"needs the task capability LatentEncoder \('latents'"):
        LatentFilter(latent="model").configure(stub_run(Blobs(), tmp_path))
    with pytest.raises(TaskIncompatible, match=r"needs the task capability FrozenFeatures \('frozen_features'"):
        LatentFilter(latent="features").configure(stub_run(Blobs(), tmp_path))
    with pytest.raises(TaskIncompatible, match="no pool array 'label'"):
        LatentFilter(latent="input", label_key="label").configure(stub_run(Blobs(), tmp_path))
    unknown = SimpleNamespace(name="plain", pool_keys=("tokens",))
    with pytest.raises(TaskIncompatible, match=r"needs the task capability Items .*or pass input_key"):
        LatentFilter(latent="input").configure(stub_run(unknown, tmp_path))
    with pytest.raises(TaskIncompatible, match="scorer='subspace'"):
        LatentFilter(latent="input").configure(stub_run(Unlabelled(), tmp_path))
    LatentFilter(latent="input", scorer="subspace").configure(stub_run(Unlabelled(), tmp_path))   # accepted
    with pytest.raises(TaskIncompatible, match=r"needs the task capability TextItems"):
        LatentFilter(latent="text", scorer="subspace").configure(stub_run(Unlabelled(), tmp_path))
    LatentFilter(latent="input").configure(stub_run(Blobs(), tmp_path))          # accepted


# -- selection -----------------------------------------------------------------------------------------
def test_probe_filter_keeps_items_that_look_like_their_label(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    plugin = LatentFilter(keep=0.5, latent="input")
    plugin.configure(run)
    mask, scores = plugin.filter_samples(run, mixed_samples(), 0)
    assert mask.dtype == bool and mask.tolist() == [True] * 10 + [False] * 10
    assert scores.shape == (20,) and scores[:10].min() > 0.9 > 0.1 > scores[10:].max()
    stats = plugin.metrics(0)
    assert stats["latent_filter/probe_accuracy"] == 1.0 and stats["latent_filter/label_agreement"] == 0.5
    assert stats["latent_filter/threshold"] == pytest.approx(scores[:10].min())
    assert plugin.metrics(1) == {}


def test_keep_share_and_min_confidence(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    mask, _ = LatentFilter(keep=0.25, latent="input").filter_samples(run, mixed_samples(), 0)
    assert mask.sum() == 5 and mask[:10].sum() == 5
    mask, _ = LatentFilter(keep=1.0, latent="input", min_confidence=0.5).filter_samples(run, mixed_samples(), 0)
    assert mask.tolist() == [True] * 10 + [False] * 10


def test_keep_size_asks_the_engine_for_one_over_keep_times_the_budget(tmp_path):
    assert not hasattr(LatentFilter(keep=0.25), "oversample")          # the committed bench cells: no oversampling
    plugin = LatentFilter(keep=0.25, latent="input", keep_size=True)
    assert plugin.oversample == 4.0
    mask, _ = plugin.filter_samples(stub_run(Blobs(), tmp_path), mixed_samples(20, 20), 0)
    assert mask.sum() == 10                                              # 1/4 of 4x the budget of 10


class Lines(Blobs):
    """Class 0 lies along the first axis, class 1 along the second (a little noise off the line)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.y = np.repeat([0, 1], 50)
        t = rng.normal(size=100) * 3
        self.x = np.where(self.y[:, None] == 0, np.stack([t, 0 * t], 1), np.stack([0 * t, t], 1))
        self.x = self.x + 0.01 * rng.normal(size=(100, 2))


def test_subspace_scorer_drops_items_off_their_class_line(tmp_path):
    run = stub_run(Lines(), tmp_path)
    y = np.array([0, 1] * 10)
    t = np.linspace(1, 4, 20)
    on_line = np.where(y[:, None] == 0, np.stack([t, 0 * t], 1), np.stack([0 * t, t], 1))
    x = on_line.copy()
    x[10:] = on_line[10:] @ np.array([[0.0, 1.0], [1.0, 0.0]])     # the other class's line
    plugin = LatentFilter(keep=0.5, scorer="subspace", latent="input", rank=1)
    mask, scores = plugin.filter_samples(run, Pool.fresh({"x": x, "y": y}, 0), 0)
    assert mask.tolist() == [True] * 10 + [False] * 10
    assert scores.max() <= 0 and scores[:10].min() > -0.05 and scores[10:].max() < -0.95


def test_random_scorer_is_a_seeded_blind_control(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    plugin = LatentFilter(keep=0.5, scorer="random")
    a, _ = plugin.filter_samples(run, mixed_samples(50, 50), 0)
    b, _ = plugin.filter_samples(run, mixed_samples(50, 50), 0)
    c, _ = plugin.filter_samples(run, mixed_samples(50, 50), 1)
    assert a.sum() == 50 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_pickling_drops_the_fitted_state(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    plugin = LatentFilter(latent="input")
    plugin.filter_samples(run, mixed_samples(), 0)
    assert plugin._cache
    clone = pickle.loads(pickle.dumps(plugin))
    assert clone._cache == {} and clone.keep == plugin.keep
    mask, _ = clone.filter_samples(run, mixed_samples(), 0)
    assert mask.tolist() == [True] * 10 + [False] * 10


# -- latent-filter-accumulated ----------------------------------------------------------------------
@pytest.mark.parametrize("budget, real, synthetic, expected", [
    (100, 100, 100, (50, 50)), (100, 100, 300, (25, 75)), (100, 100, 0, (100, 0)),
    (10, 2, 3, (2, 3)), (100, 0, 40, (0, 40)), (0, 5, 5, (0, 0)), (100, 100, 200, (33, 67))])
def test_split_budget_keeps_the_accumulated_real_share(budget, real, synthetic, expected):
    assert split_budget(budget, real, synthetic) == expected


def test_split_budget_rejects_negative_counts():
    with pytest.raises(ValueError):
        split_budget(-1, 1, 1)


def test_selects_the_top_scores_of_the_whole_history(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    plugin = LatentFilterAccumulated(scorer="probe", latent="input")
    plugin.configure(run)
    real = run.task.real_pool()
    history = [mixed_samples(90, 10, 0, seed=10), mixed_samples(40, 60, 1, seed=11)]
    pool = plugin.compose_pool(run, 2, real, history)
    assert len(pool) == 100 and (np.asarray(pool.origin_generation) == REAL).sum() == 33   # 100 * 100 / 300
    scores = [plugin.scores_of(run, g, p).copy() for g, p in enumerate(history)]
    flat = np.concatenate(scores)
    chosen = set(zip(np.asarray(pool.origin_generation)[33:].tolist(), np.asarray(pool.origin_index)[33:].tolist()))
    top = np.argsort(-flat, kind="stable")[:67]
    assert chosen == {(int(i // 100), int(i % 100)) for i in top}
    # the mislabelled items (last 10% of gen 0, last 60% of gen 1) are the ones left out
    assert all(idx < 90 for g, idx in chosen if g == 0) and sum(g == 1 for g, _ in chosen) <= 40
    stats = plugin.metrics(2)
    assert stats["latent_filter_accumulated/synthetic"] == 67
    assert stats["latent_filter_accumulated/rejected_score"] < stats["latent_filter_accumulated/threshold"]
    assert pickle.loads(pickle.dumps(plugin))._scores == {}


def test_generation_zero_and_random_control(tmp_path):
    run = stub_run(Blobs(), tmp_path)
    plugin = LatentFilterAccumulated(scorer="random", budget=60)
    plugin.configure(run)
    real = run.task.real_pool()
    first = plugin.compose_pool(run, 0, real, [])
    assert len(first) == 60 and (np.asarray(first.origin_generation) == REAL).all()
    pool = plugin.compose_pool(run, 1, real, [mixed_samples(50, 50, 0, seed=10)])
    assert len(pool) == 60 and (np.asarray(pool.origin_generation) == REAL).sum() == 30
    again = plugin.compose_pool(run, 1, real, [mixed_samples(50, 50, 0, seed=10)])
    assert np.array_equal(pool.origin_index, again.origin_index)


def test_bad_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="budget"):
        LatentFilterAccumulated(budget=0)


# -- real runs -----------------------------------------------------------------------------------------
def smoke_task():
    return DigitsDiffusion(**SMOKE)


class TestLatentFilterConformance(PluginConformance):
    plugin_name = "latent-filter"
    plugin_args = {"keep": 0.5}
    task_factory = staticmethod(smoke_task)


class TestLatentFilterAccumulatedConformance(PluginConformance):
    plugin_name = "latent-filter-accumulated"
    plugin_args = {"scorer": "probe"}
    task_factory = staticmethod(smoke_task)


def test_filter_under_accumulate_subsample_on_digits_diffusion(tmp_path):
    pytest.importorskip("collapsekit_accumulate")
    from collapsekit.testing import run_tiny

    plugins = ["accumulate-subsample", {"class_path": "latent-filter", "init_args": {"keep": 0.5}}]
    metrics = run_tiny(tmp_path, plugins, smoke_task(), name="lsf", generations=2, max_steps=10)
    n = SMOKE["train_size"]
    for m in metrics:
        assert m["filter/latent-filter/kept"] == 0.5 and m["synthetic/kept"] == n // 2
        assert 0.0 <= m["latent_filter/threshold"] <= m["latent_filter/kept_score"] <= 1.0
        assert m["latent_filter/dropped_score"] <= m["latent_filter/threshold"]
    run_dir = tmp_path / "lsf"
    kept0 = Pool.load(run_dir / "gen_0" / "pool")
    assert len(kept0) == n // 2
    # generation 1 trains on the fixed budget, drawn from the real pool and generation 0's *kept* items only
    lineage = Pool.load(run_dir / "gen_1" / "train_lineage")
    assert len(lineage) == n and metrics[1]["pool/size"] == n
    synthetic = lineage.origin_index[lineage.origin_generation == 0]
    assert len(synthetic) and set(synthetic.tolist()) <= set(np.asarray(kept0.origin_index).tolist())
    # the kept items are exactly the top half by xi of generation 0's samples: rescore them
    from collapsekit.run import Run, RunConfig
    from collapsekit.seeds import derive_seed

    task = smoke_task()
    task.setup(derive_seed(0, 0, "data"))

    probe_run = Run(RunConfig(name="lsf", root=str(tmp_path), generations=2, seed=0), task)
    plugin = LatentFilter(keep=0.5)
    kept_scores, _ = plugin.score(probe_run, kept0, 0)
    assert kept_scores.min().item() == pytest.approx(metrics[0]["latent_filter/threshold"], rel=1e-9)
