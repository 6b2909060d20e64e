"""The ``vicreg`` plugin: two-view and single-view wiring through real runs, layer choice, errors,
conformance, and a small real claim (it raises the effective rank of the features)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from collapsekit.capabilities import HiddenStates, StepFeatures, TwoViews
from collapsekit.dispatch import build_manager
from collapsekit.errors import TaskIncompatible
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.run import Run, RunConfig
from collapsekit.testing import PluginConformance, run_tiny, toy_task
from collapsekit_vicreg import variance_covariance_terms, vicreg_terms
from collapsekit_vicreg.plugin import VICReg

DIGITS = {"train_size": 120, "heldout_size": 60, "hidden": 32, "feature_dim": 8, "batch_size": 32, "lr": 1e-2}


def digits_task() -> DigitsClassify:
    return DigitsClassify(**DIGITS)


def test_two_views_on_digits_in_a_real_run(tmp_path):
    (m,) = run_tiny(tmp_path, ["vicreg"], digits_task(), generations=1, max_steps=4)
    assert {"loss/task", "loss/vicreg/invariance", "loss/vicreg/variance", "loss/vicreg/covariance"} <= set(m)
    parts = m["loss/task"] + m["loss/vicreg/invariance"] + m["loss/vicreg/variance"] + m["loss/vicreg/covariance"]
    assert m["loss/total"] == pytest.approx(parts, rel=1e-5)


def test_single_view_on_a_hidden_layer_in_a_real_run(tmp_path):
    plugin = {"class_path": "vicreg", "init_args": {"layer": 0, "views": "single", "std_coeff": 1.0,
                                                    "cov_coeff": 0.04}}
    (m,) = run_tiny(tmp_path, [plugin], digits_task(), generations=1, max_steps=4)
    assert {"loss/vicreg/variance", "loss/vicreg/covariance"} <= set(m) and "loss/vicreg/invariance" not in m


class ViewTask(StepFeatures, HiddenStates, TwoViews):
    """A stand-in task whose augmented_views returns fixed view dicts."""

    n_layer = 1

    def __init__(self, views):
        self.views = views

    def augmented_views(self, model, batch):
        return self.views


def module_with(task):
    return SimpleNamespace(task=task, model=None)


def test_requirements_follow_layer():
    digits, markov = digits_task(), toy_task()
    assert set(VICReg().requirements(digits)) == {"features"}
    assert set(VICReg(views="single").requirements(markov)) == {"features"}
    assert set(VICReg(layer=-1).requirements(digits)) == {"hidden_states"}


def test_auto_views_follow_the_task():
    assert VICReg()._two_views(digits_task()) and not VICReg()._two_views(toy_task())
    assert not VICReg(views="single")._two_views(digits_task()) and VICReg(views="two")._two_views(toy_task())


def test_loss_terms_equal_the_pure_functions():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(16, 6, generator=g, requires_grad=True) for _ in range(3)]
    hidden = (torch.randn(16, 12, generator=g), feats[0])
    outputs = {"features": feats[0], "hidden_states": hidden}
    task = ViewTask([{"features": feats[1], "hidden_states": (hidden[0], feats[1])},
                     {"features": feats[2], "hidden_states": (hidden[0], feats[2])}])
    plugin = VICReg(sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5, variant="paper")
    got = plugin.loss_terms(module_with(task), None, outputs)
    want = vicreg_terms(feats[1], feats[2], 2.0, 3.0, 0.5, variant="paper")
    assert set(got) == {"vicreg/invariance", "vicreg/variance", "vicreg/covariance"}
    for k, v in want.items():
        torch.testing.assert_close(got["vicreg/" + k], v, rtol=0, atol=0)
    got = VICReg(layer=0, views="single", std_coeff=3.0, cov_coeff=0.5).loss_terms(module_with(task), None, outputs)
    for k, v in variance_covariance_terms(hidden[0], 3.0, 0.5).items():
        torch.testing.assert_close(got["vicreg/" + k], v, rtol=0, atol=0)


def test_token_hidden_states_are_flattened():
    h = torch.randn(4, 5, 6, dtype=torch.float64)
    got = VICReg(layer=0, views="single").loss_terms(module_with(toy_task()), None, {"hidden_states": (h,)})
    for k, v in variance_covariance_terms(h.reshape(20, 6)).items():
        torch.testing.assert_close(got["vicreg/" + k], v, rtol=0, atol=0)


def test_batch_of_one_gives_zero_terms_with_gradient():
    z = torch.randn(1, 4, requires_grad=True)
    module = module_with(ViewTask([{"features": z}, {"features": z}]))
    for plugin in (VICReg(views="single"), VICReg(views="two")):
        terms = plugin.loss_terms(module, None, {"features": z})
        assert terms and all(v.item() == 0.0 and v.requires_grad for v in terms.values())


def test_two_views_on_a_task_without_views_is_rejected_at_start(tmp_path):
    config = RunConfig(name="x", root=str(tmp_path), generations=1, plugins=[])
    plugin = {"class_path": "vicreg", "init_args": {"views": "two"}}
    run = Run(config, toy_task(), build_manager([plugin]))
    with pytest.raises(TaskIncompatible, match="views: single"):
        execute(run, trainer_factory(max_steps=1, enable_progress_bar=False, logger=False))


def test_layer_out_of_range_names_the_valid_range():
    with pytest.raises(ValueError, match="2 hidden states"):
        VICReg(layer=5, views="single").loss_terms(module_with(toy_task()), None,
                                                   {"hidden_states": (torch.randn(4, 3), torch.randn(4, 3))})


@pytest.mark.parametrize("kwargs, match", [({"layer": "logits"}, "layer"), ({"views": "three"}, "views"),
                                           ({"variant": "barlow"}, "variant"), ({"std_coeff": -1}, "std_coeff"),
                                           ({"eps": 0}, "eps")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VICReg(**kwargs)


def test_single_view_vicreg_raises_feature_effective_rank(tmp_path):
    """A small real claim: on the smoke preset, single-view VICReg (variance + covariance on the
    penultimate features) gives features of higher effective rank than plain cross-entropy."""
    torch.set_num_threads(1)   # spinning intra-op threads only slow a shared CPU
    preset = DigitsClassify.preset("smoke")
    ranks = {}
    for name, plugins in (("ce", []), ("vicreg", [{"class_path": "vicreg", "init_args": {"views": "single"}}])):
        (m,) = run_tiny(tmp_path, plugins, DigitsClassify(**preset["task"]), name=name, generations=1,
                        max_steps=preset["trainer"]["max_steps"])
        ranks[name] = m["effective_rank"]
    assert ranks["vicreg"] > ranks["ce"] + 1.0, ranks


# -- the conformance kit: hidden states of a token model (markov-text), features on digits ---------------
class TestVICRegConformance(PluginConformance):
    plugin_name = "vicreg"
    plugin_args = {"layer": -1}


class TestVICRegDigitsConformance(PluginConformance):
    plugin_name = "vicreg"
    plugin_args = {"views": "single"}
    task_factory = staticmethod(digits_task)
