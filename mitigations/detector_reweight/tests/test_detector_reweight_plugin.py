"""The detector-reweight plugin: conformance on markov-text (bigram features), the selection it makes (likely-real
items up-weighted, the control blind), and its errors."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from collapsekit import capabilities as caps
from collapsekit.errors import TaskIncompatible
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.pool import REAL, Pool
from collapsekit.seeds import numpy_rng
from collapsekit.task import Task
from collapsekit.testing import PluginConformance, run_tiny
from collapsekit_detector_reweight.plugin import DetectorReweight


class TestDetectorReweightConformance(PluginConformance):
    plugin_name = "detector-reweight"
    plugin_args = {"buckets": 256, "max_iter": 20}      # bigram features of the kit's tiny markov-text


class Points(Task, caps.Items):
    """Real items: 200 points of N(0, I) in 5 dimensions."""

    pool_keys: ClassVar[tuple[str, ...]] = ("x",)
    input_key: ClassVar[str] = "x"

    def real_pool(self):
        return Pool.fresh({"x": np.random.default_rng(0).normal(size=(200, 5))}, REAL)


class FakeRun:
    def __init__(self, budget):
        self.task, self.samples_per_generation = Points(), budget

    def rng(self, generation, role):
        return numpy_rng(0, generation, role)


def synthetic():
    """400 items: the first 200 look real, the last 200 are shifted by 1.5 in every dimension."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    x[200:] += 1.5
    return Pool.fresh({"x": x}, 0)


def test_likely_real_items_are_kept_and_the_control_is_blind():
    run, samples = FakeRun(200), synthetic()
    plugin = DetectorReweight(bias=4.0, features="input")
    plugin.configure(run)
    mask, scores = plugin.filter_samples(run, samples, 0)
    stats = plugin.metrics(0)
    assert mask.sum() == 200 and mask[:200].mean() > 0.85                  # mostly the real-looking half
    assert stats["detector_reweight/auc"] > 0.7 and stats["detector_reweight/ess"] < 1.0
    assert stats["detector_reweight/kept_conf"] < stats["detector_reweight/synthetic_conf"]
    assert ((scores >= 0) & (scores <= 1)).all() and scores[:200].mean() > scores[200:].mean()   # 1 - conf
    blind = DetectorReweight(bias=0.0, features="input")
    blind_mask, _ = blind.filter_samples(run, samples, 0)
    assert blind_mask.sum() == 200 and 0.35 < blind_mask[:200].mean() < 0.65
    assert blind.metrics(0)["detector_reweight/ess"] == 1.0


def test_oversampling_keeps_the_pool_budget_in_a_real_run(tmp_path):
    [m] = run_tiny(tmp_path, [{"class_path": "detector-reweight", "init_args": {"oversample": 3.0}}],
                   name="over", generations=1, max_steps=2)
    assert (m["synthetic/generated"], m["synthetic/kept"]) == (192, 64)


@pytest.mark.parametrize("args, fragment", [({"bias": -1.0}, "bias"), ({"oversample": 0.5}, "oversample"),
                                            ({"features": "pixels"}, "unknown features"), ({"folds": 1}, "folds")])
def test_bad_arguments_are_refused(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        DetectorReweight(**args)


def test_a_task_without_the_needed_features_stops_before_training(tmp_path):
    with pytest.raises(TaskIncompatible, match="Items"):
        run_tiny(tmp_path, ["detector-reweight"], Gaussian(dim=2, train_size=8), name="g", generations=1)
