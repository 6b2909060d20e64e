"""The engine's public services for plugins, through real runs (real pluggy, real Lightning Trainer):
training progress, extra trainable modules, an early stop, optimizer state, checksummed plugin files,
a read-only run, scoped in-process plugins and training steps that never wait for the device."""
from __future__ import annotations

import io
import json

import pytest
import torch

import collapsekit
from collapsekit import hookimpl
from collapsekit.dispatch import build_manager
from collapsekit.errors import CollapsekitError, RunStateError
from collapsekit.loop import execute, trainer_factory
from collapsekit.module import GenerationalModule
from collapsekit.registry import in_process
from collapsekit.run import Run, RunConfig


def run_with(tmp_path, plugin, tiny_task, generations=1, max_steps=5, name="svc", **config):
    with collapsekit.registered(plugin, name="svc-plugin"):
        run = Run(RunConfig(name=name, root=str(tmp_path), generations=generations, **config), tiny_task,
                  build_manager([]))
        metrics = execute(run, trainer_factory(max_steps=max_steps, logger=False, enable_progress_bar=False,
                                               accelerator="cpu"))
    return run, metrics


class Services:
    """Uses every module service: a trainable head, the progress, an early stop, the optimizer state
    and a plugin file."""

    def __init__(self, stop_at: int | None = None, lr: float | None = None) -> None:
        self.stop_at, self.lr = stop_at, lr
        self.progress: list[tuple[int, int | None, int | None]] = []
        self.head_start: torch.Tensor | None = None
        self.head_end: torch.Tensor | None = None
        self.lr_seen: float | None = None

    @hookimpl
    def generation_start(self, module):
        head = torch.nn.Linear(16, 1)
        self.head_start = head.weight.detach().clone()
        module.add_trainable("head", head)
        if self.lr is not None:
            module.restore_optimizer(lr=self.lr)

    @hookimpl
    def loss_terms(self, module, outputs):
        p = module.progress
        self.progress.append((p.step, p.total_steps, p.epoch_steps))
        if self.stop_at is not None and p.step >= self.stop_at:
            module.request_stop()
        hidden = module.model.transformer.wte.weight
        return {"head": module.trainable("head")(hidden).pow(2).mean()}

    @hookimpl
    def generation_end(self, run, generation, module):
        self.head_end = module.trainable("head").weight.detach().clone()
        state = module.optimizer_state()
        self.lr_seen = state[0]["param_groups"][0]["lr"]
        run.save_file(generation, "svc/state.json", json.dumps({"steps": len(self.progress)}).encode())


def test_progress_trainables_and_plugin_files(tmp_path, tiny_task):
    plugin = Services()
    run, metrics = run_with(tmp_path, plugin, tiny_task, max_steps=5)
    assert [p[:2] for p in plugin.progress] == [(s, 5) for s in range(5)]
    assert plugin.progress[0][2] == len(run.task.dataloader(run.task.real_pool(), True, 0))
    assert not torch.equal(plugin.head_start, plugin.head_end), "the trainable was not trained"
    from safetensors import safe_open

    with safe_open(run.gen_dir(0) / "model" / "model.safetensors", "pt") as saved:
        assert set(saved.keys()) <= set(run.task.build_model().state_dict())   # the trainable is never saved
    manifest = json.loads((run.gen_dir(0) / "manifest.json").read_text())
    assert "plugins/svc/state.json" in manifest
    assert json.loads(run.read_file(0, "svc/state.json")) == {"steps": 5}
    assert metrics[0]["loss/head"] > 0


def test_a_corrupted_plugin_file_is_caught_on_resume(tmp_path, tiny_task):
    run, _ = run_with(tmp_path, Services(), tiny_task, generations=1, name="c")
    (run.gen_dir(0) / "plugins" / "svc" / "state.json").write_text('{"steps": 999}')
    with pytest.raises(RunStateError, match=r"plugins/svc/state.json is corrupted \(checksum mismatch\)"):
        run.read_file(0, "svc/state.json")
    with pytest.raises(RunStateError, match=r"state.json is corrupted.*re-run the same command"):
        run_with(tmp_path, Services(), tiny_task, generations=2, name="c")


