"""Bench settings shared by the tasks' presets."""
from __future__ import annotations

#: seeds of the ``cpu`` preset for tasks cheap enough to afford them (a paired comparison needs >= 3;
#: the budget arithmetic is in configs/bench/README.md)
CHEAP_SEEDS = [0, 1, 2, 3, 4]

#: the controls of the selection methods: the same plugin choosing as blindly (variants of a preset)
VERIFIER_VARIANTS = {
    "verifier-filter-random": {"plugin": "verifier-filter", "init_args": {"verifier": "random"}},
    "verifier-filter-model": {"plugin": "verifier-filter", "init_args": {"verifier": "model"}},
    "verifier-filter-typical": {"plugin": "verifier-filter", "init_args": {"rank": "typical"}},
}
#: LSF's blind controls: both rules keeping the same share of the synthetic items uniformly at random
LSF_VARIANTS = {
    "latent-filter-random": {"plugin": "latent-filter", "init_args": {"scorer": "random"}},
    "latent-filter-accumulated-random": {"plugin": "latent-filter-accumulated", "init_args": {"scorer": "random"}},
}
LSF_CONTROLS = {"accumulate-subsample+latent-filter": "accumulate-subsample+latent-filter-random",
                "latent-filter-accumulated": "latent-filter-accumulated-random"}
DETECTOR_VARIANTS = {"detector-reweight-random": {"plugin": "detector-reweight", "init_args": {"bias": 0.0}}}
#: each selection method compared, paired by seed, with its blind control of the same kept share
SELECTION_CONTROLS = {"verifier-filter": "verifier-filter-random", "verifier-filter-model": "verifier-filter-random",
                      "verifier-filter-typical": "verifier-filter-random", "detector-reweight": "detector-reweight-random"}
#: He et al.'s golden-ratio weighting of real data beside plain 1:1 fresh-data mixing (its control)
MIX_VARIANTS = {"fresh-mix-golden": {"plugin": "fresh-mix", "init_args": {"real_weight": "golden"}}}
MIX_CONTROLS = {"fresh-mix-golden": "fresh-mix"}


def opt_in_methods(methods: tuple[str, ...], first: str, per_cell: str) -> dict[str, str]:
    """The ``opt_in_methods`` of a ``cpu`` preset: ``methods`` from ``first`` on, which came after the preset's
    45-minute budget (configs/bench/README.md) and run only when named with ``--methods``."""
    later = methods[methods.index(first):]
    return dict.fromkeys(later, f"{len(later)} methods added after the cpu budget, {per_cell} per cell")
