"""The gradient-ascent / npo / npo-rt plugins: real runs, the reference cache, resume, errors, hook contracts."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import collapsekit
from collapsekit.dispatch import build_manager
from collapsekit.errors import ConfigError, PluginConflict, RunStateError, TaskIncompatible
from collapsekit.loop import execute, trainer_factory
from collapsekit.module import TrainingProgress
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.plugins.tasks.markov_text import MarkovText
from collapsekit.run import Run, RunConfig
from collapsekit.testing import build_hooks, check_hooks, check_picklable, check_requirements, quiet_lightning
from collapsekit_npo import masked_nll, npo_loss, sequence_logprob
from collapsekit_npo.plugin import OPTIMIZER_FILE, NPO, NPORT, GradientAscent

torch.set_num_threads(1)

# 24 people, 6 to forget; batch 4 -> the forget set is 2 batches (one unlearning epoch = 2 steps)
TINY = {"num_people": 24, "heldout_people": 8, "n_first": 8, "n_last": 8, "n_cities": 4, "n_jobs": 4,
        "n_hobbies": 4, "forget_share": 0.25, "n_layer": 1, "n_embd": 16, "batch_size": 4, "lr": 1e-2}
N_FORGET = 6


def tiny_task() -> FactsUnlearning:
    return FactsUnlearning(**TINY)


def run(tmp_path: Path, plugins: list, generations: int = 3, max_steps: int = 6, name: str = "r",
        init: str = "previous", hooks=None, task=None) -> list[dict]:
    config = RunConfig(name=name, root=str(tmp_path), generations=generations, seed=0, init=init,
                       plugins=plugins, samples_per_generation=8)
    trainer = {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
               "logger": False, "enable_model_summary": False}
    with quiet_lightning():
        return execute(Run(config, task or tiny_task(), hooks or build_manager(plugins)), trainer_factory(**trainer))


# -- real runs -------------------------------------------------------------------------------------------
def test_gradient_ascent_run_learns_then_ascends_on_the_forget_split(tmp_path):
    g0, g1, g2 = run(tmp_path, ["gradient-ascent"])
    assert "loss/task" not in g0 and g0["loss/total"] == pytest.approx(g0["loss/nll"])
    assert g0["pool/size"] == TINY["num_people"] and g0["train/steps"] == 6
    for g in (g1, g2):
        assert g["pool/size"] == N_FORGET and g["pool/real_share"] == 1.0
        assert g["train/steps"] == 2                      # default budget: one pass over the forget set
        assert g["loss/ga"] < 0 and g["loss/total"] == pytest.approx(g["loss/ga"])
    assert g2["forget_nll"] > g0["forget_nll"]


def test_steps_bounds_each_unlearning_generation(tmp_path):
    metrics = run(tmp_path, [{"class_path": "npo", "init_args": {"steps": 3}}], max_steps=5)
    assert [m["train/steps"] for m in metrics] == [5, 3, 3]   # generation 0 keeps the trainer's max_steps


def test_npo_reference_forward_runs_once_per_forget_example(tmp_path):
    """Counted independently by a forward hook on the engine's reference model, over 2 phases x 3 epochs."""
    rows = []

    class Counter:
        @collapsekit.hookimpl
        def generation_start(self, module):
            if module.reference_model is not None:
                module.reference_model.register_forward_hook(
                    lambda mod, args, kwargs, out: rows.append(len(kwargs["input_ids"])), with_kwargs=True)

    with collapsekit.registered(Counter(), name="ref-counter"):
        metrics = run(tmp_path, [{"class_path": "npo", "init_args": {"steps": 6}}])
    assert sum(rows) == N_FORGET                          # 12 forget batches of 4, 6 distinct examples
    assert [m["train/steps"] for m in metrics[1:]] == [6, 6]
    assert metrics[1]["npo/ref_forwards"] == N_FORGET == metrics[2]["npo/ref_forwards"]
    assert metrics[2]["npo/ref_cached"] == N_FORGET


def test_npo_rt_run_logs_both_terms(tmp_path):
    metrics = run(tmp_path, [{"class_path": "npo-rt", "init_args": {"retain_coeff": 2.0}}], generations=2)
    m = metrics[1]
    assert m["loss/total"] == pytest.approx(m["loss/npo"] + m["loss/retain_nll"])
    assert m["loss/retain_nll"] > 0 and m["npo-rt/ref_cached"] == N_FORGET


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """The carried optimizer state and the start-of-unlearning reference are reloaded from disk."""
    plugins = [{"class_path": "npo-rt", "init_args": {"steps": 3, "lr": 3e-3}}]
    whole = run(tmp_path, plugins, generations=4, name="whole")
    run(tmp_path, plugins, generations=2, name="split")
    resumed = run(tmp_path, plugins, generations=4, name="split")   # fresh plugin: empty cache, no state
    keys = ["forget_nll", "retain_nll", "template_nll", "loss/npo", "loss/retain_nll"]
    for g in (2, 3):
        assert {k: resumed[g][k] for k in keys} == {k: whole[g][k] for k in keys}
    assert resumed[3]["npo-rt/ref_forwards"] == N_FORGET        # recomputed once, from generation 0's weights


