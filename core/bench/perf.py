"""Performance checks of the engine, measured side by side in one process: ``run_perf`` -> ``PERF.md``.

Sections (each a ratio with a target; numbers are measured, never assumed):

1. engine overhead: one generation's training through collapsekit (no plugins) vs a
   hand-written torch loop doing the same steps on the same model and batches (<= 1.10x);
2. plugin dispatch: one whole generation with 7 no-op plugins on every hook vs none (<= 1.03x);
3. synthesis: ``collapsekit.plugins.sampling.sample_tokens`` vs ``transformers`` ``generate``
   on the same model and settings, tokens/s (>= 1.0x);
4. NPO with a cached vs recomputed reference (``collapsekit_npo``, when installed);
5. token editing vs ancestral generation (``collapsekit_token_editing``, when installed);
6. time and peak RSS per generation as the pool grows, accumulate vs accumulate-subsample
   over 10 generations (``collapsekit_accumulate``, when installed);
7. the engine overhead again at ``long_steps`` (>= 2000) optimiser steps, where the per-generation
   fixed costs (Trainer, model, pool) are amortised;
8. host syncs per training step: tensor methods that wait for the device (:data:`SYNC_METHODS`)
   called inside training steps (target 0);
9. wall and CPU time of one whole generation at 3 pool sizes and 3 model sizes (measured);
10. synthesis on vLLM (when installed): tokens/s of a vLLM engine vs the built-in sampler vs
    ``generate`` on one Llama, same prompts and batch, and the engine's start-up time (measured).

Timings alternate the two sides and compare each side's fastest repeat in process
CPU seconds, which other jobs on a shared machine disturb far less than wall time
(wall times and the load average are reported next to them).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from ..fileio import atomic_write_bytes
from ..markers import hookimpl

FULL = {"task": {"vocab_size": 64, "seq_len": 64, "train_size": 2000, "heldout_size": 500, "n_layer": 2,
                 "n_embd": 64, "n_head": 2, "batch_size": 64},
        "steps": 200, "repeats": 3, "sample_n": 256, "batch_sizes": (32, 256), "growth_generations": 10,
        "growth_task": {"vocab_size": 64, "seq_len": 64, "train_size": 4000, "heldout_size": 100,
                        "n_layer": 1, "n_embd": 16, "n_head": 2, "batch_size": 64},
        "growth_steps": 20, "isolate": True, "npo_steps": 100,
        "dispatch_n": 500, "long_steps": 2000, "long_repeats": 2, "sync_steps": 50,
        "scale_steps": 200, "scale_pools": (500, 2000, 8000), "scale_widths": (32, 64, 128),
        "vllm": {"layers": 4, "width": 256, "heads": 4, "n": 512, "new": 64, "batch": 256}}
SMOKE = {"task": {"vocab_size": 16, "seq_len": 16, "train_size": 64, "heldout_size": 32, "n_layer": 1,
                  "n_embd": 16, "n_head": 2, "batch_size": 16},
         "steps": 4, "repeats": 1, "sample_n": 16, "batch_sizes": (16,), "growth_generations": 2,
         "growth_task": {"vocab_size": 16, "seq_len": 16, "train_size": 64, "heldout_size": 32, "n_layer": 1,
                         "n_embd": 16, "n_head": 2, "batch_size": 16},
         "growth_steps": 2, "isolate": False, "npo_steps": 2, "npo_learn_steps": 2,
         "dispatch_n": 64, "long_steps": 6, "long_repeats": 1, "sync_steps": 4,
         "scale_steps": 2, "scale_pools": (16, 32, 64), "scale_widths": (8, 16, 32),
         "vllm": {"layers": 1, "width": 64, "heads": 2, "n": 16, "new": 8, "batch": 16}}
N_NOOP = 7
SECTIONS = 11


@dataclass
class Section:
    """One PERF.md section: a measured ratio against a target, or a note why it was skipped."""

    title: str
    target: str = ""
    ratio: float | None = None
    passed: bool | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


class NoOpPlugin:
    """Implements every hook and does nothing (returns ``None``): measures pure dispatch cost. Its
    ``compose_pool`` is ``trylast``, a default that yields to the run's pool policy."""

    @hookimpl
    def configure(self, run): return None

    @hookimpl
    def requirements(self, task): return None

    @hookimpl(trylast=True)
    def compose_pool(self, run, generation, real, history): return None

    @hookimpl
    def synthesize(self, run, model, generation, request): return None

    @hookimpl
    def filter_samples(self, run, samples, generation): return None

    @hookimpl
    def loss_terms(self, module, batch, outputs): return None

    @hookimpl
    def generation_start(self, run, generation, module): return None

    @hookimpl
    def generation_end(self, run, generation, module): return None

    @hookimpl
    def metrics(self, run, model, generation): return None


