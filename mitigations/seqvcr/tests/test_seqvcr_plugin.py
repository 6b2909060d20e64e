"""The ``seqvcr`` and ``pause-tokens`` plugins, wired through real tiny runs (real Lightning, real pluggy)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from collapsekit.dispatch import build_manager
from collapsekit.errors import CollapsekitError, TaskIncompatible
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.multiplication import PAUSE, Multiplication
from collapsekit.run import Run, RunConfig
from collapsekit_seqvcr import seqvcr_loss
from collapsekit_seqvcr.plugin import PROJECTION, PauseTokens, SeqVCR

TINY = dict(digits=2, train_size=96, heldout_size=32, n_layer=2, n_embd=16, n_head=2, batch_size=16,
            eval_batch_size=64, rank_samples=32)


def tiny_run(tmp_path, plugins, name="r", generations=1, max_steps=6, **task_args):
    task = Multiplication(**{**TINY, **task_args})
    run = Run(RunConfig(name=name, root=str(tmp_path), generations=generations, seed=0, plugins=plugins),
              task, build_manager(plugins))
    metrics = execute(run, trainer_factory(max_steps=max_steps, enable_progress_bar=False, logger=False,
                                           accelerator="cpu"))
    return run, metrics


def test_seqvcr_run_logs_terms_trains_the_projection_and_saves_a_clean_model(tmp_path):
    plugins = [{"class_path": "seqvcr", "init_args": {"layer": 1, "proj_dim": 8}}]
    run, metrics = tiny_run(tmp_path, plugins, generations=2)
    for m in metrics:
        assert m["loss/seqvcr/var"] > 0 and m["loss/seqvcr/cov"] >= 0
        assert math.isfinite(m["loss/total"])
        assert "exact_match" in m and "rank_layer_2" in m
    plugin = run.hooks.objects["seqvcr"]
    # the projection of the last generation was updated by the task optimizer
    start = torch.nn.Linear(16, 8)
    g = run.torch_generator(1, "seqvcr-projection")
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(start.weight, a=math.sqrt(5), generator=g)
    assert plugin.projection.weight.shape == (8, 16)
    assert not torch.allclose(plugin.projection.weight.detach(), start.weight), "projection was not trained"
    # saved weights hold exactly the task model's architecture
    from safetensors.torch import load_file

    state = load_file(run.gen_dir(1) / "model" / "model.safetensors")
    assert not any(PROJECTION in k for k in state)
    run.task.build_model().load_state_dict(state, strict=False)        # save_pretrained leaves out the tied lm_head
    assert set(run.model_of(1).state_dict()) == set(run.task.build_model().state_dict())


def test_projection_is_in_the_optimizer(tmp_path):
    """Train one step by hand with the module the engine builds: the projection gets a gradient and moves."""
    from collapsekit.module import GenerationalModule

    task = Multiplication(**TINY)
    task.setup(0)
    hooks = build_manager([{"class_path": "seqvcr", "init_args": {"proj_dim": 4}}])
    run = SimpleNamespace(torch_generator=lambda g, role: torch.Generator().manual_seed(5), task=task, hooks=hooks,
                          requirements=frozenset({"hidden_states"}))
    module = GenerationalModule(run, 0, task.build_model())
    hooks.call("generation_start", run=run, generation=0, module=module)
    optimizer = module.configure_optimizers()
    proj = module.trainable(PROJECTION)
    assert any(p is proj.weight for group in optimizer.param_groups for p in group["params"])
    before = proj.weight.detach().clone()
    batch = {"tokens": torch.as_tensor(task.train_tokens[:16])}
    loss = module.training_step(batch, 0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert not torch.equal(before, proj.weight.detach())
    hooks.call("generation_end", run=run, generation=0, module=module)
    assert not any(PROJECTION in k for k in module.model.state_dict())


class ModuleStandIn:
    """What the plugin uses of the engine's module: the model and the trainables service."""

    def __init__(self, model):
        self.model, self.trainables = model, torch.nn.ModuleDict()

    def add_trainable(self, name, module):
        self.trainables[name] = module

    def trainable(self, name):
        return self.trainables[name]


