"""facts-unlearning: the generated world, the forget_data contract, probes against independent
computations (an oracle model and a uniform model), presets, configs and a real baseline run."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.pool import REAL
from collapsekit.run import Run, RunConfig
from collapsekit.testing import quiet_lightning

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"num_people": 24, "heldout_people": 8, "n_first": 8, "n_last": 8, "n_cities": 4, "n_jobs": 4,
        "n_hobbies": 4, "forget_share": 0.25, "n_layer": 1, "n_embd": 16, "batch_size": 8}


def tiny(seed: int = 0) -> FactsUnlearning:
    task = FactsUnlearning(**TINY)
    task.setup(seed)
    return task


# -- the world -----------------------------------------------------------------------------------------
def test_sequences_follow_the_template():
    task = tiny()
    text = task.decode(task.train_tokens[:1])[0].split()
    assert text[2:4] == ["born", "in"] and text[5:8] == [",", "works", "as"]     # the BOS column is not text
    assert text[9:11] == [",", "likes"] and text[12] == "." and len(text) == 13
    assert text[0][0] == "F" and text[1][0] == "L" and text[4][0] == "C" and text[8][0] == "J" and text[11][0] == "H"
    assert task.valid_share(task.train_tokens[:, 1:]) == 1.0 and task.valid_share(task.heldout_tokens[:, 1:]) == 1.0


def test_world_is_deterministic_per_seed_with_unique_names_and_a_partition():
    a, b, c = tiny(0), tiny(0), tiny(1)
    np.testing.assert_array_equal(a.train_tokens, b.train_tokens)
    assert not np.array_equal(a.train_tokens, c.train_tokens)
    names = {tuple(r) for r in np.concatenate([a.train_tokens, a.heldout_tokens])[:, 1:3]}
    assert len(names) == TINY["num_people"] + TINY["heldout_people"]          # nobody is named twice
    forget, retain = a.forget_pool(), a.retain_pool()
    assert len(forget) == round(0.25 * 24) and len(forget) + len(retain) == 24
    ids_f, ids_r = set(forget.arrays["example_id"].tolist()), set(retain.arrays["example_id"].tolist())
    assert not ids_f & ids_r and ids_f | ids_r == set(range(24))
    assert (forget.origin_generation == REAL).all()
    np.testing.assert_array_equal(forget.origin_index, forget.arrays["example_id"])   # lineage = real index
    np.testing.assert_array_equal(forget.arrays["tokens"], a.train_tokens[forget.arrays["example_id"]])


def test_answer_mask_selects_everything_after_the_name():
    task = tiny()
    batch = {k: torch.as_tensor(v[:3]) for k, v in task.real_pool().arrays.items()}
    mask = task.answer_mask(batch)
    labels = batch["tokens"][:, 1:]
    assert mask.shape == labels.shape and mask.dtype == torch.bool
    assert not mask[:, :2].any() and mask[:, 2:].all()                          # name = question, rest = answer


def test_valid_share_counts_broken_rows():
    task = tiny()
    rows = task.train_tokens[:4, 1:].copy()
    rows[0, 2] = task.word_id["likes"]                                          # template word out of place
    rows[1, 4] = task.ranges["job"][0]                                          # a job where the city goes
    assert task.valid_share(rows) == pytest.approx(2 / 4)
    assert task.valid_share(rows[:0]) == 0.0


# -- probes against independent models --------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """Predicts the true next token of every known person with probability ~1 (a lookup table)."""

    def __init__(self, task: FactsUnlearning) -> None:
        super().__init__()
        self.task = task
        rows = np.concatenate([task.train_tokens, task.heldout_tokens])
        self.table = {tuple(r[:t + 1]): int(r[t + 1]) for r in rows for t in range(len(r) - 1)}

    def forward(self, input_ids, output_hidden_states=False, **_):
        n, t = input_ids.shape
        logits = torch.zeros(n, t, self.task.vocab_size + 1)
        for i in range(n):
            for j in range(t):
                logits[i, j, self.table[tuple(input_ids[i, :j + 1].tolist())]] = 50.0
        return SimpleNamespace(logits=logits)


class Uniform(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, input_ids, output_hidden_states=False, **_):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.size))


def test_metrics_of_an_oracle_and_a_uniform_model():
    task = tiny()
    m = task.extra_metrics(Oracle(task), None)
    assert m["forget_acc"] == 1.0 and m["retain_acc"] == 1.0
    assert m["forget_nll"] < 1e-6 and m["template_nll"] < 1e-6
    u = task.extra_metrics(Uniform(task.vocab_size + 1), None)
    log_v = math.log(task.vocab_size + 1)
    for key in ("forget_nll", "retain_nll", "template_nll"):
        assert u[key] == pytest.approx(log_v, rel=1e-6)
    assert u["forget_acc"] == 0.0 and u["retain_acc"] == 0.0                   # argmax of a tie = id 0 = "born"


def test_token_stats_match_a_plain_loop():
    task = tiny()
    torch.manual_seed(0)
    model = task.build_model().eval()
    tokens = task.train_tokens[:5]
    positions = (4, 8, 11)
    nll, acc = task.token_stats(model, tokens, positions)
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(tokens[:, :-1])).logits.double()
    total, right, count = 0.0, 0, 0
    for i in range(len(tokens)):
        for p in positions:
            row = logits[i, p].tolist()
            target = int(tokens[i, p + 1])
            total += math.log(sum(math.exp(z) for z in row)) - row[target]
            right += int(max(range(len(row)), key=lambda k: row[k]) == target)
            count += 1
    assert nll == pytest.approx(total / count, rel=1e-5) and acc == pytest.approx(right / count)


def test_samples_carry_no_example_id():
    task = tiny()
    torch.manual_seed(0)
    out = task.sample(task.build_model(), 5, torch.Generator().manual_seed(0))
    assert sorted(out) == ["example_id", "tokens"] and out["tokens"].shape == (5, 14)
    assert (out["example_id"] == -1).all() and (out["tokens"][:, 0] == task.bos_id).all()


# -- settings, presets, configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"n_cities": 1}, "n_cities must be >= 2"),
    ({"num_people": 60, "heldout_people": 10, "n_first": 8, "n_last": 8}, "exceeds the 64 distinct names"),
    ({"forget_share": 0.0}, "forget_share"),
    ({"num_people": 4, "forget_share": 0.05}, "at least one person in each split"),
    ({"heldout_people": 0}, "heldout_people must be >= 1"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FactsUnlearning(**kwargs)


def test_forget_split_needs_setup():
    with pytest.raises(RuntimeError, match="setup"):
        FactsUnlearning(**TINY).forget_pool()


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_presets(name):
    spec = FactsUnlearning.preset(name)
    assert {"task", "trainer", "generations"} <= set(spec) and spec["init"] == "previous"
    assert spec["generations"] >= 2 and spec["trainer"]["max_steps"] > 0
    assert set(spec["plugin_args"]) == set(FactsUnlearning.bench_methods)
    FactsUnlearning(**spec["task"])
    with pytest.raises(ValueError, match="unknown preset"):
        FactsUnlearning.preset("huge")


def test_declared_metrics_have_directions():
    assert set(FactsUnlearning.headline) <= set(FactsUnlearning.higher_is_better)
    task = tiny()
    m = task.extra_metrics(Uniform(task.vocab_size + 1), None)
    assert set(m) <= set(FactsUnlearning.higher_is_better)


def test_config_files_build_the_task_and_name_installed_plugins():
    from collapsekit.registry import discover

    files = sorted(CONFIGS.glob("facts-unlearning*.yaml"))
    assert {f.name for f in files} >= {"facts-unlearning.yaml", "facts-unlearning-gradient-ascent.yaml",
                                       "facts-unlearning-npo.yaml", "facts-unlearning-npo-rt.yaml"}
    available = discover()
    for f in files:
        config = yaml.safe_load(f.read_text())
        assert config["task"]["class_path"].endswith("facts_unlearning.FactsUnlearning")
        FactsUnlearning(**config["task"]["init_args"])
        RunConfig(**config["run"]).validate()
        for p in config["run"]["plugins"]:
            name = p if isinstance(p, str) else p["class_path"]
            if name not in available:
                pytest.skip(f"plugin {name!r} is not installed (pip install -e mitigations/npo)")


# -- a real run without unlearning plugins --------------------------------------------------------------------------
def test_baseline_run_self_trains_on_samples(tmp_path):
    config = RunConfig(name="base", root=str(tmp_path), generations=2, seed=0, init="previous",
                       samples_per_generation=16)
    trainer = {"max_steps": 4, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False}
    with quiet_lightning():
        metrics = execute(Run(config, FactsUnlearning(**TINY), build_manager([])), trainer_factory(**trainer))
    assert metrics[0]["pool/real_share"] == 1.0 and metrics[1]["pool/real_share"] == 0.0
    for m in metrics:
        assert {"forget_acc", "retain_acc", "template_nll", "sample_valid", "distinct_2"} <= set(m)
        assert all(math.isfinite(v) for v in m.values())
