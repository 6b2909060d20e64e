"""Step checkpoints inside a generation: real SIGKILL / SIGTERM / SIGUSR1 mid-training, then resume.

Every victim starts from a copy of its reference run without ``gen_1`` (generation 0 is read back), so
only generation 1 is trained; the kill must land inside generation 1 after a step checkpoint, and the
resumed run must end with the reference's ``metrics.json`` for every generation.
"""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

import collapsekit
from collapsekit import hookimpl
from collapsekit.checkpoints import ResumableLoader
from collapsekit.errors import PREEMPTED_EXIT_CODE, ConfigError
from collapsekit.run import RunConfig, read_metrics

STEPS = 60           # 4 batches per pass over the tiny pool: 15 passes per generation
EVERY = 5


class Noisy:
    """Draws from the global torch RNG every step through a plugin trainable and loss term; in
    generation 1 it sends this process ``SIGUSR1`` at step ``signal_at`` (if set)."""

    def __init__(self, signal_at=None):
        self.signal_at = signal_at

    @hookimpl
    def generation_start(self, module):
        module.add_trainable("probe", torch.nn.Linear(4, 1))

    @hookimpl
    def loss_terms(self, module, batch, outputs):
        if module.generation == 1 and module.progress.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return {"probe": module.trainable("probe")(torch.randn(8, 4)).pow(2).mean() * 0.01}


def _run(argv, plugin=None):
    from collapsekit.cli import main

    if plugin is None:
        return main([str(a) for a in argv])
    with collapsekit.registered(plugin, name="noisy"):
        return main([str(a) for a in argv])


def _reference(tiny_config, root: Path, plugin=None) -> SimpleNamespace:
    config = tiny_config(root / "runs", name="pre", generations=2, max_steps=STEPS)
    path = root / "ref.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _run(["run", "--config", path], plugin) == 0
    run_dir = root / "runs" / "pre"
    return SimpleNamespace(config=config, dir=run_dir, metrics=[read_metrics(run_dir, g) for g in range(2)])


