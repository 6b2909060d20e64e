"""Faults and bad input: kill points, out-of-disk, foreign pools, empty data, fuzzed configs and pools."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import collapsekit
from collapsekit import hookimpl
from collapsekit.errors import CollapsekitError, RunStateError
from collapsekit.pool import Pool


def metrics_of(run_dir, generations):
    return [json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text()) for g in range(generations)]


# a kill during synthesis (after the model is saved) runs in the slow suite; the default suite kills
# while the pool is written, the later of the two points
@pytest.mark.parametrize("kill_after", [pytest.param("gen_1/model/model.safetensors", marks=pytest.mark.slow),
                                        "gen_1/pool/origin_generation.npy"])
def test_kill_mid_synthesis_or_pool_write_resumes_identically(kill_after, make_config, write_config, tmp_path,
                                                              sigkill_at):
    """SIGKILL once the marker file appears (synthesis / pool writing), then resume."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "collapsekit.cli", "run", "--config"]
    ref = write_config(make_config(generations=2, name="ref"), "ref.yaml")
    subprocess.run(cmd + [str(ref)], check=True, env=env, capture_output=True, timeout=300)
    path = write_config(make_config(generations=2, name="victim"), "victim.yaml")
    alive = sigkill_at(cmd + [str(path)], tmp_path / "runs" / "victim" / kill_after, env)
    assert alive, "the run ended before the kill point; nothing was tested"
    assert not (tmp_path / "runs" / "victim" / "gen_1" / "done").exists(), "killed too late"
    subprocess.run(cmd + [str(path)], check=True, env=env, capture_output=True, timeout=300)
    assert metrics_of(tmp_path / "runs" / "victim", 2) == metrics_of(tmp_path / "runs" / "ref", 2)


def test_out_of_disk_while_writing_a_pool(cli, make_config, write_config, tmp_path, monkeypatch):
    import collapsekit.fileio as fileio

    real_fsync = fileio.os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "gen_1" in name and "tokens.npy" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    path = write_config(make_config(generations=2))
    code, _, err = cli("run", "--config", path)
    assert code == 2 and "no space left on device" in err and "tokens.npy" in err
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "gen_0" / "done").exists() and not (run_dir / "gen_1" / "done").exists()
    assert not list((run_dir / "gen_1" / "pool").glob(".*tmp*")), "temporary file left behind"
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    assert (run_dir / "gen_1" / "done").exists()


def test_pool_from_another_task_is_rejected(cli, make_config, write_config):
    class Foreign:
        @hookimpl
        def compose_pool(self, real):
            return Pool.fresh({"x": np.zeros((len(real), 4)), "y": np.zeros(len(real))}, -1)

    with collapsekit.registered(Foreign(), name="foreign"):
        code, _, err = cli("run", "--config", write_config(make_config(generations=1)))
    assert code == 2 and "pool holds arrays ['x', 'y']" in err and "another task" in err


def test_empty_dataset_is_a_config_error(cli, make_config, write_config):
    config = make_config(generations=1)
    config["task"]["init_args"]["train_size"] = 0
    code, _, err = cli("run", "--config", write_config(config))
    assert code == 2 and "train_size" in err and "Traceback" not in err


def test_ddp_two_cpu_processes_shard_synthesis_without_loss(make_config, write_config, tmp_path):
    """strategy=ddp, 2 gloo processes: a 2-generation run completes, only rank 0 writes, lineage is exact."""
    config = make_config(generations=2, samples_per_generation=9000)   # 3 shards over 2 ranks
    config["trainer"].update(strategy="ddp", devices=2, accelerator="cpu")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "collapsekit.cli", "run", "--config", str(write_config(config))],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("generation 1: kl=") == 1            # printed by rank 0 only
    run_dir = tmp_path / "runs" / "tiny"
    assert metrics_of(run_dir, 2)[1]["train/world_size"] == 2
    for g in range(2):
        pool = Pool.load(run_dir / f"gen_{g}" / "pool")
        assert sorted(pool.origin_index.tolist()) == list(range(9000))   # none duplicated or lost
        assert (pool.origin_generation == g).all()
    assert not list(run_dir.rglob("*.tmp-*"))


