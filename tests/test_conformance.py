"""The conformance kit: built-in and third-party plugins pass it, broken plugins are caught with clear
messages, and plugin failures (clashes, raising hooks, broken imports) name the plugin and distribution."""
from __future__ import annotations

import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pluggy
import pytest
import torch

from collapsekit import hookimpl
from collapsekit.dispatch import build_manager
from collapsekit.errors import HookError, PluginConflict, PluginLoadError
from collapsekit.pool import REAL, Pool
from collapsekit.registry import discover
from collapsekit.run import SynthesisRequest
from collapsekit.testing import (ConformanceError, PluginConformance, check_hook_result, check_hooks,
                                 check_picklable, check_requirements, collapsekit_run_tiny, run_tiny, toy_task)

assert collapsekit_run_tiny  # the kit's fixture, used by test_run_tiny_fixture

PLUGIN_DIST = Path(__file__).parent / "plugin_dist"
DIST = "collapsekit-testplugin"              # installed by the testplugin_installed fixture (conftest.py)


# -- every built-in plugin and the third-party test plugin pass the kit ------------------------------------
class TestReplaceConformance(PluginConformance):
    plugin_name = "replace"


class TestAncestralConformance(PluginConformance):
    plugin_name = "ancestral"
    plugin_args = {"temperature": 0.9}


class TestProbesConformance(PluginConformance):
    plugin_name = "probes"


@pytest.mark.usefixtures("testplugin_installed")
class TestThirdPartyConformance(PluginConformance):
    plugin_name = "testplugin"
    plugin_args = {"requires": ["features"]}


class TestFactoryConformance(PluginConformance):
    """plugin_factory as a staticmethod and task_factory as a method both work."""

    plugin_factory = staticmethod(lambda weight: L2Term(weight))
    plugin_args = {"weight": 0.01}
    generations = 1

    def task_factory(self):
        return toy_task()


# -- plugins that break contracts (module level so that they pickle) ------------------------------------
class L2Term:
    def __init__(self, weight: float = 0.01) -> None:
        self.weight = weight

    @hookimpl
    def loss_terms(self, module):
        return {"l2": self.weight * sum(p.pow(2).sum() for p in module.model.parameters())}


class Typo:
    @hookimpl
    def los_terms(self, module):
        return {}


class ArgTypo:
    @hookimpl
    def metrics(self, run, modle):
        return {}


class DefaultedArg:
    @hookimpl
    def metrics(self, run, model=None):
        return {"x": 1.0}


class Unmarked:
    @hookimpl
    def configure(self, run):
        pass

    def metrics(self, run, model, generation):
        return {"x": 1.0}


class Foreign:
    @pluggy.HookimplMarker("collapse")
    def metrics(self, model):
        return {}


class NoHooks:
    def helper(self):
        return 1


class HoldsLambda:
    def __init__(self):
        self.schedule = lambda step: 0.1 * step

    @hookimpl
    def configure(self, run):
        pass


class HoldsLock:
    def __init__(self):
        self.lock = threading.Lock()

    @hookimpl
    def configure(self, run):
        pass


class BadRequirement:
    @hookimpl
    def requirements(self):
        return ["hiden_states"]


class NoisyMetrics:
    """Draws from the unseeded global NumPy RNG: not reproducible."""

    @hookimpl
    def metrics(self):
        return {"noisy/value": float(np.random.default_rng().random())}


class Abstains:
    @hookimpl
    def filter_samples(self):
        return None


class DetachedTerm:
    @hookimpl
    def loss_terms(self, outputs):
        return {"detached": outputs["loss"].detach() * 0.1}


class NanMetric:
    @hookimpl
    def metrics(self):
        return {"nan/value": float("nan")}


class FutureLineage:
    @hookimpl
    def compose_pool(self, generation, real):
        return Pool(real.arrays, np.full(len(real), generation, dtype=np.int64), real.origin_index)


class ShortSynth:
    @hookimpl
    def synthesize(self, run, model, generation, request):
        return {"tokens": np.zeros((3, 9), dtype=np.int64)}


# -- the static checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin, expected", [
    (Typo(), ["'los_terms'", "Did you mean 'loss_terms'"]),
    (ArgTypo(), ["'modle'", "Did you mean 'model'"]),
    (DefaultedArg(), ["'model'", "never passes it"]),
    (Unmarked(), ["'metrics'", "no @collapsekit.hookimpl"]),
    (Foreign(), ["'collapse'", "from collapsekit import hookimpl"]),
    (NoHooks(), ["implements no collapsekit hook"]),
])
def test_check_hooks_reports_problem(plugin, expected):
    with pytest.raises(ConformanceError) as info:
        check_hooks(plugin, "bad", "collapsekit-bad")
    message = str(info.value)
    assert "plugin 'bad' (collapsekit-bad)" in message
    for part in expected:
        assert part in message