# -- helpers --------------------------------------------------------------------------------------
def _task(sizes: dict):
    from collapsekit.plugins.tasks.markov_text import MarkovText

    return MarkovText(**sizes)


def _trainer(steps: int):
    from ..loop import trainer_factory

    return trainer_factory(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False)


def _new_run(root: Path, name: str, task, plugins=(), generations: int = 1, seed: int = 0, init: str = "scratch"):
    from ..dispatch import build_manager
    from ..run import Run, RunConfig

    config = RunConfig(name=name, root=str(root), generations=generations, seed=seed, plugins=list(plugins),
                       overwrite=True, init=init, threads=torch.get_num_threads())   # this process's count
    return Run(config, task, build_manager(config.plugins))


class Timing(NamedTuple):
    """Process CPU seconds (all threads) and wall seconds of one measured call."""

    cpu: float
    wall: float


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> Timing:
    return Timing(time.process_time() - start[0], time.perf_counter() - start[1])


def _alternate(a: Callable[[], Timing], b: Callable[[], Timing], repeats: int) -> tuple[list[Timing], list[Timing]]:
    """Time ``a`` and ``b`` alternately (a, b, b, a, ...) ``repeats`` times each; return both lists."""
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(a())
            tb.append(b())
        else:
            tb.append(b())
            ta.append(a())
    return ta, tb


def _ratio(ta: list[Timing], tb: list[Timing]) -> float:
    """``best CPU time of a / best CPU time of b``.

    Process CPU time, not wall time: on a machine shared with other jobs the wall
    time mostly measures the neighbours. Both are reported.
    """
    return min(t.cpu for t in ta) / min(t.cpu for t in tb)


def _timing_rows(name_a: str, ta: list[Timing], name_b: str, tb: list[Timing]) -> list[dict]:
    return [{"what": name, "best CPU s": min(t.cpu for t in ts),
             "median CPU s": statistics.median(t.cpu for t in ts), "best wall s": min(t.wall for t in ts),
             "repeats": len(ts)} for name, ts in ((name_a, ta), (name_b, tb))]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _plugin_class(short_name: str):
    from ..registry import discover, resolve

    return resolve(short_name, discover()).target


