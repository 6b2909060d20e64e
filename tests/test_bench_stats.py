"""collapsekit.bench.stats against plain, independent computations on fixed inputs."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from collapsekit.bench.stats import (ALPHA, MIN_SEEDS, bootstrap_ci, compare, holm, holm_adjust, paired_differences,
                                     paired_t_p)

# seed -> value; method minus reference is about +1.0 on every seed (clearly significant)
REFERENCE = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0, 4: 10.5}
BETTER = {0: 11.0, 1: 13.1, 2: 9.9, 3: 12.05, 4: 11.45}
# differences +1, -1, +0.5, -0.4, +0.2: mean +0.06, noise
NOISY = {0: 11.0, 1: 11.0, 2: 9.5, 3: 10.6, 4: 10.7}


def plain_t_p(d):
    """Two-sided one-sample t-test written out: t = mean / (sd / sqrt(n)), p = 2 * sf(|t|, n - 1)."""
    d = np.asarray(d, dtype=float)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * scipy_stats.t.sf(abs(t), len(d) - 1)


def exact_bootstrap_quantiles(d, level=0.95):
    """The bootstrap distribution of the mean enumerated exactly (n^n equally likely resamples)."""
    means = np.array([np.mean(c) for c in itertools.product(d, repeat=len(d))])
    return np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])


def test_paired_differences_pair_by_seed_and_drop_missing_or_nonfinite():
    d = paired_differences({2: 5.0, 0: 1.0, 1: None, 7: 3.0}, {0: 0.5, 1: 1.0, 2: 4.0, 3: 1.0, 7: math.nan})
    assert d.tolist() == [0.5, 1.0]          # seeds 0 and 2 only, in seed order


def test_significant_case_matches_plain_computation():
    d = np.array([BETTER[s] - REFERENCE[s] for s in sorted(REFERENCE)])
    c = compare(BETTER, REFERENCE, higher_is_better=True)
    assert c.n == 5 and c.mean == pytest.approx(d.mean())
    assert c.p == pytest.approx(plain_t_p(d), rel=1e-9) and c.p < 1e-4
    lo, hi = exact_bootstrap_quantiles(d)
    assert c.ci[0] == pytest.approx(lo, abs=0.01) and c.ci[1] == pytest.approx(hi, abs=0.01)
    assert c.significant and c.better is True
    # the same difference on a lower-is-better metric is significantly worse
    assert compare(BETTER, REFERENCE, higher_is_better=False).better is False
    # and on an unranked metric it is significant without a better/worse
    unranked = compare(BETTER, REFERENCE, higher_is_better=None)
    assert unranked.significant and unranked.better is None


def test_noisy_case_is_not_significant():
    d = np.array([NOISY[s] - REFERENCE[s] for s in sorted(REFERENCE)])
    c = compare(NOISY, REFERENCE, higher_is_better=True)
    assert c.mean == pytest.approx(0.06)
    assert c.p == pytest.approx(plain_t_p(d), rel=1e-9) and c.p > 0.5
    lo, hi = exact_bootstrap_quantiles(d)
    # Monte Carlo vs exact enumeration: the tail quantiles of this discrete distribution move by a few atoms
    assert c.ci[0] == pytest.approx(lo, abs=0.08) and c.ci[1] == pytest.approx(hi, abs=0.08)
    assert c.ci[0] < 0 < c.ci[1]
    assert not c.significant and c.better is None


def test_three_same_sign_differences_need_the_t_test_too():
    # the percentile bootstrap of three positive differences always excludes 0, the t-test does not
    ref = {0: 0.0, 1: 0.0, 2: 0.0}
    c = compare({0: 0.1, 1: 2.0, 2: 0.05}, ref, higher_is_better=True)
    assert c.ci[0] > 0
    assert c.p == pytest.approx(plain_t_p([0.1, 2.0, 0.05]), rel=1e-9) and c.p > 0.05
    assert not c.significant and c.better is None


def test_fewer_than_min_seeds_gives_no_interval():
    c = compare({0: 2.0, 1: 3.0}, {0: 1.0, 1: 1.0}, higher_is_better=True)
    assert MIN_SEEDS == 3
    assert c.n == 2 and c.mean == pytest.approx(1.5)
    assert c.ci is None and c.p is None and not c.significant and c.better is None


def test_constant_differences_and_bootstrap_determinism():
    assert paired_t_p([0.5, 0.5, 0.5]) == 0.0 and paired_t_p([0.0, 0.0, 0.0]) == 1.0
    c = compare({0: 1.5, 1: 2.5, 2: 3.5}, {0: 1.0, 1: 2.0, 2: 3.0}, higher_is_better=False)
    assert c.significant and c.better is False and c.ci == pytest.approx((0.5, 0.5))
    d = np.array([0.3, -0.1, 0.4, 0.2])
    assert bootstrap_ci(d) == bootstrap_ci(d)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def holm_rejects(ps, alpha):
    """Holm's procedure as stated: walk the p-values upwards, reject while p_(k) <= alpha / (m - k)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    rejected = [False] * len(ps)
    for k, i in enumerate(order):
        if ps[i] > alpha / (len(ps) - k):
            break
        rejected[i] = True
    return rejected


def test_holm_adjusted_p_values_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_holm_rejects_exactly_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ps = (rng.uniform(0, 0.1, size=rng.integers(1, 12)) ** rng.uniform(1, 3)).tolist()
        adjusted = holm(ps)
        for alpha in (0.01, 0.05, 0.1):
            assert [a <= alpha for a in adjusted] == holm_rejects(ps, alpha)


def test_holm_adjust_only_takes_significance_away():
    small = compare(BETTER, REFERENCE, higher_is_better=True)                  # p ~ 1e-5
    diffs = (0.1, 0.3, 0.2, 0.15, 0.02)                                       # p ~ 0.031
    borderline = compare({s: s + 1.0 + d for s, d in enumerate(diffs)}, {s: s + 1.0 for s in range(5)}, True)
    few = compare({0: 2.0, 1: 3.0}, {0: 1.0, 1: 1.0}, True)
    assert borderline.significant and ALPHA / 2 < borderline.p < ALPHA
    family = holm_adjust({"small": small, "borderline": borderline, "noisy": compare(NOISY, REFERENCE, True),
                          "few": few})
    assert family["few"] == few                                  # no p-value: not in the family
    assert family["small"].significant and family["small"].better is True
    assert family["small"].p == pytest.approx(3 * small.p) and family["small"].p_raw == small.p
    # 3 tested: borderline's p is multiplied by 2 or 3, which takes it over ALPHA
    assert family["borderline"].p_raw == borderline.p and family["borderline"].p >= 2 * borderline.p
    assert not family["borderline"].significant and family["borderline"].better is None
    assert family["borderline"].ci == borderline.ci and family["borderline"].mean == borderline.mean
