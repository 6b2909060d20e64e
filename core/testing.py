"""Conformance kit for collapsekit plugins (use it from pytest).

A plugin author subclasses :class:`PluginConformance`::

    from collapsekit.testing import PluginConformance

    class TestMine(PluginConformance):
        plugin_name = "maxsup"                  # entry-point name (or set plugin_factory)
        plugin_args = {"alpha": 0.1}            # constructor arguments (optional)
        task_factory = staticmethod(my_task)    # optional: a task the plugin can work with

and gets these tests, each failing with a message that names the plugin, the
hook and the fix: the plugin implements only known hooks with the spec's
argument names; it survives ``pickle``; it declares known ``requirements``;
every hook it implements returns values that follow the hook's contract during a
tiny real run (``collapsekit.loop.execute`` with a real Lightning ``Trainer``);
two runs with the same seed give identical metrics.

The checks are also plain functions (:func:`check_hooks`, :func:`check_picklable`,
:func:`check_requirements`, :func:`check_hook_result`, :func:`run_tiny`) usable
without the class. ``pytest_plugins = ["collapsekit.testing"]`` in a conftest
provides the fixture ``collapsekit_run_tiny``.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import pytest

from . import hookspecs
from .dispatch import DEFAULT_PLUGINS, HOOK_NAMES, Hooks, build_manager, new_plugin_manager, register_plugin
from .errors import PluginError
from .capabilities import unmet
from .contracts import HOOKS, RESERVED_LOSS_TERMS, RESERVED_METRIC_PREFIXES, check_result
from .markers import PROJECT
from .quiet import quiet_lightning
from .registry import discover, distribution_of, implemented_hooks, instantiate, normalize, resolve

VALUE_HOOKS = tuple(name for name, contract in HOOKS.items() if contract.combine != "all called")
"""Hooks whose results are used; the others must return ``None``."""
__all__ = ["PluginConformance", "ConformanceError", "check_hooks", "check_picklable", "check_requirements",
           "check_hook_result", "run_tiny", "toy_task", "collapsekit_run_tiny", "RESERVED_LOSS_TERMS",
           "RESERVED_METRIC_PREFIXES"]


#: torch intra-op thread counts every slow claim test runs under: the reductions of 1 and 2 threads
#: take different floating-point paths, and a claim must hold on both (``pytest.mark.parametrize``)
CLAIM_THREADS = (1, 2)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ConformanceError(AssertionError):
    """A plugin breaks a hook contract; the message names the plugin, the hook and the fix."""


# -- the toy task --------------------------------------------------------------------
def toy_task() -> Any:
    """The default task of the kit: a tiny ``MarkovText`` (64 sequences of 8 tokens, 1-layer GPT-2)."""
    from collapsekit.plugins.tasks.markov_text import MarkovText

    return MarkovText(train_size=64, heldout_size=16, seq_len=8, vocab_size=16, n_layer=1, n_embd=16,
                      n_head=2, batch_size=32)


# -- static checks ---------------------------------------------------------------------
def _function(value: Any) -> Any:
    return getattr(value, "__func__", value)


def _required_args(fn: Any) -> list[str]:
    """Arguments pluggy passes to ``fn``: positional parameters without defaults, ``self`` excluded."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return names[1:] if names[:1] == ["self"] and not inspect.ismethod(fn) else names


def _defaulted_args(fn: Any) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is not inspect.Parameter.empty]


def spec_args(hook: str) -> list[str]:
    """The argument names of hook spec ``hook``."""
    return list(inspect.signature(getattr(hookspecs, hook)).parameters)


def _label(name: str, distribution: str) -> str:
    return f"plugin {name!r} ({distribution})"


