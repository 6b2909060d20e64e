"""SimNPO (Fan et al. 2024): the loss against a plain float64 loop of the paper's formula, its gradient and
open-unlearning's (beta, delta) form, gradcheck, errors, and the plugin on facts-unlearning (conformance kit)."""
from __future__ import annotations

import math

import pytest
import torch

from collapsekit_npo import simnpo_loss, sequence_logprob
from collapsekit_npo.plugin import SimNPO

from .test_npo_conformance import _UnlearningConformance

LOGP = [-3.0, -0.5, -12.0, -7.25]
LENGTHS = [3, 1, 8, 5]


def plain_simnpo(logp, lengths, beta, gamma):
    """-(2/beta) * mean_i log sigmoid(-(beta/|y_i|) logp_i - gamma), one term at a time."""
    terms = [math.log(1.0 / (1.0 + math.exp(-(-(beta / n) * lp - gamma)))) for lp, n in zip(logp, lengths)]
    return -(2.0 / beta) * sum(terms) / len(terms)


def t64(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


@pytest.mark.parametrize("beta, gamma", [(2.5, 0.0), (1.0, 0.0), (4.5, 0.125), (0.1, 2.0)])
def test_simnpo_matches_the_plain_formula(beta, gamma):
    got = simnpo_loss(t64(LOGP), torch.tensor(LENGTHS), beta, gamma)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(plain_simnpo(LOGP, LENGTHS, beta, gamma), rel=1e-12)


def test_values_written_out():
    # beta 2, gamma 0, one sequence of 2 tokens with logp -2: -(2/2) log sigmoid(2) = log(1 + e^-2)
    assert simnpo_loss(t64([-2.0]), torch.tensor([2]), 2.0).item() == pytest.approx(0.1269280110429725, rel=1e-12)
    # logp 0 (a certain answer): -(2/beta) log sigmoid(-gamma); gamma 0 gives (2/beta) log 2
    assert simnpo_loss(t64([0.0]), torch.tensor([4]), 2.5).item() == pytest.approx(0.8 * math.log(2), rel=1e-12)


def test_open_unlearning_form_with_delta_is_the_same_loss():
    beta, delta = 4.5, 0.25                        # open-unlearning: -(2/beta) logsigmoid(beta (NLL/|y| - delta))
    nll = -t64(LOGP) / torch.tensor(LENGTHS, dtype=torch.float64)
    theirs = (-torch.nn.functional.logsigmoid(beta * (nll - delta)) * 2 / beta).mean()
    assert simnpo_loss(t64(LOGP), torch.tensor(LENGTHS), beta, gamma=beta * delta).item() == \
        pytest.approx(theirs.item(), rel=1e-12)


def test_gradient_is_the_length_normalised_sigmoid_weight():
    beta, gamma = 2.5, 0.3
    logp = t64(LOGP, requires_grad=True)
    simnpo_loss(logp, torch.tensor(LENGTHS), beta, gamma).backward()
    n = len(LOGP)
    expected = [2.0 / (n * m) / (1.0 + math.exp(-((beta / m) * lp + gamma))) for lp, m in zip(LOGP, LENGTHS)]
    torch.testing.assert_close(logp.grad, t64(expected), rtol=1e-12, atol=1e-15)


def test_gradcheck_through_the_logits():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 1], [2, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    fn = lambda z: simnpo_loss(sequence_logprob(z, labels, mask), mask.sum(-1), 2.5, 0.1)   # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="beta must be > 0"):
        simnpo_loss(t64([1.0]), torch.tensor([1]), 0.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        simnpo_loss(t64([1.0]), torch.tensor([1]), 1.0, -0.5)
    with pytest.raises(ValueError, match="same shape"):
        simnpo_loss(t64([1.0, 2.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="length must be > 0"):
        simnpo_loss(t64([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="beta"):
        SimNPO(beta=-1.0)


class TestSimNPOConformance(_UnlearningConformance):
    plugin_name = "simnpo"
    plugin_args = {"retain_coeff": 1.0}            # the paper's regularised form: the retain draws are exercised
