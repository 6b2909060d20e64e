"""The pure functions against independent implementations: the detector against scikit-learn's logistic
regression on the same objective, the weights and the Efraimidis-Spirakis draw against the paper's formula and
successive weighted draws, bigram counts, AUC and ESS against plain loops, and a gradient check of the loss."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from collapsekit_detector_reweight import (auc, cross_fit_confidence, detector_loss, effective_sample_size,
                                           hashed_bigrams, resampling_weights, train_detector, weighted_sample)


def blobs(seed=0, n_real=60, n_syn=90, dim=4, shift=0.8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, dim)), rng.normal(size=(n_syn, dim)) + shift


def test_detector_matches_sklearn_on_the_same_class_weighted_objective():
    from sklearn.linear_model import LogisticRegression

    real, syn = blobs()
    l2 = 0.05
    det = train_detector(real, syn, l2=l2, max_iter=200)
    x = np.concatenate([real, syn])
    z = (x - x.mean(0)) / x.std(0)
    y = np.r_[np.zeros(len(real)), np.ones(len(syn))]
    sw = np.r_[np.full(len(real), 0.5 / len(real)), np.full(len(syn), 0.5 / len(syn))]
    # sklearn minimises C * sum_i s_i BCE_i + ||w||^2 / 2; ours sum_i s_i BCE_i / sum s + l2/2 ||w||^2 (sum s = 1)
    ref = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=10_000).fit(z, y, sample_weight=sw)
    np.testing.assert_allclose(det.weight.numpy(), ref.coef_[0], rtol=1e-5, atol=1e-7)
    assert det.bias.item() == pytest.approx(ref.intercept_[0], rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(det.confidence(syn), ref.predict_proba((syn - x.mean(0)) / x.std(0))[:, 1], rtol=1e-5)


def test_gradcheck_of_the_detector_loss():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, dtype=torch.float64, generator=g), torch.tensor([0, 1, 1, 0, 1, 0, 1.0]).double()
    s = torch.rand(7, dtype=torch.float64, generator=g)
    w, b = torch.randn(3, dtype=torch.float64, requires_grad=True), torch.zeros((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, b_: detector_loss(w_, b_, x, y, s, 0.3), (w, b))


def test_cross_fitting_scores_every_item_out_of_fold_and_separates_shifted_data():
    real, syn = blobs(shift=2.0)
    conf_r, conf_s = cross_fit_confidence(real, syn, 3, np.random.default_rng(0))
    assert conf_r.shape == (60,) and conf_s.shape == (90,)
    assert auc(conf_r, conf_s) > 0.9
    same_r, same_s = cross_fit_confidence(*blobs(shift=0.0), 2, np.random.default_rng(0))
    assert 0.3 < auc(same_r, same_s) < 0.7                              # nothing to detect: near chance
    with pytest.raises(ValueError, match="folds"):
        cross_fit_confidence(real, syn, 1, np.random.default_rng(0))


def test_resampling_weights_are_the_papers_formula():
    conf = np.array([0.0, 0.25, 0.9, 1.0])
    np.testing.assert_allclose(resampling_weights(conf, 2.0), [1.0, 0.5625, 0.01, 0.0], rtol=1e-12)
    assert resampling_weights(conf, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="bias"):
        resampling_weights(conf, -1.0)
    with pytest.raises(ValueError, match="confidences"):
        resampling_weights(np.array([1.2]), 1.0)


def successive_draw_probability(weights, chosen):
    """P(the set `chosen` is drawn) under successive draws without replacement, each proportional to the
    weights left, summed over the orders of the set."""
    total = 0.0
    for order in itertools.permutations(chosen):
        p, left = 1.0, sum(weights)
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        total += p
    return total


def test_weighted_sample_draws_sets_with_the_successive_draw_probabilities():
    weights = [4.0, 2.0, 1.0, 1.0, 0.0]
    rng = np.random.default_rng(0)
    trials = 20_000
    counts: dict[tuple, int] = {}
    for _ in range(trials):
        key = tuple(np.flatnonzero(weighted_sample(np.array(weights), 2, rng)))
        counts[key] = counts.get(key, 0) + 1
    for pair in itertools.combinations(range(4), 2):
        expected = successive_draw_probability(weights, pair)
        assert counts.get(pair, 0) / trials == pytest.approx(expected, abs=0.012)
    assert not any(4 in k for k in counts)                               # weight 0 never drawn while others remain
    assert weighted_sample(np.array(weights), 5, rng).all()


def test_hashed_bigrams_count_pairs_per_position():
    tokens = np.array([[0, 1, 0, 1], [2, 2, 2, 2]])
    feats = hashed_bigrams(tokens, vocab=3, dim=16)
    expected = np.zeros((2, 16))
    for i, row in enumerate(tokens.tolist()):
        for a, b in zip(row, row[1:]):
            expected[i, (a * 4 + b) % 16] += 1 / 3
    np.testing.assert_allclose(feats, expected, rtol=1e-12)


def test_auc_and_ess_against_plain_computations():
    neg, pos = np.array([0.1, 0.4, 0.4, 0.8]), np.array([0.4, 0.9, 0.3])
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert auc(neg, pos) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    w = np.array([1.0, 2.0, 0.5, 0.5])
    assert effective_sample_size(w) == pytest.approx(16.0 / (4 * 5.5), rel=1e-12)
    assert effective_sample_size(np.ones(7)) == 1.0
