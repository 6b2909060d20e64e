"""Every task's smoke preset trains under ``precision: bf16-mixed`` on CPU (it catches dtype bugs
before they reach a GPU), and gradient accumulation keeps the per-step loss-term bookkeeping."""
from __future__ import annotations

import math

import pytest

import collapsekit
from collapsekit import hookimpl
from collapsekit.bench import plan, run_cell


def smoke_cells():
    cells, _ = plan("smoke", methods=["baseline"], seeds=[0], progress=False)
    return {cell["task"]: cell for cell in cells}


CELLS = smoke_cells()


@pytest.mark.parametrize("task", sorted(CELLS))
def test_smoke_preset_trains_in_bf16_mixed(task, tmp_path):
    cell = {**CELLS[task], "generations": 2,
            "trainer": {**CELLS[task]["trainer"], "max_steps": 3, "precision": "bf16-mixed"}}
    result = run_cell(cell, tmp_path, progress=False)
    assert len(result["metrics"]) == 2
    for metrics in result["metrics"]:
        assert metrics["train/steps"] == 3.0
        assert math.isfinite(metrics["loss/total"])


def test_gradient_accumulation_counts_optimizer_steps_and_averages_every_micro_batch(tmp_path):
    seen: list[tuple[int, float]] = []

    class Spy:
        @hookimpl
        def loss_terms(self, module, outputs):
            seen.append((module.progress.step, float(outputs["loss"].detach())))
            return {}

    cell = {**CELLS["markov-text"], "generations": 1,
            "trainer": {**CELLS["markov-text"]["trainer"], "max_steps": 3, "accumulate_grad_batches": 2}}
    with collapsekit.registered(Spy(), name="spy"):
        (metrics,) = run_cell(cell, tmp_path, progress=False)["metrics"]
    assert metrics["train/steps"] == 3.0                 # optimizer steps, each over two micro-batches
    assert [step for step, _ in seen] == [0, 0, 1, 1, 2, 2]
    assert metrics["loss/task"] == pytest.approx(sum(v for _, v in seen) / 6, abs=1e-12)
