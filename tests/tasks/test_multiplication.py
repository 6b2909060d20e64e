"""The ``multiplication`` task: format, answer-only loss, self-training synthesis, metrics, presets."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.multiplication import EQUALS, PAUSE, TIMES, Multiplication

TINY = dict(digits=2, train_size=96, heldout_size=32, n_layer=1, n_embd=16, n_head=2, batch_size=16,
            eval_batch_size=64, rank_samples=32)


def product_digits_reversed(a: int, b: int, width: int) -> list[int]:
    """Independent reference: the product as a string, zero-padded, read backwards."""
    return [int(c) for c in str(a * b).zfill(width)[::-1]]


def test_format_is_reversed_digits_with_pauses():
    task = Multiplication(digits=3, digits_b=2, pause_tokens=2, train_size=10, heldout_size=5)
    row = task.encode(np.array([305]), np.array([47]))[0].tolist()
    assert row == [5, 0, 3, TIMES, 7, 4, EQUALS, PAUSE, PAUSE] + product_digits_reversed(305, 47, 5)
    assert task.seq_len == len(row) and task.prompt_len == 1 + 9


def test_data_are_correct_disjoint_and_deterministic():
    task = Multiplication(**TINY)
    task.setup(3)
    train, held = task.train_tokens, task.heldout_tokens
    assert train.shape == (96, 1 + task.seq_len) and (train[:, 0] == task.bos_id).all()
    for row in np.concatenate([train, held])[:40]:
        a = int("".join(map(str, row[1:3][::-1])))
        b = int("".join(map(str, row[4:6][::-1])))
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert row[task.prompt_len:].tolist() == product_digits_reversed(a, b, 4)
    pairs = lambda t: set(zip(*map(lambda x: x.tolist(), task.decode_operands(t))))  # noqa: E731
    assert not pairs(train) & pairs(held) and len(pairs(train)) == 96
    other = Multiplication(**TINY)
    other.setup(3)
    assert np.array_equal(other.train_tokens, train)


def test_loss_counts_answer_tokens_only():
    task = Multiplication(**TINY, pause_tokens=2)
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    tokens = torch.as_tensor(task.train_tokens[:8])
    labels = task.labels(tokens)
    assert (labels[:, :task.prompt_len - 1] == -100).all() and (labels[:, task.prompt_len - 1:] >= 0).all()
    logits = model(input_ids=tokens[:, :-1]).logits.detach().requires_grad_()
    manual = torch.nn.functional.cross_entropy(logits[:, task.prompt_len - 1:].reshape(-1, logits.shape[-1]),
                                               tokens[:, task.prompt_len:].reshape(-1))
    assert task.step(model, {"tokens": tokens}, frozenset())["loss"].item() == pytest.approx(manual.item(), rel=1e-5)
    # changing question digits' targets does not matter; the loss's gradient reaches only answer positions
    manual.backward()
    assert logits.grad[:, :task.prompt_len - 1].abs().max() == 0


class Oracle(torch.nn.Module):
    """A stand-in LM that reads the operands from its prefix and predicts the true (or shifted) product."""

    def __init__(self, task: Multiplication, shift: int = 0):
        super().__init__()
        self.task, self.shift = task, shift
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, cache=None, use_cache=False, output_hidden_states=False):
        seq = input_ids if cache is None else torch.cat([cache, input_ids], dim=1)
        n, length = seq.shape
        logits = torch.full((n, length, self.task.vocab_size + 1), -10.0)
        p = self.task.prompt_len
        if length >= p:
            a, b = self.task.decode_operands(seq.numpy())
            for i in range(n):
                digits = product_digits_reversed(int(a[i]) + self.shift, int(b[i]), self.task.answer_len)
                for t in range(p - 1, min(length, p - 1 + self.task.answer_len)):
                    logits[i, t, digits[t - p + 1]] = 10.0
        hidden = tuple(torch.randn(n, length, 4) for _ in range(2)) if output_hidden_states else None
        return SimpleNamespace(logits=logits, cache=seq, hidden_states=hidden)


def test_exact_match_of_greedy_answers():
    task = Multiplication(**TINY, pause_tokens=1)
    task.setup(0)
    perfect = task.heldout_scores(Oracle(task))
    assert perfect["exact_match"] == 1.0 and perfect["digit_accuracy"] == 1.0 and perfect["answer_nll"] < 1e-3
    wrong = task.heldout_scores(Oracle(task, shift=1))   # answers (a+1)*b: the last digits differ
    assert wrong["exact_match"] == 0.0 and 0 < wrong["digit_accuracy"] < 1


def test_synthesis_is_self_answers_to_fresh_questions():
    task = Multiplication(**TINY)
    task.setup(0)
    oracle = Oracle(task)
    s1 = task.sample(oracle, 50, torch.Generator().manual_seed(4))["tokens"]
    s2 = task.sample(oracle, 50, torch.Generator().manual_seed(4))["tokens"]
    s3 = task.sample(oracle, 50, torch.Generator().manual_seed(5))["tokens"]
    assert np.array_equal(s1, s2) and not np.array_equal(s1, s3)
    assert s1.shape == (50, 1 + task.seq_len) and task.correct(s1).all()
    held = set(zip(*map(lambda x: x.tolist(), task.decode_operands(task.heldout_tokens))))
    assert not held & set(zip(*map(lambda x: x.tolist(), task.decode_operands(s1))))
    wrong = task.sample(Oracle(task, shift=1), 50, torch.Generator().manual_seed(4))["tokens"]
    assert not task.correct(wrong).all()


def test_layer_ranks_and_evaluate_keys():
    task = Multiplication(**TINY)
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    metrics = task.evaluate(model, None)
    assert {"exact_match", "digit_accuracy", "answer_nll", "rank_layer_0", "rank_layer_1", "rank_mean"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(k in task.higher_is_better for k in metrics)
    assert 0 < metrics["rank_layer_1"] <= 16


def test_dataloader_drops_a_last_partial_batch():
    task = Multiplication(**TINY)
    task.setup(0)
    from collapsekit.pool import REAL, Pool

    pool = Pool.fresh({"tokens": task.train_tokens[:33]}, REAL)
    sizes = [len(b["tokens"]) for b in task.dataloader(pool, shuffle=True, seed=0)]
    assert sizes == [16, 16]


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="distinct questions"):
        Multiplication(digits=1, train_size=80, heldout_size=10)
    with pytest.raises(ValueError, match="pause_tokens"):
        Multiplication(pause_tokens=-1)
    task = Multiplication(**TINY)
    task.setup(0)
    with pytest.raises(RuntimeError, match="after setup"):
        task.pause_tokens = 2
    with pytest.raises(ValueError, match="unknown preset"):
        Multiplication.preset("laptop")


def test_presets_and_bench_declarations():
    for name in ("smoke", "cpu", "gpu", "gpu-5x5"):
        preset = Multiplication.preset(name)
        Multiplication(**preset["task"])
        assert preset["trainer"]["max_steps"] > 0 and preset["generations"] >= 1
    assert Multiplication.preset("gpu")["task"]["digits"] == 4
    assert Multiplication.preset("gpu-5x5")["task"]["digits"] == 5
    assert "baseline" in Multiplication.bench_methods and "seqvcr" in Multiplication.bench_methods
    assert set(Multiplication.headline) <= set(Multiplication.higher_is_better)


def test_smoke_preset_runs_through_the_engine(tmp_path):
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.run import Run, RunConfig

    preset = Multiplication.preset("smoke")
    run = Run(RunConfig(name="mul", root=str(tmp_path), generations=preset["generations"], seed=0),
              Multiplication(**preset["task"]), build_manager([]))
    metrics = execute(run, trainer_factory(max_steps=preset["trainer"]["max_steps"], enable_progress_bar=False,
                                           logger=False, accelerator="cpu"))
    assert len(metrics) == 2 and all(0 <= m["synthetic_exact_match"] <= 1 for m in metrics)
    assert (tmp_path / "mul" / "gen_1" / "done").is_file()