def _rss_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _release_freed_memory() -> None:
    """``gc.collect()`` and glibc ``malloc_trim(0)``: freed heap goes back to the OS, so that the next
    peak measures the live working set, not what an earlier generation freed but the allocator kept."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- 1. engine overhead ------------------------------------------------------------------------------
def plain_training(task, real, steps: int, seed: int) -> torch.nn.Module:
    """The same steps as the engine's generation 0, in a plain torch loop (same init, batches, optimiser)."""
    from ..seeds import derive_seed

    torch.manual_seed(derive_seed(seed, 0, "init"))
    model = task.build_model()
    optimizer = task.configure_optimizers(model)
    torch.manual_seed(derive_seed(seed, 0, "train"))
    loader = task.dataloader(real, shuffle=True, seed=derive_seed(seed, 0, "shuffle"))
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            loss = task.step(model, batch, frozenset())["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    return model


def engine_overhead(cfg: dict, root: Path, steps: int | None = None, repeats: int | None = None,
                    warm_up: bool = True) -> tuple[Section, torch.nn.Module]:
    """Section 1 (``steps = cfg["steps"]``) or 7 (``steps = cfg["long_steps"]``)."""
    from ..loop import start, train_generation

    steps = steps or cfg["steps"]
    task = _task(cfg["task"])
    run = _new_run(root, f"engine-{steps}", task)
    start(run)
    real = task.real_pool()
    models: dict[str, torch.nn.Module] = {}

    def engine() -> float:
        t = _clock()
        module, _ = train_generation(run, 0, _trainer(steps))
        models["engine"] = module.model
        return _since(t)

    def plain() -> float:
        t = _clock()
        models["plain"] = plain_training(task, real, steps, run.seed)
        return _since(t)

    if warm_up:
        engine()  # warm-up: imports, first Trainer, allocator
    te, tp = _alternate(engine, plain, repeats or cfg["repeats"])
    ratio = _ratio(te, tp)
    diff = max((a - b).abs().max().item() for a, b in zip(models["engine"].state_dict().values(),
                                                           models["plain"].state_dict().values()))
    title = "Engine overhead: one generation's training" + ("" if steps == cfg["steps"] else f", {steps} steps")
    section = Section(title, "<= 1.10x", ratio, ratio <= 1.10,
                      _timing_rows("collapsekit (Trainer + GenerationalModule, no plugins)", te,
                                   "plain torch loop", tp))
    section.notes += [f"{steps} optimiser steps, MarkovText {cfg['task']}; the engine side includes "
                      "building the Trainer, the model and the pool.",
                      f"same steps check: max |weight difference| between the two trained models = {diff:.3g}"]
    return section, models["engine"]


# -- 2. plugin dispatch -------------------------------------------------------------------------------
def plugin_dispatch(cfg: dict, root: Path) -> Section:
    from ..loop import execute
    from ..registry import registered

    counter = [0]

    def one(with_noop: bool) -> float:
        with contextlib.ExitStack() as stack:
            for i in range(N_NOOP if with_noop else 0):
                stack.enter_context(registered(NoOpPlugin(), name=f"perf-noop-{i}"))
            counter[0] += 1
            run = _new_run(root, f"dispatch-{counter[0]}", _task({**cfg["task"], "train_size": cfg["dispatch_n"]}))
            t = _clock()
            execute(run, _trainer(cfg["steps"]))
            return _since(t)

    one(False)  # warm-up
    tn, t0 = _alternate(lambda: one(True), lambda: one(False), cfg["repeats"])
    ratio = _ratio(tn, t0)
    section = Section(f"Plugin dispatch: {N_NOOP} no-op plugins on every hook", "<= 1.03x", ratio, ratio <= 1.03,
                      _timing_rows(f"{N_NOOP} no-op plugins (all 9 hooks each)", tn, "no extra plugin", t0))
    section.notes.append(f"one whole generation through `execute` (train {cfg['steps']} steps, synthesize "
                         f"{cfg['dispatch_n']} sequences, filter, metrics, files); loss_terms is dispatched on "
                         "every training step")
    return section


# -- 3. synthesis throughput --------------------------------------------------------------------------
def llama_like(task) -> torch.nn.Module:
    """A randomly initialised Llama of the size of the perf task's GPT-2 (another architecture for the
    sampler: rotary positions, RMSNorm, gated MLP, grouped attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=task.vocab_size + 1, hidden_size=task.n_embd, intermediate_size=4 * task.n_embd,
                         num_hidden_layers=task.n_layer, num_attention_heads=task.n_head,
                         num_key_value_heads=task.n_head, max_position_embeddings=task.seq_len + 1,
                         bos_token_id=task.bos_id, eos_token_id=task.bos_id)
    return LlamaForCausalLM(config)


def _timed_sampler(model: torch.nn.Module, prompts: torch.Tensor, new: int, batch: int, bos: int) -> Timing:
    """``sample_tokens`` continuing ``prompts`` by ``new`` tokens at temperature 1 (BOS suppressed), timed."""
    from collapsekit.plugins.sampling import sample_tokens

    t = _clock()
    out = sample_tokens(model, prompts, new, torch.Generator().manual_seed(0), batch_size=batch, suppress=[bos])
    assert out.shape == (len(prompts), prompts.shape[1] + new)
    return _since(t)


def _timed_generate(model: torch.nn.Module, prompts: torch.Tensor, new: int, batch: int, bos: int) -> Timing:
    """``model.generate`` with the same settings as :func:`_timed_sampler`, in chunks of ``batch``, timed."""
    t = _clock()
    torch.manual_seed(0)
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        out = model.generate(input_ids=chunk, attention_mask=torch.ones_like(chunk), do_sample=True,
                             max_new_tokens=new, min_new_tokens=new, top_k=0, top_p=1.0, temperature=1.0,
                             pad_token_id=bos, suppress_tokens=[bos])
        assert out.shape == (len(chunk), chunk.shape[1] + new)
    return _since(t)


def synthesis_throughput(cfg: dict, model: torch.nn.Module, task, architecture: str = "GPT-2") -> Section:
    model.eval()
    n, length, bos = cfg["sample_n"], task.seq_len, task.bos_id
    prompts = torch.full((n, 1), bos, dtype=torch.long)
    section = Section(f"Synthesis throughput ({architecture}): built-in sampler vs transformers generate", ">= 1.0x")
    ratios = []
    for bs in cfg["batch_sizes"]:
        def ours(bs: int = bs) -> Timing:
            return _timed_sampler(model, prompts, length, bs, bos)

        def hf(bs: int = bs) -> Timing:
            return _timed_generate(model, prompts, length, bs, bos)

        ours(), hf()  # warm-up
        to, th = _alternate(ours, hf, cfg["repeats"] + 2)
        tokens = n * length
        ratios.append(_ratio(th, to))
        for what, ts in ((f"sample_tokens, batch {bs}", to), (f"generate, batch {bs}", th)):
            section.rows.append({"what": what, "tokens per CPU s (best)": tokens / min(t.cpu for t in ts),
                                 "tokens per CPU s (median)": tokens / statistics.median(t.cpu for t in ts),
                                 "tokens per wall s (best)": tokens / min(t.wall for t in ts), "repeats": len(ts)})
    section.ratio = min(ratios)
    section.passed = section.ratio >= 1.0
    section.notes.append(f"{n} sequences x {length} new tokens, temperature 1, no top-k/top-p, BOS suppressed; "
                         "ratio = worst over batch sizes of (ours tokens per CPU s) / (generate tokens per CPU s)")
    return section


# -- 3b. synthesis on vLLM -----------------------------------------------------------------------------
def vllm_throughput(cfg: dict, root: Path) -> Section:
    """Tokens per CPU second of one Llama (byte vocabulary, head size >= 32 as vLLM's CPU attention needs) sampled
    by a vLLM engine, by ``sample_tokens`` and by ``generate``: the same prompts (BOS), new tokens, batch size,
    temperature 1 and suppressed BOS; plus the engine's start-up and shutdown times."""
    title = "Synthesis throughput on vLLM (Llama): vLLM engine vs built-in sampler vs transformers generate"
    section = Section(title, "report only (on a CPU the value is the code path; the speed-up is a GPU figure)")
    if not _installed("vllm"):
        section.skipped = "vllm is not installed (pip install -e \".[vllm]\": README, Backends)"
        return section
    from transformers import LlamaConfig, LlamaForCausalLM

    from collapsekit.plugins import vllm_backend
    from collapsekit.plugins.tasks.hf_data import byte_tokenizer

    size = cfg["vllm"]
    n, new, batch = size["n"], size["new"], size["batch"]
    tokenizer = byte_tokenizer()
    bos = tokenizer.bos_token_id
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size["width"], intermediate_size=4 * size["width"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        max_position_embeddings=new + 2, bos_token_id=bos, eos_token_id=bos, pad_token_id=bos)).eval()
    directory = root / "vllm-model"
    vllm_backend.save_for_engine(model, tokenizer, directory)
    t = _clock()
    vllm_backend.import_vllm()
    imported = _since(t)
    t = _clock()
    engine = vllm_backend.Engine(directory, {**vllm_backend.engine_defaults(torch.float32, new + 2),
                                             "max_num_seqs": batch})
    started = _since(t)
    prompts = torch.full((n, 1), bos, dtype=torch.long)

    def on_vllm() -> Timing:
        t = _clock()
        out = engine.generate([[bos]] * n, new, list(range(n)), [bos], temperature=1.0)
        assert out.shape == (n, new + 1)
        return _since(t)

    def ours() -> Timing:
        return _timed_sampler(model, prompts, new, batch, bos)

    def hf() -> Timing:
        return _timed_generate(model, prompts, new, batch, bos)

    try:
        on_vllm(), ours(), hf()  # warm-up
        times: dict[str, list[Timing]] = {"vLLM engine": [], "sample_tokens": [], "generate": []}
        sides = list(zip(times, (on_vllm, ours, hf)))
        for i in range(cfg["repeats"] + 2):                         # rotate the order every repeat
            for name, fn in sides[i % 3:] + sides[:i % 3]:
                times[name].append(fn())
    finally:
        t = _clock()
        engine.close()
        closed = _since(t)
    tokens = n * new
    for name, ts in times.items():
        section.rows.append({"what": f"{name}, batch {batch}", "tokens per CPU s (best)": tokens / min(x.cpu for x in ts),
                             "tokens per CPU s (median)": tokens / statistics.median(x.cpu for x in ts),
                             "tokens per wall s (best)": tokens / min(x.wall for x in ts), "repeats": len(ts)})
    for what, timing in (("import vllm (first import in this process)", imported), ("engine start-up", started),
                         ("engine shutdown", closed)):
        section.rows.append({"what": what, "CPU s": timing.cpu, "wall s": timing.wall})
    section.ratio = _ratio(times["sample_tokens"], times["vLLM engine"])
    section.notes.append(f"{n} sequences x {new} new tokens of a {size['layers']}-layer d={size['width']} Llama "
                         f"({size['heads']} heads, {len(tokenizer)} ids), temperature 1, BOS suppressed, float32, "
                         f"batch {batch} (vLLM: max_num_seqs {batch}, one seed per request); ratio = (vLLM tokens per "
                         "CPU s) / (sample_tokens tokens per CPU s), best repeats")
    section.notes.append(f"engine: {'in this process' if engine.in_process else 'own processes'}, collapsekit's CPU "
                         "defaults (enforce_eager, 1 GiB KV cache); start-up = vllm.LLM() on the saved model, "
                         "after vLLM is imported")
    return section


# -- 4. NPO reference cache ----------------------------------------------------------------------------
def npo_cache(cfg: dict, root: Path) -> Section:
    title = "NPO: cached vs recomputed reference log-probs"
    if not _installed("collapsekit_npo"):
        return Section(title, skipped="collapsekit_npo is not installed (pip install ./mitigations/npo)")
    import shutil

    from .runner import load_tasks
    from ..dispatch import build_manager
    from ..loop import execute
    from ..registry import registered
    from ..run import Run, RunConfig

    try:
        npo_cls = _plugin_class("npo")
        task_cls = load_tasks(["facts-unlearning"])[0]["facts-unlearning"]
        spec = task_cls.preset("smoke")
    except Exception as exc:  # noqa: BLE001 - reported in PERF.md
        return Section(title, skipped=f"plugin 'npo' or task 'facts-unlearning' is not available: {exc}")
    steps = cfg["npo_steps"]

    forwards: dict[bool, float] = {}

    def run_npo(plugin, run_root: Path) -> Timing:
        """Generations 0 (learning; read back when already on disk) and 1 (unlearning); time generation 1."""
        marks: dict[int, tuple[float, float]] = {}

        def mark(generation, metrics, resumed):
            marks[generation] = _clock()
            if generation == 1:
                forwards[type(plugin) is not npo_cls] = metrics.get("npo/ref_forwards", float("nan"))

        with registered(plugin, name="perf-npo"):
            config = RunConfig(name="npo", root=str(run_root), generations=2, seed=0, threads=torch.get_num_threads(),
                               init=spec.get("init", "previous"),
                               samples_per_generation=spec.get("samples_per_generation"))
            run = Run(config, task_cls(**spec["task"]), build_manager([]))
            execute(run, _trainer(cfg.get("npo_learn_steps") or int(spec["trainer"]["max_steps"])), mark)
        end = marks[1]
        return Timing(end[0] - marks[0][0], end[1] - marks[0][1])

    base = root / "npo-base"
    run_npo(npo_cls(steps=steps), base)          # learns generation 0 once (and warms up)
    counter = [0]

    def one(recompute: bool) -> Timing:
        counter[0] += 1
        run_root = root / f"npo-{counter[0]}"
        shutil.copytree(base / "npo", run_root / "npo", ignore=shutil.ignore_patterns("gen_1"))
        plugin = npo_cls(steps=steps, cache_reference=not recompute)
        return run_npo(plugin, run_root)

    tc, tr = _alternate(lambda: one(False), lambda: one(True), cfg["repeats"])
    ratio = _ratio(tr, tc)
    section = Section(title, "cached faster (>= 1.0x speed-up)", ratio, ratio >= 1.0,
                      _timing_rows("reference log-probs cached per example (collapsekit_npo)", tc,
                                   "reference forward pass every step (open-unlearning)", tr))
    section.notes.append(f"one unlearning generation of {steps} NPO steps on facts-unlearning (smoke sizes), "
                         "generation 0 read back from disk; ratio = recomputed time / cached time")
    section.notes.append(f"examples sent through the reference model (npo/ref_forwards): cached "
                         f"{forwards.get(False, float('nan')):.0f}, recomputed {forwards.get(True, float('nan')):.0f}")
    return section


# -- 5. token editing vs ancestral ----------------------------------------------------------------------
def editing_vs_ancestral(cfg: dict, root: Path, model: torch.nn.Module) -> Section:
    title = "Token editing vs ancestral generation (synthesis time per generation)"
    if not _installed("collapsekit_token_editing"):
        return Section(title, skipped="collapsekit_token_editing is not installed "
                                      "(pip install ./mitigations/token_editing)")
    from ..loop import start
    from collapsekit.plugins.baselines import AncestralSampling

    editing = _plugin_class("token-editing")()
    ancestral = AncestralSampling()
    run = _new_run(root, "synth", _task(cfg["task"]))
    start(run)
    model.eval()

    def timed(plugin) -> float:
        t = _clock()
        request = run.synthesis_request(0, shard=0, start=0, size=run.samples_per_generation)
        out = plugin.synthesize(run=run, model=model, generation=0, request=request)
        assert out["tokens"].shape[0] == run.samples_per_generation
        return _since(t)

    te, ta = _alternate(lambda: timed(editing), lambda: timed(ancestral), cfg["repeats"])
    ratio = _ratio(ta, te)
    section = Section(title, "report only (editing needs no autoregressive loop)", ratio, None,
                      _timing_rows("token-editing (one forward pass per batch)", te, "ancestral sampling", ta))
    section.notes.append(f"{run.samples_per_generation} sequences x {run.task.seq_len} tokens; "
                         "ratio = ancestral time / editing time")
    return section


# -- 6. pool growth ----------------------------------------------------------------------------------
def _growth_worker(method: str, cfg: dict, root: str, threads: int) -> list[dict]:
    """Run ``cfg['growth_generations']`` generations of ``method`` in this (fresh) process."""
    from .runner import _quiet
    from ..loop import execute

    torch.set_num_threads(threads)
    _quiet()
    task = _task(cfg["growth_task"])
    run = _new_run(Path(root), method, task, [method], generations=cfg["growth_generations"])
    rows: list[dict] = []
    _release_freed_memory()
    resettable = _reset_peak_rss()
    last = [_clock()]

    def on_generation(generation, metrics, resumed):
        spent = _since(last[0])
        rows.append({"generation": generation, "CPU s": spent.cpu, "wall s": spent.wall,
                     "peak_rss_mb": _rss_mb("VmHWM") if resettable else None,
                     "rss_mb": _rss_mb("VmRSS"), "pool_size": metrics.get("pool/size")})
        _release_freed_memory()
        _reset_peak_rss()
        last[0] = _clock()

    execute(run, _trainer(cfg["growth_steps"]), on_generation)
    return rows


def pool_growth(cfg: dict, root: Path) -> Section:
    title = "Time and memory per generation as the pool grows (accumulate vs accumulate-subsample)"
    if not _installed("collapsekit_accumulate"):
        return Section(title, skipped="collapsekit_accumulate is not installed (pip install ./mitigations/accumulate)")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..registry import normalize

    names = _installed_plugins()
    methods = [names.get(normalize(m)) for m in ("accumulate", "accumulate-subsample")]
    if None in methods:
        return Section(title, skipped=f"plugins accumulate and accumulate-subsample are needed; installed: "
                                      f"{sorted(names.values())}")
    results = {}
    for method in methods:  # one fresh process each, one after the other: peak RSS is per process
        if not cfg["isolate"]:
            results[method] = _growth_worker(method, cfg, str(root / "growth"), torch.get_num_threads())
            continue
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[method] = pool.submit(_growth_worker, method, cfg, str(root / "growth"),
                                          torch.get_num_threads()).result()
    section = Section(title, "subsample: flat peak RSS and time per generation")
    for method, rows in results.items():
        for r in rows:
            section.rows.append({"what": method, **r})
    sub = results[methods[1]]

    def peak(r: dict) -> float:
        return r["peak_rss_mb"] if r["peak_rss_mb"] is not None else r["rss_mb"]

    peaks = [peak(r) for r in sub]
    if len(peaks) >= 3:
        later = peaks[1:]  # generation 0 includes start-up (imports, data)
        growth = max(later) - min(later)
        section.ratio = max(later) / min(later)
        section.passed = section.ratio <= 1.10
        section.notes.append(f"accumulate-subsample peak RSS over generations 1..{len(peaks) - 1}: "
                             f"{min(later):.0f}-{max(later):.0f} MB (spread {growth:.0f} MB); "
                             "flat = max/min <= 1.10")
    acc = results[methods[0]]
    if len(acc) >= 3:
        section.notes.append(f"accumulate peak RSS over generations 1..{len(acc) - 1}: "
                             f"{peak(acc[1]):.0f} -> {peak(acc[-1]):.0f} MB while its pool grows "
                             f"{acc[1]['pool_size']:.0f} -> {acc[-1]['pool_size']:.0f} sequences")
    section.notes.append(f"MarkovText {cfg['growth_task']}, {cfg['growth_steps']} steps per generation (the same "
                         "for both, so CPU time per generation is expected flat for both); each method in a fresh "
                         "process; peak RSS = VmHWM, reset after each generation through /proc/self/clear_refs, "
                         "after gc.collect() and malloc_trim(0): without them glibc keeps freed heap and the "
                         "peak crept up ~7 MB per generation for accumulate-subsample too (measured 526 -> 589 MB "
                         "over 9 generations) although its live working set does not grow")
    return section


# -- 8. host syncs per training step ------------------------------------------------------------------
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
"""Tensor methods that copy a value to the host: on a GPU each waits until the device catches up."""


@contextlib.contextmanager
def host_syncs_in_training_steps():
    """Count :data:`SYNC_METHODS` calls made inside ``GenerationalModule.training_step`` while open.

    Yields the ``{method: calls}`` dict it fills (empty when there were none) and a flag list whose
    single item can be set to count outside a step too (to check the counter itself).
    """
    from ..module import GenerationalModule

    counts: dict[str, int] = {}
    inside = [False]
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}
    step = GenerationalModule.training_step

    def counting(name: str, original):
        def counted(self, *args, **kwargs):
            if inside[0]:
                counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return counted

    def watched(self, batch, batch_idx):
        inside[0] = True
        try:
            return step(self, batch, batch_idx)
        finally:
            inside[0] = False

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counting(name, original))
        GenerationalModule.training_step = watched
        yield counts, inside
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        GenerationalModule.training_step = step


