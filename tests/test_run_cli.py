"""End-to-end runs from YAML through the `collapsekit` CLI, resume, and user errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import collapsekit
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible


def read_metrics(run_dir, generations):
    return [json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text()) for g in range(generations)]


def test_two_generation_run_from_yaml(cli, make_config, write_config, tmp_path):
    path = write_config(make_config(generations=2))
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    assert "generation 0: kl=" in out and "generation 1: kl=" in out
    run_dir = tmp_path / "runs" / "tiny"
    for g in range(2):
        files = {p.relative_to(run_dir / f"gen_{g}").as_posix() for p in (run_dir / f"gen_{g}").rglob("*")}
        assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json", "samples.jsonl", "metrics.json", "manifest.json", "done", "pool/tokens.npy",
                "pool/origin_generation.npy", "pool/origin_index.npy",
                "train_lineage/origin_generation.npy"} <= files
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["generations"] == 2 and saved["trainer"]["max_steps"] == 8
    m0, m1 = read_metrics(run_dir, 2)
    assert {"kl", "tail_mass_lost", "tail_coverage", "heldout_nll", "loss/task", "loss/total",
            "pool/size", "pool/real_share"} <= set(m0)
    assert m0["pool/real_share"] == 1.0 and m1["pool/real_share"] == 0.0   # replace policy
    lineage = np.load(run_dir / "gen_1" / "pool" / "origin_generation.npy")
    assert (lineage == 1).all()


def test_command_line_overrides_yaml(cli, make_config, write_config, tmp_path):
    path = write_config(make_config(generations=3))
    code, out, err = cli("run", "--config", path, "--run.generations", "1", "--run.name", "over",
                         "--trainer.max_steps", "3")
    assert code == 0, err
    assert (tmp_path / "runs" / "over" / "gen_0" / "done").exists()
    assert not (tmp_path / "runs" / "over" / "gen_1").exists()


def test_print_config(cli, make_config, write_config):
    code, out, _ = cli("run", "--config", write_config(make_config()), "--print_config")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["run"]["name"] == "tiny"
    assert printed["task"]["init_args"]["vocab_size"] == 16


def test_rerun_resumes_and_reproduces(cli, make_config, write_config, tmp_path):
    path = write_config(make_config(generations=3))
    assert cli("run", "--config", path)[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    first = read_metrics(run_dir, 3)
    # lose the last generation half-way (no done marker): it is redone with the same numbers
    (run_dir / "gen_2" / "done").unlink()
    (run_dir / "gen_2" / "metrics.json").unlink()
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    assert out.count("resumed") == 2
    assert read_metrics(run_dir, 3) == first


@pytest.mark.slow   # the default suite kills runs in training (test_preemption, hf-lm) and in pool writing (reliability)
def test_killed_run_resumes_with_identical_numbers(make_config, write_config, tmp_path):
    # 300 steps make a generation last about a second, so the kill lands inside generation 1
    reference = make_config(generations=2, name="reference", max_steps=300)
    killed = make_config(generations=2, name="killed", max_steps=300)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "collapsekit.cli", "run", "--config"]
    subprocess.run(cmd + [str(write_config(reference, "ref.yaml"))], check=True, env=env,
                   capture_output=True, timeout=300)
    killed_path = write_config(killed, "killed.yaml")
    proc = subprocess.Popen(cmd + [str(killed_path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done0 = tmp_path / "runs" / "killed" / "gen_0" / "done"
    deadline = time.time() + 240
    while not done0.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert done0.exists(), "the run never finished generation 0"
    time.sleep(0.3)   # now inside generation 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs" / "killed" / "gen_1" / "done").exists(), "killed too late"
    subprocess.run(cmd + [str(killed_path)], check=True, env=env, capture_output=True, timeout=300)
    assert read_metrics(tmp_path / "runs" / "killed", 2) == read_metrics(tmp_path / "runs" / "reference", 2)


def test_seed_changes_numbers(cli, make_config, write_config, tmp_path):
    assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 0
    assert cli("run", "--config", write_config(make_config(generations=1, name="s1", seed=1)))[0] == 0
    a = read_metrics(tmp_path / "runs" / "tiny", 1)[0]
    b = read_metrics(tmp_path / "runs" / "s1", 1)[0]
    assert a["kl"] != b["kl"]


# -- errors: one clear message each ------------------------------------------------------
def test_unknown_plugin_suggests_names(cli, make_config, write_config):
    code, _, err = cli("run", "--config", write_config(make_config(plugins=["replac"])))
    assert code == 2
    assert "unknown plugin 'replac'" in err and "Did you mean 'replace'" in err
    assert "Traceback" not in err


def test_unknown_config_key_suggests_the_right_one(cli, make_config, write_config):
    config = make_config()
    config["run"]["generatons"] = 3
    code, _, err = cli("run", "--config", write_config(config))
    assert code == 2 and "generatons" in err and "run.generations" in err


def test_wrong_type_and_bad_values(cli, make_config, write_config):
    code, _, err = cli("run", "--config", write_config(make_config()), "--run.generations", "many")
    assert code == 2 and "run.generations" in err
    code, _, err = cli("run", "--config", write_config(make_config(generations=0)))
    assert code == 2 and "run.generations must be an integer >= 1" in err


def test_malformed_yaml(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  name: [unclosed\n")
    code, _, err = cli("run", "--config", path)
    assert code == 2 and "error" in err and "Traceback" not in err


def test_two_compose_policies_are_an_error(cli, make_config, write_config):
    class PolicyA:
        @hookimpl
        def compose_pool(self, real):
            return real

    class PolicyB(PolicyA):
        pass

    with collapsekit.registered(PolicyA(), name="policy-a"), collapsekit.registered(PolicyB(), name="policy-b"):
        code, _, err = cli("run", "--config", write_config(make_config()))
    assert code == 2
    assert "two compose_pool policies are active" in err and "'policy-a'" in err and "'policy-b'" in err


def test_configure_rejecting_the_task_names_the_plugin(cli, make_config, write_config, tmp_path):
    class NeedsImages:
        @hookimpl
        def configure(self, run):
            raise TaskIncompatible(f"needs an image task, got {run.task.name!r}")

    with collapsekit.registered(NeedsImages(), name="needs-images"):
        code, _, err = cli("run", "--config", write_config(make_config()))
    assert code == 2
    assert "plugin 'needs-images' (<in-process>) in configure: needs an image task, got 'markov-text'" in err
    assert not (tmp_path / "runs" / "tiny" / "gen_0").exists()


def test_unmet_requirement_is_an_error(cli, make_config, write_config):
    class NeedsForgetSet:
        @hookimpl
        def requirements(self):
            return ["forget_data"]

    with collapsekit.registered(NeedsForgetSet(), name="needs-forget"):
        code, _, err = cli("run", "--config", write_config(make_config()))
    assert code == 2 and "cannot provide ['forget_data']" in err


def test_non_finite_loss_names_generation_step_and_plugin(cli, make_config, write_config, tmp_path):
    class Exploding:
        @hookimpl
        def loss_terms(self, module):
            value = float("nan") if module.generation == 1 and module.global_step == 2 else 0.0
            return {"boom": module.model.transformer.wte.weight.sum() * 0 + value}

    with collapsekit.registered(Exploding(), name="exploding"):
        code, _, err = cli("run", "--config", write_config(make_config(generations=3)))
    assert code == 2
    assert "generation 1, step 2" in err and "'boom' (from plugin 'exploding'" in err
    assert (tmp_path / "runs" / "tiny" / "gen_0" / "done").exists()       # finished generation kept
    assert not (tmp_path / "runs" / "tiny" / "gen_1" / "done").exists()


def test_hook_exception_names_plugin_and_distribution(cli, make_config, write_config):
    class Faulty:
        @hookimpl
        def metrics(self):
            raise RuntimeError("disk on fire")

    with collapsekit.registered(Faulty(), name="faulty"):
        code, _, err = cli("run", "--config", write_config(make_config(generations=1)))
    assert code == 2 and "plugin 'faulty' (<in-process>) raised in hook metrics: RuntimeError: disk on fire" in err


def test_other_config_refuses_to_resume(cli, make_config, write_config, tmp_path):
    assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 0
    other = make_config(generations=1)
    other["task"]["init_args"]["n_embd"] = 32
    code, _, err = cli("run", "--config", write_config(other, "other.yaml"))
    assert code == 2 and "different config" in err and "task.init_args.n_embd: 16 -> 32" in err
    code, _, err = cli("run", "--config", write_config(other, "other.yaml"), "--run.overwrite", "true")
    assert code == 0, err


def test_corrupted_pool_is_detected_on_resume(cli, make_config, write_config, tmp_path):
    path = write_config(make_config(generations=2))
    assert cli("run", "--config", path)[0] == 0
    tokens = tmp_path / "runs" / "tiny" / "gen_0" / "pool" / "tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-1] ^= 0xFF
    tokens.write_bytes(bytes(data))
    code, _, err = cli("run", "--config", path)
    assert code == 2 and "tokens.npy is corrupted" in err and "Delete" in err


def test_plugins_listing_shows_builtins(cli):
    code, out, _ = cli("plugins")
    assert code == 0
    for name in ("replace", "ancestral", "probes"):
        assert name in out
    code, out, _ = cli("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["replace"]["hooks"] == ["compose_pool"] and rows["replace"]["distribution"] == "collapsekit"


def test_unknown_command(cli):
    code, _, err = cli("rnu")
    assert code == 2 and "Did you mean 'run'" in err


def test_fit_is_a_plain_lightning_cli_fit(cli, tmp_path):
    code, out, err = cli("fit", "--model.task", "MarkovText", "--model.task.init_args.train_size", "32",
                         "--model.task.init_args.heldout_size", "16", "--model.task.init_args.seq_len", "8",
                         "--model.task.init_args.vocab_size", "8", "--model.task.init_args.n_layer", "1",
                         "--model.task.init_args.n_embd", "8", "--trainer.max_steps", "3",
                         "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                         "--trainer.enable_checkpointing", "false",
                         "--trainer.default_root_dir", str(tmp_path))
    assert code == 0, err
    assert "evaluation: heldout_nll=" in out and "kl=" in out


def test_tasks_listing(cli):
    code, out, _ = cli("tasks")
    assert code == 0 and "markov-text" in out
