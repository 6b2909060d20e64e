"""Pure functions: subsample indices, fresh-mix counts and schedules, and the closed forms checked
against hand values and an independent NumPy simulation of OLS relabelling (no collapsekit)."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from collapsekit_accumulate import (accumulate_error_bound, accumulate_excess_error, excess_error_unit,
                                    exponential_schedule, fresh_fraction, fresh_mix_counts, linear_schedule,
                                    replace_excess_error, subsample_indices)


# -- subsample_indices ---------------------------------------------------------------------------
def test_subsample_takes_everything_when_the_budget_covers_it():
    rng = np.random.default_rng(0)
    for budget in (5, 9):
        picks = subsample_indices([3, 0, 2], budget, rng)
        assert [p.tolist() for p in picks] == [[0, 1, 2], [], [0, 1]]


def test_subsample_returns_sorted_local_indices_without_replacement():
    rng = np.random.default_rng(1)
    sizes = [4, 1, 6, 3]
    for budget in range(0, 15):
        picks = subsample_indices(sizes, budget, rng)
        assert len(picks) == 4 and sum(len(p) for p in picks) == min(budget, 14)
        for p, s in zip(picks, sizes):
            assert p.dtype == np.int64 and list(p) == sorted(set(p.tolist()))   # sorted, no repeats
            assert all(0 <= i < s for i in p)


def test_subsample_is_uniform_over_subsets():
    """Budget 2 of sizes [2, 3]: each of the C(5, 2) = 10 subsets has probability 1/10."""
    rng = np.random.default_rng(2)
    draws = 20000
    counts = Counter()
    for _ in range(draws):
        a, b = subsample_indices([2, 3], 2, rng)
        counts[tuple(a.tolist()) + tuple(int(i) + 2 for i in b)] += 1
    assert set(counts) == set(itertools.combinations(range(5), 2))
    se = math.sqrt(0.1 * 0.9 / draws)
    for subset, c in counts.items():
        assert abs(c / draws - 0.1) < 4.5 * se, (subset, c)


def test_subsample_is_reproducible_from_the_generator():
    a = subsample_indices([10, 10, 10], 7, np.random.default_rng(5))
    b = subsample_indices([10, 10, 10], 7, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("sizes, budget, match", [
    ([3, -1], 2, "every source size must be an integer >= 0"),
    ([3], -2, "budget must be an integer >= 0"),
    ([3], 1.5, "budget must be an integer"),
])
def test_subsample_rejects_bad_arguments(sizes, budget, match):
    with pytest.raises(ValueError, match=match):
        subsample_indices(sizes, budget, np.random.default_rng(0))


# -- fresh-mix ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, alpha, n_real, n_syn, expected", [
    (100, 0.3, 1000, 1000, (30, 70)),
    (100, 0.0, 1000, 1000, (0, 100)),
    (100, 1.0, 1000, 1000, (100, 0)),
    (100, 0.5, 20, 1000, (20, 20)),       # too little real data: shrink the pool, keep the share
    (100, 0.75, 1000, 10, (30, 10)),      # too little synthetic data: 10 / 0.25 = 40 items
    (100, 0.0, 1000, 50, (0, 50)),
    (10, 0.25, 100, 100, (3, 7)),         # 2.5 rounds half up
    (7, 0.5, 100, 100, (4, 3)),
])
def test_fresh_mix_counts_by_hand(budget, alpha, n_real, n_syn, expected):
    assert fresh_mix_counts(budget, alpha, n_real, n_syn) == expected


def test_fresh_mix_counts_rejects_bad_share():
    with pytest.raises(ValueError, match=r"alpha \(the share of real data\) must be in \[0, 1\]"):
        fresh_mix_counts(10, 1.5, 10, 10)


def test_schedules_by_hand():
    assert [linear_schedule(t, 0.8, 0.0, 5) for t in (1, 2, 3, 5, 9)] == pytest.approx([0.8, 0.6, 0.4, 0.0, 0.0])
    assert linear_schedule(3, 0.8, 0.2, 1) == 0.2
    assert [exponential_schedule(t, 0.5, 0.0, 0.5) for t in (1, 2, 3)] == pytest.approx([0.5, 0.25, 0.125])
    assert exponential_schedule(3, 0.9, 0.1, 0.5) == pytest.approx(0.1 + 0.8 * 0.25)
    assert fresh_fraction(0, 0.2) == 1.0                       # generation 0 is all real
    assert fresh_fraction(4, 0.2) == 0.2
    assert fresh_fraction(3, 0.8, "linear", 0.0, horizon=5) == pytest.approx(0.4)
    assert fresh_fraction(3, 0.5, "exponential", decay=0.5) == pytest.approx(0.125)


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "cosine"}, "unknown schedule 'cosine'; choose from constant, linear, exponential"),
    ({"alpha_end": -0.1}, r"alpha_end must be in \[0, 1\]"),
    ({"schedule": "exponential", "decay": 2.0}, r"decay must be in \[0, 1\]"),
])
def test_fresh_fraction_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fresh_fraction(2, 0.5, **kwargs)


# -- closed forms -------------------------------------------------------------------------------------
def test_closed_forms_by_hand():
    assert excess_error_unit(2.0, 3, 10) == pytest.approx(1.0)                  # 2 * 3 / 6
    assert replace_excess_error(2.0, 3, 10, 4) == pytest.approx(4.0)
    assert accumulate_excess_error(1.0, 3, 10, 2) == pytest.approx(0.5 * 1.25)
    assert accumulate_excess_error(1.0, 3, 10, 1) == replace_excess_error(1.0, 3, 10, 1) == pytest.approx(0.5)
    assert accumulate_error_bound(1.0, 3, 10) == pytest.approx(0.5 * math.pi ** 2 / 6)
    assert accumulate_excess_error(1.0, 3, 10, 10_000) < accumulate_error_bound(1.0, 3, 10)


@pytest.mark.parametrize("args, match", [
    ((1.0, 4, 5, 1), r"need T >= d \+ 2 \(here T=5, d=4\)"),
    ((1.0, 2, 10, 0), "n must be an integer >= 1"),
    ((-1.0, 2, 10, 1), "sigma2 must be >= 0"),
])
def test_closed_forms_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        replace_excess_error(*args)


def simulate_ols(policy: str, d: int, T: int, sigma: float, generations: int, reps: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Plain simulation of the papers' process: ``[generations, reps]`` excess errors ||w_n - w*||^2
    (Sigma = I). Replace fits the latest labels only; accumulate fits all labels so far."""
    x = rng.standard_normal((reps, T, d))
    w_star = rng.standard_normal((reps, d))
    gram = np.einsum("rti,rtj->rij", x, x)
    w_prev, labels, out = w_star, [], []
    for _ in range(generations):
        labels.append(np.einsum("rtd,rd->rt", x, w_prev) + sigma * rng.standard_normal((reps, T)))
        y = labels[-1] if policy == "replace" else np.mean(labels, axis=0)   # stacked-X OLS = OLS on mean labels
        w_prev = np.linalg.solve(gram, np.einsum("rtd,rt->rd", x, y)[..., None])[..., 0]
        out.append(((w_prev - w_star) ** 2).sum(-1))
    return np.array(out)