def test_continue_optimizer_carries_adam_state(tmp_path):
    plugins = [{"class_path": "gradient-ascent", "init_args": {"steps": 3}}]
    run(tmp_path, plugins, name="carry")
    state = torch.load(tmp_path / "carry" / "gen_2" / "plugins" / OPTIMIZER_FILE, weights_only=True)
    assert int(state[0]["state"][0]["step"]) == 6               # 3 steps in phase 1 + 3 in phase 2
    assert not (tmp_path / "carry" / "gen_0" / "plugins" / OPTIMIZER_FILE).exists()   # learning is not carried
    plugins = [{"class_path": "gradient-ascent", "init_args": {"steps": 3, "continue_optimizer": False}}]
    run(tmp_path, plugins, name="fresh")
    assert not (tmp_path / "fresh" / "gen_1" / "plugins" / OPTIMIZER_FILE).exists()


def test_optimizer_file_is_in_the_manifest_and_a_corrupted_one_is_caught_on_resume(tmp_path):
    plugins = [{"class_path": "npo-rt", "init_args": {"steps": 2}}]
    run(tmp_path, plugins, generations=2, name="bad")
    gen_1 = tmp_path / "bad" / "gen_1"
    manifest = json.loads((gen_1 / "manifest.json").read_text())
    assert f"plugins/{OPTIMIZER_FILE}" in manifest
    path = gen_1 / "plugins" / OPTIMIZER_FILE
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with pytest.raises(RunStateError, match=rf"gen_1/plugins/{OPTIMIZER_FILE} is corrupted"):
        run(tmp_path, plugins, generations=3, name="bad")
    assert not (tmp_path / "bad" / "gen_2").exists()


def test_lr_sets_the_unlearning_learning_rate(tmp_path):
    run(tmp_path, [{"class_path": "gradient-ascent", "init_args": {"lr": 1e-4}}], generations=2, name="lr")
    state = torch.load(tmp_path / "lr" / "gen_1" / "plugins" / OPTIMIZER_FILE, weights_only=True)
    assert state[0]["param_groups"][0]["lr"] == pytest.approx(1e-4)


# -- loss terms against the pure functions ------------------------------------------------------------------
def fake_module(task, model, generation=1):
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    return SimpleNamespace(task=task, model=model, reference_model=ref, generation=generation,
                           progress=TrainingProgress(0, None), requirements=frozenset(), run=None)


def fake_run(task, init="previous", seed=7):
    return SimpleNamespace(task=task, config=SimpleNamespace(init=init),
                           torch_generator=lambda g, role: torch.Generator().manual_seed(seed))


def forget_batch(task, n=4):
    pool = task.forget_pool()
    return {k: torch.as_tensor(v[:n]) for k, v in pool.arrays.items()}


def setup_task():
    task = tiny_task()
    task.setup(0)
    torch.manual_seed(0)
    return task, task.build_model()


def test_npo_terms_equal_pure_function_and_cache_reference():
    task, model = setup_task()
    with torch.no_grad():                       # move the model away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module = fake_module(task, model)
    calls = []
    module.reference_model.register_forward_hook(lambda m, a, k, o: calls.append(len(k["input_ids"])),
                                                 with_kwargs=True)
    plugin = NPO(beta=0.3)
    plugin.start_phase(fake_run(task), 1, module)
    batch = forget_batch(task)
    for _ in range(3):
        outputs = task.step(model, batch, frozenset())
        terms = plugin.loss_terms(module, batch, outputs)
    # the first step sends the whole forget set through the reference once (in task batches); then none
    assert sum(calls) == len(task.forget_pool()) == N_FORGET and plugin.cache.forwarded == N_FORGET
    mask = task.answer_mask(batch)
    logp = sequence_logprob(outputs["logits"], outputs["labels"], mask)
    with torch.no_grad():
        ref_out = task.step(module.reference_model, batch, frozenset())
        ref = sequence_logprob(ref_out["logits"], ref_out["labels"], mask)
    torch.testing.assert_close(terms["npo"], npo_loss(logp, ref, 0.3), rtol=1e-6, atol=1e-6)
    assert terms["npo"].requires_grad


def test_without_the_cache_each_step_recomputes_its_batch():
    task, model = setup_task()
    module = fake_module(task, model)
    calls = []
    module.reference_model.register_forward_hook(lambda m, a, k, o: calls.append(len(k["input_ids"])),
                                                 with_kwargs=True)
    cached, fresh = NPO(beta=0.3), NPO(beta=0.3, cache_reference=False)
    for plugin in (cached, fresh):
        plugin.start_phase(fake_run(task), 1, module)
    batch = forget_batch(task, 3)
    outputs = task.step(model, batch, frozenset())
    a = cached.loss_terms(module, batch, outputs)["npo"]
    calls.clear()
    for _ in range(2):
        b = fresh.loss_terms(module, batch, outputs)["npo"]
    assert calls == [3, 3] and fresh.metrics()["npo/ref_forwards"] == 6 and fresh.metrics()["npo/ref_cached"] == 0
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)     # same values, batch as forwarded or as cached


