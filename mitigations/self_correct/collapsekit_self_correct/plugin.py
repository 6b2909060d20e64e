"""The ``self-correct`` plugin: every synthetic item passes through the task's expert correction.

It synthesizes as the built-in ``ancestral`` sampler does (the task's sampler, with the same
``temperature``/``top_k``/``top_p`` options) and then applies the task's correction
(capability :class:`collapsekit.capabilities.Corrector`) of strength ``strength`` to the shard,
drawing its randomness from the shard's generator. Being a ``synthesize`` implementation it takes
the place of ``ancestral``; it is not meant to be combined with another synthesizer (e.g.
``token-editing``), and any pool policy or filter combines with it as usual.
"""
from __future__ import annotations

from typing import ClassVar

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.distributed import all_sum

from .functional import change_stats, mixture_strength


STATS = ("changed_items", "changed_values", "mean_abs_change")
"""The statistics of :func:`~collapsekit_self_correct.functional.change_stats` reported per generation."""


class SelfCorrect:
    """Correct each generation's synthetic items toward the real data with the task's expert.

    Args:
        strength: correction strength ``lambda`` in [0, 1] (0: no correction; 1: full correction); or give
        gamma: the paper's correction strength ``gamma >= 0`` instead (``lambda = gamma / (1 + gamma)``).
        temperature, top_k, top_p: sampling options passed to the task's sampler, as ``ancestral``'s.

    Metrics: ``self_correct/changed_items`` (share of synthetic items the correction changed),
    ``self_correct/changed_values`` (share of array values changed), ``self_correct/mean_abs_change``
    (mean absolute change of floating-point values), ``self_correct/strength``.
    """

    higher_is_better: ClassVar[dict[str, bool | None]] = {
        "self_correct/changed_items": None, "self_correct/changed_values": None,
        "self_correct/mean_abs_change": None, "self_correct/strength": None}

    def __init__(self, strength: float | None = 0.5, gamma: float | None = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0) -> None:
        if gamma is not None:
            try:
                strength = mixture_strength(gamma)
            except ValueError as exc:
                raise ValueError(f"self-correct: {exc}") from None
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"self-correct: strength must be in [0, 1] (or give gamma >= 0), got {strength!r}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"self-correct: need temperature >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
        self.strength, self.gamma = float(strength), gamma
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self._stats: dict[int, dict[str, list]] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stats"] = {}
        return state

    @hookimpl
    def configure(self, run):
        caps.require(run.task, caps.Sampler, caps.Corrector, plugin="self-correct",
                     why="sample items and correct them with the task's expert")
        self._stats.clear()

    @hookimpl
    def synthesize(self, run, model, generation, request):
        drawn = run.task.sample(model, request.size, request.generator, temperature=self.temperature,
                                top_k=self.top_k, top_p=self.top_p)
        corrected = run.task.correct_items(drawn, self.strength, request.generator)
        stats = change_stats(drawn, corrected)
        totals = self._stats.setdefault(generation, {})
        for key, value in stats.items():
            totals.setdefault(key, []).append((value, request.size))
        return corrected

    @hookimpl
    def metrics(self, generation):
        """Size-weighted means over every shard of the generation (summed over the processes of a
        distributed run, each of which synthesized its own shards)."""
        parts = self._stats.get(generation, {})
        sums = {key: float(sum(v * n for v, n in parts.get(key, []))) for key in STATS}
        sums["items"] = float(sum(n for _, n in parts.get(STATS[0], [])))
        sums = all_sum(sums)
        out = {"self_correct/strength": self.strength}
        if sums["items"] > 0:
            out.update({f"self_correct/{key}": sums[key] / sums["items"] for key in STATS})
        return out
