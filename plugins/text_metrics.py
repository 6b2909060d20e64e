"""Text diversity of a synthetic pool: Self-BLEU and type-token ratio, the field's per-generation
text metrics (Zhu et al. 2018, "Texygen"; reported per generation by e.g. Drayson et al. 2025).

Both are computed on one fixed subset of the pool: ``max_texts`` texts drawn without replacement
with ``numpy.random.default_rng(seed)`` (all texts when the pool is smaller), so their cost is
bounded (Self-BLEU is quadratic in the number of texts) and they compare across generations and
methods with the same pool size and text length; a smaller pool (e.g. after filtering) gives a
smaller subset, which raises the type-token ratio and lowers Self-BLEU. Texts are split into words
with NLTK's ``wordpunct_tokenize`` (runs of letters/digits, runs of punctuation).

* ``self_bleu``: the mean over the subset of NLTK's ``sentence_bleu`` of each text against all the
  others as references (4-gram, uniform weights, smoothing method 1 as in Texygen), in [0, 1];
  higher = the texts repeat each other's n-grams (less diverse).
* ``type_token_ratio``: distinct words / words over the subset, in (0, 1]; lower = a smaller vocabulary.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

MAX_TEXTS = 100
"""Texts in the subset (Self-BLEU costs about ``MAX_TEXTS**2`` sentence comparisons)."""


def subset(n: int, max_texts: int = MAX_TEXTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of the fixed subset of ``n`` items (all of them when ``n <= max_texts``)."""
    if n <= max_texts:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_texts, replace=False))


def words(texts: Sequence[str]) -> list[list[str]]:
    """Each text split into words with NLTK's ``wordpunct_tokenize``."""
    from nltk.tokenize import wordpunct_tokenize

    return [wordpunct_tokenize(text) for text in texts]


def self_bleu(docs: Sequence[Sequence[str]]) -> float:
    """Mean BLEU-4 of each word list against all the others (NLTK ``sentence_bleu``, smoothing method 1);
    needs at least two lists."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if len(docs) < 2:
        raise ValueError(f"Self-BLEU needs at least two texts, got {len(docs)}")
    smooth = SmoothingFunction().method1
    docs = [list(d) for d in docs]
    with warnings.catch_warnings():                     # NLTK warns about texts shorter than 4 words
        warnings.simplefilter("ignore")
        scores = [sentence_bleu(docs[:i] + docs[i + 1:], doc, smoothing_function=smooth) for i, doc in enumerate(docs)]
    return float(np.mean(scores))


def type_token_ratio(docs: Sequence[Sequence[str]]) -> float:
    """Distinct words / words over all word lists (0 when there are no words)."""
    tokens = [w for doc in docs for w in doc]
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def text_diversity(texts: Sequence[str]) -> dict[str, float]:
    """``self_bleu`` (when there are two texts or more) and ``type_token_ratio`` of ``texts``
    (already the subset; see :func:`subset`)."""
    docs = words(texts)
    out = {"type_token_ratio": type_token_ratio(docs)}
    if len(docs) >= 2:
        out["self_bleu"] = self_bleu(docs)
    return out


def pool_text_diversity(task, pool) -> dict[str, float]:
    """:func:`text_diversity` of the fixed subset of ``pool``, decoded by a task with
    :class:`~collapsekit.capabilities.TextItems` (``{}`` for an empty pool)."""
    if not len(pool):
        return {}
    items = np.asarray(pool.arrays[task.input_key])
    return text_diversity(task.decode(items[subset(len(items))]))
