"""seqvcr_loss against a line-by-line plain-Python implementation of the paper's Eq. 3 (float64)."""
from __future__ import annotations

import math

import pytest
import torch

from collapsekit_seqvcr import batch_covariance, seqvcr_loss, seqvcr_terms


def reference(h, var_coeff=1.0, cov_coeff=0.004, eps=1e-3, mask=None):
    """Plain loops over nested lists: 1/(T·D) Σ_t Σ_k [λ1 relu(1 − sqrt(C_t[k,k] + η)) + λ2 Σ_{k'≠k} C_t[k,k']²]."""
    N, T, D = len(h), len(h[0]), len(h[0][0])
    total, positions = 0.0, 0
    for t in range(T):
        rows = [n for n in range(N) if mask is None or mask[n][t]]
        if len(rows) < 2:
            continue
        positions += 1
        mean = [sum(h[n][t][k] for n in rows) / len(rows) for k in range(D)]
        C = [[sum((h[n][t][k] - mean[k]) * (h[n][t][j] - mean[j]) for n in rows) / (len(rows) - 1)
              for j in range(D)] for k in range(D)]
        for k in range(D):
            total += var_coeff * max(0.0, 1.0 - math.sqrt(C[k][k] + eps))
            for j in range(D):
                if j != k:
                    total += cov_coeff * C[k][j] ** 2
    return total / (positions * D)


def fixed_inputs():
    """Deterministic [N=4, T=3, D=3] hidden states mixing small- and large-variance features."""
    h = [[[0.0] * 3 for _ in range(3)] for _ in range(4)]
    for n in range(4):
        for t in range(3):
            for k in range(3):
                # features 0/1 have variance < 1 (hinge active), feature 2 > 1; correlated across k
                h[n][t][k] = (0.3 * math.sin(1.7 * n + 0.9 * t + k) + (2.5 * ((n * 7 + t) % 4) if k == 2 else 0.0)
                              + 0.2 * n * (k == 1))
    return h


def test_matches_reference_on_fixed_inputs():
    h = fixed_inputs()
    for var_coeff, cov_coeff, eps in [(1.0, 0.004, 1e-3), (0.1, 0.5, 1e-4), (2.0, 0.0, 1e-2)]:
        got = seqvcr_loss(torch.tensor(h, dtype=torch.float64), var_coeff, cov_coeff, eps)
        assert got.item() == pytest.approx(reference(h, var_coeff, cov_coeff, eps), rel=1e-12, abs=1e-14)


def test_default_coefficients_are_the_papers_multiplication_setting():
    h = fixed_inputs()
    assert seqvcr_loss(torch.tensor(h, dtype=torch.float64)).item() == pytest.approx(reference(h), rel=1e-12)


def test_parts_sum_to_the_loss_and_match_reference_parts():
    h = fixed_inputs()
    var_part, cov_part = seqvcr_terms(torch.tensor(h, dtype=torch.float64), eps=1e-3)
    assert var_part.item() == pytest.approx(reference(h, 1.0, 0.0), rel=1e-12)
    assert cov_part.item() == pytest.approx(reference(h, 0.0, 1.0), rel=1e-12)


def test_random_inputs_match_reference():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 4, 6, generator=g, dtype=torch.float64) * torch.tensor([0.2, 0.5, 1.0, 2.0, 0.1, 3.0],
                                                                               dtype=torch.float64)
    assert seqvcr_loss(h, 1.0, 0.04).item() == pytest.approx(reference(h.tolist(), 1.0, 0.04), rel=1e-12)


def test_covariance_uses_n_minus_one():
    h = torch.tensor([[[1.0]], [[3.0]]], dtype=torch.float64)  # values 1 and 3: unbiased variance 2
    cov, valid = batch_covariance(h)
    assert cov.item() == pytest.approx(2.0) and bool(valid.all())


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: seqvcr_loss(x, 1.0, 0.1, 1e-3), (h,), eps=1e-6, atol=1e-6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: seqvcr_loss(x, 1.0, 0.1, 1e-3, mask=mask), (h,), eps=1e-6, atol=1e-6)


def test_batch_of_one_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 sequences"):
        seqvcr_loss(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match=r"\[N, T, D\]"):
        seqvcr_loss(torch.randn(3, 4))
    with pytest.raises(ValueError, match="eps"):
        seqvcr_loss(torch.randn(3, 2, 4), eps=0.0)


def test_constant_features_give_the_full_hinge_and_a_finite_zero_gradient():
    h = torch.full((4, 2, 3), 0.5, dtype=torch.float64, requires_grad=True)
    eps = 1e-3
    loss = seqvcr_loss(h, var_coeff=1.0, cov_coeff=0.004, eps=eps)
    assert loss.item() == pytest.approx(1.0 - math.sqrt(eps), rel=1e-12)
    loss.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().max().item() < 1e-12


def test_unit_variance_uncorrelated_features_cost_nothing():
    # +-1 patterns with zero mean, orthogonal columns: covariance = (4/3)·I, above the hinge
    rows = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    h = rows.unsqueeze(1).repeat(1, 2, 1)
    assert seqvcr_loss(h).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    h64 = torch.randn(6, 3, 5, generator=g, dtype=torch.float64) * 0.8
    h = h64.to(dtype).requires_grad_()
    loss = seqvcr_loss(h)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = reference(h.detach().double().tolist())  # same rounded inputs, exact arithmetic
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert h.grad.dtype == dtype and torch.isfinite(h.grad.float()).all()


def test_masked_padding_is_ignored():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[3:, 2:] = False          # two padded sequences end after position 1
    mask[1:, 3] = False           # position 3 holds one real row only: dropped
    got = seqvcr_loss(h, 1.0, 0.1, mask=mask)
    assert got.item() == pytest.approx(reference(h.tolist(), 1.0, 0.1, mask=mask.tolist()), rel=1e-12)
    garbage = h.clone()
    garbage[~mask] = 1e6
    garbage[4, 3] = float("nan")
    assert seqvcr_loss(garbage, 1.0, 0.1, mask=mask).item() == pytest.approx(got.item(), rel=1e-12)
    assert seqvcr_loss(h, mask=torch.ones(5, 4)).item() == pytest.approx(seqvcr_loss(h).item(), rel=1e-12)


def test_mask_errors():
    with pytest.raises(ValueError, match="mask must have shape"):
        seqvcr_loss(torch.randn(3, 2, 4), mask=torch.ones(3, 3, dtype=torch.bool))
    mask = torch.zeros(3, 2, dtype=torch.bool)
    mask[0] = True
    with pytest.raises(ValueError, match="at least 2 unmasked"):
        seqvcr_loss(torch.randn(3, 2, 4), mask=mask)


def test_pure_module_does_not_import_collapsekit_or_lightning():
    import subprocess
    import sys

    code = ("import sys, collapsekit_seqvcr; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('collapsekit', 'lightning', 'pytorch_lightning')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
