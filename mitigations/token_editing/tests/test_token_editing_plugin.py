"""The token-editing plugin: row choice, BOS handling, statistics, configure, and a real run."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from collapsekit.capabilities import TokenSequences
from collapsekit.errors import TaskIncompatible
from collapsekit.pool import REAL, Pool
from collapsekit.run import SynthesisRequest
from collapsekit.seeds import torch_generator
from collapsekit_token_editing import edit_tokens
from collapsekit_token_editing.plugin import TokenEditing, pick_rows

V, BOS = 4, 4


class BigramStub(TokenSequences):
    """A token task whose 'model' is a fixed bigram table: after id u the next id is (u+1) % V with
    p = e^5 / (e^5 + 3) ~ 0.980 among content ids. The BOS column has the largest logit everywhere,
    so a plugin that forgot to mask it would propose BOS."""

    name = "bigram-stub"
    pool_keys = ("tokens",)
    vocab_size, bos_id, eval_batch_size = V, BOS, 3

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        table = torch.zeros(V + 1, V + 1)
        for u in range(V + 1):
            table[u, (u + 1) % V] = 5.0
        table[:, BOS] = 20.0
        self.table = table

    def real_pool(self) -> Pool:
        return Pool.fresh({"tokens": self.rows}, REAL)

    def token_logits(self, model, tokens):
        tokens = torch.as_tensor(np.asarray(tokens))
        return self.table[tokens[:, :-1]]            # [:, t] predicts tokens[:, t+1]


def stub_run(n_rows=7, samples=None, seed=0):
    rng = np.random.default_rng(0)
    content = rng.integers(0, V, size=(n_rows, 6))
    content[:, 1::2] = (content[:, 0::2] + 1) % V        # every other token follows the likely path
    rows = np.concatenate([np.full((n_rows, 1), BOS), content], axis=1).astype(np.int64)
    task = BigramStub(rows)
    return SimpleNamespace(task=task, samples_per_generation=samples or n_rows, seed=seed,
                           torch_generator=lambda g, role: torch_generator(seed, g, role))


def whole(run, generation):
    """The engine's request when one shard makes the whole generation."""
    n = run.samples_per_generation
    return SynthesisRequest(0, 0, n, n, torch_generator(run.seed, generation, "synthesize/shard0"))


def shard(run, generation, index, start, stop, total):
    """The engine's request of shard ``index`` making items ``start:stop`` of ``total``."""
    return SynthesisRequest(index, start, stop - start, total,
                            torch_generator(run.seed, generation, f"synthesize/shard{index}"))


def test_pick_rows():
    g = torch.Generator().manual_seed(0)
    assert pick_rows(5, 5, g).tolist() == [0, 1, 2, 3, 4]
    few = pick_rows(10, 4, g)
    assert len(set(few.tolist())) == 4 and few.max() < 10 and list(few) == sorted(few)
    many = np.bincount(pick_rows(3, 8, g), minlength=3)
    assert many.sum() == 8 and many.min() == 2 and many.max() == 3
    with pytest.raises(ValueError, match="empty"):
        pick_rows(0, 3, g)


def test_synthesize_edits_real_rows_and_never_touches_or_proposes_bos():
    run = stub_run()
    plugin = TokenEditing(threshold=0.9, top_k=3, temperature=3.0)
    out = plugin.synthesize(run, None, 0, whole(run, 0))["tokens"]
    real = run.task.rows
    assert out.shape == real.shape and out.dtype == np.int64
    assert (out[:, 0] == BOS).all() and (out[:, 1:] < V).all()
    # positions after u that hold (u+1) % V have p ~ 0.98 > 0.9: only those may change
    prev, cur = real[:, :-1], real[:, 1:]
    likely = cur == (prev + 1) % V              # (BOS + 1) % V = 1 follows BOS
    assert (out[:, 1:][~likely] == cur[~likely]).all()
    assert (out[:, 1:][likely] != cur[likely]).any()
    # the same edit, reproduced with the pure function on the BOS-masked logits and the run's generator
    g = torch_generator(run.seed, 0, "synthesize/shard0")
    rows = pick_rows(len(real), len(real), g)
    expected = []
    for start in range(0, len(rows), 3):
        chunk = torch.as_tensor(real[rows[start:start + 3]])
        logits = run.task.token_logits(None, chunk)
        logits[..., V:] = float("-inf")
        expected.append(edit_tokens(chunk[:, 1:], logits, 0.9, 3, generator=g, temperature=3.0).numpy())
    assert (out[:, 1:] == np.concatenate(expected)).all()
    # statistics: the share of likely positions above the threshold and the share that changed
    stats = plugin.metrics(0)
    assert stats["token_editing/share_above"] == pytest.approx(likely.mean())
    assert stats["token_editing/share_changed"] == pytest.approx((out[:, 1:] != cur).mean())
    assert stats["token_editing/threshold"] == 0.9 and stats["token_editing/top_k"] == 3.0
    assert "token_editing/share_below" not in stats


def test_synthesize_is_deterministic_and_uses_the_generation_seed():
    run = stub_run(n_rows=12, samples=30)
    plugin = TokenEditing(threshold=0.5, top_k=4, temperature=5.0)
    a = plugin.synthesize(run, None, 1, whole(run, 1))["tokens"]
    b = TokenEditing(threshold=0.5, top_k=4, temperature=5.0).synthesize(run, None, 1, whole(run, 1))["tokens"]
    c = plugin.synthesize(run, None, 2, whole(run, 2))["tokens"]
    assert a.shape == (30, 7) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_drop_rule_reported():
    run = stub_run()
    plugin = TokenEditing(threshold=0.99, top_k=1, drop_below=0.01)
    out = plugin.synthesize(run, None, 0, whole(run, 0))["tokens"]
    real = run.task.rows
    prev, cur = real[:, :-1], real[:, 1:]
    likely = cur == (prev + 1) % V              # (BOS + 1) % V = 1 follows BOS
    # unlikely tokens have p = 1 / (e^5 + 3) ~ 0.0066 < 0.01: replaced by the top-1 id (prev + 1) % V
    assert (out[:, 1:][~likely] == ((prev + 1) % V)[~likely]).all() and (out[:, 1:][likely] == cur[likely]).all()
    stats = plugin.metrics(0)
    assert stats["token_editing/share_below"] == pytest.approx((~likely).mean())
    assert stats["token_editing/share_above"] == 0.0


