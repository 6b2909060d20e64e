"""``testfilter``: a third-party filter that keeps a random share of the synthetic items.

It takes its settings as init args (``keep``, ``oversample``), so a bench can set them with
``--plugin-args``, and declares the direction of the metric it reports (``higher_is_better``), so that
RESULTS.md ranks it. The direction is arbitrary here: it exists to be ranked in tests.
"""
from __future__ import annotations

import numpy as np

from collapsekit import hookimpl


class KeepShare:
    """Keep each synthetic item with probability ``keep`` (drawn from ``run.rng``); ask the engine to
    synthesize ``oversample`` times the pool budget; report the share kept as ``testfilter/kept_share``."""

    higher_is_better = {"testfilter/kept_share": True}

    def __init__(self, keep: float = 0.5, oversample: float = 1.0) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep, self.oversample = float(keep), float(oversample)
        self.kept_share = float("nan")

    @hookimpl
    def filter_samples(self, run, samples, generation):
        mask = run.rng(generation, "testfilter").random(len(samples)) < self.keep
        self.kept_share = float(mask.mean()) if len(mask) else 1.0
        return np.asarray(mask, dtype=bool)

    @hookimpl
    def metrics(self, generation):
        return {"testfilter/kept_share": self.kept_share}