def test_npo_rt_terms_equal_pure_functions():
    task, model = setup_task()
    module = fake_module(task, model)
    plugin = NPORT(beta=0.1, retain_coeff=0.5, forget_coeff=2.0)
    plugin.start_phase(fake_run(task, seed=11), 1, module)
    batch = forget_batch(task, 3)
    outputs = task.step(model, batch, frozenset())
    terms = plugin.loss_terms(module, batch, outputs)
    idx = torch.randint(len(task.retain_pool()), (3,), generator=torch.Generator().manual_seed(11)).numpy()
    retain = {k: torch.as_tensor(v[idx]) for k, v in task.retain_pool().arrays.items()}
    r_out = task.step(model, retain, frozenset())
    expected_retain = masked_nll(r_out["logits"], r_out["labels"], task.answer_mask(retain))
    logp = sequence_logprob(outputs["logits"], outputs["labels"], task.answer_mask(batch))
    torch.testing.assert_close(terms["retain_nll"], 0.5 * expected_retain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["npo"], 2.0 * npo_loss(logp, logp.detach(), 0.1), rtol=1e-6, atol=1e-6)


def test_gradient_ascent_term_and_generation_zero_term():
    task, model = setup_task()
    batch = forget_batch(task)
    outputs = task.step(model, batch, frozenset())
    plugin = GradientAscent()
    terms = plugin.loss_terms(fake_module(task, model), batch, outputs)
    expected = masked_nll(outputs["logits"], outputs["labels"], task.answer_mask(batch))
    torch.testing.assert_close(terms["ga"], -expected)
    assert plugin.loss_terms(fake_module(task, model, generation=0), batch, outputs) == {"nll": outputs["loss"]}


def test_synthetic_items_cannot_be_forget_examples():
    task, model = setup_task()
    module = fake_module(task, model)
    plugin = NPO()
    plugin.start_phase(fake_run(task), 1, module)
    batch = forget_batch(task)
    batch["example_id"] = torch.full_like(batch["example_id"], -1)
    with pytest.raises(ValueError, match="ids must be >= 0"):
        plugin.loss_terms(module, batch, task.step(model, batch, frozenset()))


# -- errors -------------------------------------------------------------------------------------------------------
def test_task_without_forget_data_is_refused(tmp_path):
    markov = MarkovText(train_size=16, heldout_size=8, seq_len=8, vocab_size=8, n_layer=1, n_embd=8)
    with pytest.raises(TaskIncompatible, match=r"npo needs the task capability ForgetRetain \('forget_data'"):
        run(tmp_path, ["npo"], task=markov)


def test_scratch_init_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="run.init: previous"):
        run(tmp_path, ["gradient-ascent"], init="scratch")


def test_two_unlearning_plugins_conflict():
    with pytest.raises(PluginConflict, match="two compose_pool policies"):
        build_manager(["npo", "gradient-ascent"])


@pytest.mark.parametrize("cls, kwargs, match", [
    (NPO, {"beta": 0}, "beta must be a finite number > 0"),
    (NPO, {"steps": 0}, "steps must be an integer >= 1"),
    (GradientAscent, {"lr": -1.0}, "lr must be a finite number > 0"),
    (NPORT, {"retain_coeff": -0.5}, "retain_coeff must be a finite number >= 0"),
    (NPORT, {"continue_optimizer": "yes"}, "continue_optimizer must be true or false"),
])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# -- hook contracts (the conformance kit's checks; its tiny run uses init: scratch, which these plugins refuse) ----
@pytest.mark.parametrize("name, cls", [("gradient-ascent", GradientAscent), ("npo", NPO), ("npo-rt", NPORT)])
def test_hook_contracts_in_a_checked_run(tmp_path, name, cls):
    plugin = cls(steps=2)
    implemented = set(check_hooks(plugin, name, "collapsekit-npo"))
    assert {"configure", "requirements", "compose_pool", "loss_terms", "generation_start"} <= implemented
    check_picklable(plugin, name, "collapsekit-npo")
    assert "forget_data" in check_requirements(plugin, tiny_task(), name, "collapsekit-npo")
    hooks = build_hooks(plugin, name, "collapsekit-npo")        # validates every result of the plugin
    first = run(tmp_path, [], generations=3, max_steps=3, name="a", hooks=hooks)
    again = run(tmp_path, [], generations=3, max_steps=3, name="b",
                hooks=build_hooks(cls(steps=2), name, "collapsekit-npo"))
    assert first == again                                         # same seed, same numbers
