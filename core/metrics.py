"""torchmetrics ``Metric``s for the probes torchmetrics has no exact match for.

They accumulate on the device in float64 and reduce across processes (``dist_reduce_fx="sum"``),
so a held-out evaluation can be split over ranks (:func:`collapsekit.distributed.shard`; the engine
calls the ``metrics`` hook in every rank) and still give the single-process value. A value that
each process computes whole passes ``sync_on_compute=False`` (a sync would count it once per rank).
"""
from __future__ import annotations

import torch
from torchmetrics import Metric


class MeanNLL(Metric):
    """Mean negative log-likelihood per token: ``sum of summed NLLs / number of tokens``.

    ``update(nll_sum, count)`` takes a batch's summed NLL (nats) and its token count.
    ``compute()`` is the mean in nats; ``exp`` of it is the perplexity.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: int | torch.Tensor) -> None:
        self.total += nll_sum.detach().to(torch.float64)
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class CalibrationError(Metric):
    """Expected calibration error with ``bins`` equal-width confidence bins:
    ``sum_b |b| / N * |accuracy(b) - confidence(b)|``; bin ``b`` holds confidences in
    ``(b / bins, (b + 1) / bins]`` (a confidence of 0 falls in the first bin).

    ``update(probs [N, C], labels [N])``; float64 sums per bin, so the value does not depend on
    how the items were batched or spread over processes.
    """

    full_state_update = False

    def __init__(self, bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = bins
        for name in ("items", "confidence", "correct"):
            self.add_state(name, torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        conf, pred = probs.detach().to(torch.float64).max(1)
        index = (torch.ceil(conf * self.bins) - 1).clamp(0, self.bins - 1).long()
        self.items.index_add_(0, index, torch.ones_like(conf))
        self.confidence.index_add_(0, index, conf)
        self.correct.index_add_(0, index, (pred == labels.to(pred.device)).to(torch.float64))

    def compute(self) -> torch.Tensor:
        filled = self.items > 0
        n = self.items[filled]
        gap = (self.correct[filled] / n - self.confidence[filled] / n).abs()
        return (n / self.items.sum() * gap).sum()
