"""collapsekit.scoring: per-item log-likelihood and class scores under any model, against plain loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit.errors import TaskIncompatible
from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.multiplication import Multiplication
from collapsekit.pool import Pool
from collapsekit.scoring import label_log_likelihood, score_items
from collapsekit.testing import toy_task


def plain_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Sum over positions with label != -100 of log softmax(logits)[label], one Python loop per position."""
    out = []
    for row_logits, row_labels in zip(logits.reshape(len(logits), -1, logits.shape[-1]), labels.reshape(len(labels), -1)):
        total = 0.0
        for z, y in zip(row_logits.tolist(), row_labels.tolist()):
            if y != -100:
                total += z[y] - math.log(sum(math.exp(v) for v in z))
        out.append(total)
    return out


def test_label_log_likelihood_matches_a_plain_loop_with_ignored_positions():
    logits = torch.tensor([[[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]], [[0.0, 0.0, 0.0], [3.0, -1.0, 0.5]]],
                          dtype=torch.float64)
    labels = torch.tensor([[2, 0], [1, -100]])
    ll, count = label_log_likelihood(logits, labels)
    assert ll.tolist() == pytest.approx(plain_log_likelihood(logits.numpy(), labels.numpy()), rel=1e-12)
    assert count.tolist() == [2, 1]
    with pytest.raises(ValueError, match="do not match"):
        label_log_likelihood(logits, labels[:, :1])


def test_sequences_are_scored_in_order_in_eval_mode_and_the_mode_is_restored():
    task = toy_task()
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model().train()
    pool = Pool.fresh({"tokens": task.train_tokens[:10]}, -1)
    scores = score_items(task, model, pool, batch_size=4)             # 3 batches, the last one partial
    assert model.training
    model.eval()
    with torch.no_grad():
        out = task.step(model, {"tokens": torch.as_tensor(task.train_tokens[:10])}, frozenset())
    expected = plain_log_likelihood(out["logits"].double().numpy(), out["labels"].numpy())
    assert scores.log_likelihood == pytest.approx(expected, rel=1e-9)
    assert scores.positions.tolist() == [task.seq_len] * 10 and scores.logits is None
    assert scores.mean_log_likelihood == pytest.approx(np.array(expected) / task.seq_len, rel=1e-9)


def test_multiplication_scores_only_the_answer_and_drops_no_item():
    task = Multiplication(digits=2, train_size=70, heldout_size=10, n_layer=1, n_embd=16, batch_size=32)
    task.setup(0)
    torch.manual_seed(0)
    pool = Pool.fresh({"tokens": task.train_tokens}, -1)             # its training loader drops a partial batch
    scores = score_items(task, task.build_model(), pool, batch_size=32)
    assert len(scores.log_likelihood) == 70 and set(scores.positions.tolist()) == {task.answer_len}


def test_classifier_scores_are_label_log_probabilities_with_logits():
    task = DigitsClassify(train_size=100, heldout_size=50, hidden=16, feature_dim=8)
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    scores = score_items(task, model, task.real_pool())
    with torch.no_grad():
        logits = model(torch.as_tensor(task.train_images)).double()
    expected = torch.log_softmax(logits, 1).gather(1, torch.as_tensor(task.train_labels)[:, None]).squeeze(1)
    assert scores.log_likelihood == pytest.approx(expected.numpy(), rel=1e-6)
    assert scores.logits.shape == (100, 10) and scores.positions.tolist() == [1] * 100


def test_a_task_without_logits_is_refused_by_name():
    task = Gaussian(dim=2, train_size=8)
    task.setup(0)
    with pytest.raises(TaskIncompatible, match="LabelledLogits"):
        score_items(task, task.build_model(), task.real_pool())
