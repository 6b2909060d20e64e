"""The contract of every hook in one place: how results combine and what a result must look like.

:data:`HOOKS` is read by the dispatcher (which validates every plugin result with it), by
the hook reference (``collapsekit hooks``) and by the conformance kit
(:mod:`collapsekit.testing`, which calls the same validators in strict mode).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .capabilities import REQUIREMENTS
from .pool import REAL, Pool

RESERVED_LOSS_TERMS = ("task", "total")
"""Loss-term names the engine uses itself (``loss/task``, ``loss/total``)."""
RESERVED_METRIC_PREFIXES = ("loss/", "filter/", "synthetic/", "pool/", "train/")
"""Metric key prefixes the engine writes into ``metrics.json`` itself; plugins may not use them."""


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    try:
        import torch

        return isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool
    except ImportError:  # pragma: no cover
        return False


def as_float(value: Any) -> float:
    """A number (Python, NumPy or a one-element tensor) as a Python float."""
    return float(value.detach().cpu().item()) if hasattr(value, "detach") else float(value)


def _check_requirements(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    if isinstance(value, str):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        return [f"must return an iterable of strings, got {type(value).__name__}"]
    problems = []
    for item in items:
        if not isinstance(item, str) or item not in REQUIREMENTS:
            close = difflib.get_close_matches(str(item), sorted(REQUIREMENTS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown requirement {item!r}.{hint} Known: {', '.join(sorted(REQUIREMENTS))}")
    return problems


def _check_compose_pool(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    if not isinstance(value, Pool):
        return [f"must return a collapsekit.pool.Pool (lineage kept), got {type(value).__name__}; build it with "
                f"real.select(...), history[g] or Pool.concat([...])"]
    problems = []
    task = getattr(kwargs.get("run"), "task", None)
    if task is not None and value.keys != tuple(sorted(task.pool_keys)):
        problems.append(f"pool holds arrays {list(value.keys)}, the task expects {sorted(task.pool_keys)}; "
                        "is it a pool from another task?")
    if len(value) == 0:
        problems.append("returned an empty pool; the generation would have nothing to train on")
    gen = np.asarray(value.origin_generation)
    generation = kwargs.get("generation")
    if len(gen) and (gen.min() < REAL or (generation is not None and gen.max() >= generation)):
        problems.append(f"lineage origin_generation spans [{gen.min()}, {gen.max()}] but generation {generation} "
                        f"can only train on real data ({REAL}) and earlier generations; keep the lineage of "
                        f"the pools you combine (select/concat) instead of Pool.fresh")
    return problems


def _check_synthesize(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    if isinstance(value, Pool):
        value = value.arrays
    if not isinstance(value, Mapping):
        return [f"must return dict[str, numpy.ndarray] (or None), got {type(value).__name__}"]
    task = getattr(kwargs.get("run"), "task", None)
    problems = []
    if task is not None and set(value) != set(task.pool_keys):
        problems.append(f"returned arrays {sorted(value)}, the task's pool_keys are {sorted(task.pool_keys)}")
    want = getattr(kwargs.get("request"), "size", None)
    for key, arr in value.items():
        if not isinstance(arr, np.ndarray):
            problems.append(f"array {key!r} is a {type(arr).__name__}, not a numpy.ndarray (use .numpy())")
        elif arr.dtype == object:
            problems.append(f"array {key!r} has dtype object; pools are stored as .npy without pickles")
        elif want is not None and len(arr) != want:
            problems.append(f"array {key!r} has {len(arr)} items, the shard's request.size is {want}")
    return problems


def _check_filter(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    n = len(kwargs["samples"]) if kwargs.get("samples") is not None else None
    scores = None
    if isinstance(value, tuple):
        if len(value) != 2:
            return [f"a tuple result must be (keep, scores), got {len(value)} items"]
        value, scores = value
    mask = np.asarray(value)
    problems = []
    if mask.dtype != bool or mask.ndim != 1 or (n is not None and len(mask) != n):
        problems.append(f"keep mask must be a boolean array of shape ({n},), got {mask.dtype} {mask.shape}")
    if scores is not None:
        s = np.asarray(scores)
        if s.ndim != 1 or (n is not None and len(s) != n) or not np.issubdtype(s.dtype, np.number) \
                or not np.isfinite(s).all():
            problems.append(f"scores must be {n} finite numbers, got {s.dtype} {s.shape}")
    return problems


def _check_loss_terms(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    """Structure of every term; with ``strict`` (the conformance kit) also finiteness and, the first
    time a name is seen (``kwargs["grad_checked"]``), that its gradient reaches a parameter. The
    engine's own call is not strict: reading a value would stall the device every step."""
    import torch

    if not isinstance(value, Mapping):
        return [f"must return dict[str, torch.Tensor], got {type(value).__name__}"]
    problems = []
    module = kwargs.get("module")
    for key, term in value.items():
        where = f"loss term {key!r}"
        if not isinstance(key, str) or not key:
            problems.append(f"loss term names must be non-empty strings, got {key!r}")
            continue
        if key in RESERVED_LOSS_TERMS:
            problems.append(f"{where}: the name is reserved for the engine (loss/{key}); rename it")
        if not isinstance(term, torch.Tensor) or term.numel() != 1:
            shape = tuple(term.shape) if isinstance(term, torch.Tensor) else type(term).__name__
            problems.append(f"{where} must be a scalar tensor, got {shape}; reduce it (e.g. .mean())")
            continue
        if not strict:
            continue
        if not term.requires_grad:
            problems.append(f"{where} has no gradient (requires_grad is False), so it trains nothing; compute it "
                            f"from the model's outputs without .detach()/.item()/torch.no_grad()")
        if not torch.isfinite(term).all():
            problems.append(f"{where} is not finite ({term.item()})")
        grad_checked = kwargs.get("grad_checked")
        if term.requires_grad and module is not None and grad_checked is not None and key not in grad_checked:
            grad_checked.add(key)
            params = [p for p in module.parameters() if p.requires_grad]
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True) if params else []
            if not any(g is not None for g in grads):
                problems.append(f"{where} does not depend on any trainable parameter of the module")
            elif not all(torch.isfinite(g).all() for g in grads if g is not None):
                problems.append(f"{where} has non-finite gradients")
    return problems


