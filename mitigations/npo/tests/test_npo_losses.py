"""The pure losses against plain float64 loops of the paper formulas, gradient checks and edge cases."""
from __future__ import annotations

import math

import pytest
import torch

from collapsekit_npo import (RefLogpTable, gradient_ascent_loss, masked_nll, npo_loss, npo_rt_loss,
                             sequence_logprob)

# fixed inputs: 2 sequences, 3 positions, vocabulary of 4
LOGITS = [[[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9], [-2.0, 0.4, 0.1, 1.1]],
          [[0.0, 0.0, 0.0, 0.0], [3.0, -1.0, 0.5, 0.25], [0.7, 0.7, -0.7, 2.2]]]
LABELS = [[2, 0, 3], [1, 0, -100]]
MASK = [[1, 1, 1], [1, 0, 0]]          # second row: padding at positions 1 and 2
LOGP = [-3.0, -0.5, -12.0, 0.0]
REF = [-2.0, -0.5, -1.0, -4.0]


def plain_sequence_logprob(logits, labels, mask):
    out = []
    for i in range(len(logits)):
        total = 0.0
        for t in range(len(logits[i])):
            if not mask[i][t]:
                continue
            row = logits[i][t]
            log_z = math.log(sum(math.exp(z) for z in row))
            total += row[labels[i][t]] - log_z
        out.append(total)
    return out


def plain_npo(logp, ref, beta):
    terms = []
    for lp, rp in zip(logp, ref):
        x = -beta * (lp - rp)
        terms.append(math.log(1.0 / (1.0 + math.exp(-x))))    # log sigmoid(x)
    return -(2.0 / beta) * sum(terms) / len(terms)


def t64(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


def test_sequence_logprob_matches_plain_sum_with_padding():
    got = sequence_logprob(t64(LOGITS), torch.tensor(LABELS), torch.tensor(MASK, dtype=torch.bool))
    expected = plain_sequence_logprob(LOGITS, LABELS, MASK)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, t64(expected), rtol=1e-12, atol=1e-12)


def test_sequence_logprob_without_mask_sums_every_position():
    labels = [[2, 0, 3], [1, 0, 3]]
    got = sequence_logprob(t64(LOGITS), torch.tensor(labels))
    torch.testing.assert_close(got, t64(plain_sequence_logprob(LOGITS, labels, [[1] * 3] * 2)), rtol=1e-12, atol=0)