def test_synthesis_does_not_depend_on_shard_placement(tiny_task, tmp_path, monkeypatch):
    """Same shards in one process as over ranks: the pool is a pure function of the model and seeds."""
    import collapsekit.loop as loop
    from collapsekit.dispatch import build_manager
    from collapsekit.run import Run, RunConfig

    tiny_task.setup(0)
    model = tiny_task.build_model()
    run = Run(RunConfig(name="s", root=str(tmp_path), samples_per_generation=50), tiny_task, build_manager([]))
    run.samples_per_generation = 50
    monkeypatch.setattr(loop, "SHARD_SIZE", 20)
    whole = loop.synthesize_shards(run, model, 0)
    parts = []
    for shard, size in [(0, 20), (1, 20), (2, 10)]:        # what ranks would compute shard by shard
        torch_seed = loop.derive_seed(run.seed, 0, f"synthesize-global/shard{shard}")
        import torch

        torch.manual_seed(torch_seed)
        request = run.synthesis_request(0, shard, start=20 * shard, size=size)
        assert (request.slice, request.total) == (slice(20 * shard, 20 * shard + size), 50)
        parts.append(run.hooks.first("synthesize", run=run, model=model, generation=0, request=request)[1]["tokens"])
    np.testing.assert_array_equal(whole.arrays["tokens"], np.concatenate(parts))
    assert run.samples_per_generation == 50


def test_nothing_deleted_without_being_asked(cli, make_config, write_config, tmp_path):
    path = write_config(make_config(generations=1))
    assert cli("run", "--config", path)[0] == 0
    before = sorted(p.name for p in (tmp_path / "runs" / "tiny").rglob("*"))
    changed = make_config(generations=1, seed=5)
    assert cli("run", "--config", write_config(changed, "changed.yaml"))[0] == 2
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").rglob("*")) == before


# -- fuzzing -------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["run", "task", "trainer", "extra"]), key=st.text(min_size=1, max_size=12),
       value=values)
def test_fuzzed_configs_only_raise_config_errors(section, key, value, tmp_path, make_config):
    from collapsekit.cli import load_run_config

    config = make_config()
    if section == "task":
        config["task"]["init_args"][key] = value
    else:
        config.setdefault(section, {})
        if isinstance(config[section], dict):
            config[section][key] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        load_run_config(["--config", str(path)])
    except CollapsekitError:
        pass
    except SystemExit as exc:  # only --help/--print_config exit; never reached here
        pytest.fail(f"unexpected exit {exc}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), victim=st.sampled_from(["tokens.npy", "origin_index.npy"]))
def test_fuzzed_pool_files_raise_run_state_errors(data, victim, tmp_path):
    folder = tmp_path / "pool"
    Pool.fresh({"tokens": np.arange(12).reshape(4, 3)}, 0).save(folder)
    (folder / victim).write_bytes(data)
    try:
        pool = Pool.load(folder)
    except RunStateError:
        return
    assert len(pool) == len(pool.arrays["tokens"])   # whatever loads is internally consistent


def test_a_run_folder_with_model_pt_of_an_earlier_collapsekit_resumes(cli, make_config, write_config, tmp_path):
    """Generation folders written before models went into ``gen_<k>/model/`` hold ``model.pt`` (a state dict).
    Such a run resumes: generation 1 (``init: previous``) starts from generation 0's ``model.pt`` and gives the
    numbers of a run written in today's layout."""
    from collapsekit.fileio import sha256_file
    from collapsekit.plugins.tasks.markov_text import MarkovText

    ref = write_config(make_config(name="ref", init="previous"), "ref.yaml")
    assert cli("run", "--config", ref)[0] == 0
    old = write_config(make_config(name="old", init="previous", generations=1), "old.yaml")
    assert cli("run", "--config", old)[0] == 0
    gen0 = tmp_path / "runs" / "old" / "gen_0"
    model = MarkovText(**make_config()["task"]["init_args"]).load_model(gen0)
    shutil.rmtree(gen0 / "model")                                   # rewrite generation 0 in the old layout
    (gen0 / "samples.jsonl").unlink()
    torch.save(model.state_dict(), gen0 / "model.pt")
    manifest = {k: v for k, v in json.loads((gen0 / "manifest.json").read_text()).items()
                if not k.startswith("model/") and k != "samples.jsonl"}
    (gen0 / "manifest.json").write_text(json.dumps({**manifest, "model.pt": sha256_file(gen0 / "model.pt")}))
    resumed = write_config(make_config(name="old", init="previous", generations=2), "resumed.yaml")
    code, out, err = cli("run", "--config", resumed)
    assert code == 0, err
    assert metrics_of(tmp_path / "runs" / "old", 2) == metrics_of(tmp_path / "runs" / "ref", 2)
