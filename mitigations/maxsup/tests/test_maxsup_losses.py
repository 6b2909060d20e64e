"""MaxSup and label-smoothing pure functions against independent loop implementations (float64),
hand-computed values, gradcheck, the LS/MaxSup decomposition, masking and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from collapsekit_maxsup import label_smoothing_loss, max_suppression, maxsup_alpha, maxsup_loss


# -- independent reference: loops with math.exp / math.log ---------------------------------------
def ref_log_softmax(row):
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def ref_maxsup(logits, target, alpha):
    total = 0.0
    for row, y in zip(logits, target):
        row = list(row)
        ce = -ref_log_softmax(row)[y]
        total += ce + alpha * (max(row) - sum(row) / len(row))
    return total / len(logits)


def ref_label_smoothing(logits, target, eps):
    total = 0.0
    for row, y in zip(logits, target):
        c = len(row)
        logp = ref_log_softmax(list(row))
        soft = [(1 - eps) * (1.0 if k == y else 0.0) + eps / c for k in range(c)]
        total += -sum(s * lp for s, lp in zip(soft, logp))
    return total / len(logits)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)) * 3.0
    target = (logits.argmax(1) + np.array([0, 1, 0, 2, 0, 3])) % 5   # rows 0, 2, 4 predicted correctly
    return logits, target


def test_maxsup_matches_reference(batch):
    logits, target = batch
    for alpha in (0.0, 0.1, 0.15, 0.2):
        got = maxsup_loss(torch.tensor(logits), torch.tensor(target), alpha)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(ref_maxsup(logits, target, alpha), rel=1e-12)


def test_label_smoothing_matches_reference_and_torch(batch):
    logits, target = batch
    z, y = torch.tensor(logits), torch.tensor(target)
    for eps in (0.0, 0.1, 0.3):
        got = label_smoothing_loss(z, y, eps)
        assert got.item() == pytest.approx(ref_label_smoothing(logits, target, eps), rel=1e-12)
        assert got.item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=eps).item(), rel=1e-12)


def test_hand_computed_values():
    z = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1])
    log_z = math.log(math.exp(2) + 1 + math.exp(1))
    # CE = log Z - z_1 = log Z; max - mean = 2 - 1 = 1
    assert maxsup_loss(z, y, 0.1).item() == pytest.approx(log_z + 0.1, abs=1e-12)
    # LS = 0.9 (log Z - 0) + 0.1 * mean_c (log Z - z_c) = log Z - 0.1 * mean(z) = log Z - 0.1
    assert label_smoothing_loss(z, y, 0.1).item() == pytest.approx(log_z - 0.1, abs=1e-12)
    assert max_suppression(z).tolist() == [1.0]


def test_ls_equals_maxsup_on_correct_and_is_smaller_on_wrong_predictions(batch):
    """The paper's decomposition: LS = CE + eps (z_y - mean z), MaxSup = CE + alpha (z_max - mean z)."""
    logits, target = batch
    z, y = torch.tensor(logits), torch.tensor(target)
    ls = label_smoothing_loss(z, y, 0.1, reduction="none")
    ms = maxsup_loss(z, y, 0.1, reduction="none")
    correct = z.argmax(1) == y
    assert correct.any() and (~correct).any()
    torch.testing.assert_close(ls[correct], ms[correct], rtol=1e-12, atol=1e-12)
    gap = z.max(1).values - z.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(ms[~correct] - ls[~correct], 0.1 * gap[~correct], rtol=1e-12, atol=1e-12)


def test_gradcheck(batch):
    logits, target = batch
    z = torch.tensor(logits, requires_grad=True)
    y = torch.tensor(target)
    assert torch.autograd.gradcheck(lambda x: maxsup_loss(x, y, 0.15), (z,))
    assert torch.autograd.gradcheck(lambda x: label_smoothing_loss(x, y, 0.1), (z,))


