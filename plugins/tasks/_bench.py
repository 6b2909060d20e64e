"""Bench settings shared by the tasks' presets."""
from __future__ import annotations

#: seeds of the ``cpu`` preset for tasks cheap enough to afford them (a paired comparison needs >= 3;
#: the budget arithmetic is in configs/bench/README.md)
CHEAP_SEEDS = [0, 1, 2, 3, 4]