@pytest.mark.parametrize("policy, formula", [("replace", replace_excess_error),
                                             ("accumulate", accumulate_excess_error)])
def test_closed_forms_match_an_independent_simulation(policy, formula):
    d, T, sigma = 3, 12, 0.8
    errors = simulate_ols(policy, d, T, sigma, 5, 40_000, np.random.default_rng(11))
    for n in range(1, 6):
        e = errors[n - 1]
        se = e.std(ddof=1) / math.sqrt(len(e))
        assert abs(e.mean() - formula(sigma ** 2, d, T, n)) < 4 * se, (policy, n, e.mean(), se)


# -- real-data weighting (He, Xu, Cheng 2025) ---------------------------------------------------------------------
def test_golden_weight_by_hand_and_as_the_minimiser_of_the_stationary_error():
    from collapsekit_accumulate import golden_weight, weighted_mean_error

    assert golden_weight(16, 16) == pytest.approx((math.sqrt(5) - 1) / 2, rel=1e-15)     # 1 / golden ratio
    assert golden_weight(10, 30) == pytest.approx((math.sqrt(1 / 9 + 4 / 3) - 1 / 3) / 2, rel=1e-15)
    assert golden_weight(5, 0) == 1.0
    for n_real, n_syn in ((16, 16), (10, 30), (40, 8)):
        grid = np.linspace(1e-3, 1.0, 20_001)
        best = grid[np.argmin([weighted_mean_error(w, n_real, n_syn) for w in grid])]
        assert best == pytest.approx(golden_weight(n_real, n_syn), abs=1e-4)
    # at 1:1 mixing the equal weights lose to the golden ratio: 2/3 vs 0.618 times sigma^2 / n
    assert weighted_mean_error(0.5, 16, 16) * 16 == pytest.approx(2 / 3, rel=1e-12)
    assert weighted_mean_error(golden_weight(16, 16), 16, 16) * 16 == pytest.approx(golden_weight(16, 16), rel=1e-12)


def test_weighted_mean_error_matches_an_independent_simulation():
    """Plain simulation of He et al.'s loop: fresh real samples every generation, synthetic ones from the
    previous estimate, the weighted mean as the next estimate; the error after 25 generations is stationary."""
    from collapsekit_accumulate import weighted_mean_error

    rng = np.random.default_rng(3)
    n_real, n_syn, sigma, reps = 8, 12, 1.5, 20_000
    for w in (0.3, 0.618, 0.9):
        mu_hat = np.zeros(reps)
        for _ in range(25):                                     # (1 - w)^50 < 2e-8: stationary
            real = rng.normal(0.0, sigma, size=(reps, n_real)).mean(1)
            syn = (mu_hat[:, None] + rng.normal(0.0, sigma, size=(reps, n_syn))).mean(1)
            mu_hat = w * real + (1 - w) * syn
        sq = mu_hat ** 2
        assert abs(sq.mean() - weighted_mean_error(w, n_real, n_syn, sigma ** 2)) < 4 * sq.std() / math.sqrt(reps)


def test_item_weights_split_the_loss_and_average_one():
    from collapsekit_accumulate import item_weights

    w_real, w_syn = item_weights(4, 12, 0.618)
    assert (4 * w_real + 12 * w_syn) / 16 == pytest.approx(1.0, rel=1e-15)
    assert 4 * w_real / 16 == pytest.approx(0.618, rel=1e-15)               # the real part's share of the loss
    assert item_weights(4, 12, 4 / 16) == pytest.approx((1.0, 1.0), rel=1e-15)   # item-share weight: plain mixing
    with pytest.raises(ValueError, match="real_weight"):
        item_weights(4, 4, 1.5)
