"""Trackers across generations: one MLflow run, one TensorBoard event folder and one W&B run per
collapsekit run, read back from their own stores after a crash inside a generation and a resume.

One real run (tiny markov-text, 3 generations of 5 steps, every step logged) with the three loggers
at once: the first invocation crashes at step 2 of generation 1 (an in-process plugin raises), the
second resumes and finishes. Then every tracker must hold: the config once, ``kl`` once per
generation (at step = generation, equal to ``metrics.json``), and the per-step loss on one strictly
increasing axis 0..14 with no step sent twice.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import Logger

from collapsekit import hookimpl, registered
from collapsekit.run import read_metrics
from collapsekit.tracking import ContinuousStepLogger, Tracking, TrackingState, generation_metrics

GENERATIONS, STEPS, CRASH_GENERATION, CRASH_STEP = 3, 5, 1, 2


class CrashOnce:
    """Raises inside the training step of ``CRASH_GENERATION`` at ``CRASH_STEP`` (a crash mid-generation)."""

    @hookimpl
    def loss_terms(self, module):
        if module.generation == CRASH_GENERATION and module.progress.step == CRASH_STEP:
            raise RuntimeError("simulated crash")
        return {}


def tracker_config(make_config, root: Path) -> dict:
    config = make_config(name="tracked", generations=GENERATIONS, max_steps=STEPS)
    config["trainer"]["logger"] = [
        {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
         "init_args": {"experiment_name": "collapse", "tracking_uri": f"sqlite:///{root}/mlflow.db",
                       "artifact_location": str(root / "artifacts")}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(root / "tb"), "name": "collapse"}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"save_dir": str(root / "wb"), "project": "collapse", "offline": True}},
    ]
    return config


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_config_fn):
    """``(run dir, tracker root, exit codes)`` of the crashed and the resumed invocation."""
    from collapsekit.cli import main

    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(root / "wandb-home"))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = tracker_config(lambda **kw: tiny_config_fn(root / "runs", **kw), root)
        path = root / "config.yaml"
        path.write_text(json.dumps(config))
        with registered(CrashOnce(), name="crash-once"):
            crashed = main(["run", "--config", str(path)])
        resumed = main(["run", "--config", str(path)])
    return root / "runs" / "tracked", root, (crashed, resumed)


def test_the_run_crashed_then_finished(tracked_run):
    run_dir, _, codes = tracked_run
    assert codes == (2, 0)
    assert all((run_dir / f"gen_{g}" / "done").is_file() for g in range(GENERATIONS))


def expected_kl(run_dir: Path) -> list[float]:
    return [read_metrics(run_dir, g)["kl"] for g in range(GENERATIONS)]


# -- MLflow ------------------------------------------------------------------------------------------------
def test_mlflow_holds_one_run_with_kl_per_generation_and_one_step_axis(tracked_run):
    from mlflow import MlflowClient

    run_dir, root, _ = tracked_run
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("collapse")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["loggers"][0]["pin"] == {"run_id": run.info.run_id}
    assert run.info.status == "FINISHED"
    kl = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "kl"))
    assert [s for s, _ in kl] == list(range(GENERATIONS))
    assert np.allclose([v for _, v in kl], expected_kl(run_dir))
    loss = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert loss == list(range(GENERATIONS * STEPS))            # strictly increasing, nothing sent twice
    means = client.get_metric_history(run.info.run_id, "loss_mean/total")
    assert sorted(m.step for m in means) == list(range(GENERATIONS))
    assert run.data.params["run/name"] == "tracked" and run.data.params["trainer/max_steps"] == str(STEPS)


# -- TensorBoard -------------------------------------------------------------------------------------------
def test_tensorboard_writes_one_event_folder_with_kl_at_every_generation(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, root, _ = tracked_run
    assert [p.name for p in (root / "tb" / "collapse").iterdir()] == ["version_0"]
    folder = root / "tb" / "collapse" / "version_0"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2      # one per process, one log dir
    events = EventAccumulator(str(folder))
    events.Reload()
    kl = events.Scalars("kl")
    assert [e.step for e in kl] == list(range(GENERATIONS))
    assert np.allclose([e.value for e in kl], expected_kl(run_dir), rtol=1e-6)
    assert [e.step for e in events.Scalars("loss/total")] == list(range(GENERATIONS * STEPS))


# -- Weights & Biases (offline) ----------------------------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` transaction log: a 7-byte header, then LevelDB-log blocks of
    32 KiB, each record a 7-byte header (CRC-32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:                 # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def test_wandb_offline_runs_share_one_id_with_kl_on_a_generation_axis(tracked_run):
    run_dir, root, _ = tracked_run
    run_id = json.loads((run_dir / "tracking.json").read_text())["loggers"][2]["pin"]["id"]
    files = sorted((root / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)   # crashed + resumed
    rows, defined = [], {}
    for f in files:
        for record in wandb_records(f):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif kind == "metric" and record.metric.name:
                defined[record.metric.name] = record.metric.step_metric
    kl = [(r["generation"], r["kl"]) for r in rows if "kl" in r]
    assert [g for g, _ in kl] == list(range(GENERATIONS))
    assert np.allclose([v for _, v in kl], expected_kl(run_dir), rtol=1e-6)
    assert defined["kl"] == "generation"
    steps = [r["trainer/global_step"] for r in rows if "loss/total" in r]
    assert steps == list(range(GENERATIONS * STEPS))


# -- the parts, without a Trainer ---------------------------------------------------------------------------
class Recorder(Logger):
    """A Lightning logger that keeps what it is sent."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.sent, self.params, self.finalized = [], [], []

    def log_metrics(self, metrics, step=None):
        self.sent.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        self.params.append(params)

    def finalize(self, status):
        self.finalized.append(status)


