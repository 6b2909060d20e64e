"""The ``token-editing`` plugin: synthesize by editing real text with the generation's model (ToEdit).

Instead of sampling new text, each generation's synthetic pool is real sequences
whose over-confident tokens (the trained model gives them ``p > threshold``)
are redrawn from the model's top-k (see :mod:`collapsekit_token_editing.functional`).
One forward pass per batch of real sequences, no autoregressive generation.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.distributed import all_sum

from .functional import edit_scored, scored_statistics

PREFIX = "token_editing/"
COUNTS = ("positions", "share_above", "share_changed", "share_below")


def pick_rows(n_real: int, n: int, generator: torch.Generator) -> np.ndarray:
    """Sorted indices of ``n`` real rows: every row ``n // n_real`` times, plus a random
    ``n % n_real`` of them drawn without replacement from ``generator``."""
    if n_real < 1:
        raise ValueError("the task's real pool is empty; token-editing needs real sequences to edit")
    full = np.tile(np.arange(n_real), n // n_real)
    rest = torch.randperm(n_real, generator=generator)[: n % n_real].numpy()
    return np.sort(np.concatenate([full, rest]).astype(np.int64))


class TokenEditing:
    """ToEdit (Zhu et al., ICML 2025) on the ``synthesize`` hook, for token tasks.

    Args:
        threshold: tokens whose predicted probability exceeds it are redrawn (paper: 0.99).
        top_k: candidates of a redraw: the model's ``top_k`` most probable ids (official code: 8).
        temperature: redraw weights are ``softmax(log p / temperature)`` over the candidates (1 or 1.5).
        drop_below: optional second rule, off by default: tokens with ``p < drop_below``
            (official: 0.001) are also redrawn (the official code drops them).
        batch_size: rows per forward pass (default: the task's ``eval_batch_size``).

    The generation's trained model is the prior. Rows are real sequences
    (``run.samples_per_generation`` of them, see :func:`pick_rows` and :meth:`rows_to_edit`);
    their first column (BOS) is never edited, and ids ``>= task.vocab_size`` (BOS, specials)
    are never proposed. Metrics: ``token_editing/share_above``, ``token_editing/share_changed``
    (and ``token_editing/share_below`` with ``drop_below``) over every token this process
    edited for the generation, plus the settings ``token_editing/threshold`` and
    ``token_editing/top_k``.
    """

    def __init__(self, threshold: float = 0.99, top_k: int = 8, temperature: float = 1.0,
                 drop_below: float | None = None, batch_size: int | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"token-editing: threshold must be a probability in [0, 1], got {threshold}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"token-editing: top_k must be an integer >= 1, got {top_k!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"token-editing: temperature must be a finite number > 0, got {temperature!r}")
        if drop_below is not None and not 0.0 < drop_below < 1.0:
            raise ValueError(f"token-editing: drop_below must be null (off) or in (0, 1), got {drop_below}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"token-editing: batch_size must be >= 1, got {batch_size}")
        self.threshold, self.top_k, self.temperature = float(threshold), top_k, float(temperature)
        self.drop_below = None if drop_below is None else float(drop_below)
        self.batch_size = batch_size
        # per generation, summed over the synthesize calls (shards) of this process
        self.counts: dict[int, dict[str, float]] = {}

    @hookimpl
    def configure(self, run: Any) -> None:
        caps.require(run.task, caps.TokenSequences, plugin="token-editing",
                     why="edit real token sequences with the model's next-token probabilities")

    def rows_to_edit(self, run: Any, generation: int, n_real: int, request: Any) -> tuple[np.ndarray, torch.Generator]:
        """Indices of the real rows the shard ``request`` edits, and the generator for the edits.

        When the shard makes only part of the generation's pool, its rows are ``request.slice`` of one
        plan for the whole generation (``request.total`` rows, :func:`pick_rows`) drawn from role
        ``"token-editing/rows"``, so shards never overlap. When it makes the whole generation, the rows
        come from ``request.generator``, which then draws the edits.
        """
        generator = request.generator
        if (request.start, request.size) != (0, request.total):
            plan = pick_rows(n_real, request.total, run.torch_generator(generation, "token-editing/rows"))
            return plan[request.slice], generator
        return pick_rows(n_real, request.total, generator), generator

    @hookimpl
    def generation_start(self, generation: int) -> None:
        self.counts.pop(generation, None)        # a redone generation starts its statistics afresh

    @hookimpl
    def synthesize(self, run: Any, model: torch.nn.Module, generation: int, request: Any) -> dict[str, np.ndarray]:
        task = run.task
        real = np.asarray(task.real_pool().arrays["tokens"])
        if real.ndim != 2 or real.shape[1] < 2:
            raise ValueError(f"token-editing needs real token rows [N, T>=2] (BOS first), got shape {real.shape}")
        rows, generator = self.rows_to_edit(run, generation, len(real), request)
        tokens = real[rows]
        out = tokens.copy()
        batch = self.batch_size or int(task.eval_batch_size)
        counts = self.counts.setdefault(generation, dict.fromkeys(COUNTS, 0.0))
        for start in range(0, len(tokens), batch):
            chunk = torch.as_tensor(tokens[start:start + batch])
            # scores of chunk[:, 1:] over the content ids (never BOS / specials): from the model's logits, or
            # from the task's inference engine (vLLM's prompt_logprobs)
            scores = task.token_scores(model, chunk, self.top_k)
            content = chunk[:, 1:]
            edited = edit_scored(content, scores.logp, scores.ids, scores.top_logp, self.threshold, generator,
                                 temperature=self.temperature, drop_below=self.drop_below)
            stats = scored_statistics(content, edited, scores.logp, self.threshold, self.drop_below)
            for key in COUNTS[1:]:
                counts[key] += stats.get(key, 0.0) * stats["positions"]
            counts["positions"] += stats["positions"]
            out[start:start + len(chunk), 1:] = edited.numpy()
        return {"tokens": out}

    @hookimpl
    def metrics(self, generation: int) -> dict[str, float]:
        result = {PREFIX + "threshold": self.threshold, PREFIX + "top_k": float(self.top_k)}
        # each process counted its own synthesis shards: sum them (every process calls metrics)
        counts = all_sum(self.counts.get(generation) or dict.fromkeys(COUNTS, 0.0))
        if counts["positions"]:
            total = counts["positions"]
            keys = COUNTS[1:] if self.drop_below is not None else COUNTS[1:3]
            result.update({PREFIX + k: counts[k] / total for k in keys})
        return result
