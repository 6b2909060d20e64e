"""The generation loop: compose -> train -> synthesize -> filter -> store -> measure.

Each generation uses a fresh Lightning ``Trainer`` (``fit`` on a used Trainer is
a no-op) and ends by writing ``done``; a re-run resumes after the last finished
generation and reproduces the numbers of an uninterrupted run because every
seed derives from ``(run seed, generation, role)`` and every input is on disk.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable

import numpy as np
import torch

from .capabilities import ItemWeights, check_requirements, provides
from .contracts import as_float
from .distributed import barrier, process_rank, world
from .errors import CollapsekitError, Preempted
from .fileio import atomic_write_bytes, atomic_write_json, writing
from .fingerprint import check_or_record
from .pool import Pool
from .run import Run
from .runlock import hold
from .seeds import derive_seed
from .threads import resolve_threads, torch_threads

TrainerFactory = Callable[[int, Any], Any]
"""``(generation, gen_dir) -> lightning.Trainer``: a fresh trainer for each generation."""


def start(run: Run) -> None:
    """Prepare a run: check and write its directory, configure plugins, build task data."""
    run.prepare_directory()
    run.hooks.call("configure", run=run)
    reqs: set[str] = set()
    for _, value in run.hooks.call("requirements", task=run.task):
        reqs.update([value] if isinstance(value, str) else value)
    check_requirements(run.task, reqs)
    run.requirements = frozenset(reqs)
    run.task.setup(derive_seed(run.seed, 0, "data"))
    real = run.task.real_pool()
    if len(real) == 0:
        raise CollapsekitError(f"task {run.task.name!r} produced an empty real dataset; check its size settings")
    check_or_record(run)
    run.samples_per_generation = run.config.samples_per_generation or len(real)
    run.synthesis_total = math.ceil(round(run.samples_per_generation * run.hooks.oversample(), 6))
    run.freeze()


def build_model(run: Run, generation: int) -> torch.nn.Module:
    """The initial weights of ``generation`` according to ``run.config.init``."""
    torch.manual_seed(derive_seed(run.seed, generation if run.config.init == "scratch" else 0, "init"))
    if generation > 0 and run.config.init == "previous":
        return run.task.load_model(run.gen_dir(generation - 1))
    if generation > 0 and run.config.init == "base":
        return run.task.load_model(run.gen_dir(0))
    return run.task.build_model()


def train_generation(run: Run, generation: int, make_trainer: TrainerFactory):
    """Compose the pool and train ``generation``; return ``(module, training pool)``.

    Training continues from the generation's newest step checkpoint when there is one
    (:mod:`collapsekit.checkpoints`); a preemption signal during training saves one and raises
    :class:`~collapsekit.errors.Preempted`.
    """
    from lightning.pytorch.strategies import ParallelStrategy
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from . import checkpoints
    from .module import GenerationalModule

    real = run.task.real_pool()
    _, pool = run.hooks.first("compose_pool", run=run, generation=generation, real=real,
                              history=run.history(generation))
    if pool is None:
        raise CollapsekitError("no compose_pool policy returned a pool; is the built-in 'replace' disabled?")
    run.task.check_pool(pool)
    check_weights(run, pool)
    model = build_model(run, generation)
    module = GenerationalModule(run, generation, model)
    torch.manual_seed(derive_seed(run.seed, generation, "train"))
    loader = run.task.dataloader(pool, shuffle=True, seed=derive_seed(run.seed, generation, "shuffle"))
    run.hooks.call("generation_start", run=run, generation=generation, module=module)
    gen_dir = run.gen_dir(generation)
    trainer = make_trainer(generation, gen_dir)
    resume = checkpoints.latest(gen_dir)
    if resume is None and process_rank() == 0:
        checkpoints.remove(gen_dir)                     # leftovers of a save that never completed
    # a parallel strategy (DDP, also on one device) re-creates a DataLoader with a distributed sampler,
    # so the loader is not wrapped there (a resumed generation then restarts the interrupted pass)
    if not isinstance(trainer.strategy, ParallelStrategy):
        loader = checkpoints.ResumableLoader(loader)
    callback = checkpoints.StepCheckpoints(gen_dir, generation, run.config.checkpoint_every,
                                           loader if isinstance(loader, checkpoints.ResumableLoader) else None)
    trainer.callbacks.append(callback)
    if resume is not None and process_rank() == 0:
        print(f"generation {generation}: resuming from the step checkpoint of step {resume[1]} ({resume[0]})",
              flush=True)
    try:
        with warnings.catch_warnings():
            # Lightning cannot see that the wrapped loader resumes mid-pass and would say it does not
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
            trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume[0]) if resume else None)
    except SIGTERMException:                            # SIGTERM before our handler took over
        raise Preempted(f"preempted (SIGTERM) at generation {generation}, step {trainer.global_step}, "
                        f"before a checkpoint of this step was saved; re-run the same command to resume "
                        f"from the newest checkpoint, if any.") from None
    finally:
        callback.restore_signals()
    if trainer.interrupted:
        raise KeyboardInterrupt
    run.hooks.call("generation_end", run=run, generation=generation, module=module)
    module.model.eval()
    return module, pool


def check_weights(run: Run, pool: Pool) -> None:
    """Raise unless the task honours the per-item loss weights ``pool`` carries (if any)."""
    task = run.task
    if pool.weights is not None and not (isinstance(task, ItemWeights) and ItemWeights.requirement in provides(task)):
        raise CollapsekitError(
            f"the pool policy gave generation's training pool per-item loss weights, but task {task.name!r} "
            f"({type(task).__name__}) does not have the capability ItemWeights (its step would ignore them); "
            f"pick a task that weighs items (e.g. gaussian, linear-regression, digits-classify) or a pool policy "
            f"without weights")


SHARD_SIZE = 4096
"""Synthesis is done in shards of at most this many items, each seeded on its own, so that the
synthetic pool does not depend on how many DDP ranks shared the work."""


def synthesize_shards(run: Run, model: torch.nn.Module, generation: int) -> Pool:
    """Call ``synthesize`` once per shard; ranks take shards round-robin; all ranks get every item.

    A generation synthesizes ``run.synthesis_total`` items: ``run.samples_per_generation`` times the
    active filters' oversampling factor. Shard ``s`` gets a :class:`~collapsekit.run.SynthesisRequest`
    of its size whose generator is seeded by ``(seed, g, "synthesize/shard<s>")``; shards are joined in
    order.
    """
    rank, size = world()
    total = run.synthesis_total
    shards = [(s, min(SHARD_SIZE, total - s * SHARD_SIZE)) for s in range(-(-total // SHARD_SIZE))]
    mine: dict[int, dict[str, np.ndarray]] = {}
    for shard, n in shards[rank::size]:
        torch.manual_seed(derive_seed(run.seed, generation, f"synthesize-global/shard{shard}"))
        request = run.synthesis_request(generation, shard, start=shard * SHARD_SIZE, size=n)
        _, arrays = run.hooks.first("synthesize", run=run, model=model, generation=generation, request=request)
        if arrays is None:
            raise CollapsekitError("no synthesize plugin returned samples; is the built-in 'ancestral' disabled?")
        if isinstance(arrays, Pool):
            arrays = arrays.arrays
        mine[shard] = {k: np.asarray(v) for k, v in arrays.items()}
    if size > 1:
        import torch.distributed as dist

        gathered: list = [None] * size
        dist.all_gather_object(gathered, mine)
        mine = {s: a for part in gathered for s, a in part.items()}
    keys = sorted(mine[0])
    return Pool.fresh({k: np.concatenate([mine[s][k] for s in sorted(mine)]) for k in keys}, generation)


def filter_pool(run: Run, samples: Pool, generation: int) -> tuple[Pool, dict[str, float]]:
    """Apply every ``filter_samples`` mask (AND), then keep at most ``run.samples_per_generation`` of the
    items that passed (the first ones, in synthesis order: an oversampled generation is cut back to the
    pool budget); return the kept pool and the filter metrics.

    Per filter: ``filter/<plugin>/kept`` (share of the synthesized items its mask keeps) and, when it
    returns scores, ``filter/<plugin>/score_mean`` (mean score of *all* synthesized items) and
    ``filter/<plugin>/kept_score_mean`` (mean score of the items its own mask keeps)."""
    run.task.check_pool(samples)
    keep = np.ones(len(samples), dtype=bool)
    stats: dict[str, float] = {"synthetic/generated": float(len(samples))}
    for plugin, result in run.hooks.call("filter_samples", run=run, samples=samples, generation=generation):
        scores = None
        if isinstance(result, tuple):
            result, scores = result
        mask = np.asarray(result)
        keep &= mask
        stats[f"filter/{plugin}/kept"] = float(mask.mean()) if len(mask) else 1.0
        if scores is not None and len(scores):
            scores = np.asarray(scores, dtype=np.float64)
            stats[f"filter/{plugin}/score_mean"] = float(np.mean(scores))
            if mask.any():
                stats[f"filter/{plugin}/kept_score_mean"] = float(np.mean(scores[mask]))
    passed = np.flatnonzero(keep)
    stats["synthetic/passed"] = float(len(passed))
    kept = samples.select(passed[:run.samples_per_generation])
    stats["synthetic/kept"] = float(len(kept))
    return kept, stats


def run_generation(run: Run, generation: int, make_trainer: TrainerFactory) -> dict[str, float]:
    """Train, synthesize, filter, store and measure one generation; write ``done`` last.

    Under DDP every rank trains, synthesizes its shards, filters the whole synthetic pool
    (deterministically, so every rank keeps the same items) and measures: the ``metrics`` hook
    runs in every rank, so an evaluation may split its batches over ranks
    (:func:`collapsekit.distributed.shard`) and reduce. Rank 0 alone writes files; all ranks meet
    at a barrier before measuring (the pool is on disk) and before the next generation.
    """
    gen_dir = run.gen_dir(generation)
    lead = process_rank() == 0
    if lead:
        (gen_dir / "done").unlink(missing_ok=True)
    module, pool = train_generation(run, generation, make_trainer)
    model = module.model
    lead = process_rank() == 0            # the process group may exist only now
    with writing(gen_dir):
        files = run.task.save_model(model, gen_dir) if lead else []
    samples = synthesize_shards(run, model, generation)
    kept, filter_stats = filter_pool(run, samples, generation)
    if lead:
        files += _store(run, generation, pool, kept)
    barrier()
    metrics = measure(run, model, generation)
    metrics.update(module.term_means())
    metrics.update(filter_stats)
    metrics["train/steps"] = float(module.global_step)
    metrics["train/world_size"] = float(module.trainer.world_size)
    metrics["pool/size"] = float(len(pool))
    metrics["pool/real_share"] = float(np.mean(np.asarray(pool.origin_generation) < 0)) if len(pool) else 0.0
    if pool.weights is not None and pool.weights.sum() > 0:
        metrics["pool/real_weight_share"] = float(pool.weights[np.asarray(pool.origin_generation) < 0].sum()
                                                  / pool.weights.sum())
    if lead:
        _finish(run, generation, metrics, files)
    barrier()
    return metrics


def measure(run: Run, model: torch.nn.Module, generation: int) -> dict[str, float]:
    """Every ``metrics`` result of ``generation`` as floats (called in every rank; see the hook's contract)."""
    with torch.no_grad():
        measured = run.hooks.merged("metrics", run=run, model=model, generation=generation)
    return {k: as_float(v) for k, v in measured.items()}     # numbers: checked by the metrics contract


def _store(run: Run, generation: int, pool: Pool, kept: Pool) -> list[str]:
    """Write the kept synthetic pool, its samples and the training pool's lineage; return the files."""
    gen_dir = run.gen_dir(generation)
    files = [f"pool/{f}" for f in kept.save(gen_dir / "pool").values()]
    files += run.task.write_samples(kept, gen_dir)
    lineage = Pool({}, pool.origin_generation, pool.origin_index, pool.weights)
    files += [f"train_lineage/{f}" for f in lineage.save(gen_dir / "train_lineage").values()]
    return files


def _finish(run: Run, generation: int, metrics: dict[str, float], files: list[str]) -> None:
    """Write ``metrics.json`` and the manifest, then ``done``; remove the generation's step checkpoints."""
    from .checkpoints import remove

    gen_dir = run.gen_dir(generation)
    atomic_write_json(gen_dir / "metrics.json", metrics)
    run.write_manifest(generation, [*files, "metrics.json", *run.plugin_files(generation)])
    atomic_write_bytes(gen_dir / "done", b"")
    remove(gen_dir)                                 # only once ``done`` is written


def execute(run: Run, make_trainer: TrainerFactory, on_generation: Callable[[int, dict, bool], None] | None = None
            ) -> list[dict[str, float]]:
    """Run all generations, resuming after the last finished one; return every generation's metrics.

    ``on_generation(generation, metrics, resumed)`` is called after each generation
    (``resumed`` is True for generations read back from disk). The launching process holds the run
    directory's lock throughout (:mod:`collapsekit.runlock`): a second process is refused. Torch's
    intra-op threads are set to ``run.config.threads`` (:func:`collapsekit.threads.resolve_threads`) for
    the run and restored after it.
    """
    with hold(run.dir, run.is_lead) as note, torch_threads(resolve_threads(run.config.threads)[0]):
        if note is not None:
            print(f"collapsekit: note: {note}", file=sys.stderr, flush=True)
        return _all_generations(run, make_trainer, on_generation)


def _all_generations(run: Run, make_trainer: TrainerFactory,
                     on_generation: Callable[[int, dict, bool], None] | None) -> list[dict[str, float]]:
    start(run)
    done = run.finished()
    results = []
    for generation in range(run.generations):
        if generation < done:
            run.verify(generation)
            if run.is_lead:
                from .checkpoints import remove

                remove(run.gen_dir(generation))         # left when killed between ``done`` and their removal
            metrics = run.metrics_of(generation)
            resumed = True
        else:
            metrics = run_generation(run, generation, make_trainer)
            resumed = False
        results.append(metrics)
        if on_generation is not None:
            on_generation(generation, metrics, resumed)
    return results


def trainer_factory(**trainer_kwargs: Any) -> TrainerFactory:
    """A :data:`TrainerFactory` building ``lightning.Trainer(**trainer_kwargs)`` per generation.

    Defaults: no Lightning checkpointing (the engine saves weights and its own step checkpoints),
    a CSV logger under ``gen_<k>/logs`` (``gen_<k>/logs/from_step_<s>`` when the generation resumes
    from the step checkpoint of step ``s``, so the earlier log is kept) and ``default_root_dir`` =
    ``gen_<k>``.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    def make(generation: int, gen_dir) -> Any:
        kwargs = {"enable_checkpointing": False, "enable_model_summary": False, **trainer_kwargs}
        if "logger" not in kwargs:
            from .checkpoints import resume_step

            step = resume_step(gen_dir)
            kwargs["logger"] = CSVLogger(str(gen_dir), name="logs", version="" if step is None else f"from_step_{step}")
        kwargs["default_root_dir"] = str(gen_dir)
        return pl.Trainer(**kwargs)

    return make
