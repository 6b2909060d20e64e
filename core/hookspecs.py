"""Hook specifications: the points where plugins change a generational run.

Each hook's docstring is its contract: when it is called, what it receives,
what it must return and how the results of several plugins combine. The README's
hook table is generated from these docstrings (``collapsekit hooks --markdown``).

A hook implementation may accept any subset of the arguments listed in its
spec (pluggy rule); name them exactly. collapsekit calls implementations one by
one in pluggy's order (``tryfirst`` first, ``trylast`` last, otherwise last
registered first) so that every result and every error is attributed to the
plugin that produced it; hook wrappers are therefore not supported.

Arguments that recur:

* ``run`` -- the :class:`collapsekit.run.Run`, read-only once generation 0 starts:
  ``run.task``, ``run.seed``, ``run.generations``, ``run.config``, ``run.dir``,
  ``run.requirements``, ``run.samples_per_generation``, ``run.rng(generation, role)``,
  ``run.torch_generator(generation, role)``, ``run.model_of(generation)``,
  ``run.save_file(generation, name, data)`` / ``run.read_file(generation, name)``.
* ``generation`` -- the 0-based index of the generation (generation 0 trains on real data).
* ``task`` -- the :class:`collapsekit.task.Task` of the run.
* ``model`` -- the trained ``torch.nn.Module`` of this generation (eval mode).
"""
from __future__ import annotations

from .markers import hookspec


@hookspec
def configure(run):
    """Validate and prepare, once per run, before generation 0 and before any data is built.

    Called on every active plugin. Return nothing. Raise
    :class:`collapsekit.errors.TaskIncompatible` (or any ``CollapsekitError``)
    with a message naming what is wrong when the plugin cannot work with
    ``run.task``; the run stops before anything is trained.
    """


@hookspec
def requirements(task):
    """Declare what the engine must provide to this plugin, once per run.

    Return an iterable of strings; the union over all plugins is stored as
    ``run.requirements`` and passed to the task's ``step``. Known names: the
    requirement name of every task capability (:mod:`collapsekit.capabilities`,
    e.g. ``"hidden_states"``, ``"features"``, ``"forget_data"``, ``"tokens"``)
    and ``"reference_model"``, which the engine provides itself (a frozen copy of
    the model as it was when the generation started, ``module.reference_model``).
    A requirement the task lacks stops the run before training with a message
    naming the capability.
    """


@hookspec(firstresult=True)
def compose_pool(run, generation, real, history):
    """Choose the training pool of ``generation``, before its training starts.

    ``real`` is the task's real training :class:`~collapsekit.pool.Pool`;
    ``history`` a :class:`~collapsekit.pool.PoolHistory` whose item ``g`` is the
    filtered synthetic pool of generation ``g`` (for ``g < generation``),
    memory-mapped. Return a :class:`~collapsekit.pool.Pool` (lineage kept).

    firstresult, exactly one policy: the built-in ``replace`` (``trylast``)
    applies when no other policy is active; two active non-default policies
    are an error at start-up.
    """


@hookspec(firstresult=True)
def synthesize(run, model, generation, request):
    """Produce the synthetic data of one shard of ``generation`` from its trained ``model``.

    Called after training, once per *shard*: the engine splits a generation's
    synthesis into fixed-size shards (spread over DDP ranks) so that the pool
    does not depend on the number of workers. ``request`` is a
    :class:`~collapsekit.run.SynthesisRequest`: ``request.size`` items to make,
    items ``request.slice`` (``request.start`` onwards) of the generation's
    ``request.total``, and ``request.generator``, a CPU ``torch.Generator`` seeded
    from ``(run seed, generation, shard)`` -- draw randomness only from it (or from
    ``run.torch_generator`` roles) so that results do not depend on resume points
    or the number of workers. Return ``dict[str, numpy.ndarray]`` with the task's
    pool array names and exactly ``request.size`` items (the engine adds lineage),
    or ``None`` to leave it to the next implementation.

    firstresult: the built-in ``ancestral`` (``trylast``) samples from the model
    with the task's sampler.
    """


