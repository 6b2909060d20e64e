"""Self-BLEU and type-token ratio of a synthetic pool: NLTK's BLEU used as Texygen defines Self-BLEU,
checked against an independent plain implementation of BLEU-4 (clipped n-gram precision against the
other texts, closest-length brevity penalty, smoothing method 1) at float64."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from collapsekit.plugins.tasks.bible_lm import book_text
from collapsekit.plugins.text_metrics import (pool_text_diversity, self_bleu, subset, text_diversity,
                                              type_token_ratio, words)
from collapsekit.pool import Pool


def plain_bleu(hyp: list[str], refs: list[list[str]], max_n: int = 4, epsilon: float = 0.1) -> float:
    """BLEU-4 of one hypothesis: p_n = sum_g min(c_hyp(g), max_r c_r(g)) / max(1, #n-grams of hyp);
    a zero numerator becomes epsilon (smoothing method 1); no unigram match gives 0;
    BP = exp(1 - r / c) when the hypothesis (length c) is not longer than the closest reference length r."""
    def grams(doc, n):
        return Counter(tuple(doc[i:i + n]) for i in range(len(doc) - n + 1))

    logs = []
    for n in range(1, max_n + 1):
        mine = grams(hyp, n)
        clipped = sum(min(c, max(grams(r, n)[g] for r in refs)) for g, c in mine.items())
        if n == 1 and clipped == 0:
            return 0.0
        total = max(1, sum(mine.values()))
        logs.append(math.log((clipped if clipped else epsilon) / total))
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda length: (abs(length - c), length))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(sum(logs) / max_n)


def test_self_bleu_is_the_mean_bleu_of_each_text_against_the_others():
    rng = np.random.default_rng(0)
    docs = [[f"w{t}" for t in rng.integers(0, 6, rng.integers(2, 12))] for _ in range(12)]
    expected = np.mean([plain_bleu(d, docs[:i] + docs[i + 1:]) for i, d in enumerate(docs)])
    assert self_bleu(docs) == pytest.approx(expected, rel=1e-12)
    assert 0.05 < expected < 0.95                       # neither extreme: the comparison means something
    assert self_bleu([["a", "b", "c", "d", "e"]] * 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two"):
        self_bleu([["a"]])


def test_type_token_ratio_and_words():
    assert words(["In the beginning, God."]) == [["In", "the", "beginning", ",", "God", "."]]
    assert type_token_ratio([["a", "b"], ["a", "c"]]) == 0.75
    assert type_token_ratio([[]]) == 0.0


def test_a_collapsed_pool_repeats_itself_more_than_real_text():
    verses = book_text("Ruth").splitlines()[:30]
    real = text_diversity(verses)
    collapsed = text_diversity([verses[i % 5] for i in range(30)])
    assert collapsed["self_bleu"] > real["self_bleu"] + 0.5
    assert collapsed["type_token_ratio"] < real["type_token_ratio"] / 3


def test_the_subset_is_fixed_and_bounded():
    assert subset(7).tolist() == list(range(7))
    picked = subset(1000)
    assert len(picked) == 100 and np.array_equal(picked, subset(1000)) and np.all(np.diff(picked) > 0)
    assert not np.array_equal(picked, subset(1000, seed=1))

    class Decoder:
        input_key = "tokens"

        def decode(self, items):
            return [" ".join(map(str, row)) for row in items]

    tokens = np.arange(500 * 3).reshape(500, 3)
    pool = Pool.fresh({"tokens": tokens}, 0)
    chosen = [" ".join(map(str, row)) for row in tokens[subset(500)]]
    assert pool_text_diversity(Decoder(), pool) == text_diversity(chosen)
    assert pool_text_diversity(Decoder(), pool.select(np.arange(0))) == {}
