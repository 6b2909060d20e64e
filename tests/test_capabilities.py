"""Task capabilities: declared by inheritance, checked before anything trains, and the only way
mitigations learn what a task can do (no attribute probing, no Lightning internals)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from collapsekit import capabilities as caps
from collapsekit.dispatch import build_manager
from collapsekit.errors import TaskIncompatible
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.markov_text import MarkovText
from collapsekit.plugins.tasks.multiplication import Multiplication
from collapsekit.run import Run, RunConfig
from collapsekit.task import Task

ROOT = Path(__file__).resolve().parents[1]


def markov() -> MarkovText:
    return MarkovText(train_size=16, heldout_size=8, seq_len=8, vocab_size=8, n_layer=1, n_embd=8)


def gaussian() -> Gaussian:
    return Gaussian(dim=2, train_size=16, replicates=4)


def multiplication() -> Multiplication:
    return Multiplication(digits=2, train_size=64, heldout_size=16, n_layer=1, n_embd=16, n_head=2)


def test_provides_is_derived_from_the_inherited_capabilities():
    assert MarkovText.provides == {"sampler", "logits", "tokens", "hidden_states", "features", "items", "verifier",
                                   "corrector", "transformers_lm"}
    assert FactsUnlearning.provides >= {"forget_data", "text", "tokens"}
    assert DigitsClassify.provides == {"sampler", "logits", "features", "hidden_states", "views", "item_weights",
                                       "verifier"}
    assert Gaussian.provides == {"sampler", "item_weights"}
    assert "latents" not in Multiplication.provides      # its encode(a, b) formats problems; it is no encoder
    with pytest.raises(TypeError, match="derived from the capabilities"):
        type("Bad", (Task,), {"provides": frozenset({"tokens"})})


def test_an_instance_may_narrow_but_not_widen_what_it_provides():
    task = markov()
    task.provides = frozenset({"sampler", "forget_data"})
    assert caps.provides(task) == {"sampler"}
    with pytest.raises(TaskIncompatible, match=r"needs the task capability TokenSequences \('tokens'"):
        caps.require(task, caps.TokenSequences, plugin="p")


def test_every_requirement_name_is_a_capability_or_an_engine_service():
    assert set(caps.CAPABILITIES) == {c.requirement for c in caps.CAPABILITIES.values()}
    caps.check_requirements(markov(), ["hidden_states", "reference_model"])
    with pytest.raises(TaskIncompatible, match=r"cannot provide \['forget_data'\].*ForgetRetain"):
        caps.check_requirements(markov(), ["forget_data"])
    with pytest.raises(Exception, match="did you mean 'hidden_states'"):
        caps.check_requirements(markov(), ["hiden_states"])


# Every capability-bound plugin on a task that lacks the capability: the run stops in configure,
# before generation 0 trains, and the message names the capability and the task.
INCOMPATIBLE = [
    ("token-editing", {}, gaussian, "TokenSequences"),
    ("latent-filter", {"latent": "model"}, multiplication, "LatentEncoder"),
    ("latent-filter", {"latent": "features"}, markov, "FrozenFeatures"),
    ("latent-filter", {"latent": "text", "scorer": "subspace"}, markov, "TextItems"),
    ("vicreg", {"views": "two", "layer": "features"}, markov, "TwoViews"),
    ("vicreg", {"layer": "features"}, gaussian, "StepFeatures"),
    ("seqvcr", {}, gaussian, "HiddenStates"),
    ("pause-tokens", {}, markov, "PauseTokens"),
    ("maxsup", {}, gaussian, "LabelledLogits"),
    ("label-smoothing", {}, gaussian, "LabelledLogits"),
    ("gradient-ascent", {}, markov, "ForgetRetain"),
    ("npo", {}, markov, "ForgetRetain"),
    ("npo-rt", {}, markov, "ForgetRetain"),
]


@pytest.mark.parametrize("plugin, args, make_task, capability", INCOMPATIBLE,
                         ids=[f"{p}-{c}" for p, _, _, c in INCOMPATIBLE])
def test_incompatible_task_stops_before_training(tmp_path, plugin, args, make_task, capability):
    plugins = [{"class_path": plugin, "init_args": args}]
    task = make_task()
    run = Run(RunConfig(name="x", root=str(tmp_path), generations=1, init="previous", plugins=plugins),
              task, build_manager(plugins))
    with pytest.raises(TaskIncompatible) as info:
        execute(run, trainer_factory(max_steps=1, logger=False, enable_progress_bar=False))
    message = str(info.value)
    assert f"capability {capability}" in message and repr(task.name) in message
    assert not (tmp_path / "x" / "gen_0").exists()


def test_ancestral_needs_a_sampler(tmp_path):
    class NoSampler(Task):
        name = "no-sampler"

    run = Run(RunConfig(name="x", root=str(tmp_path), generations=1), NoSampler(), build_manager([]))
    with pytest.raises(TaskIncompatible, match=r"ancestral needs the task capability Sampler"):
        execute(run, trainer_factory(max_steps=1))


INTERNALS = re.compile(r"trainer\.should_stop|\._modules\b|estimated_stepping_batches|num_training_batches"
                       r"|\.trainer\b|\brun\._[a-z]|\bmodule\._[a-z]|getattr\(task,|hasattr\(task,")


def test_mitigations_use_capabilities_and_engine_services_only():
    """No mitigation reaches into Lightning, the Trainer or private engine state, nor probes tasks by name."""
    sources = sorted(ROOT.glob("mitigations/*/collapsekit_*/**/*.py"))
    assert len({p.parts[-3] if p.parent.name.startswith("collapsekit_") else p for p in sources}) >= 7
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources
             for i, line in enumerate(p.read_text().splitlines(), 1) if INTERNALS.search(line)]
    assert found == []