SYNC_CASES = (("markov-text", ()), ("markov-text", ("vicreg",)), ("markov-text", ("maxsup",)),
              ("markov-text", ("label-smoothing",)), ("multiplication", ("seqvcr", "pause-tokens")),
              ("facts-unlearning", ("npo",)), ("facts-unlearning", ("npo-rt",)),
              ("facts-unlearning", ("gradient-ascent",)))
"""(task, plugins) whose training steps :func:`host_syncs` counts: the engine alone and every built-in
plugin with ``loss_terms``, each on a task it supports (the task's ``smoke`` preset)."""


def host_syncs(cfg: dict, root: Path) -> Section:
    from ..loop import execute
    from .runner import load_tasks, method_plugins

    from ..registry import normalize

    section = Section("Host syncs per training step", "0")
    installed = _installed_plugins()
    total, missing = 0, []
    tasks, _ = load_tasks(sorted({t for t, _ in SYNC_CASES}))
    for task_name, plugins in SYNC_CASES:
        absent = [p for p in plugins if normalize(p) not in installed]
        if absent:
            missing += absent
            continue
        spec = tasks[task_name].preset("smoke")
        init = spec.get("init", "scratch")     # unlearning: generation 0 learns, generation 1 unlearns
        with host_syncs_in_training_steps() as (counts, _):
            run = _new_run(root, f"syncs-{task_name}-{'-'.join(plugins) or 'none'}", tasks[task_name](**spec["task"]),
                           method_plugins("+".join(plugins), spec.get("plugin_args")) if plugins else (),
                           generations=1 if init == "scratch" else 2, init=init)
            steps = int(sum(m["train/steps"] for m in execute(run, _trainer(cfg["sync_steps"]))))
        calls = sum(counts.values())
        total += calls
        section.rows.append({"task": task_name, "plugins": ", ".join(plugins) or "(none)", "steps": steps,
                             "host syncs": calls, "per step": calls / steps,
                             "which": ", ".join(f"{k} x{v}" for k, v in counts.items())})
    section.ratio, section.passed = float(total), total == 0
    section.notes.append(f"calls of {', '.join(SYNC_METHODS)} on any tensor inside training steps (engine, "
                         "task step, loss-term plugins), each task at its smoke preset")
    if missing:
        section.notes.append(f"not installed, not counted: {', '.join(sorted(set(missing)))}")
    return section


