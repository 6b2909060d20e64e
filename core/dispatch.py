"""Activation of the plugins a run lists, and attributed hook calls.

:func:`build_manager` registers the built-in defaults plus every plugin named
in the run config (and in-process ones) into a fresh pluggy ``PluginManager``,
validates them against the hook specs and checks the exclusive roles.
:class:`Hooks` then calls implementations one by one, in pluggy's order, so that
each result and each exception is attributed to a plugin and its distribution.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pluggy

from . import hookspecs
from .contracts import HOOKS, check_result
from .errors import CollapsekitError, HookError, PluginConflict, PluginError, PluginLoadError
from .markers import PROJECT
from .registry import (PluginInfo, discover, distribution_of, implemented_hooks, in_process, instantiate, normalize,
                       resolve)

DEFAULT_PLUGINS = ("replace", "ancestral", "probes")
HOOK_NAMES = tuple(HOOKS)


@dataclass(frozen=True)
class PluginSpec:
    """A plugin as a run lists it: a short name or import path, plus constructor arguments."""

    name: str
    init_args: Mapping[str, Any]

    @classmethod
    def parse(cls, item: Any) -> "PluginSpec":
        """Accept ``"name"`` or ``{"class_path": name, "init_args": {...}}``."""
        if isinstance(item, str) and item.strip():
            return cls(item.strip(), {})
        if isinstance(item, Mapping) and isinstance(item.get("class_path"), str):
            extra = set(item) - {"class_path", "init_args"}
            if extra:
                raise PluginError(f"plugin entry {dict(item)!r} has unknown keys {sorted(extra)}; "
                                  "use class_path and init_args")
            args = item.get("init_args") or {}
            if not isinstance(args, Mapping):
                raise PluginError(f"init_args of plugin {item['class_path']!r} must be a mapping")
            return cls(item["class_path"], dict(args))
        raise PluginError(f"bad plugin entry {item!r}: give a name or {{class_path: NAME, init_args: {{...}}}}")


def _import_path(path: str) -> PluginInfo:
    module_name, _, attr = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginLoadError(f"cannot import plugin class_path {path!r}: {exc}") from None
    return PluginInfo(attr, distribution_of(target), "", target, path, hooks=implemented_hooks(target))


def _unknown_hook_message(plugin_name: str, dist: str, hook: str) -> str:
    close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"plugin {plugin_name!r} ({dist}) implements {hook!r}, which is not a collapsekit hook.{hint} "
            f"Known hooks: {', '.join(HOOK_NAMES)}.")


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def register_plugin(pm: pluggy.PluginManager, obj: Any, name: str, dist: str) -> None:
    """Register ``obj`` and validate it against the specs; errors name plugin and distribution."""
    try:
        pm.register(obj, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} ({dist}) does not match the hook specs: {exc}") from None
    except ValueError as exc:
        raise PluginConflict(f"plugin {name!r} is listed twice ({exc}); list each plugin once") from None
    for impl in (h for hc in pm.get_hookcallers(obj) or [] for h in hc.get_hookimpls() if h.plugin is obj):
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(f"plugin {name!r} ({dist}): hook wrappers are not supported "
                              f"({impl.function.__name__}); implement the hook directly")
    for hook in implemented_hooks(obj):
        if hook not in HOOK_NAMES:
            raise PluginError(_unknown_hook_message(name, dist, hook))


def build_manager(plugins: Iterable[Any], available: Mapping[str, PluginInfo] | None = None,
                  defaults: Iterable[str] = DEFAULT_PLUGINS) -> "Hooks":
    """A :class:`Hooks` holding the defaults, the listed plugins and in-process registrations.

    A default that the run lists itself (e.g. ``probes`` with init args) is built once, from
    the listed entry, instead of the default.
    """
    specs = [PluginSpec.parse(item) for item in plugins]
    listed = {normalize(spec.name) for spec in specs}
    available = dict(discover() if available is None else available)
    pm = new_plugin_manager()
    dists: dict[str, str] = {}
    objects: dict[str, Any] = {}

    def add(info: PluginInfo, obj: Any) -> None:
        if info.name in objects:
            raise PluginConflict(f"plugin {info.name!r} is listed twice; list each plugin once")
        register_plugin(pm, obj, info.name, info.distribution)
        dists[info.name] = info.distribution
        objects[info.name] = obj

    for name in defaults:
        if normalize(name) in listed:
            continue
        info = resolve(name, available)
        add(info, instantiate(info))
    for spec in specs:
        if "." in spec.name:
            info = _import_path(spec.name)
        else:
            info = resolve(spec.name, available)
        add(info, instantiate(info, dict(spec.init_args)))
    for info in in_process().values():
        add(info, info.target)
    hooks = Hooks(pm, dists, objects)
    hooks.check_exclusive_roles()
    return hooks


class Hooks:
    """Attributed calls of the hooks of one run's plugin manager."""

    def __init__(self, pm: pluggy.PluginManager, distributions: Mapping[str, str], objects: Mapping[str, Any]):
        self.pm = pm
        self.distributions = dict(distributions)
        self.objects = dict(objects)
        self._impls = {name: [(i.plugin_name, i.function, tuple(i.argnames))
                              for i in reversed(getattr(pm.hook, name).get_hookimpls())]
                       for name in HOOK_NAMES}

    def plugin_label(self, name: str) -> str:
        return f"{name!r} ({self.distributions.get(name, '?')})"

    def implementers(self, hook: str) -> list[str]:
        """Names of the plugins implementing ``hook``, in call order."""
        return [name for name, _, _ in self._impls[hook]]

    def check_exclusive_roles(self) -> None:
        policies = [impl.plugin_name for impl in self.pm.hook.compose_pool.get_hookimpls() if not impl.trylast]
        if len(policies) > 1:
            raise PluginConflict(
                f"two compose_pool policies are active: {', '.join(map(self.plugin_label, policies))}; "
                "a run trains on one pool policy, so keep only one of them in run.plugins")
        overriders = [n for n, o in self.objects.items() if getattr(o, "replaces_task_loss", False)]
        if len(overriders) > 1:
            raise PluginConflict(
                f"several plugins replace the task loss: {', '.join(map(self.plugin_label, overriders))}; "
                "keep one")

    @property
    def replaces_task_loss(self) -> bool:
        return any(getattr(o, "replaces_task_loss", False) for o in self.objects.values())

    def oversample(self) -> float:
        """The synthesis oversampling factor the active filters ask for: the largest ``oversample``
        attribute (a number >= 1, default 1) of the plugins implementing ``filter_samples``."""
        factor = 1.0
        for name in self.implementers("filter_samples"):
            value = getattr(self.objects.get(name), "oversample", 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value < float("inf"):
                raise PluginError(f"plugin {self.plugin_label(name)}: oversample must be a finite number >= 1 "
                                  f"(how many times the kept pool's size to synthesize), got {value!r}")
            factor = max(factor, float(value))
        return factor

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation; return ``(plugin name, result)`` for non-``None`` results."""
        results = []
        for name, function, argnames in self._impls[hook]:
            value = self._invoke(hook, name, function, argnames, kwargs)
            if value is not None:
                results.append((name, value))
        return results

    def first(self, hook: str, **kwargs: Any) -> tuple[str | None, Any]:
        """firstresult call: the first non-``None`` result and the plugin that gave it."""
        for name, function, argnames in self._impls[hook]:
            value = self._invoke(hook, name, function, argnames, kwargs)
            if value is not None:
                return name, value
        return None, None

    def merged(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """Merge the dict results of ``hook``; a key given by two plugins is a :class:`PluginConflict`."""
        return self.merged_with_owners(hook, **kwargs)[0]

    def merged_with_owners(self, hook: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """Like :meth:`merged`, plus which plugin gave each key."""
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for name, value in self.call(hook, **kwargs):
            if not isinstance(value, Mapping):
                raise HookError(f"plugin {self.plugin_label(name)}: {hook} must return a dict, "
                                f"got {type(value).__name__}")
            for key, item in value.items():
                if key in merged:
                    raise PluginConflict(
                        f"{hook} name {key!r} is returned by both plugin {self.plugin_label(owner[key])} "
                        f"and plugin {self.plugin_label(name)}; rename one of them")
                merged[key], owner[key] = item, name
        return merged, owner

    def _invoke(self, hook, name, function, argnames, kwargs):
        value = self._call(hook, name, function, argnames, kwargs)
        problems = check_result(hook, value, kwargs)
        if problems:
            raise HookError(f"plugin {self.plugin_label(name)} broke the contract of {hook}: "
                            + "; ".join(problems) + " (see `collapsekit hooks`)")
        return value

    def _call(self, hook, name, function, argnames, kwargs):
        try:
            return function(*[kwargs[a] for a in argnames])
        except CollapsekitError as exc:
            if self.plugin_label(name) in str(exc):
                raise
            raise type(exc)(f"plugin {self.plugin_label(name)} in {hook}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - attributed and re-raised
            raise HookError(f"plugin {self.plugin_label(name)} raised in hook {hook}: "
                            f"{type(exc).__name__}: {exc}") from exc