def _check_metrics(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"must return dict[str, float], got {type(value).__name__}"]
    problems = []
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            problems.append(f"metric names must be non-empty strings, got {key!r}")
            continue
        if key.startswith(RESERVED_METRIC_PREFIXES):
            problems.append(f"metric {key!r}: prefixes {', '.join(RESERVED_METRIC_PREFIXES)} are written by the "
                            f"engine itself; prefix it with your plugin's name")
        if not _is_number(item):
            problems.append(f"metric {key!r} must be a number, got {type(item).__name__}")
        elif not math.isfinite(as_float(item)):
            problems.append(f"metric {key!r} is not finite ({as_float(item)})")
    return problems



def _returns_nothing(value: Any, kwargs: Mapping[str, Any], strict: bool) -> list[str]:
    return [f"returned a {type(value).__name__}; it must return nothing (its result is ignored)"]


Validator = Callable[[Any, Mapping[str, Any], bool], "list[str]"]


@dataclass(frozen=True)
class HookContract:
    """How one hook's results combine (``combine``, as shown in the hook reference) and the
    validator of a non-``None`` result: ``check(value, kwargs, strict) -> problems``."""

    combine: str
    check: Validator


HOOKS: dict[str, HookContract] = {
    "configure": HookContract("all called", _returns_nothing),
    "requirements": HookContract("union of all results", _check_requirements),
    "compose_pool": HookContract("first non-None result wins; one policy", _check_compose_pool),
    "synthesize": HookContract("first non-None result wins", _check_synthesize),
    "filter_samples": HookContract("keep-masks AND-ed", _check_filter),
    "loss_terms": HookContract("terms summed; a name clash is an error", _check_loss_terms),
    "generation_start": HookContract("all called", _returns_nothing),
    "generation_end": HookContract("all called", _returns_nothing),
    "metrics": HookContract("dicts merged; a key clash is an error", _check_metrics),
}
"""Every hook, in the order of a generation."""


def check_result(hook: str, value: Any, kwargs: Mapping[str, Any], strict: bool = False) -> list[str]:
    """Problems (empty when fine) of ``value`` returned by an implementation of ``hook`` called with
    ``kwargs``; ``None`` ("no opinion") is always fine."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; known: {', '.join(HOOKS)}")
    return [] if value is None else HOOKS[hook].check(value, kwargs, strict)
