"""collapsekit.distributed.from_lead in two real gloo processes: rank 0 computes alone, every rank gets its
result or its error (how the lm-eval plugin evaluates under DDP). A module of its own, so that the spawned
processes import only torch and collapsekit.distributed."""
from __future__ import annotations


def _from_lead_worker(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    from collapsekit.distributed import from_lead

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        calls = []
        value = from_lead(lambda: calls.append(rank) or {"lm_eval/t/acc": 0.25 + rank})
        try:
            from_lead(lambda: 1 / 0)
            error = None
        except Exception as exc:  # noqa: BLE001 - what each rank raises is the result
            error = f"{type(exc).__name__}: {exc}"
        out.put((rank, calls, value, error))
    finally:
        dist.destroy_process_group()


def test_from_lead_computes_in_rank_zero_and_hands_every_rank_its_result(gloo_processes):
    results = sorted(gloo_processes(_from_lead_worker, 2))
    assert results[0][:3] == (0, [0], {"lm_eval/t/acc": 0.25})
    assert results[1][:3] == (1, [], {"lm_eval/t/acc": 0.25})           # rank 1 never computed, got rank 0's
    assert results[0][3] == "ZeroDivisionError: division by zero"
    assert results[1][3] == "CollapsekitError: rank 0 failed (ZeroDivisionError: division by zero)"


def test_from_lead_without_a_process_group_just_computes():
    from collapsekit.distributed import from_lead

    assert from_lead(lambda: 7) == 7
