"""Methods of a benchmark: plugin names joined by ``+``, ``baseline``, and named *variants* (a plugin under
another name with other init_args, e.g. a control, or other task settings without a plugin, e.g. another
inference backend); their init_args from ``plugin_args``; and the reading of those mappings from the
command line (inline YAML/JSON or a file)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, PluginNotFound

BASELINE = "baseline"


def method_parts(method: str) -> list[str]:
    """Plugin names of a method: ``"a+b"`` -> ``["a", "b"]``; ``"baseline"`` -> ``[]``."""
    parts = [p.strip() for p in method.split("+")]
    if not method.strip() or any(not p for p in parts):
        raise ConfigError(f"bad method {method!r}: give a plugin name or names joined by '+'")
    if BASELINE in parts:
        if len(parts) > 1:
            raise ConfigError(f"method {method!r}: 'baseline' means no extra plugin and cannot be combined; "
                              f"write {'+'.join(p for p in parts if p != BASELINE)!r}")
        return []
    return parts


def variant_plugin(part: str, variants: Mapping[str, Mapping] | None) -> str | None:
    """The plugin name behind ``part``: a variant's ``plugin`` (None for a variant of task settings only),
    else ``part`` itself."""
    from ..registry import normalize

    found = {normalize(k): v for k, v in (variants or {}).items()}
    entry = found.get(normalize(part))
    if entry is None:
        return part
    if not isinstance(entry, Mapping) or not (isinstance(entry.get("plugin"), str)
                                              or (entry.get("plugin") is None and "task_args" in entry)):
        raise ConfigError(f"variant {part!r} must be {{'plugin': <plugin name>, 'init_args': {{...}}}} and/or "
                          f"{{'task_args': {{...}}}}, got {entry!r}")
    return entry.get("plugin")


def method_task_args(method: str, variants: Mapping[str, Mapping] | None = None) -> dict:
    """The task settings the variants among ``method``'s parts change (their ``task_args``, merged in order)."""
    from ..registry import normalize

    found = {normalize(k): v for k, v in (variants or {}).items()}
    out: dict = {}
    for part in method_parts(method):
        out.update((found.get(normalize(part)) or {}).get("task_args") or {})
    return out


def check_method(method: str, available: Mapping[str, Any], known_methods: Iterable[str] = (),
                 variants: Mapping[str, Mapping] | None = None) -> None:
    """Raise ``PluginNotFound`` (with "did you mean") or ``PluginLoadError`` if a part is not installed.

    A part named in ``variants`` is checked as the plugin it stands for.
    """
    import difflib

    from ..registry import normalize, resolve

    for part in [variant_plugin(p, variants) for p in method_parts(method)]:
        if part is None:                     # a variant of task settings: no plugin to check
            continue
        if normalize(part) not in {normalize(k) for k in available}:
            candidates = sorted(c for c in set(available) | {BASELINE} | set(known_methods)
                                if normalize(c) != normalize(part))
            close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            if normalize(part) in {normalize(k) for k in known_methods}:
                hint = " It is a bench method of a task, but no installed distribution provides it."
            raise PluginNotFound(
                f"method {method!r}: plugin {part!r} is not installed.{hint} Installed plugins: "
                f"{', '.join(sorted(available)) or 'none'}. Install its distribution "
                f"(e.g. pip install ./mitigations/<name>) or fix the name.")
        resolve(part, dict(available))  # raises PluginLoadError naming the distribution


def method_plugins(method: str, plugin_args: Mapping[str, Mapping] | None = None,
                   variants: Mapping[str, Mapping] | None = None) -> list[Any]:
    """The ``run.plugins`` list of ``method``, with ``plugin_args[name]`` as init_args where given.

    A part named in ``variants`` becomes its ``plugin`` with ``{**plugin_args[plugin], **init_args}``.
    """
    from ..registry import normalize

    args = {normalize(k): dict(v) for k, v in (plugin_args or {}).items()}
    found = {normalize(k): v for k, v in (variants or {}).items()}
    out: list[Any] = []
    for part in method_parts(method):
        plugin = variant_plugin(part, variants)
        if plugin is None:                   # a variant of task settings only (see method_task_args)
            continue
        init = {**args.get(normalize(plugin), {}), **dict((found.get(normalize(part)) or {}).get("init_args") or {})}
        out.append({"class_path": plugin, "init_args": init} if init else plugin)
    return out


