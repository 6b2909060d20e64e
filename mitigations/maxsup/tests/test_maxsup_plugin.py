"""The ``maxsup`` and ``label-smoothing`` plugins: wiring through real runs, the alpha ramp, errors, conformance."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from collapsekit.dispatch import build_manager
from collapsekit.module import TrainingProgress
from collapsekit.errors import PluginConflict, TaskIncompatible
from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.testing import PluginConformance, run_tiny
from collapsekit_maxsup import label_smoothing_loss, maxsup_loss
from collapsekit_maxsup.plugin import LabelSmoothing, MaxSup

DIGITS = {"train_size": 120, "heldout_size": 60, "hidden": 32, "feature_dim": 8, "batch_size": 32, "lr": 1e-2}


def digits_task() -> DigitsClassify:
    return DigitsClassify(**DIGITS)


def fake_module(step: int, total_steps: int | None, generation: int = 0):
    """What the plugin reads of the engine's module: its training progress and generation."""
    return SimpleNamespace(progress=TrainingProgress(step, total_steps), generation=generation)


def classification_outputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 10, generator=g, requires_grad=True)
    return {"loss": torch.tensor(0.0), "logits": logits, "labels": torch.randint(0, 10, (8,), generator=g)}


def test_maxsup_replaces_cross_entropy_in_a_self_training_run(tmp_path):
    metrics = run_tiny(tmp_path, ["maxsup"], digits_task(), generations=2, max_steps=6)
    for m in metrics:
        assert "loss/task" not in m and m["loss/total"] == pytest.approx(m["loss/maxsup"])
        # the ramp restarts every generation: 0.1 at step 0, 0.2 at step max_steps - 1
        assert m["maxsup/alpha_first"] == pytest.approx(0.1) and m["maxsup/alpha_last"] == pytest.approx(0.2)
    assert metrics[1]["pool/real_share"] == 0.0 and "label_agreement" in metrics[1]   # trained on pseudo-labels


def test_label_smoothing_replaces_cross_entropy_in_a_real_run(tmp_path):
    (m,) = run_tiny(tmp_path, [{"class_path": "label-smoothing", "init_args": {"smoothing": 0.2}}],
                    digits_task(), generations=1, max_steps=4)
    assert "loss/task" not in m and m["loss/total"] == pytest.approx(m["loss/label_smoothing"])


def test_loss_terms_equal_the_pure_functions():
    out = classification_outputs()
    terms = MaxSup().loss_terms(fake_module(step=5, total_steps=11), out)
    assert set(terms) == {"maxsup"}
    torch.testing.assert_close(terms["maxsup"], maxsup_loss(out["logits"], out["labels"], 0.15), rtol=0, atol=0)
    assert terms["maxsup"].requires_grad
    terms = LabelSmoothing(smoothing=0.3).loss_terms(out)
    torch.testing.assert_close(terms["label_smoothing"], label_smoothing_loss(out["logits"], out["labels"], 0.3),
                               rtol=0, atol=0)


def test_alpha_ramp():
    plugin = MaxSup(alpha_start=0.1, alpha_end=0.3)
    assert plugin.alpha_at(0, 101) == pytest.approx(0.1)
    assert plugin.alpha_at(50, 101) == pytest.approx(0.2)
    assert plugin.alpha_at(100, 101) == pytest.approx(0.3)
    assert plugin.alpha_at(7, None) == pytest.approx(0.1)           # no trainer: alpha_start
    # the engine's progress drives the ramp: step 10 of 21 is half way
    out = classification_outputs()
    got = plugin.loss_terms(fake_module(10, 21), out)["maxsup"]
    torch.testing.assert_close(got, maxsup_loss(out["logits"], out["labels"], 0.2))
    assert MaxSup(0.25, 0.25).alpha_at(3, 10) == pytest.approx(0.25)


def test_alpha_metrics_per_generation():
    plugin = MaxSup()
    for step in range(5):
        plugin.loss_terms(fake_module(step, 5, generation=1), classification_outputs(step))
    assert plugin.metrics(1) == pytest.approx({"maxsup/alpha_first": 0.1, "maxsup/alpha_last": 0.2})
    assert plugin.metrics(0) == {}
    plugin.generation_start(1)
    assert plugin.metrics(1) == {}


def test_both_cannot_replace_the_task_loss_together():
    with pytest.raises(PluginConflict, match="replace the task loss"):
        build_manager(["maxsup", "label-smoothing"])


def test_task_without_logits_is_a_clear_error():
    with pytest.raises(TaskIncompatible, match="'logits' and 'labels'.*no 'logits'"):
        MaxSup().loss_terms(fake_module(0, 5), {"loss": torch.tensor(1.0), "labels": torch.zeros(2)})
    with pytest.raises(TaskIncompatible, match="label-smoothing"):
        LabelSmoothing().loss_terms({"loss": torch.tensor(1.0)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        MaxSup(alpha_start=-0.1)
    with pytest.raises(ValueError, match="smoothing"):
        LabelSmoothing(smoothing=1.5)


# -- the conformance kit: MaxSup on token logits [N, T, V] (markov-text), label smoothing on digits ----------
class TestMaxSupConformance(PluginConformance):
    plugin_name = "maxsup"


class TestLabelSmoothingConformance(PluginConformance):
    plugin_name = "label-smoothing"
    task_factory = staticmethod(digits_task)
