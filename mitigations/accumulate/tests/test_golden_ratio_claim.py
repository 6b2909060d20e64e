"""Claim (slow): under fresh-data mixing with as many real as synthetic items per generation, weighing the real
part by He et al.'s golden ratio (61.8% of the loss) beats plain 1:1 mixing (50%) on the gaussian and the
linear-regression tasks, at their cpu-preset sizes (10 generations, 256 replicates per run), paired over 5 seeds
(95% paired bootstrap interval excludes 0 and paired t-test p < 0.05), under 1 and 2 torch threads.
Measured numbers: README.md ("Weighting real data")."""
from __future__ import annotations

import pytest

from collapsekit.bench.stats import compare
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.linear_regression import LinearRegression
from collapsekit.testing import CLAIM_THREADS, run_tiny, torch_threads

SEEDS = (0, 1, 2, 3, 4)
TASKS = {"gaussian": (lambda: Gaussian(dim=4, train_size=32, replicates=256), ("kl", "mean_sq_error")),
         "linear-regression": (lambda: LinearRegression(dim=8, train_size=32, replicates=256), ("excess_error",))}


@pytest.mark.slow
@pytest.mark.parametrize("threads", CLAIM_THREADS)
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_golden_ratio_weighting_beats_plain_mixing(tmp_path, threads, task_name):
    make, metrics = TASKS[task_name]
    final: dict[str, dict[int, dict]] = {"plain": {}, "golden": {}}
    with torch_threads(threads):
        for name, weight in (("plain", None), ("golden", "golden")):
            for seed in SEEDS:
                spec = {"class_path": "fresh-mix", "init_args": {"alpha": 0.5, "real_weight": weight}}
                final[name][seed] = run_tiny(tmp_path, [spec], make(), name=f"{name}-{seed}", generations=10,
                                             max_steps=1, seed=seed)[-1]
    for metric in metrics:
        result = compare({s: final["golden"][s][metric] for s in SEEDS},
                         {s: final["plain"][s][metric] for s in SEEDS}, higher_is_better=False)
        assert result.n == 5 and result.better is True, (task_name, metric, result)