def read_mapping(value: str | Mapping | None, option: str) -> dict:
    """A mapping given inline as YAML/JSON (``'{"a": {"x": 1}}'``) or as the path of a YAML/JSON file.

    Raises one :class:`ConfigError` naming ``option`` for unreadable input or a value that is not a mapping.
    """
    import yaml

    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    text, source = value, "the value"
    path = Path(value)
    if value.strip() and not value.lstrip().startswith(("{", "[")) and path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"{option}: file {value!r} does not exist; give a YAML/JSON mapping or an existing file")
        text, source = path.read_text(), f"file {value}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{option}: {source} is not valid YAML/JSON ({' '.join(str(exc).split())}); "
                          f"expected e.g. '{{\"name\": {{\"arg\": 1}}}}'") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{option}: {source} must be a mapping, got {type(data).__name__} {data!r}")
    return dict(data)


def check_plugin_args(plugin_args: Mapping[str, Any], option: str = "plugin_args") -> dict[str, dict]:
    """``{plugin: {arg: value}}`` checked for shape (each value a mapping of init_args)."""
    out = {}
    for name, args in plugin_args.items():
        if not isinstance(args, Mapping):
            raise ConfigError(f"{option}: the arguments of {name!r} must be a mapping {{arg: value}}, got {args!r}")
        out[str(name)] = dict(args)
    return out


def check_variants(variants: Mapping[str, Any], option: str = "variants") -> dict[str, dict]:
    """``{name: {"plugin": plugin, "init_args": {...}}}`` and/or ``{name: {"task_args": {...}}}`` checked for
    shape."""
    out = {}
    for name, entry in variants.items():
        good = isinstance(entry, Mapping) and not set(entry) - {"plugin", "init_args", "task_args"} \
            and (isinstance(entry.get("plugin"), str) or (entry.get("plugin") is None and "task_args" in entry)) \
            and isinstance(entry.get("init_args") or {}, Mapping) and isinstance(entry.get("task_args") or {}, Mapping)
        if not good:
            raise ConfigError(f"{option}: variant {name!r} must be {{\"plugin\": <plugin name>, \"init_args\": "
                              f"{{...}}}} and/or {{\"task_args\": {{...}}}}, got {entry!r}")
        out[str(name)] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in entry.items()}
    return out


def select_methods(task: str, cls: type, methods: list[str] | None, defaults: list[str],
                   variants: Mapping[str, Mapping] | None, available: Mapping[str, Any], known: Iterable[str],
                   require_installed: bool, skipped: list[dict], note) -> list[str]:
    """The methods of ``task`` to run: ``methods`` as asked (checked before), else ``defaults`` without
    those whose plugins are not installed or fail to import (each appended to ``skipped`` and noted)."""
    from ..errors import PluginLoadError
    from ..registry import normalize

    installed = {normalize(n) for n in available}
    runnable = []
    for m in methods or defaults:
        if methods is None and require_installed:
            try:
                check_method(m, available, known, variants)
            except PluginNotFound:
                missing = [p for p in method_parts(m) if variant_plugin(p, variants) is not None
                           and normalize(variant_plugin(p, variants)) not in installed]
                reason = f"plugin {', '.join(missing)} not installed"
                skipped.append({"task": task, "method": m, "reason": reason})
                note(f"{task}: method {m!r} skipped ({reason})")
                continue
            except PluginLoadError as exc:
                skipped.append({"task": task, "method": m, "reason": str(exc)})
                note(f"{task}: method {m!r} skipped ({exc})")
                continue
        elif methods is not None and m not in getattr(cls, "bench_methods", (m,)):
            note(f"{task}: method {m!r} is not in its bench_methods; running it as asked")
        runnable.append(m)
    return runnable


def directions(targets: Iterable[Any]) -> dict[str, bool | None]:
    """The ``higher_is_better`` that ``targets`` (plugin classes, then tasks) declare; a metric declared
    twice keeps the first. Each task's own directions win in its table (``meta.tasks[task].directions``)."""
    from .report import declared_directions

    out: dict[str, bool | None] = {}
    for target in targets:
        for k, v in declared_directions(target).items():
            out.setdefault(k, v)
    return out


def plugin_targets(entries: Iterable[Any], available: Mapping[str, Any]) -> list[Any]:
    """The classes (or modules) behind ``run.plugins`` entries, by short name or import path; entries that
    cannot be resolved are left out (the run itself reports them)."""
    from ..registry import normalize

    by_norm = {normalize(n): i for n, i in available.items() if not getattr(i, "error", None)}
    out = []
    for entry in entries:
        name = entry if isinstance(entry, str) else (entry or {}).get("class_path") if isinstance(entry, Mapping) else None
        if not isinstance(name, str):
            continue
        if normalize(name) in by_norm:
            out.append(by_norm[normalize(name)].target)
        elif "." in name:
            import importlib

            module, _, attr = name.rpartition(".")
            try:
                out.append(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError):
                continue
    return out