@pytest.fixture(scope="module")
def reference(tiny_config_fn, tmp_path_factory):
    """An uninterrupted run without step checkpoints."""
    return _reference(tiny_config_fn, tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def noisy_reference(tiny_config_fn, tmp_path_factory):
    """An uninterrupted run with the :class:`Noisy` plugin."""
    return _reference(tiny_config_fn, tmp_path_factory.mktemp("noisy-ref"), Noisy())


def victim(reference, tmp_path: Path, **run) -> tuple[Path, Path]:
    """A copy of the reference run without generation 1, under another root, with extra ``run`` settings."""
    config = copy.deepcopy(reference.config)
    config["run"].update(root=str(tmp_path / "runs"), **run)
    run_dir = tmp_path / "runs" / "pre"
    shutil.copytree(reference.dir, run_dir)
    shutil.rmtree(run_dir / "gen_1")
    path = tmp_path / "victim.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, run_dir


def start_and_wait_for_checkpoint(path: Path, run_dir: Path) -> subprocess.Popen:
    """Start ``collapsekit run`` and return once generation 1 has a step checkpoint (still running)."""
    # one thread like this test process (conftest), whose in-process runs are the reference and the resume
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(path.with_suffix(".err"), "w") as err:       # the victim's stderr, read after it ends
        proc = subprocess.Popen([sys.executable, "-m", "collapsekit.cli", "run", "--config", str(path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    latest = run_dir / "gen_1" / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert latest.exists() and proc.poll() is None, "no step checkpoint while generation 1 trained; nothing tested"
    return proc


def latest_step(run_dir: Path) -> int:
    return json.loads((run_dir / "gen_1" / "checkpoints" / "latest.json").read_text())["step"]


def assert_resumes_identically(cli, path, run_dir, step, reference):
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    assert f"generation 1: resuming from the step checkpoint of step {step} " in out
    assert [read_metrics(run_dir, g) for g in range(2)] == reference.metrics
    assert not list(run_dir.glob("gen_*/checkpoints")), "step checkpoints must go once the generation is done"


def test_sigkill_after_a_step_checkpoint_resumes_identically(reference, tmp_path, cli):
    path, run_dir = victim(reference, tmp_path, checkpoint_every=EVERY)
    proc = start_and_wait_for_checkpoint(path, run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "gen_1" / "done").exists(), "killed too late"
    step = latest_step(run_dir)
    assert 0 < step < STEPS and step % EVERY == 0
    assert_resumes_identically(cli, path, run_dir, step, reference)


# SIGUSR1 (SLURM's warning signal) takes the same path as SIGTERM; the default suite runs SIGTERM only
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_a_checkpoint_and_stops_cleanly(signum, reference, tmp_path, cli):
    path, run_dir = victim(reference, tmp_path, checkpoint_every=EVERY)
    proc = start_and_wait_for_checkpoint(path, run_dir)
    proc.send_signal(signum)
    proc.wait(timeout=120)
    err = path.with_suffix(".err").read_text()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "Traceback" not in err
    step = latest_step(run_dir)
    assert 0 < step < STEPS
    assert (f"collapsekit: preempted ({signum.name}) at generation 1, step {step}; a checkpoint is saved in "
            in err) and "Re-run the same command to resume." in err
    assert not (run_dir / "gen_1" / "done").exists()
    assert_resumes_identically(cli, path, run_dir, step, reference)


@pytest.mark.parametrize("signal_at", [11, 9], ids=["end-of-pass", "mid-pass"])
def test_resume_restores_rng_trainables_term_means_and_data_order(signal_at, noisy_reference, tmp_path, cli):
    """Preempted right after a pass over the data ends (step 12) or inside one (step 10), without
    periodic checkpoints; a plugin's trainable and loss term draw from the global RNG every step."""
    path, run_dir = victim(noisy_reference, tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with collapsekit.registered(Noisy(signal_at=signal_at), name="noisy"):
        code, _, err = cli("run", "--config", path)
    assert code == PREEMPTED_EXIT_CODE and f"(SIGUSR1) at generation 1, step {signal_at + 1};" in err
    with collapsekit.registered(Noisy(), name="noisy"):
        assert_resumes_identically(cli, path, run_dir, signal_at + 1, noisy_reference)
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "signal handlers must not outlive training"
    assert "loss/probe" in noisy_reference.metrics[1]


class FailAfterTraining:
    @hookimpl
    def generation_end(self, generation):
        if generation == 1:
            raise RuntimeError("failure after training")


def test_checkpoint_of_the_last_step_skips_training_on_resume(noisy_reference, tmp_path, cli):
    """A failure after training (here: a hook) keeps the last step's checkpoint; the re-run trains no
    further step and still ends with the reference's numbers."""
    path, run_dir = victim(noisy_reference, tmp_path, checkpoint_every=STEPS)
    with collapsekit.registered(Noisy(), name="noisy"), collapsekit.registered(FailAfterTraining(), name="fail"):
        code, _, err = cli("run", "--config", path)
    assert code == 2 and "failure after training" in err
    assert latest_step(run_dir) == STEPS
    with collapsekit.registered(Noisy(), name="noisy"):
        assert_resumes_identically(cli, path, run_dir, STEPS, noisy_reference)


def test_corrupt_step_checkpoint_is_refused(noisy_reference, tmp_path, cli):
    path, run_dir = victim(noisy_reference, tmp_path)
    with collapsekit.registered(Noisy(signal_at=9), name="noisy"):
        assert cli("run", "--config", path)[0] == PREEMPTED_EXIT_CODE
    ckpt = run_dir / "gen_1" / "checkpoints" / "step_10.ckpt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with collapsekit.registered(Noisy(), name="noisy"):
        code, _, err = cli("run", "--config", path)
    assert code == 2 and "Traceback" not in err
    assert f"step checkpoint {ckpt} is corrupted (checksum mismatch)" in err
    assert f"Delete {ckpt.parent} to redo generation gen_1 from its start" in err


# -- units ---------------------------------------------------------------------------------------
def _loader(kind: str) -> DataLoader:
    data = TensorDataset(torch.arange(10))
    if kind == "loader-generator":       # the base Task's loader
        return DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))
    # digits-diffusion's: the loader draws its base seed from the global generator on every pass
    sampler = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(1)), 3, False)
    return DataLoader(data, sampler=sampler, batch_size=None)


@pytest.mark.parametrize("kind", ["loader-generator", "sampler-generator"])
@pytest.mark.parametrize("cut", [(1, 1), (1, 3)], ids=["mid-pass", "end-of-pass"])
def test_resumable_loader_continues_the_interrupted_pass(kind, cut):
    torch.manual_seed(0)
    loader, seen, saved = ResumableLoader(_loader(kind)), [], None
    for epoch in range(3):
        for i, batch in enumerate(loader):
            seen.append(batch)
            torch.rand(1)                # the training step draws from the global generator
            if (epoch, i) == cut:
                saved = (loader.state(i + 1), torch.get_rng_state(), len(seen), 3 - epoch - (i + 1 == len(loader)))
    end_state = torch.get_rng_state()
    state, rng, done, passes = saved
    resumed, rest = ResumableLoader(_loader(kind)), []
    resumed.resume(state)
    torch.set_rng_state(rng)
    for _ in range(passes):
        for batch in resumed:
            rest.append(batch)
            torch.rand(1)
    assert [b[0].tolist() for b in rest] == [b[0].tolist() for b in seen[done:]]
    assert torch.equal(torch.get_rng_state(), end_state)


def test_checkpoint_every_is_validated():
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ConfigError, match="run.checkpoint_every"):
            RunConfig(checkpoint_every=bad).validate()
    RunConfig(checkpoint_every=7).validate()
