"""Where this process stands in a distributed run (Lightning / torch.distributed), before and after
the process group exists."""
from __future__ import annotations

import os
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


def process_rank() -> int:
    """Global rank of this process (0 when not distributed), also before the process group exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0) or 0) * 1000 + int(os.environ.get("LOCAL_RANK", 0) or 0)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group, ``(0, 1)`` when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(n: int) -> range:
    """This process's contiguous block of ``range(n)``: rank ``r`` of ``s`` gets
    ``[r * n // s, (r + 1) * n // s)``, all of it when not distributed.

    The blocks in rank order make up ``range(n)``, so per-rank results gathered in rank order are
    in single-process order. Use it to split an evaluation that every rank runs (the ``metrics`` hook).
    """
    rank, size = world()
    return range(rank * n // size, (rank + 1) * n // size)


def all_sum(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` summed over every process, in float64 (unchanged when not distributed).

    A collective: every rank must call it, with the same keys.
    """
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    if world()[1] == 1 or not keys:
        return {k: float(values[k]) for k in keys}
    total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return dict(zip(keys, total.cpu().tolist()))


def from_lead(compute: Callable[[], T]) -> T:
    """``compute()`` run in global rank 0 alone, its (picklable) result handed to every process.

    A collective: every rank must call it. Use it for an evaluation that cannot be split over
    ranks; the others wait. When ``compute`` raises in rank 0, every rank raises (rank 0 its own
    exception, the others a :class:`~collapsekit.errors.CollapsekitError` naming it).
    """
    rank, size = world()
    if size == 1:
        return compute()
    import torch.distributed as dist

    from .errors import CollapsekitError

    box: list = [None]
    failure: BaseException | None = None
    if rank == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks learn of it
            failure, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "ok":
        return value
    if failure is not None:
        raise failure
    raise CollapsekitError(f"rank 0 failed ({value})")