def _installed_plugins() -> dict[str, str]:
    """``{normalized name: name}`` of the plugins that are installed and import."""
    from ..registry import discover, normalize

    return {normalize(n): n for n, i in discover().items() if not i.error}


# -- 9. scaling of one generation --------------------------------------------------------------------
def generation_scaling(cfg: dict, root: Path) -> Section:
    from ..loop import execute

    section = Section("Scaling: time of one generation with pool size and model size", "report only")
    base = cfg["task"]
    variants = [("pool size", n, {**base, "train_size": n}) for n in cfg["scale_pools"]]
    variants += [("model width (n_embd)", w, {**base, "n_embd": w}) for w in cfg["scale_widths"]]
    first: dict[str, Timing] = {}
    for what, value, sizes in variants:
        task = _task(sizes)
        run = _new_run(root, f"scale-{what[:4]}-{value}", task)
        t = _clock()
        execute(run, _trainer(cfg["scale_steps"]))
        spent = _since(t)
        first.setdefault(what, spent)
        params = sum(p.numel() for p in task.build_model().parameters())
        section.rows.append({"varied": what, "value": value, "parameters": params,
                             "pool (train = synthesized)": sizes["train_size"], "CPU s": spent.cpu,
                             "wall s": spent.wall, "CPU x smallest": spent.cpu / first[what].cpu})
    section.notes += [f"one generation through `execute`: {cfg['scale_steps']} optimiser steps (fixed, so training "
                      "time depends on the model only), synthesis of as many sequences as the pool holds, "
                      f"filter, probes on {base['heldout_size']} held-out sequences, files; MarkovText {base} "
                      "with the varied setting; one run each (a measurement, no target)"]
    return section


