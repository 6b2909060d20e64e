"""VICReg pure functions against an independent loop implementation of the paper's formulas (float64),
hand-computed values, gradcheck, and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit_vicreg import (covariance_loss, invariance_loss, variance_covariance_loss,
                                variance_covariance_terms, variance_loss, vicreg_loss, vicreg_terms)


# -- independent reference: plain Python loops over numpy float64 ----------------------------------
def ref_variance(z, eps=1e-4, gamma=1.0):
    n, d = z.shape
    total = 0.0
    for j in range(d):
        mean = sum(z[i, j] for i in range(n)) / n
        var = sum((z[i, j] - mean) ** 2 for i in range(n)) / (n - 1)
        total += max(0.0, gamma - math.sqrt(var + eps))
    return total / d


def ref_covariance(z):
    n, d = z.shape
    means = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j != k:
                c = sum((z[i, j] - means[j]) * (z[i, k] - means[k]) for i in range(n)) / (n - 1)
                total += c * c
    return total / d


def ref_invariance(za, zb, variant):
    n, d = za.shape
    sq = sum((za[i, j] - zb[i, j]) ** 2 for i in range(n) for j in range(d))
    return sq / (n * d) if variant == "official" else sq / n


def ref_vicreg(za, zb, sim=25.0, std=25.0, cov=1.0, eps=1e-4, variant="official"):
    var = ref_variance(za, eps) + ref_variance(zb, eps)
    if variant == "official":
        var /= 2
    return sim * ref_invariance(za, zb, variant) + std * var + cov * (ref_covariance(za) + ref_covariance(zb))


@pytest.fixture
def views():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(7, 5)) * np.array([0.3, 0.8, 1.5, 2.0, 0.1])   # some dims under, some over std 1
    za = base + 0.2 * rng.normal(size=base.shape)
    zb = base + 0.2 * rng.normal(size=base.shape)
    za[:, 1] += 0.7 * za[:, 0]                                                # correlated dims
    return za, zb


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_vicreg_matches_reference(views, variant):
    za, zb = views
    got = vicreg_loss(torch.tensor(za), torch.tensor(zb), variant=variant)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_vicreg(za, zb, variant=variant), rel=1e-12)
    got = vicreg_loss(torch.tensor(za), torch.tensor(zb), sim_coeff=1.5, std_coeff=0.5, cov_coeff=0.04,
                      eps=1e-3, variant=variant)
    assert got.item() == pytest.approx(ref_vicreg(za, zb, 1.5, 0.5, 0.04, 1e-3, variant), rel=1e-12)


def test_components_match_reference(views):
    za, zb = views
    a, b = torch.tensor(za), torch.tensor(zb)
    assert variance_loss(a).item() == pytest.approx(ref_variance(za), rel=1e-12)
    assert variance_loss(a, eps=0.01, gamma=2.0).item() == pytest.approx(ref_variance(za, 0.01, 2.0), rel=1e-12)
    assert covariance_loss(a).item() == pytest.approx(ref_covariance(za), rel=1e-12)
    for variant in ("official", "paper"):
        assert invariance_loss(a, b, variant).item() == pytest.approx(ref_invariance(za, zb, variant), rel=1e-12)
    single = variance_covariance_loss(a, std_coeff=2.0, cov_coeff=0.5)
    assert single.item() == pytest.approx(2.0 * ref_variance(za) + 0.5 * ref_covariance(za), rel=1e-12)


def test_hand_computed_values():
    # z_a: dim 0 has variance 2 (std > 1, no hinge), dim 1 is constant (std = sqrt(1e-4) = 0.01, hinge 0.99);
    # z_b: both dims variance 2 and perfectly correlated (off-diagonal covariance 2, twice: 8 / D=2 = 4).
    za = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    zb = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    # official: 25 * mse 0.5 + 25 * (0.495 + 0) / 2 + 1 * (0 + 4)
    assert vicreg_loss(za, zb).item() == pytest.approx(12.5 + 6.1875 + 4.0, abs=1e-12)
    # paper: 25 * (1/N) sum_i ||.||^2 = 25 * 1 ; 25 * (0.495 + 0) ; 1 * (0 + 4)
    assert vicreg_loss(za, zb, variant="paper").item() == pytest.approx(25.0 + 12.375 + 4.0, abs=1e-12)
    terms = vicreg_terms(za, zb)
    assert {k: round(v.item(), 12) for k, v in terms.items()} == {"invariance": 12.5, "variance": 6.1875,
                                                                   "covariance": 4.0}


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_terms_sum_to_loss(views, variant):
    a, b = map(torch.tensor, views)
    terms = vicreg_terms(a, b, 2.0, 3.0, 0.5, variant=variant)
    assert set(terms) == {"invariance", "variance", "covariance"}
    assert sum(terms.values()).item() == pytest.approx(vicreg_loss(a, b, 2.0, 3.0, 0.5, variant=variant).item(),
                                                       rel=1e-14)
    single = variance_covariance_terms(a, 3.0, 0.5)
    assert sum(single.values()).item() == pytest.approx(variance_covariance_loss(a, 3.0, 0.5).item(), rel=1e-14)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_gradcheck(views, variant):
    a = torch.tensor(views[0], requires_grad=True)
    b = torch.tensor(views[1], requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: vicreg_loss(x, y, variant=variant), (a, b))
    assert torch.autograd.gradcheck(lambda x: variance_covariance_loss(x, 1.0, 0.3), (a,))


def test_batch_of_one_is_a_clear_error():
    z = torch.ones(1, 4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_loss(z, z)
    with pytest.raises(ValueError, match="at least 2 samples"):
        variance_covariance_loss(z)


def test_bad_inputs():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(z, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        variance_loss(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        covariance_loss(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="variant"):
        vicreg_loss(z, z, variant="simclr")


def test_constant_features_give_full_hinge_and_finite_gradient():
    z = torch.full((6, 3), 0.5, dtype=torch.float64, requires_grad=True)
    loss = vicreg_loss(z, z.detach().clone())
    # invariance 0, covariance 0, variance: std = sqrt(0 + 1e-4) = 0.01 in every dim -> hinge 0.99, halved twice
    assert loss.item() == pytest.approx(25.0 * (0.99 + 0.99) / 2, abs=1e-12)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_single_dimension_has_no_covariance():
    z = torch.randn(5, 1, dtype=torch.float64)
    assert covariance_loss(z).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(views, dtype):
    za, zb = views
    a, b = torch.tensor(za).to(dtype), torch.tensor(zb).to(dtype)
    got = vicreg_loss(a, b)
    assert got.dtype == torch.float32
    # reference on the rounded inputs: only float32 arithmetic error remains
    expected = ref_vicreg(a.double().numpy(), b.double().numpy())
    assert got.item() == pytest.approx(expected, rel=1e-5)
    a.requires_grad_(True)
    vicreg_loss(a, b).backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()
