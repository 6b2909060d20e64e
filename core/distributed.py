"""Where this process stands in a distributed run (Lightning / torch.distributed), before and after
the process group exists."""
from __future__ import annotations

import os


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