# -- report --------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render_perf(sections: list[Section], env: dict) -> str:
    """PERF.md text."""
    lines = ["# collapsekit performance", ""]
    if env.get("mode") == "smoke":
        lines += ["**Smoke mode: tiny sizes, one repeat. These numbers only show that the checks run; "
                  "they say nothing about performance.**", ""]
    lines += [f"- **{k}**: {v}" for k, v in env.items()]
    lines += ["", "| check | ratio | target | result |", "|---|---|---|---|"]
    for s in sections:
        result = "skipped" if s.skipped else ("PASS" if s.passed else "FAIL" if s.passed is False else "measured")
        lines.append(f"| {s.title} | {_cell(s.ratio) + 'x' if s.ratio is not None else ''} | {s.target} | {result} |")
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        if s.skipped:
            lines.append(f"Skipped: {s.skipped}")
            continue
        if s.rows:
            keys = list(dict.fromkeys(k for r in s.rows for k in r))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in s.rows]
        if s.ratio is not None:
            verdict = "PASS" if s.passed else "FAIL" if s.passed is False else "(no pass/fail target)"
            lines += ["", f"Ratio **{s.ratio:.3f}x** (target {s.target}): {verdict}."]
        lines += [""] + [f"- {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


def run_perf(out: str | Path = "bench", smoke: bool = False) -> dict:
    """Measure the sections above and write ``OUT/PERF.md`` and ``OUT/perf.json``; return the perf.json dict.

    ``smoke=True`` uses tiny sizes and one repeat (for tests: it checks that
    everything runs, its numbers mean nothing).
    """
    from .runner import _quiet, environment

    _quiet()
    cfg = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"mode": "smoke" if smoke else "full", **environment("cpu")}
    env["torch threads"] = torch.get_num_threads()
    env["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="collapsekit-perf-") as tmp:
        root = Path(tmp)
        sections: list[Section] = []

        def measured(section: Section) -> None:
            sections.append(section)
            result = section.skipped or (f"{section.ratio:.3f}x" if section.ratio is not None else "measured")
            print(f"collapsekit perf [{len(sections)}/{SECTIONS}] {section.title}: {result}", flush=True)

        overhead, model = engine_overhead(cfg, root)
        measured(overhead)
        measured(plugin_dispatch(cfg, root))
        measured(synthesis_throughput(cfg, model, _task(cfg["task"])))
        measured(synthesis_throughput(cfg, llama_like(_task(cfg["task"])), _task(cfg["task"]), "Llama"))
        measured(vllm_throughput(cfg, root))
        measured(npo_cache(cfg, root))
        measured(editing_vs_ancestral(cfg, root, model))
        measured(pool_growth(cfg, root))
        measured(engine_overhead(cfg, root, cfg["long_steps"], cfg["long_repeats"], warm_up=False)[0])
        measured(host_syncs(cfg, root))
        measured(generation_scaling(cfg, root))
    env["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env["wall time"] = f"{time.perf_counter() - started:.0f} s"
    result = {"meta": env, "sections": [s.__dict__ for s in sections]}
    atomic_write_bytes(out / "PERF.md", render_perf(sections, env).encode())
    atomic_write_bytes(out / "perf.json", json.dumps(result, indent=1, default=str).encode())
    return result
