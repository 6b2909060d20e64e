"""Plugin discovery (entry points), in-process registration and name resolution.

Discovery is not activation: entry points in group ``collapsekit`` are loaded
so that names, ``collapsekit plugins`` and ``--help`` work, but a plugin acts
only when a run lists it (see :func:`collapsekit.dispatch.build_manager`).

Environment variables:

* ``COLLAPSEKIT_DISABLE_PLUGIN_AUTOLOAD=1`` -- load no third-party entry points
  (the built-ins of the ``collapsekit`` distribution still load);
* ``COLLAPSEKIT_PLUGINS=a,b`` -- load only these third-party entry points.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points, packages_distributions
from typing import Any, Iterator

from .errors import CollapsekitError, PluginLoadError, PluginNotFound
from .markers import PROJECT

PLUGIN_GROUP = "collapsekit"
TASK_GROUP = "collapsekit.tasks"
CORE_DISTRIBUTION = "collapsekit"
IN_PROCESS = "<in-process>"
"""The distribution shown for plugins registered with :func:`registered`."""


@dataclass
class PluginInfo:
    """One discovered plugin: short name, where it comes from and what it implements."""

    name: str
    distribution: str
    version: str
    target: Any = None            # the loaded class, module or object
    source: str = ""              # "module:attr" of the entry point, or the object's module
    error: str | None = None      # import error, when loading failed
    hooks: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.distribution == CORE_DISTRIBUTION




def normalize(name: str) -> str:
    """Name used for matching: case-insensitive, ``-`` and ``_`` ignored."""
    return re.sub(r"[-_\s]", "", name).lower()


def distribution_of(obj: Any) -> str:
    """The installed distribution providing ``obj``'s top-level package, else that package's name."""
    top = (getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "") or "?").split(".")[0]
    return (packages_distributions().get(top) or [top])[0]


def implemented_hooks(target: Any) -> list[str]:
    """Names of the methods/functions of ``target`` marked with ``collapsekit.hookimpl``."""
    names = []
    for attr in dir(target):
        if attr.startswith("__"):
            continue
        try:
            value = getattr(target, attr)
        except Exception:  # noqa: BLE001 - a property may raise on a class
            continue
        if hasattr(value, f"{PROJECT}_impl"):
            names.append(attr)
    return sorted(names)


_in_process: ContextVar[tuple[PluginInfo, ...]] = ContextVar("collapsekit_in_process", default=())


@contextlib.contextmanager
def registered(obj: Any, name: str | None = None) -> Iterator[Any]:
    """Within the ``with`` block, runs built in this context also use the in-process plugin ``obj``.

    ``obj`` is an object, class or module implementing hooks, under ``name`` (default: its
    ``__name__`` or class name); it shows in ``collapsekit plugins`` with distribution
    ``<in-process>``. Leaving the block removes it, so no later run is affected::

        with collapsekit.registered(MyPolicy(), name="my-policy"):
            collapsekit.loop.execute(run, make_trainer)
    """
    key = name or getattr(obj, "__name__", type(obj).__name__)
    info = PluginInfo(key, IN_PROCESS, "", obj, getattr(obj, "__module__", ""), hooks=implemented_hooks(obj))
    token = _in_process.set(_in_process.get() + (info,))
    try:
        yield obj
    finally:
        _in_process.reset(token)


def in_process() -> dict[str, PluginInfo]:
    """The in-process plugins of the current context (see :func:`registered`)."""
    return {info.name: info for info in _in_process.get()}


def register(obj: Any, name: str | None = None) -> Any:
    """Removed: a registration joined every later run of the process. Raises a message naming the fix."""
    raise CollapsekitError("collapsekit.register() made a plugin join every later run of the process and is "
                           "gone; use `with collapsekit.registered(obj, name=...):` around the runs that should "
                           "use it, or list an installed plugin in run.plugins")


def unregister(name: str) -> None:
    """Removed with :func:`register`; leaving a :func:`registered` block unregisters."""
    register(None)


def _allowed(ep: EntryPoint, dist: str) -> bool:
    if dist == CORE_DISTRIBUTION:
        return True
    if os.environ.get("COLLAPSEKIT_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false"):
        return False
    allow = os.environ.get("COLLAPSEKIT_PLUGINS")
    if allow is not None:
        return normalize(ep.name) in {normalize(a) for a in allow.split(",") if a.strip()}
    return True


def discover(group: str = PLUGIN_GROUP) -> dict[str, PluginInfo]:
    """Load every allowed entry point of ``group``; failures are kept as ``error``, never raised."""
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else ""
        if not _allowed(ep, dist):
            continue
        info = PluginInfo(ep.name, dist, version, source=ep.value)
        try:
            info.target = ep.load()
            info.hooks = implemented_hooks(info.target)
        except Exception as exc:  # noqa: BLE001 - reported by name, never swallowed
            info.error = f"{type(exc).__name__}: {exc}"
        clash = next((k for k in found if normalize(k) == normalize(ep.name)), None)
        if clash is not None and found[clash].distribution != dist:
            first = found[clash]
            first.error = (f"the plugin name {ep.name!r} is declared by both {first.distribution} and {dist}; "
                           f"uninstall one of them")
            continue
        found[ep.name] = info
    return found


def resolve(name: str, available: dict[str, PluginInfo], kind: str = "plugin") -> PluginInfo:
    """The plugin called ``name`` (short name, any case, ``-``/``_`` ignored).

    Raises :class:`PluginNotFound` with "did you mean" suggestions, or
    :class:`PluginLoadError` naming the distribution when its import failed.
    """
    by_norm = {normalize(k): v for k, v in available.items()}
    info = by_norm.get(normalize(name))
    if info is None:
        close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.5)
        close += [k for k in available if normalize(name) in normalize(k) and k not in close]
        hint = f" Did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
        known = ", ".join(sorted(available)) or "none"
        raise PluginNotFound(
            f"unknown {kind} {name!r}.{hint} Known {kind}s: {known}. "
            f"Install the distribution that provides it, or fix the name."
        )
    if info.error:
        raise PluginLoadError(
            f"{kind} {info.name!r} from distribution {info.distribution} {info.version} failed to "
            f"import: {info.error}. Reinstall or fix that distribution, or remove it from the config."
        )
    return info


def instantiate(info: PluginInfo, init_args: dict[str, Any] | None = None) -> Any:
    """An instance of a class plugin (with ``init_args``), or the module/object itself."""
    init_args = dict(init_args or {})
    target = info.target
    if inspect.isclass(target):
        try:
            inspect.signature(target).bind(**init_args)
        except TypeError as exc:
            params = [p for p in inspect.signature(target).parameters if p != "self"]
            raise PluginLoadError(
                f"plugin {info.name!r} ({info.distribution}): bad init_args {sorted(init_args)}: {exc}. "
                f"It accepts: {params or 'no arguments'}."
            ) from None
        try:
            return target(**init_args)
        except (TypeError, ValueError) as exc:
            raise PluginLoadError(f"plugin {info.name!r} ({info.distribution}): {exc}") from None
    if init_args:
        raise PluginLoadError(f"plugin {info.name!r} is not a class and takes no init_args")
    return target
