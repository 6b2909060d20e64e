"""Real claim runs on digits-classify (cpu preset, generation 0 only): slow, excluded by default.

Run with ``python -m pytest -m slow mitigations/maxsup/tests/test_maxsup_claims.py``. The full
measured tables (3 seeds, 5 generations) are in mitigations/maxsup/README.md.
"""
from __future__ import annotations

import pytest

from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.testing import CLAIM_THREADS, run_tiny, torch_threads


@pytest.mark.slow
@pytest.mark.parametrize("threads", CLAIM_THREADS)
def test_label_smoothing_and_maxsup_tighten_classes_relative_to_their_separation(tmp_path, threads):
    """On real labels both shrink NC1 well below cross-entropy's and raise accuracy; MaxSup separates
    classes more than label smoothing (higher R^2), as the paper reports."""
    preset = DigitsClassify.preset("cpu")
    results = {}
    with torch_threads(threads):   # the claim must hold on both floating-point paths
        for name, plugins in (("ce", []), ("ls", ["label-smoothing"]), ("maxsup", ["maxsup"])):
            (m,) = run_tiny(tmp_path, plugins, DigitsClassify(**preset["task"]), name=name, generations=1,
                            max_steps=preset["trainer"]["max_steps"])
            results[name] = m
    assert results["ls"]["nc1"] < 0.6 * results["ce"]["nc1"], results
    assert results["maxsup"]["nc1"] < 0.6 * results["ce"]["nc1"], results
    assert results["maxsup"]["class_separation"] > results["ls"]["class_separation"], results
    assert min(results["ls"]["accuracy"], results["maxsup"]["accuracy"]) > results["ce"]["accuracy"], results
