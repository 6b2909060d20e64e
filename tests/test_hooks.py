"""Every hook spec is documented and exercised through a real run (real pluggy, real Trainer)."""
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import collapsekit
from collapsekit import hookimpl
from collapsekit.dispatch import HOOK_NAMES, build_manager
from collapsekit.hookdocs import hook_reference, hook_specs
from collapsekit.loop import execute, trainer_factory
from collapsekit.pool import Pool
from collapsekit.run import Run, RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"


class Recorder:
    """Implements every hook; records what each receives."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def configure(self, run):
        self.calls.append(("configure", run.name))

    @hookimpl
    def requirements(self, task):
        self.calls.append(("requirements", task.name))
        return ["hidden_states"]

    @hookimpl
    def compose_pool(self, generation, real, history):
        self.calls.append(("compose_pool", generation, len(history)))
        if generation == 0:
            return real
        return Pool.concat([real.select(np.arange(8)), history[generation - 1]])

    @hookimpl
    def synthesize(self, run, model, generation, request):
        self.calls.append(("synthesize", generation))
        return None  # defer to the built-in ancestral sampler

    @hookimpl
    def filter_samples(self, samples, generation):
        self.calls.append(("filter_samples", generation, len(samples)))
        keep = np.ones(len(samples), dtype=bool)
        keep[::2] = False
        return keep, np.arange(len(samples), dtype=float)

    @hookimpl
    def loss_terms(self, module, batch, outputs):
        if not self.calls or self.calls[-1][0] != "loss_terms":
            self.calls.append(("loss_terms", module.generation, len(outputs["hidden_states"])))
        return {"recorder_l2": 1e-3 * outputs["hidden_states"][-1].pow(2).mean()}

    @hookimpl
    def generation_start(self, run, generation, module):
        self.calls.append(("generation_start", generation, module.generation))

    @hookimpl
    def generation_end(self, generation):
        self.calls.append(("generation_end", generation))

    @hookimpl
    def metrics(self, run, model, generation):
        self.calls.append(("metrics", generation, len(run.synthetic(generation))))
        return {"recorder/param_norm": float(sum(p.norm() ** 2 for p in model.parameters()))}


@pytest.fixture
def recorder():
    with collapsekit.registered(Recorder(), name="recorder") as rec:
        yield rec


def test_every_hook_spec_has_a_contract():
    """Each spec says when it is called and what to return, and names every argument it passes
    (in its own docstring, or among the recurring arguments of the module docstring)."""
    import collapsekit.hookspecs as hookspecs
    from collapsekit.contracts import HOOKS

    assert set(hook_specs()) == set(HOOK_NAMES) == set(HOOKS)
    assert [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "collapsekit_spec")] == sorted(HOOKS)
    recurring = set(re.findall(r"^\* ``(\w+)``", inspect.getdoc(hookspecs), re.M))
    for name, fn in hook_specs().items():
        doc = inspect.getdoc(fn) or ""
        assert "Return" in doc, f"hook {name}: the contract must say what to return"
        assert re.search(r"\b(called|once|after|before|every)\b", doc, re.I), f"hook {name}: say when it is called"
        for arg in inspect.signature(fn).parameters:
            assert f"``{arg}``" in doc or arg in recurring, f"hook {name}: argument {arg!r} is not described"


def test_every_hook_is_exercised_in_a_real_run(tmp_path, tiny_task, recorder):
    run = Run(RunConfig(name="hooks", root=str(tmp_path), generations=2, samples_per_generation=20),
              tiny_task, build_manager([]))
    results = execute(run, trainer_factory(max_steps=4, enable_progress_bar=False, logger=False))
    called = {c[0] for c in recorder.calls}
    assert called == set(HOOK_NAMES), f"hooks never exercised: {set(HOOK_NAMES) - called}"

    by_hook = {}
    for c in recorder.calls:
        by_hook.setdefault(c[0], []).append(c[1:])
    assert by_hook["compose_pool"] == [(0, 0), (1, 1)]
    assert by_hook["filter_samples"] == [(0, 20), (1, 20)]
    assert by_hook["metrics"] == [(0, 10), (1, 10)]           # filter kept every other sample
    assert by_hook["loss_terms"][0] == (0, 2)                 # embeddings + 1 layer
    assert by_hook["generation_start"] == [(0, 0), (1, 1)]
    # loss term logged and averaged, filter share and pool composition recorded
    for g, m in enumerate(results):
        assert m["loss/recorder_l2"] > 0
        assert m["loss/total"] == pytest.approx(m["loss/task"] + m["loss/recorder_l2"], rel=1e-6)
        assert m["filter/recorder/kept"] == 0.5
        assert m["filter/recorder/score_mean"] == 9.5               # scores 0..19: all items
        assert m["filter/recorder/kept_score_mean"] == 10.0         # the odd ones, which the mask keeps
        assert m["synthetic/kept"] == 10
        assert "recorder/param_norm" in m and "kl" in m
    assert results[1]["pool/size"] == 8 + 10
    assert results[1]["pool/real_share"] == pytest.approx(8 / 18)
    lineage = Pool.load(tmp_path / "hooks" / "gen_1" / "train_lineage")
    assert sorted(set(lineage.origin_generation.tolist())) == [-1, 0]


def test_readme_hook_table_matches_the_specs():
    text = README.read_text()
    assert hook_reference() in text, "README hook table is stale: paste `collapsekit hooks --markdown`"


def test_loss_term_must_be_a_scalar_tensor(tmp_path, tiny_task):
    class Bad:
        @hookimpl
        def loss_terms(self, outputs):
            return {"vec": torch.ones(3)}

    with collapsekit.registered(Bad(), name="bad-terms"):
        run = Run(RunConfig(name="bad", root=str(tmp_path), generations=1), tiny_task, build_manager([]))
        with pytest.raises(collapsekit.CollapsekitError, match="'bad-terms'.*scalar tensor"):
            execute(run, trainer_factory(max_steps=2, enable_progress_bar=False, logger=False))


def test_a_listed_default_replaces_the_default_and_keeps_its_arguments():
    hooks = build_manager([{"class_path": "ancestral", "init_args": {"temperature": 0.5, "top_k": 7}}])
    assert sorted(hooks.objects) == ["ancestral", "probes", "replace"]
    assert (hooks.objects["ancestral"].temperature, hooks.objects["ancestral"].top_k) == (0.5, 7)
    assert build_manager([]).objects["ancestral"].temperature == 1.0


def test_a_plugin_listed_twice_is_refused():
    from collapsekit.errors import PluginConflict
    with pytest.raises(PluginConflict, match="listed twice"):
        build_manager(["ancestral", "Ancestral"])


class HalfFilter:
    """Keeps every other synthesized item and asks for twice the pool budget."""

    oversample = 2

    def __init__(self):
        self.seen = []

    @hookimpl
    def filter_samples(self, samples):
        self.seen.append(len(samples))
        keep = np.zeros(len(samples), dtype=bool)
        keep[1::2] = True
        return keep


def test_an_oversampling_filter_keeps_the_pool_budget(tmp_path, tiny_task):
    """A filter that keeps half of what it sees and oversamples 2x trains on a full-sized pool; what passes
    beyond the budget is cut in synthesis order."""
    half, quarter = HalfFilter(), HalfFilter()
    quarter.oversample = 1.5                       # the largest factor of the active filters applies
    with collapsekit.registered(half, name="half"), collapsekit.registered(quarter, name="quarter"):
        run = Run(RunConfig(name="over", root=str(tmp_path), generations=1, samples_per_generation=7),
                  tiny_task, build_manager([]))
        [m] = execute(run, trainer_factory(max_steps=2, enable_progress_bar=False, logger=False))
    assert half.seen == quarter.seen == [14]
    assert (m["synthetic/generated"], m["synthetic/passed"], m["synthetic/kept"]) == (14, 7, 7)
    assert Pool.load(tmp_path / "over" / "gen_0" / "pool").origin_index.tolist() == [1, 3, 5, 7, 9, 11, 13]


def test_an_oversampled_pool_is_cut_back_to_the_budget(tmp_path, tiny_task):
    class KeepAll:
        oversample = 1.5

        @hookimpl
        def filter_samples(self, samples):
            return np.ones(len(samples), dtype=bool)

    with collapsekit.registered(KeepAll(), name="keep-all"):
        run = Run(RunConfig(name="cut", root=str(tmp_path), generations=1, samples_per_generation=7),
                  tiny_task, build_manager([]))
        [m] = execute(run, trainer_factory(max_steps=2, enable_progress_bar=False, logger=False))
    assert (m["synthetic/generated"], m["synthetic/passed"], m["synthetic/kept"]) == (11, 11, 7)   # ceil(10.5)
    assert Pool.load(tmp_path / "cut" / "gen_0" / "pool").origin_index.tolist() == list(range(7))


@pytest.mark.parametrize("factor", [0.5, "2", float("inf"), True])
def test_a_bad_oversampling_factor_is_refused_naming_the_plugin(tmp_path, tiny_task, factor):
    from collapsekit.errors import PluginError

    bad = HalfFilter()
    bad.oversample = factor
    with collapsekit.registered(bad, name="bad-over"):
        run = Run(RunConfig(name="bad", root=str(tmp_path), generations=1), tiny_task, build_manager([]))
        with pytest.raises(PluginError, match="'bad-over'.*oversample must be a finite number >= 1"):
            execute(run, trainer_factory(max_steps=2, enable_progress_bar=False, logger=False))