def test_shards_edit_disjoint_parts_of_one_plan_and_statistics_add_up():
    base = stub_run(n_rows=10)
    plugin = TokenEditing(threshold=0.9, top_k=3, temperature=3.0)
    bounds = [(0, 4), (4, 8), (8, 10)]
    parts = [plugin.synthesize(base, None, 0, shard(base, 0, s, a, b, 10))["tokens"] for s, (a, b) in enumerate(bounds)]
    out = np.concatenate(parts)
    real = base.task.rows
    assert out.shape == real.shape
    assert np.array_equal(out[:, 0], real[:, 0])
    prev, cur = real[:, :-1], real[:, 1:]
    likely = cur == (prev + 1) % V
    assert (out[:, 1:][~likely] == cur[~likely]).all()        # all 10 rows once, in order, unlikely kept
    stats = plugin.metrics(0)
    assert stats["token_editing/share_above"] == pytest.approx(likely.mean())
    assert stats["token_editing/share_changed"] == pytest.approx((out[:, 1:] != cur).mean())
    plugin.generation_start(0)                                   # a redone generation starts afresh
    assert plugin.metrics(0) == {"token_editing/threshold": 0.9, "token_editing/top_k": 3.0}
    # fewer items than real rows: the shards take disjoint rows of one plan (threshold 1: no edits)
    keep = TokenEditing(threshold=1.0)
    parts = [keep.synthesize(base, None, 0, shard(base, 0, s, a, b, 6))["tokens"] for s, (a, b) in enumerate([(0, 3), (3, 6)])]
    index = [int(np.flatnonzero((real == row).all(1))[0]) for row in np.concatenate(parts)]
    assert len(set(index)) == 6 and index == sorted(index)


def test_metrics_before_synthesis_report_only_settings():
    assert TokenEditing().metrics(3) == {"token_editing/threshold": 0.99, "token_editing/top_k": 8.0}


@pytest.mark.parametrize("kwargs", [{"threshold": -0.1}, {"top_k": 0}, {"temperature": 0}, {"drop_below": 0.0},
                                    {"batch_size": 0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match="token-editing"):
        TokenEditing(**kwargs)


def test_configure_rejects_a_non_token_task():
    run = SimpleNamespace(task=SimpleNamespace(name="gaussian", pool_keys=("x",)))
    with pytest.raises(TaskIncompatible, match=r"token-editing needs the task capability TokenSequences.*'gaussian'.*"
                                               r"remove token-editing"):
        TokenEditing().configure(run)
    TokenEditing().configure(stub_run())       # a token task passes


def test_rejected_through_the_engine(tmp_path):
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.run import Run, RunConfig
    from collapsekit.task import Task

    class Points(Task):
        name = "points"
        pool_keys = ("x",)

    run = Run(RunConfig(name="x", root=str(tmp_path), generations=1, plugins=["token-editing"]),
              Points(), build_manager(["token-editing"]))
    with pytest.raises(TaskIncompatible, match=r"'token-editing'.*needs the task capability TokenSequences"):
        execute(run, trainer_factory(max_steps=1))
    assert not (tmp_path / "x" / "gen_0").exists()            # stopped before anything trained


def test_real_run_on_markov_text(tmp_path):
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.plugins.tasks.markov_text import MarkovText
    from collapsekit.run import Run, RunConfig

    torch.set_num_threads(1)
    task = MarkovText(train_size=48, heldout_size=16, seq_len=12, n_layer=1, n_embd=16)
    plugins = [{"class_path": "token-editing", "init_args": {"threshold": 0.0, "top_k": 4}}]
    run = Run(RunConfig(name="te", root=str(tmp_path), generations=2, seed=0, plugins=plugins),
              task, build_manager(plugins))
    metrics = execute(run, trainer_factory(max_steps=5, enable_progress_bar=False, logger=False,
                                           accelerator="cpu"))
    real = task.real_pool().arrays["tokens"]
    for g in range(2):
        saved = json.loads((tmp_path / "te" / f"gen_{g}" / "metrics.json").read_text())
        assert saved["token_editing/share_above"] == 1.0          # threshold 0: every token is redrawn
        assert 0.0 < saved["token_editing/share_changed"] < 1.0
        assert saved["token_editing/threshold"] == 0.0 and saved["token_editing/top_k"] == 4.0
        assert metrics[g]["token_editing/share_changed"] == saved["token_editing/share_changed"]
        pool = np.asarray(run.synthetic(g).arrays["tokens"])
        assert pool.shape == real.shape
        assert (pool[:, 0] == task.bos_id).all() and (pool[:, 1:] < task.vocab_size).all()
    # the stored pool is the edit of the real rows by that generation's trained model
    model = run.model_of(1)
    request = run.synthesis_request(1, shard=0, start=0, size=len(real))   # the engine's single shard
    again = TokenEditing(threshold=0.0, top_k=4).synthesize(run, model, 1, request)["tokens"]
    assert np.array_equal(again, np.asarray(run.synthetic(1).arrays["tokens"]))