def test_masked_nll_and_gradient_ascent_are_the_token_mean():
    per_seq = plain_sequence_logprob(LOGITS, LABELS, MASK)
    expected = -sum(per_seq) / 4        # 4 unmasked tokens in the batch
    got = masked_nll(t64(LOGITS), torch.tensor(LABELS), torch.tensor(MASK))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert gradient_ascent_loss(t64(LOGITS), torch.tensor(LABELS), torch.tensor(MASK)).item() == \
        pytest.approx(-expected, rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_npo_loss_matches_plain_formula(beta):
    got = npo_loss(t64(LOGP), t64(REF), beta)
    assert got.item() == pytest.approx(plain_npo(LOGP, REF, beta), rel=1e-12)


def test_npo_at_the_reference_is_2_log2_over_beta_and_default_beta_is_0_1():
    x = t64([-1.0, -7.0])
    assert npo_loss(x, x.clone()).item() == pytest.approx(2 / 0.1 * math.log(2), rel=1e-12)


def test_npo_gradient_is_sigmoid_weighted_gradient_ascent():
    beta = 0.3
    logp = t64(LOGP, requires_grad=True)
    npo_loss(logp, t64(REF), beta).backward()
    n = len(LOGP)
    expected = [2.0 / n / (1.0 + math.exp(-beta * (lp - rp))) for lp, rp in zip(LOGP, REF)]
    torch.testing.assert_close(logp.grad, t64(expected), rtol=1e-12, atol=1e-15)


def test_npo_ref_logp_gets_no_gradient():
    ref = t64(REF, requires_grad=True)
    npo_loss(t64(LOGP, requires_grad=True), ref, 0.1).backward()
    assert ref.grad is None


def test_npo_rt_is_weighted_sum():
    retain = t64(1.25)
    got = npo_rt_loss(t64(LOGP), t64(REF), retain, beta=0.5, retain_coeff=2.0, forget_coeff=0.5)
    assert got.item() == pytest.approx(0.5 * plain_npo(LOGP, REF, 0.5) + 2.0 * 1.25, rel=1e-12)
    default = npo_rt_loss(t64(LOGP), t64(REF), retain)
    assert default.item() == pytest.approx(plain_npo(LOGP, REF, 0.1) + 1.25, rel=1e-12)


def test_gradcheck_sequence_logprob_and_masked_nll():
    logits = t64(LOGITS, requires_grad=True)
    labels, mask = torch.tensor(LABELS), torch.tensor(MASK, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda z: sequence_logprob(z, labels, mask), (logits,))
    assert torch.autograd.gradcheck(lambda z: gradient_ascent_loss(z, labels, mask), (logits,))


def test_gradcheck_npo_and_npo_rt():
    logp = t64(LOGP, requires_grad=True)
    retain = t64(0.7, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: npo_loss(x, t64(REF), 0.2), (logp,))
    assert torch.autograd.gradcheck(lambda x, r: npo_rt_loss(x, t64(REF), r, 0.2, 1.5, 0.5), (logp, retain))


def test_end_to_end_gradcheck_through_logits():
    logits = t64(LOGITS, requires_grad=True)
    labels, mask = torch.tensor(LABELS), torch.tensor(MASK)
    ref = t64([-4.0, -1.0])
    assert torch.autograd.gradcheck(lambda z: npo_loss(sequence_logprob(z, labels, mask), ref, 0.1), (logits,))


def test_batch_of_one():
    assert npo_loss(t64([-2.0]), t64([-1.0]), 0.1).item() == pytest.approx(plain_npo([-2.0], [-1.0], 0.1), rel=1e-12)
    one = sequence_logprob(t64(LOGITS[:1]), torch.tensor(LABELS[:1]), torch.tensor(MASK[:1]))
    assert one.shape == (1,) and one.item() == pytest.approx(plain_sequence_logprob(LOGITS[:1], LABELS[:1], MASK[:1])[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    logits = torch.tensor(LOGITS, dtype=dtype)
    expected = plain_sequence_logprob(logits.double().tolist(), LABELS, MASK)   # same rounded inputs
    got = sequence_logprob(logits, torch.tensor(LABELS), torch.tensor(MASK))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    logp, ref = torch.tensor(LOGP, dtype=dtype), torch.tensor(REF, dtype=dtype)
    loss = npo_loss(logp, ref, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(plain_npo(logp.double().tolist(), ref.double().tolist(), 0.1), rel=1e-5)


def test_npo_is_finite_for_extreme_ratios():
    loss = npo_loss(t64([-1e4, 1e4]), t64([0.0, 0.0]), 1.0)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(-(2.0 / 1.0) * (0.0 + -1e4) / 2, rel=1e-9)   # log sig(1e4)=0, log sig(-1e4)=-1e4


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="beta must be > 0"):
        npo_loss(t64([1.0]), t64([1.0]), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        npo_loss(t64([1.0, 2.0]), t64([1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        npo_loss(t64([]), t64([]))
    with pytest.raises(ValueError, match="mask selects no token"):
        masked_nll(t64(LOGITS), torch.tensor(LABELS), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        sequence_logprob(t64(LOGITS), torch.tensor(LABELS), torch.ones(2, 3, dtype=torch.bool))   # -100 unmasked
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        sequence_logprob(t64(LOGITS)[0], torch.tensor(LABELS))
    with pytest.raises(ValueError, match="retain_nll must be a scalar"):
        npo_rt_loss(t64(LOGP), t64(REF), t64([1.0, 2.0]))
    with pytest.raises(ValueError, match="coefficients must be >= 0"):
        npo_rt_loss(t64(LOGP), t64(REF), t64(1.0), retain_coeff=-1.0)


def test_reference_table_looks_up_by_example_id():
    table = RefLogpTable()
    assert not table.filled and len(table) == 0
    table.fill(torch.tensor([7, 3, 5]), t64([-0.7, -0.3, -0.5]))
    assert table.filled and len(table) == 3 and table.forwarded == 3
    torch.testing.assert_close(table.lookup(torch.tensor([3, 5, 3, 7])), t64([-0.3, -0.5, -0.3, -0.7]))
    assert table.lookup(torch.tensor([[5]]), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="not in the table"):
        table.lookup(torch.tensor([4]))          # inside the id range, never filled
    with pytest.raises(ValueError, match="not in the table"):
        table.lookup(torch.tensor([8]))          # beyond it
    with pytest.raises(ValueError, match="ids must be >= 0"):
        table.lookup(torch.tensor([-1]))
    with pytest.raises(ValueError, match="ids must be >= 0"):
        RefLogpTable().fill(torch.tensor([-1, 2]), t64([0.0, 1.0]))
    with pytest.raises(ValueError, match="table size 2"):
        RefLogpTable().fill(torch.tensor([0, 2]), t64([0.0, 1.0]), size=2)
    table.clear()
    with pytest.raises(RuntimeError, match="fill"):
        table.lookup(torch.tensor([3]))