def test_request_stop_and_learning_rate(tmp_path, tiny_task):
    plugin = Services(stop_at=2, lr=0.0123)
    _, metrics = run_with(tmp_path, plugin, tiny_task, max_steps=50)
    assert metrics[0]["train/steps"] == 3.0
    assert plugin.lr_seen == pytest.approx(0.0123)


def test_run_is_read_only_once_generation_0_starts(tmp_path, tiny_task):
    class Sets:
        @hookimpl
        def generation_start(self, run):
            run.samples_per_generation = 3

    with pytest.raises(RunStateError, match=r"run.samples_per_generation cannot be set.*read-only"):
        run_with(tmp_path, Sets(), tiny_task)


def test_in_process_plugins_are_scoped():
    class Quiet:
        @hookimpl
        def metrics(self):
            return {}

    assert in_process() == {}
    with collapsekit.registered(Quiet(), name="quiet"):
        assert list(in_process()) == ["quiet"]
        assert "quiet" in build_manager([]).objects
    assert in_process() == {} and "quiet" not in build_manager([]).objects
    with pytest.raises(CollapsekitError, match=r"use `with collapsekit.registered\(obj, name=...\):`"):
        collapsekit.register(Quiet(), name="quiet")


def test_training_steps_never_wait_for_the_device(tmp_path, tiny_task):
    """No .item(), float(), .cpu(), .tolist(), bool() of a tensor inside a training step (engine and
    built-in plugins): on a GPU each would stall the step until the device catches up."""
    from collapsekit.bench.perf import host_syncs_in_training_steps

    with host_syncs_in_training_steps() as (counts, inside):
        run = Run(RunConfig(name="sync", root=str(tmp_path), generations=1), tiny_task, build_manager([]))
        metrics = execute(run, trainer_factory(max_steps=6, logger=False, enable_progress_bar=False,
                                               accelerator="cpu"))
        assert metrics[0]["train/steps"] == 6.0 and counts == {}
        # the counter itself works: a sync inside a step is seen
        inside[0] = True
        torch.ones(1).item()
        float(torch.ones(()))
        inside[0] = False
    assert counts == {"item": 1, "__float__": 1}
    assert torch.Tensor.item.__name__ == "item"          # the methods are restored on exit


def test_term_means_equal_the_plain_mean_of_the_logged_values(tmp_path, tiny_task):
    """The torchmetrics running means in metrics.json equal the float64 mean of every step's term."""
    seen: list[float] = []

    class Spy:
        @hookimpl
        def loss_terms(self, module, outputs):
            seen.append(float(outputs["loss"].detach()))
            return {}

    _, metrics = run_with(tmp_path, Spy(), tiny_task, max_steps=7)
    assert metrics[0]["loss/task"] == pytest.approx(sum(seen) / len(seen), rel=0, abs=1e-12)
    assert metrics[0]["loss/total"] == metrics[0]["loss/task"]


def test_optimizer_state_round_trips_through_a_plugin_file(tmp_path, tiny_task):
    class Carry:
        @hookimpl
        def generation_start(self, run, generation, module):
            if generation:
                module.restore_optimizer(torch.load(io.BytesIO(run.read_file(generation - 1, "opt.pt"))))

        @hookimpl
        def generation_end(self, run, generation, module):
            buffer = io.BytesIO()
            torch.save(module.optimizer_state(), buffer)
            run.save_file(generation, "opt.pt", buffer.getvalue())

    run, _ = run_with(tmp_path, Carry(), tiny_task, generations=2, max_steps=3, init="previous")
    state = torch.load(io.BytesIO(run.read_file(1, "opt.pt")))
    assert int(state[0]["state"][0]["step"]) == 6            # 3 steps carried into 3 more
