"""The pure selection functions against plain sorts and formulas."""
import math

import numpy as np
import pytest

from collapsekit_verifier_filter import best_mask, oversample_factor, selection_stats, typicality


def plain_best(scores, n):
    """The n highest scores by a plain sort of (score, -index), NaN ranked last."""
    key = [(-math.inf if math.isnan(s) else s, -i) for i, s in enumerate(scores)]
    chosen = sorted(range(len(scores)), key=lambda i: key[i], reverse=True)[:n]
    return [i in chosen for i in range(len(scores))]


@pytest.mark.parametrize("n", [0, 1, 3, 6, 9])
def test_best_mask_matches_a_plain_sort_with_ties_and_nan(n):
    scores = [0.5, 2.0, float("nan"), 2.0, -1.0, 0.5, 3.0]
    assert best_mask(np.array(scores), n).tolist() == plain_best(scores, min(n, 7))


def test_best_mask_rejects_a_fractional_count():
    with pytest.raises(ValueError, match="integer"):
        best_mask(np.zeros(3), 1.5)


@pytest.mark.parametrize("keep, factor", [(1.0, 1.0), (0.5, 2.0), (0.25, 4.0), (0.8, 1.25)])
def test_oversample_is_the_inverse_kept_share(keep, factor):
    assert oversample_factor(keep) == pytest.approx(factor, rel=1e-15)


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.1, float("nan"), True, "0.5"])
def test_bad_kept_shares_are_refused(keep):
    with pytest.raises(ValueError, match="keep"):
        oversample_factor(keep)


def test_typicality_is_minus_the_distance_to_the_reference():
    scores = np.array([-2.0, -2.5, -3.1, -1.2])
    assert typicality(scores, -2.4).tolist() == pytest.approx([-0.4, -0.1, -0.7, -1.2], rel=1e-12)
    assert best_mask(typicality(scores, -2.4), 2).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="finite"):
        typicality(scores, float("nan"))


def test_selection_stats():
    stats = selection_stats(np.array([1.0, 4.0, 2.0, 3.0]), np.array([False, True, False, True]))
    assert stats == {"threshold": 3.0, "kept_score": 3.5, "dropped_score": 1.5}
    assert selection_stats(np.array([1.0]), np.array([True])) == {"threshold": 1.0, "kept_score": 1.0}
