"""Collapse probes: pure metric functions and the built-in ``probes`` plugin.

The functions take NumPy / torch arrays and return floats; tasks call them in
their ``evaluate``. The plugin reports ``task.evaluate(model, samples)`` as the
generation's metrics.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from collapsekit.markers import hookimpl


def ngrams(rows: np.ndarray, n: int, ignore: int | None = None) -> Counter:
    """Counts of the ``n``-grams of every row of ``rows`` [N, T] (grams holding ``ignore`` skipped)."""
    counts: Counter = Counter()
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] < n:
        return counts
    windows = np.lib.stride_tricks.sliding_window_view(rows, n, axis=1).reshape(-1, n)
    if ignore is not None:
        windows = windows[(windows != ignore).all(axis=1)]
    view = np.ascontiguousarray(windows).view(np.dtype((np.void, windows.dtype.itemsize * n))).ravel()
    uniq, cnt = np.unique(view, return_counts=True)
    for u, c in zip(uniq, cnt):
        counts[tuple(np.frombuffer(u.tobytes(), dtype=windows.dtype))] = int(c)
    return counts


def distinct_n(rows: np.ndarray, n: int, ignore: int | None = None) -> float:
    """Distinct ``n``-grams divided by all ``n``-grams (0 when there are none)."""
    counts = ngrams(rows, n, ignore)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def unigram_entropy(rows: np.ndarray, ignore: int | None = None) -> float:
    """Shannon entropy (nats) of the token frequencies in ``rows``."""
    tokens = np.asarray(rows).ravel()
    if ignore is not None:
        tokens = tokens[tokens != ignore]
    if tokens.size == 0:
        return 0.0
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def tail_coverage(reference: np.ndarray, generated: np.ndarray, n: int = 1, tail_share: float = 0.1,
                  ignore: int | None = None) -> float:
    """Share of the reference's *rare* ``n``-grams that ``generated`` still produces.

    The rare n-grams are the least frequent distinct n-grams of ``reference``
    that together hold ``tail_share`` of its n-gram occurrences (at least one).
    Returns a number in [0, 1]; 1 means the whole tail survives.
    """
    ref = ngrams(reference, n, ignore)
    if not ref:
        return 0.0
    total = sum(ref.values())
    ordered = sorted(ref.items(), key=lambda kv: (kv[1], kv[0]))
    tail, mass = [], 0
    for gram, c in ordered:
        if tail and mass + c > tail_share * total:
            break
        tail.append(gram)
        mass += c
    gen = ngrams(generated, n, ignore)
    return sum(1 for g in tail if g in gen) / len(tail)


def effective_rank(features: torch.Tensor | np.ndarray) -> float:
    """Effective rank (Roy & Vetterli): exp of the entropy of the normalised singular values.

    ``features`` is [N, D]; it is centred over the N rows first.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CollapseProbes:
    """Built-in ``metrics`` plugin: the task's collapse probes, always active; for a task with text
    (:class:`~collapsekit.capabilities.TextItems`) also the pool's Self-BLEU and type-token ratio
    (:mod:`collapsekit.plugins.text_metrics`)."""

    @hookimpl(trylast=True)
    def metrics(self, run, model, generation):
        from collapsekit.capabilities import TextItems, provides
        from collapsekit.plugins.text_metrics import pool_text_diversity

        pool = run.synthetic(generation)
        measured = run.task.evaluate(model, pool)
        if isinstance(run.task, TextItems) and TextItems.requirement in provides(run.task):
            measured = {**pool_text_diversity(run.task, pool), **measured}
        return measured


def repetition(rows: np.ndarray, n: int = 4, ignore: int | None = None) -> float:
    """Mean over rows of ``1 - distinct n-grams / n-grams`` within the row (0 = no repeated n-gram)."""
    shares = []
    for row in np.asarray(rows):
        counts = ngrams(row[None, :], n, ignore)
        total = sum(counts.values())
        if total:
            shares.append(1.0 - len(counts) / total)
    return float(np.mean(shares)) if shares else 0.0
