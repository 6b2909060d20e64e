"""LSF pure functions against independent float64 implementations, a gradient check and sklearn's
logistic regression."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit_latent_filter import (confidence, fit_subspaces, keep_count, probe_loss, subspace_residual,
                                       top_n_mask, train_probe)


# -- independent references --------------------------------------------------------------------------
def ref_confidence(logits, labels):
    out = []
    for row, y in zip(np.asarray(logits, dtype=np.float64).tolist(), labels):
        m = max(row)
        exps = [math.exp(v - m) for v in row]
        out.append(exps[int(y)] / sum(exps))
    return np.array(out)


def ref_top_n(scores, n):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if not math.isnan(scores[i]) else math.inf, i))
    keep = set(order[:max(0, min(n, len(scores)))])
    return np.array([i in keep for i in range(len(scores))])


def ref_probe_loss(w, b, z, y, l2):
    logits = z @ w.T + b
    ce = [math.log(sum(math.exp(v) for v in row)) - row[int(t)] for row, t in zip(logits.tolist(), y)]
    return sum(ce) / len(ce) + 0.5 * l2 * float((w * w).sum())


def ref_residual(z, mu, basis):
    c = z - mu
    q, _ = np.linalg.qr(basis) if basis.shape[1] else (basis, None)
    r = c - q @ (q.T @ c)
    return np.linalg.norm(r) / np.linalg.norm(c)


# -- confidence and selection ------------------------------------------------------------------------------
def test_confidence_matches_softmax_of_the_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)) * 4
    labels = rng.integers(0, 5, size=12)
    xi = confidence(torch.tensor(logits), torch.tensor(labels))
    assert xi.dtype == torch.float64
    assert np.allclose(xi.numpy(), ref_confidence(logits, labels), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"logits \[N, C\]"):
        confidence(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("n", [0, 1, 4, 9, 20])
def test_top_n_mask_matches_sorted_selection_with_ties_and_nan(n):
    scores = [0.3, 0.9, 0.3, float("nan"), 0.1, 0.9, 0.5, 0.3, -1.0]
    mask = top_n_mask(torch.tensor(scores), n)
    assert mask.dtype == torch.bool
    assert np.array_equal(mask.numpy(), ref_top_n(scores, n))
    assert int(mask.sum()) == min(n, len(scores))


def test_top_n_mask_on_random_scores():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=50).astype(float)     # many ties
    for n in (7, 25, 49):
        assert np.array_equal(top_n_mask(torch.tensor(scores), n).numpy(), ref_top_n(scores.tolist(), n))
    with pytest.raises(ValueError, match="integer"):
        top_n_mask(torch.tensor(scores), 2.5)


def test_keep_count():
    assert [keep_count(10, k) for k in (0.0, 0.04, 0.05, 0.5, 0.99, 1.0)] == [0, 0, 1, 5, 10, 10]
    assert keep_count(7, 0.5) == 4
    with pytest.raises(ValueError, match="keep"):
        keep_count(5, 1.5)


# -- probe ------------------------------------------------------------------------------------------
def test_probe_loss_matches_reference_and_gradcheck():
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(9, 4)), rng.integers(0, 3, size=9)
    w, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    got = probe_loss(torch.tensor(w), torch.tensor(b), torch.tensor(z), torch.tensor(y), l2=0.3)
    assert got.item() == pytest.approx(ref_probe_loss(w, b, z, y, 0.3), rel=1e-12)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    zt = torch.tensor(z, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, b_, z_: probe_loss(w_, b_, z_, torch.tensor(y), 0.3), (wt, bt, zt))


def test_train_probe_reaches_the_regularised_optimum_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    n, d, c, l2 = 120, 5, 3, 0.05
    y = rng.integers(0, c, size=n)
    z = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[y]
    probe = train_probe(torch.tensor(z), torch.tensor(y), l2=l2, max_iter=200, standardize=False)
    # stationarity of the strictly convex objective at the returned weights
    w = probe.weight.clone().requires_grad_(True)
    b = probe.bias.clone().requires_grad_(True)
    probe_loss(w, b, torch.tensor(z), torch.tensor(y), l2).backward()
    assert w.grad.abs().max() < 1e-6 and b.grad.abs().max() < 1e-6
    # the same problem in sklearn: C = 1 / (l2 * N), unpenalised intercept, multinomial loss
    sk = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10000).fit(z, y)
    ours = torch.softmax(probe.logits(torch.tensor(z)), 1).numpy()
    assert np.allclose(ours, sk.predict_proba(z), atol=1e-5)


def test_train_probe_standardises_is_deterministic_and_validates():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, size=80)
    z = rng.normal(size=(80, 6)) * np.array([1, 10, 100, 1e-3, 1, 0]) + rng.normal(size=(4, 6))[y]
    z[:, 5] = 7.0                                                   # a constant dimension
    a = train_probe(torch.tensor(z), torch.tensor(y))
    b = train_probe(torch.tensor(z), torch.tensor(y))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.scale[5] == 1.0 and torch.allclose(a.mean, torch.tensor(z).mean(0))
    assert torch.isfinite(a.logits(torch.tensor(z))).all()
    assert (a.logits(torch.tensor(z)).argmax(1).numpy() == y).mean() > 0.8
    with pytest.raises(ValueError, match=r"labels must lie"):
        train_probe(torch.tensor(z), torch.tensor(y), num_classes=2)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        train_probe(torch.zeros(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="dimensional"):
        a.logits(torch.zeros(2, 3))


# -- subspace residual -----------------------------------------------------------------------------------
def test_subspaces_and_residual_match_reference():
    rng = np.random.default_rng(5)
    d, k = 6, 2
    y = np.repeat([0, 1], 40)
    # class c lives near a rank-2 subspace plus a little noise
    dirs = [rng.normal(size=(d, k)) for _ in range(2)]
    centres = rng.normal(size=(2, d)) * 3
    z = np.stack([centres[c] + dirs[c] @ rng.normal(size=k) + 0.01 * rng.normal(size=d) for c in y])
    means, bases = fit_subspaces(torch.tensor(z), torch.tensor(y), rank=k)
    for c in (0, 1):
        assert np.allclose(means[c].numpy(), z[y == c].mean(0), atol=1e-12)
        u = bases[c].numpy()
        assert np.allclose(u.T @ u, np.eye(k), atol=1e-10)
        _, _, vh = np.linalg.svd(z[y == c] - z[y == c].mean(0))
        ref_proj = vh[:k].T @ vh[:k]
        assert np.allclose(u @ u.T, ref_proj, atol=1e-8)
    queries = rng.normal(size=(10, d)) * 2
    labels = rng.integers(0, 2, size=10)
    got = subspace_residual(torch.tensor(queries), means, bases, torch.tensor(labels)).numpy()
    ref = [ref_residual(q, means[c].numpy(), bases[c].numpy()) for q, c in zip(queries, labels)]
    assert np.allclose(got, ref, rtol=1e-10)
    inside = means[1].numpy() + bases[1].numpy() @ np.array([1.0, -2.0])
    assert subspace_residual(torch.tensor(inside[None]), means, bases, torch.tensor([1])).item() == pytest.approx(
        0.0, abs=1e-10)
    assert subspace_residual(means[:1], means, bases, torch.tensor([0])).item() == 0.0


def test_single_global_subspace_and_errors():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(30, 4))
    means, bases = fit_subspaces(torch.tensor(z), rank=4)
    assert means.shape == (1, 4) and bases.shape == (1, 4, 4)
    assert subspace_residual(torch.tensor(z), means, bases).abs().max() < 1e-10      # full rank: no residual
    with pytest.raises(ValueError, match="rank"):
        fit_subspaces(torch.tensor(z), rank=5)
    with pytest.raises(ValueError, match="class 2 has no real latents"):
        fit_subspaces(torch.tensor(z), torch.zeros(30, dtype=torch.long) + torch.tensor([0, 1] * 15), rank=2,
                      num_classes=3)
    with pytest.raises(ValueError, match="one subspace per class"):
        subspace_residual(torch.tensor(z), means, bases, torch.ones(30, dtype=torch.long))