def test_continuous_step_logger_shifts_skips_and_logs_on_rank_zero_only(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    inner = Recorder()
    state = TrackingState(tmp_path / "tracking.json")
    state.loggers = [{"class": "x", "pin": {}, "opened": "t", "generations": [], "last_step": 11}]
    wrapped = ContinuousStepLogger(inner, offset=10, skip_through=11, state=state, index=0)
    for step in range(4):
        wrapped.log_metrics({"loss/total": float(step)}, step)
        wrapped.save()
    assert [s for s, _ in inner.sent] == [12, 13]          # 10 and 11 were sent by an earlier process
    assert json.loads(state.path.read_text())["loggers"][0]["last_step"] == 13
    wrapped.log_hyperparams({})                            # what Lightning sends at every fit
    wrapped.finalize("success")
    assert inner.params == [] and inner.finalized == []    # the Tracking logs the config once and finalizes
    wrapped.log_hyperparams({"a": 1})                      # a callback's own hyperparameters go through
    assert inner.params == [{"a": 1}]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    wrapped.log_metrics({"loss/total": 9.0}, 9)
    assert [s for s, _ in inner.sent] == [12, 13]


def test_state_writes_merge_and_never_move_back(tmp_path):
    a, b = TrackingState(tmp_path / "t.json"), TrackingState(tmp_path / "t.json")
    entry = {"class": "x", "pin": {"version": 0}, "opened": "t1"}
    a.loggers = [{**entry, "generations": [0], "last_step": 9}]
    a.write()
    b.loggers = [{**entry, "generations": [1], "last_step": 4}]
    b.write()
    assert TrackingState(tmp_path / "t.json").loggers == [{**entry, "generations": [0, 1], "last_step": 9}]
    b.loggers = [{**entry, "opened": "t2", "generations": [], "last_step": -1}]     # a new tracker run
    b.write()
    assert TrackingState(tmp_path / "t.json").loggers == b.loggers


def test_generation_metrics_keep_the_loss_curves_names_free():
    assert generation_metrics({"kl": 1, "loss/total": 2.0, "train/steps": 5}) == \
        {"kl": 1.0, "loss_mean/total": 2.0, "train/steps": 5.0}


def test_tracking_sends_each_generation_once_and_the_config_once(tmp_path):
    from types import SimpleNamespace

    inner = Recorder()
    run = SimpleNamespace(dir=tmp_path, config_dict={"run": {"name": "r"}},
                          metrics_of=lambda g: {"train/steps": 7.0})
    with Tracking(run, [inner]) as tracking:
        assert [lg.offset for lg in tracking.loggers_for(2)] == [14]
        tracking.on_generation(0, {"kl": 0.5})
        tracking.on_generation(0, {"kl": 0.5}, resumed=True)
    assert inner.sent == [(0, {"kl": 0.5})] and inner.params == [{"run": {"name": "r"}}]
    assert inner.finalized == ["success"]
    fresh = Recorder()
    with Tracking(run, [fresh]) as again:               # a logger that cannot be reopened: a new tracker run,
        again.on_generation(0, {"kl": 0.5}, resumed=True)   # which gets the finished generations
    assert fresh.sent == [(0, {"kl": 0.5})] and fresh.params == [{"run": {"name": "r"}}]


def test_a_pinned_mlflow_run_the_store_lacks_is_one_message(tracked_run, tmp_path):
    from types import SimpleNamespace

    from collapsekit.errors import RunStateError

    _, root, _ = tracked_run
    spec = {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}}
    (tmp_path / "tracking.json").write_text(json.dumps({"loggers": [
        {"class": "lightning.pytorch.loggers.mlflow.MLFlowLogger", "pin": {"run_id": "0" * 32}, "opened": "t",
         "generations": [0], "last_step": 4}]}))
    run = SimpleNamespace(dir=tmp_path, config_dict={}, metrics_of=lambda g: {"train/steps": 5.0})
    with pytest.raises(RunStateError, match=r"continues MLflow run 0{32}, which the tracking store cannot give back"
                                            r".*delete .*tracking.json"):
        Tracking(run, [spec]).loggers_for(1)
