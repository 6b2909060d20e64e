"""collapsekit's torchmetrics Metrics against plain float64 formulas, split into batches and over
two real gloo processes (what a sharded evaluation under DDP does)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from collapsekit.metrics import CalibrationError, MeanNLL


def fixed_classification(n: int = 300, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, classes, generator=g, dtype=torch.float64) * 3, 1)
    return probs, torch.randint(0, classes, (n,), generator=g)


def plain_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return total


def test_calibration_error_equals_the_plain_formula_in_any_batching():
    probs, labels = fixed_classification()
    want = plain_ece(probs.numpy(), labels.numpy())
    whole = CalibrationError(15)
    whole.update(probs, labels)
    batched = CalibrationError(15)
    for i in range(0, len(probs), 37):
        batched.update(probs[i:i + 37], labels[i:i + 37])
    assert float(whole.compute()) == pytest.approx(want, abs=1e-12)
    assert float(batched.compute()) == pytest.approx(want, abs=1e-12)
    # a perfectly calibrated pair of bins: accuracy equals confidence, ECE 0
    exact = CalibrationError(2)
    exact.update(torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64), torch.tensor([0, 0, 0, 1]))
    assert float(exact.compute()) == 0.0


def test_mean_nll_is_the_token_weighted_mean():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, 7, generator=g)
    labels = torch.randint(0, 7, (6, 5), generator=g)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="none")
    metric, want = MeanNLL(), 0.0
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        part = per_token.reshape(6, 5)[rows]
        metric.update(part.sum(), part.numel())
        want += float(part.sum())            # what the probes summed before: float64 of each batch's sum
    want /= 30
    assert float(metric.compute()) == pytest.approx(want, rel=1e-12)
    assert float(metric.compute()) == pytest.approx(float(per_token.double().mean()), rel=1e-6)


def _shard(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        probs, labels = fixed_classification()
        ece, nll = CalibrationError(15), MeanNLL()
        mine = slice(rank, None, world)
        ece.update(probs[mine], labels[mine])
        nll.update(-torch.log(probs[mine].gather(1, labels[mine, None])).sum(), len(probs[mine]))
        values = (float(ece.compute()), float(nll.compute()))
        if rank == 0:
            out.put(values)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_reduce_to_the_single_process_value():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_shard, args=(2, port, out), nprocs=2, join=True, start_method="spawn")
    ece, nll = out.get(timeout=30)
    probs, labels = fixed_classification()
    assert ece == pytest.approx(plain_ece(probs.numpy(), labels.numpy()), abs=1e-12)
    assert nll == pytest.approx(float(-torch.log(probs.gather(1, labels[:, None])).mean()), rel=1e-12)
