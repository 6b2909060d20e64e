"""Sharded evaluation: the ``metrics`` hook runs in every process of a distributed run, which split
the held-out batches and their synthesis shards' counts and reduce them; two real gloo processes
measure the same generation as one process does."""
from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHARD_SIZE = 24          # 80 synthetic items: 4 synthesis shards over the ranks
HELDOUT = 37             # held-out sequences, batches of 8: ranks get 18 and 19, cut mid-batch


def _hf_lm_heldout_nll(corpus: str) -> float:
    """hf-lm's held-out NLL of a tiny GPT-2 trained from scratch (byte tokenizer): 13 held-out blocks."""
    from collapsekit.plugins.tasks.hf_lm import HFCausalLM

    task = HFCausalLM(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64},
                      data={"path": "json", "data_files": corpus}, block_size=16, max_blocks=40,
                      max_heldout_blocks=13, eval_batch_size=4)
    task.setup(0)
    torch.manual_seed(0)
    return task.heldout_nll(task.build_model())


def _measure(rank: int, world: int, port: int, root: str, corpus: str, out) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        import collapsekit.loop as loop
        from collapsekit.dispatch import build_manager
        from collapsekit.distributed import barrier, shard
        from collapsekit.plugins.tasks.markov_text import MarkovText
        from collapsekit.run import Run, RunConfig

        loop.SHARD_SIZE = SHARD_SIZE
        task = MarkovText(train_size=64, heldout_size=HELDOUT, seq_len=16, n_layer=1, n_embd=16)
        task.eval_batch_size = 8
        # a threshold the untrained model's top probabilities cross now and then, so editing fires
        plugins = [{"class_path": "token-editing", "init_args": {"threshold": 0.02}}]
        run = Run(RunConfig(name="m", root=root, seed=3, samples_per_generation=80), task, build_manager(plugins))
        loop.start(run)
        model = loop.build_model(run, 0).eval()
        samples = loop.synthesize_shards(run, model, 0)
        kept, _ = loop.filter_pool(run, samples, 0)
        if rank == 0:
            loop._store(run, 0, task.real_pool(), kept)
        barrier()
        metrics = loop.measure(run, model, 0)
        metrics["hf-lm/heldout_nll"] = _hf_lm_heldout_nll(corpus)
        out.put((rank, list(shard(HELDOUT)), metrics))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _spawn(world: int, root, corpus) -> dict[int, tuple[list[int], dict[str, float]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Queue()
    mp.start_processes(_measure, args=(world, port, str(root), str(corpus), out), nprocs=world, join=True,
                       start_method="spawn")
    results = [out.get(timeout=60) for _ in range(world)]
    return {rank: (rows, metrics) for rank, rows, metrics in results}


def test_two_gloo_processes_measure_what_one_process_measures(tmp_path):
    from collapsekit.plugins.tasks.bible_lm import book_text

    corpus = tmp_path / "corpus.jsonl"
    verses = book_text("Ruth").splitlines()
    corpus.write_text("".join(json.dumps({"text": " ".join(verses[i:i + 4])}) + "\n" for i in range(0, 80, 4)))
    one = _spawn(1, tmp_path / "one", corpus)
    two = _spawn(2, tmp_path / "two", corpus)
    assert one[0][0] == list(range(HELDOUT))
    assert two[0][0] == list(range(18)) and two[1][0] == list(range(18, HELDOUT))   # really split
    single = one[0][1]
    for rank in (0, 1):
        metrics = two[rank][1]
        assert sorted(metrics) == sorted(single)
        for name, value in single.items():
            assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, name)
    # editing fired on some positions but not all, so a share from one rank's shards alone would differ
    assert 0.0 < single["token_editing/share_above"] < 1.0
    assert "heldout_nll" in single and "kl" in single and single["hf-lm/heldout_nll"] > 0