@hookspec
def filter_samples(run, samples, generation):
    """Decide which synthesized items of ``generation`` enter the pool history.

    Called once per generation, after all synthesis shards are joined, in every
    process of a distributed run, which must all return the same mask (draw any
    randomness from ``run.rng`` / ``run.torch_generator``). ``samples`` is the synthesized :class:`~collapsekit.pool.Pool`. Return a
    boolean ``numpy.ndarray`` of ``len(samples)`` (``True`` = keep), a
    ``(keep, scores)`` tuple of the mask and one finite float score per item, or
    ``None`` for no opinion. All masks are AND-ed. Logged per plugin:
    ``filter/<plugin>/kept`` (the share its mask keeps) and, with scores,
    ``filter/<plugin>/score_mean`` (mean over *all* synthesized items) and
    ``filter/<plugin>/kept_score_mean`` (mean over the items its mask keeps).
    To score items under a model, use :func:`collapsekit.scoring.score_items`.

    A filter that keeps only part of what it sees may ask for more: a plugin
    attribute ``oversample = f`` (a number >= 1) makes every generation
    synthesize ``ceil(f * run.samples_per_generation)`` items (the largest
    factor of the active filters applies; ``request.total`` says how many), and
    the engine keeps at most ``run.samples_per_generation`` of the items that
    pass every filter, the first ones in synthesis order -- so a filtering
    method trains on a pool of the baseline's size. A filter that ranks keeps
    its best ``run.samples_per_generation`` items itself. Logged:
    ``synthetic/generated``, ``synthetic/passed`` (all filters), ``synthetic/kept``.
    """


@hookspec
def loss_terms(module, batch, outputs):
    """Add named loss terms to every training step.

    ``module`` is the :class:`~collapsekit.module.GenerationalModule` (its
    ``task``, ``run``, ``generation``, ``reference_model`` and the engine
    services: ``module.progress``, ``module.trainable(name)``,
    ``module.request_stop()``); ``batch`` the task's batch; ``outputs`` the
    task's step output: ``"loss"`` (the task loss), and per task ``"logits"``,
    ``"labels"``, ``"hidden_states"``, ``"features"`` as requested.

    Return ``dict[str, torch.Tensor]`` of finite scalar tensors. Every term of
    every plugin is summed onto the task loss and logged as ``loss/<name>``;
    two plugins returning the same name is an error. A plugin whose class sets
    ``replaces_task_loss = True`` supplies the task loss itself (e.g. MaxSup
    replaces cross-entropy): the task's ``"loss"`` is then not added. At most
    one active plugin may do so.

    A generation may resume from a step checkpoint (``run.checkpoint_every``,
    preemption) in a new process: derive anything step-dependent from
    ``module.progress`` and keep trained state in ``module.add_trainable``
    modules (both restored), not in attributes updated step by step.
    """


@hookspec
def generation_start(run, generation, module):
    """Called on every plugin right before ``generation``'s training starts.

    ``module`` is the fresh :class:`~collapsekit.module.GenerationalModule`
    (its ``model`` already initialised; training not yet started). Return
    nothing. Use it for per-generation state: schedules (e.g. a coefficient
    ramp), caches keyed by generation, extra trainable modules
    (``module.add_trainable(name, nn.Module)``: trained with the model, never
    saved with it) or an optimizer state to continue from
    (``module.restore_optimizer(state, lr=None)``).
    """


@hookspec
def generation_end(run, generation, module):
    """Called on every plugin right after ``generation``'s training ends.

    ``module`` is the trained :class:`~collapsekit.module.GenerationalModule`
    (``module.optimizer_state()`` gives its optimizers' final state). Called
    before the weights are saved and before synthesis and metrics. Return
    nothing. Use it to release per-generation state or to record training
    statistics; files go through ``run.save_file(generation, name, data)`` so that
    they are checksummed in the generation's manifest.
    """


@hookspec
def metrics(run, model, generation):
    """Measure the trained ``model`` of ``generation`` after synthesis and filtering.

    Return ``dict[str, float]``. The dicts of all plugins are merged into the
    generation's ``metrics.json``; two plugins returning the same key is an
    error. ``run.synthetic(generation)`` gives this generation's filtered pool.
    The built-in ``probes`` plugin reports the task's collapse probes.
    Called in every process of a distributed run (the first one writes the
    values): return the same values in each, e.g. by splitting an evaluation's
    batches with ``collapsekit.distributed.shard(n)`` and reducing with
    torchmetrics or ``collapsekit.distributed.all_sum``, or by computing it in
    the first process alone with ``collapsekit.distributed.from_lead(fn)``;
    every process makes the same collective calls in the same order.
    """