def test_check_hooks_accepts_good_plugin_and_returns_hooks():
    assert check_hooks(L2Term(), "l2", "x") == ["loss_terms"]


def test_replaces_task_loss_without_loss_terms_is_reported():
    class Flag:
        replaces_task_loss = True

        @hookimpl
        def configure(self, run):
            pass

    with pytest.raises(ConformanceError, match="replaces_task_loss"):
        check_hooks(Flag(), "flag", "x")


@pytest.mark.parametrize("plugin, cause", [(HoldsLambda(), "lambda"), (HoldsLock(), "lock")])
def test_check_picklable_reports_unpicklable_state(plugin, cause):
    with pytest.raises(ConformanceError) as info:
        check_picklable(plugin, "p", "d")
    assert "cannot be pickled" in str(info.value) and "DDP" in str(info.value)
    assert cause in str(info.value).lower()


def test_check_picklable_returns_equal_copy():
    copy = check_picklable(L2Term(0.5), "l2", "x")
    assert isinstance(copy, L2Term) and copy.weight == 0.5


def test_check_requirements_reports_unknown_name():
    with pytest.raises(ConformanceError, match="Did you mean 'hidden_states'"):
        check_requirements(BadRequirement(), None, "r", "d")


# -- result contracts -------------------------------------------------------------------------------------
def _fake_run(n=4):
    task = SimpleNamespace(pool_keys=("tokens",), name="toy")
    return SimpleNamespace(task=task, samples_per_generation=n)


def _request(n=4):
    return SynthesisRequest(0, 0, n, n, torch.Generator())


def _pool(gens):
    gens = np.asarray(gens, dtype=np.int64)
    return Pool({"tokens": np.zeros((len(gens), 3), dtype=np.int64)}, gens, np.arange(len(gens)))


@pytest.mark.parametrize("hook, value, kwargs, fragment", [
    ("requirements", ["features", "gradients"], {}, "unknown requirement 'gradients'"),
    ("requirements", 3, {}, "iterable of strings"),
    ("compose_pool", {"tokens": np.zeros((2, 3))}, {"run": _fake_run(), "generation": 1}, "must return a collapsekit"),
    ("compose_pool", _pool([0, 1]), {"run": _fake_run(), "generation": 1}, "can only train on real data"),
    ("compose_pool", _pool([]), {"run": _fake_run(), "generation": 1}, "empty pool"),
    ("synthesize", {"text": np.zeros((4, 3))}, {"run": _fake_run(), "request": _request()}, "pool_keys are ['tokens']"),
    ("synthesize", {"tokens": torch.zeros(4, 3)}, {"run": _fake_run(), "request": _request()}, "not a numpy.ndarray"),
    ("synthesize", {"tokens": np.zeros((3, 3))}, {"run": _fake_run(), "request": _request()}, "request.size is 4"),
    ("filter_samples", np.ones(3, dtype=bool), {"samples": _pool([0] * 4)}, "shape (4,)"),
    ("filter_samples", np.ones(4, dtype=int), {"samples": _pool([0] * 4)}, "boolean array"),
    ("filter_samples", (np.ones(4, dtype=bool), [1.0, 2.0, np.nan, 0.0]), {"samples": _pool([0] * 4)}, "finite"),
    ("loss_terms", {"a": torch.ones(3, requires_grad=True)}, {}, "scalar tensor"),
    ("loss_terms", {"a": torch.tensor(float("inf"), requires_grad=True)}, {}, "not finite"),
    ("loss_terms", {"a": torch.tensor(1.0)}, {}, "no gradient"),
    ("loss_terms", {"task": torch.tensor(1.0, requires_grad=True)}, {}, "reserved"),
    ("loss_terms", [torch.tensor(1.0)], {}, "dict[str, torch.Tensor]"),
    ("metrics", {"m": float("nan")}, {}, "not finite"),
    ("metrics", {"m": True}, {}, "must be a number"),
    ("metrics", {"m": "high"}, {}, "must be a number"),
    ("metrics", {"pool/size": 1.0}, {}, "written by the engine"),
    ("metrics", {3: 1.0}, {}, "non-empty strings"),
    ("configure", 1, {}, "must return nothing"),
])
def test_check_hook_result_reports_contract_breaks(hook, value, kwargs, fragment):
    problems = check_hook_result(hook, value, kwargs)
    assert problems and any(fragment in p for p in problems), problems


