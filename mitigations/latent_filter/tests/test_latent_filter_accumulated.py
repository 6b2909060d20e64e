"""latent-filter-accumulated: the budget split and the top-xi selection over the whole accumulated history,
on a stub task with a probe in the input space (a real run on image-diffusion is in
tests/tasks/test_image_diffusion.py)."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from collapsekit.capabilities import Items
from collapsekit.pool import REAL, Pool
from collapsekit.seeds import numpy_rng
from collapsekit_latent_filter.accumulated import LatentFilterAccumulated
from collapsekit_latent_filter.functional import split_budget


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


def generation_pool(generation: int, n: int, flipped: float) -> Pool:
    """``n`` items of ``generation``; the last ``flipped`` share sit in the other class's blob."""
    rng = np.random.default_rng(generation + 10)
    y = rng.integers(0, 2, size=n)
    centre = np.where(y == 1, 3.0, -3.0)
    centre[int(n * (1 - flipped)):] *= -1
    return Pool.fresh({"x": np.stack([centre, np.zeros(n)], 1) + 0.5 * rng.normal(size=(n, 2)), "y": y}, generation)


def stub_run(tmp_path: Path):
    return SimpleNamespace(task=Blobs(), dir=tmp_path, seed=0, generations=3,
                           rng=lambda g, role: numpy_rng(0, g, role), gen_dir=lambda g: tmp_path / f"gen_{g}")


@pytest.mark.parametrize("budget, real, synthetic, expected", [
    (100, 100, 100, (50, 50)), (100, 100, 300, (25, 75)), (100, 100, 0, (100, 0)),
    (10, 2, 3, (2, 3)), (100, 0, 40, (0, 40)), (0, 5, 5, (0, 0)), (100, 100, 200, (33, 67))])
def test_split_budget_keeps_the_accumulated_real_share(budget, real, synthetic, expected):
    assert split_budget(budget, real, synthetic) == expected


def test_split_budget_rejects_negative_counts():
    with pytest.raises(ValueError):
        split_budget(-1, 1, 1)


def test_selects_the_top_scores_of_the_whole_history(tmp_path):
    run = stub_run(tmp_path)
    plugin = LatentFilterAccumulated(scorer="probe", latent="input")
    plugin.configure(run)
    real = run.task.real_pool()
    history = [generation_pool(0, 100, 0.1), generation_pool(1, 100, 0.6)]
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
    run = stub_run(tmp_path)
    plugin = LatentFilterAccumulated(scorer="random", budget=60)
    plugin.configure(run)
    real = run.task.real_pool()
    first = plugin.compose_pool(run, 0, real, [])
    assert len(first) == 60 and (np.asarray(first.origin_generation) == REAL).all()
    pool = plugin.compose_pool(run, 1, real, [generation_pool(0, 100, 0.5)])
    assert len(pool) == 60 and (np.asarray(pool.origin_generation) == REAL).sum() == 30
    again = plugin.compose_pool(run, 1, real, [generation_pool(0, 100, 0.5)])
    assert np.array_equal(pool.origin_index, again.origin_index)


def test_bad_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="budget"):
        LatentFilterAccumulated(budget=0)


def smoke_task():
    from collapsekit.plugins.tasks.digits_diffusion import DigitsDiffusion

    return DigitsDiffusion(**DigitsDiffusion.preset("smoke")["task"])


from collapsekit.testing import PluginConformance  # noqa: E402


class TestLatentFilterAccumulatedConformance(PluginConformance):
    plugin_name = "latent-filter-accumulated"
    plugin_args = {"scorer": "probe"}
    task_factory = staticmethod(smoke_task)