def test_no_stop_gradient_on_the_max_logit():
    """The top-1 logit receives the regularizer's gradient alpha * (1 - 1/C) on top of the CE gradient."""
    z = torch.tensor([[3.0, 0.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2])
    maxsup_loss(z, y, 0.2).backward()
    p = torch.softmax(z.detach(), 1)[0]
    expected = p.clone()
    expected[2] -= 1.0                      # CE gradient
    expected += -0.2 / 4                    # -alpha * d mean / dz
    expected[0] += 0.2                      # +alpha * d max / dz at the arg-max
    torch.testing.assert_close(z.grad[0], expected, rtol=1e-12, atol=1e-12)


def test_reductions(batch):
    logits, target = batch
    z, y = torch.tensor(logits), torch.tensor(target)
    per = maxsup_loss(z, y, 0.1, reduction="none")
    assert per.shape == (6,)
    assert per.sum().item() == pytest.approx(maxsup_loss(z, y, 0.1, reduction="sum").item(), rel=1e-14)
    assert per.mean().item() == pytest.approx(maxsup_loss(z, y, 0.1).item(), rel=1e-14)
    with pytest.raises(ValueError, match="reduction"):
        maxsup_loss(z, y, 0.1, reduction="max")


def test_ignore_index_masks_padding(batch):
    logits, target = batch
    z, y = torch.tensor(logits), torch.tensor(target)
    padded = y.clone()
    padded[[1, 4]] = -100
    keep = torch.tensor([0, 2, 3, 5])
    for fn, arg in ((maxsup_loss, 0.2), (label_smoothing_loss, 0.1)):
        assert fn(z, padded, arg).item() == pytest.approx(fn(z[keep], y[keep], arg).item(), rel=1e-14)
        assert fn(z, padded, arg, reduction="none")[[1, 4]].tolist() == [0.0, 0.0]
    everything = torch.full_like(y, -100)
    zz = z.clone().requires_grad_(True)
    loss = maxsup_loss(zz, everything, 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(zz.grad == 0)


def test_token_shaped_inputs_equal_flattened(batch):
    logits, target = batch
    z = torch.tensor(logits).reshape(2, 3, 5)
    y = torch.tensor(target).reshape(2, 3)
    assert maxsup_loss(z, y, 0.1).item() == pytest.approx(ref_maxsup(logits, target, 0.1), rel=1e-12)
    assert maxsup_loss(z, y, 0.1, reduction="none").shape == (2, 3)


def test_batch_of_one_is_defined():
    z = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    assert maxsup_loss(z, torch.tensor([0]), 0.1).item() == pytest.approx(ref_maxsup(z.numpy(), [0], 0.1),
                                                                          rel=1e-12)


def test_constant_logits():
    """All logits equal: CE = log C, max - mean = 0, LS = log C."""
    z = torch.zeros(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    assert maxsup_loss(z, y, 0.2).item() == pytest.approx(math.log(4), abs=1e-12)
    assert label_smoothing_loss(z, y, 0.1).item() == pytest.approx(math.log(4), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(batch, dtype):
    logits, target = batch
    z = torch.tensor(logits).to(dtype)
    got = maxsup_loss(z, torch.tensor(target), 0.1)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_maxsup(z.double().numpy(), target, 0.1), rel=1e-5)
    got = label_smoothing_loss(z, torch.tensor(target), 0.1)
    assert got.item() == pytest.approx(ref_label_smoothing(z.double().numpy(), target, 0.1), rel=1e-5)


def test_bad_inputs_are_clear_errors():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="outside"):
        maxsup_loss(z, torch.tensor([0, 1, 3, 0]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        maxsup_loss(z, torch.tensor([0, 1]), 0.1)
    with pytest.raises(TypeError, match="integer"):
        maxsup_loss(z, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="finite"):
        maxsup_loss(z, torch.zeros(4, dtype=torch.long), float("nan"))
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_loss(z, torch.zeros(4, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        maxsup_loss(torch.randn(4), torch.zeros((), dtype=torch.long), 0.1)


def test_alpha_schedule():
    assert maxsup_alpha(0.0) == pytest.approx(0.1)
    assert maxsup_alpha(0.5) == pytest.approx(0.15)
    assert maxsup_alpha(1.0) == pytest.approx(0.2)
    assert maxsup_alpha(-1.0) == pytest.approx(0.1) and maxsup_alpha(7.0) == pytest.approx(0.2)
    assert maxsup_alpha(0.25, 0.3, 0.3) == pytest.approx(0.3)