def test_loss_term_gradient_must_reach_the_module():
    module = torch.nn.Linear(2, 1)
    unrelated = torch.tensor(2.0, requires_grad=True)
    problems = check_hook_result("loss_terms", {"t": unrelated * 3}, {"module": module}, set())
    assert problems == ["loss term 't' does not depend on any trainable parameter of the module"]
    good = module(torch.ones(1, 2)).sum()
    assert check_hook_result("loss_terms", {"t": good}, {"module": module}, set()) == []


@pytest.mark.parametrize("hook, value, kwargs", [
    ("requirements", ["hidden_states", "reference_model"], {}),
    ("requirements", "features", {}),
    ("compose_pool", _pool([REAL, 0]), {"run": _fake_run(), "generation": 1}),
    ("synthesize", {"tokens": np.zeros((4, 3), dtype=np.int64)}, {"run": _fake_run(), "request": _request()}),
    ("filter_samples", (np.array([True, False, True, True]), np.arange(4.0)), {"samples": _pool([0] * 4)}),
    ("metrics", {"a/b": 1, "c": np.float32(2.0), "d": torch.tensor(0.5)}, {}),
    ("metrics", None, {}),
    ("generation_end", None, {}),
])
def test_check_hook_result_accepts_valid_values(hook, value, kwargs):
    assert check_hook_result(hook, value, kwargs) == []


# -- the kit's run-based tests catch broken plugins -------------------------------------------------------
def _kit(plugin_cls, **attrs):
    attrs.setdefault("generations", 1)
    return type(f"Kit{plugin_cls.__name__}", (PluginConformance,), {"plugin_factory": plugin_cls, **attrs})()


def test_kit_detects_nondeterminism(tmp_path_factory):
    kit = _kit(NoisyMetrics)
    kit.test_runs_end_to_end(tmp_path_factory)  # the run itself is fine
    with pytest.raises(ConformanceError, match="two runs with seed 0 differ") as info:
        kit.test_deterministic_under_fixed_seed(tmp_path_factory)
    assert "noisy/value" in str(info.value)
    _kit(NoisyMetrics, nondeterministic_metrics=("noisy/value",)).test_deterministic_under_fixed_seed(
        tmp_path_factory)


def test_kit_detects_hook_that_never_answers(tmp_path_factory):
    with pytest.raises(ConformanceError, match="filter_samples returned None on every call"):
        _kit(Abstains).test_hook_results_well_formed(tmp_path_factory)
    _kit(Abstains, may_abstain=("filter_samples",)).test_hook_results_well_formed(tmp_path_factory)


@pytest.mark.parametrize("plugin_cls, fragment", [
    (DetachedTerm, "loss term 'detached' has no gradient"),
    (NanMetric, "metric 'nan/value' is not finite"),
    (FutureLineage, "can only train on real data"),
    (ShortSynth, "array 'tokens' has 3 items"),
])
def test_kit_run_stops_at_contract_break(plugin_cls, fragment, tmp_path_factory):
    with pytest.raises(ConformanceError) as info:
        _kit(plugin_cls).test_runs_end_to_end(tmp_path_factory)
    message = str(info.value)
    assert fragment in message and "Contract:" in message and plugin_cls.__name__ in message


def test_kit_requires_a_plugin():
    with pytest.raises(ConformanceError, match="set plugin_name"):
        type("KitNothing", (PluginConformance,), {})().make_plugin()


def test_run_tiny_fixture(collapsekit_run_tiny):
    metrics = collapsekit_run_tiny([], generations=1)
    assert len(metrics) == 1 and metrics[0]["synthetic/generated"] == 64.0


# -- third-party failures are attributed (real installed distribution) ----------------------------------
pytestmark_dist = pytest.mark.usefixtures("testplugin_installed")


@pytestmark_dist
def test_discovered_with_distribution_and_hooks():
    found = discover()
    info = found["testplugin"]
    assert (info.distribution, info.version, info.error) == (DIST, "0.1.0", None)
    assert info.hooks == sorted(["configure", "requirements", "generation_start", "generation_end",
                                 "loss_terms", "metrics"])


@pytestmark_dist
def test_counting_plugin_counts_real_hook_calls(tmp_path):
    metrics = run_tiny(tmp_path, ["testplugin"], generations=2, max_steps=3)
    assert [m["testplugin/calls_generation_start"] for m in metrics] == [1.0, 2.0]
    assert [m["testplugin/calls_loss_terms"] for m in metrics] == [3.0, 6.0]
    assert metrics[1]["testplugin/calls_configure"] == 1.0 and "loss/testplugin_l2" in metrics[0]