def check_hooks(plugin: Any, name: str = "plugin", distribution: str = "?") -> list[str]:
    """Check ``plugin`` against the hook specs; return the hooks it implements.

    Raises :class:`ConformanceError` listing every problem: hook names that are
    not collapsekit hooks (with "did you mean", e.g. ``los_terms``), arguments
    not in the spec (e.g. ``modle``), methods named like a hook but lacking
    ``@collapsekit.hookimpl`` (pluggy would silently ignore them), markers of
    another pluggy project, hook wrappers, ``replaces_task_loss`` without
    ``loss_terms``, and a plugin implementing no hook at all.
    """
    problems: list[str] = []
    label = _label(name, distribution)
    for attr in sorted(dir(plugin)):
        if attr.startswith("__"):
            continue
        try:
            value = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - a property may raise; not a hook
            continue
        if not callable(value):
            continue
        marks = {k[: -len("_impl")] for k, v in vars(_function(value)).items()
                 if k.endswith("_impl") and isinstance(v, dict)} if hasattr(_function(value), "__dict__") else set()
        foreign = marks - {PROJECT}
        if foreign:
            problems.append(f"{attr} is marked with the hookimpl of pluggy project {sorted(foreign)[0]!r}; "
                            f"use `from collapsekit import hookimpl`")
        if attr in HOOK_NAMES and not marks:
            problems.append(f"method {attr!r} has a hook's name but no @collapsekit.hookimpl marker, so it is "
                            f"never called; decorate it with `@hookimpl` (from collapsekit import hookimpl)")
        if PROJECT in marks and attr in HOOK_NAMES:
            allowed = spec_args(attr)
            for arg in _required_args(value):
                if arg not in allowed:
                    close = difflib.get_close_matches(arg, allowed, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    problems.append(f"{attr}() takes argument {arg!r}, which the spec {attr}({', '.join(allowed)}) "
                                    f"does not pass.{hint} An implementation may take any subset of the spec's "
                                    f"arguments, named exactly.")
            for arg in _defaulted_args(value):
                problems.append(f"{attr}() gives argument {arg!r} a default, so pluggy never passes it (it "
                                f"passes only arguments without defaults); remove the default")
    hooks = implemented_hooks(plugin)
    if not problems:
        try:
            register_plugin(new_plugin_manager(), plugin, name, distribution)
        except PluginError as exc:
            problems.append(str(exc))
    if getattr(plugin, "replaces_task_loss", False) and "loss_terms" not in hooks:
        problems.append("sets replaces_task_loss = True but implements no loss_terms, so training would have "
                        "no loss; implement loss_terms or drop the flag")
    if not hooks and not problems:
        problems.append(f"implements no collapsekit hook; mark methods with @collapsekit.hookimpl, named as one "
                        f"of: {', '.join(HOOK_NAMES)}")
    if problems:
        raise ConformanceError(f"{label} does not match the hook specs:\n  - " + "\n  - ".join(problems))
    return hooks


def check_picklable(plugin: Any, name: str = "plugin", distribution: str = "?") -> Any:
    """Round-trip ``plugin`` through ``pickle`` (DDP workers receive plugins pickled); return the copy."""
    label = _label(name, distribution)
    try:
        copy = pickle.loads(pickle.dumps(plugin))
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the finding
        raise ConformanceError(
            f"{label} cannot be pickled ({type(exc).__name__}: {exc}). DDP workers receive plugins pickled: "
            f"keep only picklable state (no lambdas, open files, locks, generators); build such things "
            f"lazily in a hook, or define __getstate__/__setstate__.") from None
    if type(copy) is not type(plugin) or implemented_hooks(copy) != implemented_hooks(plugin):
        raise ConformanceError(f"{label}: the unpickled copy is a {type(copy).__name__} implementing "
                               f"{implemented_hooks(copy)}, not the same plugin; fix __reduce__/__setstate__")
    return copy


def check_requirements(plugin: Any, task: Any, name: str = "plugin", distribution: str = "?") -> frozenset[str]:
    """Call the plugin's ``requirements`` hook (if any) with ``task``; every name must be known."""
    if "requirements" not in implemented_hooks(plugin):
        return frozenset()
    fn = plugin.requirements
    value = fn(*[{"task": task}[a] for a in _required_args(fn)])
    problems = check_hook_result("requirements", value, {"task": task})
    if problems:
        raise ConformanceError(f"{_label(name, distribution)} in requirements: " + "; ".join(problems))
    return frozenset([value] if isinstance(value, str) else (value or ()))


def check_hook_result(hook: str, value: Any, kwargs: Mapping[str, Any], grad_checked: set | None = None
                      ) -> list[str]:
    """Problems (empty when fine) of ``value`` returned by an implementation of ``hook`` called with ``kwargs``.

    The engine's own validators (:data:`collapsekit.contracts.HOOKS`) in strict mode: ``None`` means
    "no opinion" and is always fine; for ``loss_terms`` terms must also be finite and, the first time
    each name is seen (tracked in ``grad_checked``), have a gradient w.r.t. ``kwargs["module"]``'s
    parameters.
    """
    return check_result(hook, value, {**kwargs, "grad_checked": grad_checked}, strict=True)


def _contract(hook: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


class CheckingHooks(Hooks):
    """:class:`~collapsekit.dispatch.Hooks` that checks and counts every result of one plugin (``subject``)."""

    def __init__(self, pm: Any, distributions: Mapping[str, str], objects: Mapping[str, Any], subject: str):
        super().__init__(pm, distributions, objects)
        self.subject = subject
        self.calls: Counter = Counter()
        self.answers: Counter = Counter()
        self.metric_keys: dict[int, set[str]] = {}
        """Metric keys the subject returned, per generation."""
        self.term_names: dict[int, set[str]] = {}
        """Loss-term names the subject returned, per generation."""
        self._grad_checked: set[str] = set()

    def _invoke(self, hook, name, function, argnames, kwargs):
        if name != self.subject:
            return super()._invoke(hook, name, function, argnames, kwargs)
        value = self._call(hook, name, function, argnames, kwargs)
        self.calls[hook] += 1
        if value is not None:
            self.answers[hook] += 1
        problems = check_hook_result(hook, value, kwargs, self._grad_checked)
        if problems:
            raise ConformanceError(
                f"plugin {self.plugin_label(name)} broke the contract of {hook} "
                f"(generation {kwargs.get('generation', getattr(kwargs.get('module'), 'generation', '?'))}):\n  - "
                + "\n  - ".join(problems) + f"\nContract: {_contract(hook)} (see `collapsekit hooks`)")
        if hook == "metrics":
            self.metric_keys.setdefault(kwargs["generation"], set()).update(value)
        elif hook == "loss_terms":
            self.term_names.setdefault(kwargs["module"].generation, set()).update(value)
        return value


# -- building and running ------------------------------------------------------------------
def build_hooks(plugin: Any, name: str, distribution: str, extra_plugins: Sequence[Any] = (),
                defaults: Iterable[str] = DEFAULT_PLUGINS, checking: bool = True) -> Hooks:
    """Hooks of a run with the built-in defaults, ``extra_plugins`` (names or ``{class_path, init_args}``)
    and the instance ``plugin`` (a default of the same name is replaced by it).

    With ``checking`` the result is a :class:`CheckingHooks` validating ``plugin``'s results.
    """
    others = [d for d in defaults if normalize(d) != normalize(name)]
    base = build_manager(list(extra_plugins), defaults=others)
    pm = base.pm
    register_plugin(pm, plugin, name, distribution)
    dists = {**base.distributions, name: distribution}
    objects = {**base.objects, name: plugin}
    hooks = CheckingHooks(pm, dists, objects, name) if checking else Hooks(pm, dists, objects)
    hooks.check_exclusive_roles()
    return hooks


def run_tiny(root: str | Path, plugins: Sequence[Any] = (), task: Any = None, hooks: Hooks | None = None,
             name: str = "tiny", generations: int = 2, max_steps: int = 5, seed: int = 0,
             trainer_kwargs: Mapping[str, Any] | None = None,
             run_options: Mapping[str, Any] | None = None) -> list[dict[str, float]]:
    """A real generational run (real pluggy, real Lightning ``Trainer``) of a few seconds or less.

    ``plugins`` as in ``run.plugins``; ``task`` defaults to :func:`toy_task`;
    ``hooks`` overrides the manager built from ``plugins``; ``run_options`` are
    further :class:`~collapsekit.run.RunConfig` fields (e.g. ``init``). Returns one metrics
    dict per generation; files go to ``root/name/gen_<k>/``.
    """
    from .loop import execute, trainer_factory
    from .run import Run, RunConfig

    task = toy_task() if task is None else task
    hooks = build_manager(list(plugins)) if hooks is None else hooks
    config = RunConfig(name=name, root=str(root), generations=generations, seed=seed, plugins=list(plugins),
                       **dict(run_options or {}))
    kwargs = {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
              "logger": False, "log_every_n_steps": 1, **dict(trainer_kwargs or {})}
    with quiet_lightning():
        return execute(Run(config, task, hooks), trainer_factory(**kwargs))


@pytest.fixture
def collapsekit_run_tiny(tmp_path):
    """``run(plugins=(), task=None, **options) -> list[metrics]``: :func:`run_tiny` under ``tmp_path``."""
    counter = iter(range(1_000_000))

    def run(plugins: Sequence[Any] = (), task: Any = None, **options: Any) -> list[dict[str, float]]:
        options.setdefault("name", f"tiny{next(counter)}")
        return run_tiny(tmp_path, plugins, task, **options)

    return run


# -- the base test class -------------------------------------------------------------------------
def _call_attr(owner: type, attr: str, instance: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a class attribute that may be a class, staticmethod, classmethod, method or zero-arg lambda."""
    raw = inspect.getattr_static(owner, attr)
    if isinstance(raw, staticmethod):
        return raw.__func__(*args, **kwargs)
    if isinstance(raw, classmethod):
        return raw.__func__(owner, *args, **kwargs)
    if inspect.isfunction(raw) and list(inspect.signature(raw).parameters)[:1] == ["self"]:
        return raw(instance, *args, **kwargs)
    return raw(*args, **kwargs)


@dataclass
class _TinyResult:
    metrics: list[dict[str, float]] = field(default_factory=list)
    hooks: CheckingHooks | None = None
    root: Path | None = None
    error: BaseException | None = None


_RUNS: dict[type, _TinyResult] = {}


def _same(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class PluginConformance:
    """Base class of a plugin's conformance tests; subclass it as ``Test<Something>`` in pytest.

    Set ``plugin_name`` (the entry-point name, or a dotted ``pkg.mod.Class``) or
    ``plugin_factory`` (a class or callable returning a fresh plugin; called with
    ``plugin_args``). Optional: ``task_factory`` (a fresh task; default
    :func:`toy_task`), ``extra_plugins`` (other plugins the run needs, as in
    ``run.plugins``), ``generations``, ``max_steps``, ``trainer_kwargs``,
    ``run_options`` (further ``RunConfig`` fields, e.g. ``{"init": "previous"}``),
    ``may_abstain`` (value hooks allowed to return ``None`` on every call of the
    tiny run) and ``nondeterministic_metrics`` (keys left out of the seed check,
    e.g. timings).
    """

    plugin_name: ClassVar[str | None] = None
    plugin_args: ClassVar[Mapping[str, Any]] = {}
    plugin_factory: ClassVar[Any] = None
    task_factory: ClassVar[Any] = None
    extra_plugins: ClassVar[Sequence[Any]] = ()
    generations: ClassVar[int] = 2
    max_steps: ClassVar[int] = 5
    seed: ClassVar[int] = 0
    trainer_kwargs: ClassVar[Mapping[str, Any]] = {}
    run_options: ClassVar[Mapping[str, Any]] = {}
    may_abstain: ClassVar[tuple[str, ...]] = ()
    nondeterministic_metrics: ClassVar[tuple[str, ...]] = ()

    # -- helpers (not tests) ----------------------------------------------------------
    def make_plugin(self) -> tuple[Any, str, str]:
        """A fresh ``(plugin instance, name, distribution)``."""
        cls = type(self)
        if cls.plugin_factory is not None:
            obj = _call_attr(cls, "plugin_factory", self, **dict(cls.plugin_args))
            name = cls.plugin_name or getattr(obj, "__name__", type(obj).__name__)
            return obj, name, distribution_of(obj)
        if not cls.plugin_name:
            raise ConformanceError(f"{cls.__name__}: set plugin_name = '<entry-point name>' or plugin_factory")
        if "." in cls.plugin_name:
            from .dispatch import _import_path

            info = _import_path(cls.plugin_name)          # its distribution found as for run.plugins
        else:
            info = resolve(cls.plugin_name, discover())
        return instantiate(info, dict(cls.plugin_args)), info.name, info.distribution

    def make_task(self) -> Any:
        """A fresh task for the tiny runs."""
        cls = type(self)
        return toy_task() if cls.task_factory is None else _call_attr(cls, "task_factory", self)

    def run_once(self, root: Path) -> _TinyResult:
        """One checked tiny run of a fresh plugin instance under ``root``."""
        obj, name, dist = self.make_plugin()
        hooks = build_hooks(obj, name, dist, self.extra_plugins)
        metrics = run_tiny(root, self.extra_plugins, self.make_task(), hooks=hooks,
                           name=re.sub(r"\W", "_", name) or "plugin", generations=self.generations,
                           max_steps=self.max_steps, seed=self.seed, trainer_kwargs=self.trainer_kwargs,
                           run_options=self.run_options)
        return _TinyResult(metrics, hooks, root)

    def first_run(self, tmp_path_factory) -> _TinyResult:
        """The first tiny run of this class, run once and shared by the tests that need it."""
        cls = type(self)
        if cls not in _RUNS:
            try:
                _RUNS[cls] = self.run_once(tmp_path_factory.mktemp("conformance"))
            except Exception as exc:  # noqa: BLE001 - re-raised by every test that needs the run
                _RUNS[cls] = _TinyResult(error=exc)
        result = _RUNS[cls]
        if result.error is not None:
            raise result.error
        return result

    # -- the tests ------------------------------------------------------------------------
    def test_hooks_match_specs(self):
        obj, name, dist = self.make_plugin()
        check_hooks(obj, name, dist)

    def test_survives_pickling(self):
        obj, name, dist = self.make_plugin()
        if inspect.ismodule(obj):
            pytest.skip("module plugins are re-imported by name in worker processes, not pickled")
        check_hooks(check_picklable(obj, name, dist), name, dist)

    def test_declares_known_requirements(self):
        obj, name, dist = self.make_plugin()
        task = self.make_task()
        reqs = check_requirements(obj, task, name, dist)
        missing = unmet(task, reqs)
        if missing:
            raise ConformanceError(f"{_label(name, dist)} requires {missing}, which task {task.name!r} does not "
                                   f"provide; set task_factory to a task that provides them")

    def test_activates_by_name(self):
        cls = type(self)
        if not cls.plugin_name:
            pytest.skip("no plugin_name: the plugin is not activated by name")
        spec = {"class_path": cls.plugin_name, "init_args": dict(cls.plugin_args)}
        others = [d for d in DEFAULT_PLUGINS if normalize(d) != normalize(cls.plugin_name)]
        hooks = build_manager([*self.extra_plugins, spec], defaults=others)
        _, name, _ = self.make_plugin()
        assert name in hooks.objects, f"{name!r} not active after listing {cls.plugin_name!r} in run.plugins"

    def test_runs_end_to_end(self, tmp_path_factory):
        result = self.first_run(tmp_path_factory)
        _, name, dist = self.make_plugin()
        assert len(result.metrics) == self.generations
        run_dir = next(p for p in result.root.iterdir() if p.is_dir())
        for g, metrics in enumerate(result.metrics):
            gen_dir = run_dir / f"gen_{g}"
            assert (gen_dir / "done").is_file(), f"{gen_dir}/done missing"
            saved = json.loads((gen_dir / "metrics.json").read_text())
            assert saved.keys() == metrics.keys() and all(_same(saved[k], metrics[k]) for k in saved)
            missing = sorted(result.hooks.metric_keys.get(g, set()) - set(metrics))
            missing += sorted(f"loss/{t}" for t in result.hooks.term_names.get(g, ()) if f"loss/{t}" not in metrics)
            assert not missing, f"{_label(name, dist)}: {missing} missing from gen_{g}/metrics.json"

    def test_hook_results_well_formed(self, tmp_path_factory):
        result = self.first_run(tmp_path_factory)  # every result was checked while running
        obj, name, dist = self.make_plugin()
        hooks = implemented_hooks(obj)
        never = [h for h in hooks if not result.hooks.calls[h]]
        silent = [h for h in hooks if h in VALUE_HOOKS and h not in self.may_abstain
                  and result.hooks.calls[h] and not result.hooks.answers[h]]
        problems = [f"{h} was never called in the tiny run" for h in never]
        problems += [f"{h} returned None on every call of the tiny run, so its results could not be checked; "
                     f"set plugin_args/task_factory so that it acts, or list it in may_abstain" for h in silent]
        if problems:
            raise ConformanceError(f"{_label(name, dist)}:\n  - " + "\n  - ".join(problems))

    def test_deterministic_under_fixed_seed(self, tmp_path_factory):
        first = self.first_run(tmp_path_factory)
        second = self.run_once(tmp_path_factory.mktemp("conformance-again"))
        _, name, dist = self.make_plugin()
        diffs = []
        for g, (a, b) in enumerate(zip(first.metrics, second.metrics)):
            for key in sorted(set(a) | set(b)):
                if key in self.nondeterministic_metrics:
                    continue
                if key not in a or key not in b or not _same(a[key], b[key]):
                    diffs.append(f"gen {g} {key}: {a.get(key)} vs {b.get(key)}")
        if diffs:
            raise ConformanceError(
                f"{_label(name, dist)}: two runs with seed {self.seed} differ:\n  - " + "\n  - ".join(diffs[:10])
                + "\nDraw randomness only from run.torch_generator(generation, role) / run.rng(generation, role), "
                  "keep no state across runs, or list timing metrics in nondeterministic_metrics.")