def test_loss_terms_equal_seqvcr_loss_of_the_projected_layer():
    task = Multiplication(**TINY)
    task.setup(0)
    model = task.build_model()
    plugin = SeqVCR(layer=1, proj_dim=6, var_coeff=0.7, cov_coeff=0.3)
    module = ModuleStandIn(model)
    plugin.generation_start(SimpleNamespace(torch_generator=lambda g, r: torch.Generator().manual_seed(1)), 0, module)
    outputs = task.step(model, {"tokens": torch.as_tensor(task.train_tokens[:8])}, frozenset({"hidden_states"}))
    terms = plugin.loss_terms(module, outputs)
    expected = seqvcr_loss(module.trainable(PROJECTION)(outputs["hidden_states"][1]), 0.7, 0.3, 1e-3)
    assert set(terms) == {"seqvcr/var", "seqvcr/cov"}
    assert (terms["seqvcr/var"] + terms["seqvcr/cov"]).item() == pytest.approx(expected.item(), rel=1e-6)
    # attention_mask from the task is honoured
    mask = torch.ones(8, outputs["hidden_states"][1].shape[1], dtype=torch.bool)
    mask[5:, -3:] = False
    masked = plugin.loss_terms(module, {**outputs, "attention_mask": mask})
    expected_masked = seqvcr_loss(module.trainable(PROJECTION)(outputs["hidden_states"][1]), 0.7, 0.3, 1e-3, mask=mask)
    assert (masked["seqvcr/var"] + masked["seqvcr/cov"]).item() == pytest.approx(expected_masked.item(), rel=1e-6)
    # a batch of one item has no covariance: zero terms, graph kept
    one = task.step(model, {"tokens": torch.as_tensor(task.train_tokens[:1])}, frozenset({"hidden_states"}))
    assert all(v.item() == 0.0 for v in plugin.loss_terms(module, one).values())


def test_no_projection_option_regularizes_raw_states():
    task = Multiplication(**TINY)
    task.setup(0)
    model = task.build_model()
    outputs = task.step(model, {"tokens": torch.as_tensor(task.train_tokens[:8])}, frozenset({"hidden_states"}))
    terms = SeqVCR(proj_dim=0).loss_terms(SimpleNamespace(model=model), outputs)
    expected = seqvcr_loss(outputs["hidden_states"][len(outputs["hidden_states"]) // 2])
    assert sum(terms.values()).item() == pytest.approx(expected.item(), rel=1e-6)


def test_clear_errors():
    task = Multiplication(**TINY)
    with pytest.raises(TaskIncompatible, match="out of range"):
        SeqVCR(layer=5).configure(SimpleNamespace(task=task))
    with pytest.raises(TaskIncompatible, match="hidden_states"):
        SeqVCR().configure(SimpleNamespace(task=SimpleNamespace(name="gauss", provides=frozenset())))
    with pytest.raises(ValueError, match="proj_dim"):
        SeqVCR(proj_dim=-1)
    task.setup(0)
    model = task.build_model()
    outputs = task.step(model, {"tokens": torch.as_tensor(task.train_tokens[:4])}, frozenset({"hidden_states"}))
    with pytest.raises(CollapsekitError, match="generation_start"):
        SeqVCR().loss_terms(ModuleStandIn(model), outputs)
    with pytest.raises(CollapsekitError, match="no 'hidden_states'"):
        SeqVCR().loss_terms(ModuleStandIn(model), {"loss": outputs["loss"]})
    with pytest.raises(TaskIncompatible, match="PauseTokens"):
        PauseTokens(2).configure(SimpleNamespace(task=SimpleNamespace(name="markov-text")))
    with pytest.raises(TaskIncompatible, match="conflicts"):
        PauseTokens(2).configure(SimpleNamespace(task=Multiplication(**TINY, pause_tokens=3)))


def test_pause_tokens_plugin_changes_the_input_format(tmp_path):
    run, metrics = tiny_run(tmp_path, ["pause-tokens", "seqvcr"], max_steps=3)
    task = run.task
    assert task.pause_tokens == 2 and task.prompt_len == 1 + 2 + 1 + 2 + 1 + 2
    tokens = np.asarray(run.synthetic(0).arrays["tokens"])
    assert (tokens[:, 7:9] == PAUSE).all() and (task.train_tokens[:, 7:9] == PAUSE).all()
    assert "loss/seqvcr/var" in metrics[0]


def test_seqvcr_works_on_another_token_task(tmp_path):
    from collapsekit.plugins.tasks.markov_text import MarkovText

    task = MarkovText(vocab_size=16, seq_len=12, train_size=48, heldout_size=16, n_layer=1, n_embd=16, batch_size=16)
    plugins = ["seqvcr"]
    run = Run(RunConfig(name="m", root=str(tmp_path), generations=1, seed=0, plugins=plugins), task,
              build_manager(plugins))
    metrics = execute(run, trainer_factory(max_steps=3, enable_progress_bar=False, logger=False, accelerator="cpu"))
    assert metrics[0]["loss/seqvcr/var"] > 0