@pytestmark_dist
def test_broken_plugin_import_names_distribution():
    info = discover()["brokenplugin"]
    assert info.distribution == DIST and "ImportError" in info.error and "on purpose" in info.error
    with pytest.raises(PluginLoadError) as exc:
        build_manager(["brokenplugin"])
    assert "'brokenplugin'" in str(exc.value) and DIST in str(exc.value) and "ImportError" in str(exc.value)


@pytestmark_dist
def test_broken_plugin_does_not_break_other_plugins(tmp_path):
    assert run_tiny(tmp_path, ["testplugin"], generations=1, max_steps=1)[0]["testplugin/calls_metrics"] == 1.0


SECOND = "collapsekit_testplugin.plugin.CountingPlugin"


@pytestmark_dist
def test_duplicate_loss_term_name_is_conflict_naming_both(tmp_path):
    plugins = ["testplugin", {"class_path": SECOND, "init_args": {"metric_prefix": "second"}}]
    with pytest.raises(PluginConflict) as info:
        run_tiny(tmp_path, plugins, generations=1, max_steps=1)
    message = str(info.value)
    assert "'testplugin_l2'" in message and f"'testplugin' ({DIST})" in message and "'CountingPlugin'" in message


@pytestmark_dist
def test_duplicate_metric_key_is_conflict_naming_both(tmp_path):
    plugins = ["testplugin", {"class_path": SECOND, "init_args": {"term_name": None}}]
    with pytest.raises(PluginConflict) as info:
        run_tiny(tmp_path, plugins, generations=1, max_steps=1)
    message = str(info.value)
    assert "metrics name 'testplugin/calls_" in message
    assert f"'testplugin' ({DIST})" in message and "'CountingPlugin'" in message


@pytestmark_dist
@pytest.mark.parametrize("hook", ["configure", "generation_start", "loss_terms", "metrics"])
def test_raising_hook_names_plugin_and_distribution(hook, tmp_path):
    with pytest.raises(HookError) as info:
        run_tiny(tmp_path, [{"class_path": "testplugin", "init_args": {"fail_in": hook}}],
                 generations=1, max_steps=1)
    message = str(info.value)
    assert f"'testplugin' ({DIST})" in message and f"hook {hook}" in message
    assert f"RuntimeError: testplugin fails in {hook} on purpose" in message


@pytestmark_dist
def test_disable_autoload_keeps_builtins_only(monkeypatch):
    monkeypatch.setenv("COLLAPSEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    found = discover()
    assert "testplugin" not in found and "brokenplugin" not in found
    assert {"replace", "ancestral", "probes"} <= set(found)


@pytestmark_dist
def test_allow_list_loads_only_named_plugins(monkeypatch):
    monkeypatch.setenv("COLLAPSEKIT_PLUGINS", "testplugin")
    found = discover()
    assert "testplugin" in found and "brokenplugin" not in found and "replace" in found


@pytestmark_dist
def test_installed_plugin_pickles_for_workers():
    plugin = build_manager(["testplugin"]).objects["testplugin"]
    assert pickle.loads(pickle.dumps(plugin)).counts == plugin.counts


def test_fixture_is_idempotent(testplugin_installed, pip_tools):
    assert pip_tools.editable_at(DIST) == PLUGIN_DIST.resolve()
    assert pip_tools.install(PLUGIN_DIST) == DIST  # second call: no pip run, still importable
    import collapsekit_testplugin.plugin  # noqa: F401


@pytestmark_dist
def test_plugins_command_lists_the_installed_third_party_distribution(cli):
    import json

    code, out, _ = cli("plugins", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"replace", "ancestral", "probes"} <= set(rows)
    assert rows["testplugin"]["distribution"] == DIST and rows["testplugin"]["version"] == "0.1.0"
    assert "loss_terms" in rows["testplugin"]["hooks"] and rows["testplugin"]["error"] is None
    assert rows["brokenplugin"]["distribution"] == DIST and "ImportError" in rows["brokenplugin"]["error"]
    code, out, _ = cli("plugins")
    assert code == 0 and "testplugin" in out and DIST in out


def test_torch_threads_sets_and_restores_the_thread_count():
    import torch

    from collapsekit.testing import CLAIM_THREADS, torch_threads

    assert CLAIM_THREADS == (1, 2)
    before = torch.get_num_threads()
    for n in CLAIM_THREADS:
        with torch_threads(n):
            assert torch.get_num_threads() == n
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored even when the block raises")
    assert torch.get_num_threads() == before
