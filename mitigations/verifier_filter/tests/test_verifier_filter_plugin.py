"""The verifier-filter plugin: conformance on markov-text and multiplication, the selection it makes in real runs
(pool size kept by oversampling, the best-verified items kept), its controls and its errors."""
from __future__ import annotations

import numpy as np
import pytest

from collapsekit.errors import TaskIncompatible
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.multiplication import Multiplication
from collapsekit.pool import Pool
from collapsekit.testing import PluginConformance, run_tiny, toy_task
from collapsekit_verifier_filter.plugin import VerifierFilter


def tiny_multiplication():
    return Multiplication(digits=2, train_size=64, heldout_size=16, n_layer=1, n_embd=16, n_head=2, batch_size=16,
                          eval_batch_size=64, rank_samples=16)


class TestVerifierFilterConformance(PluginConformance):
    plugin_name = "verifier-filter"              # markov-text's exact source likelihood


class FakeRun:
    """What filter_samples reads of a run, without training: a set-up task, seeds and a model per generation."""

    def __init__(self, task, budget):
        import torch

        from collapsekit.seeds import numpy_rng

        task.setup(0)
        torch.manual_seed(0)
        self.task, self.samples_per_generation, self.dir, self.seed, self.generations = task, budget, "fake", 0, 2
        self._model, self._rng = task.build_model().eval(), numpy_rng

    def model_of(self, generation):
        return self._model

    def rng(self, generation, role):
        return self._rng(0, generation, role)


def test_keeps_the_best_verified_half_of_twice_the_budget(tmp_path):
    task = toy_task()
    [m0, m1] = run_tiny(tmp_path, [{"class_path": "verifier-filter", "init_args": {"keep": 0.5}}], task,
                        name="vf", generations=2, max_steps=3)
    for g, m in enumerate((m0, m1)):
        assert (m["synthetic/generated"], m["synthetic/kept"]) == (128, 64)
        kept = Pool.load(tmp_path / "vf" / f"gen_{g}" / "pool")
        scores = task.verify_items(kept.arrays)
        assert scores.mean() == pytest.approx(m["verifier_filter/verified_kept"], rel=1e-12)
        assert m["verifier_filter/threshold"] == pytest.approx(scores.min(), rel=1e-12)
        assert m["verifier_filter/verified_kept"] > m["verifier_filter/verified_all"]
        assert m["verifier_filter/dropped_score"] <= m["verifier_filter/threshold"]
    assert m1["pool/size"] == 64


def test_typical_model_ranking_keeps_the_scores_nearest_the_real_mean_and_random_is_blind():
    from collapsekit.scoring import score_items

    task = toy_task()
    run = FakeRun(task, budget=20)
    samples = Pool.fresh(task.sample(run.model_of(0), 60, __import__("torch").Generator().manual_seed(1)), 0)
    plugin = VerifierFilter(verifier="model", rank="typical")
    plugin.configure(run)
    mask, scores = plugin.filter_samples(run, samples, 0)
    reference = score_items(task, run.model_of(0), task.real_pool()).mean_log_likelihood.mean()
    np.testing.assert_allclose(scores, score_items(task, run.model_of(0), samples).mean_log_likelihood, rtol=1e-12)
    assert mask.sum() == 20 and plugin.metrics(0)["verifier_filter/reference"] == pytest.approx(reference, rel=1e-12)
    assert np.abs(scores[mask] - reference).max() <= np.abs(scores[~mask] - reference).min()
    blind = VerifierFilter(verifier="random")
    blind_mask, blind_scores = blind.filter_samples(run, samples, 0)
    assert blind_mask.sum() == 20 and blind_scores.tolist() == run.rng(0, "verifier-filter").random(60).tolist()
    assert blind.metrics(0)["verifier_filter/verified_all"] == pytest.approx(task.verify_items(samples.arrays).mean())


def test_min_score_drops_wrong_answers_on_multiplication(tmp_path):
    task = tiny_multiplication()
    [m] = run_tiny(tmp_path, [{"class_path": "verifier-filter", "init_args": {"min_score": 1.0}}], task,
                   name="exact", generations=1, max_steps=2)
    kept = Pool.load(tmp_path / "exact" / "gen_0" / "pool")
    assert len(kept) == m["synthetic/kept"] <= 64
    assert (task.verify_items(kept.arrays) == 1.0).all()
    assert m.get("synthetic_exact_match", 1.0) == 1.0


@pytest.mark.parametrize("args, fragment", [({"keep": 0.0}, "keep"), ({"verifier": "oracle"}, "unknown verifier"),
                                            ({"model_generation": -1}, "model_generation"),
                                            ({"min_score": float("nan")}, "min_score"),
                                            ({"verifier": "random", "rank": "typical"}, "typical")])
def test_bad_arguments_are_refused(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        VerifierFilter(**args)


def test_a_task_without_a_verifier_or_logits_stops_before_training(tmp_path):
    with pytest.raises(TaskIncompatible, match="Verifier"):
        run_tiny(tmp_path, ["verifier-filter"], Gaussian(dim=2, train_size=8), name="g1", generations=1)
    with pytest.raises(TaskIncompatible, match="LabelledLogits"):
        run_tiny(tmp_path, [{"class_path": "verifier-filter", "init_args": {"verifier": "model"}}],
                 Gaussian(dim=2, train_size=8), name="g2", generations=1)
    assert not (tmp_path / "g1" / "gen_0" / "model.pt").exists()
