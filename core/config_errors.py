"""One line for a config that ``collapsekit run``'s parser (jsonargparse) refuses.

jsonargparse reports a bad value under ``task:`` as a multi-line "Does not validate against any of
the Union subtypes" dump; the real cause is the innermost exception of its chain (it raises each
wrapper ``from`` the error below). :func:`explain` follows that chain to the key at fault (``Parser
key "..."`` and ``class_path`` wrappers) and the innermost error, and says in one line which key it
is and what it accepts: the argument names of the class (with "did you mean"), the type of the
argument, or the task classes.
"""
from __future__ import annotations

import difflib
import inspect
import re
import typing
from typing import Any

UNION_DUMP = "Does not validate against any of the Union subtypes"
HELP = " See `collapsekit run --help`."


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain and len(chain) < 32:
        chain.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return chain


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def located(exc: BaseException) -> tuple[list[str], str | None, BaseException]:
    """``(key path, class_path of the innermost class, innermost error)`` of a jsonargparse error chain."""
    path: list[str] = []
    class_path = None
    chain = causes(exc)
    for error in chain:
        line = _first_line(error)
        key = re.match(r'Parser key "([^"]+)":', line)
        if key and path[-len(key.group(1).split(".")):] != key.group(1).split("."):
            path += key.group(1).split(".")
        problem = re.match(r"Problem with given class_path '([^']+)':", line)
        if problem:
            class_path = problem.group(1)
            path.append("init_args")
    return path, class_path, chain[-1]


def _import(class_path: str | None) -> Any:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _owner(path: list[str], class_path: str | None) -> Any:
    """The callable whose arguments the key ``path`` sets (the task class, ``RunConfig``, ``Trainer``)."""
    if path[:1] == ["run"]:
        from .run import RunConfig

        return RunConfig
    if path[:1] == ["trainer"]:
        from lightning.pytorch import Trainer

        return Trainer
    return _import(class_path)


def _parameters(owner: Any) -> list[str]:
    try:
        return [p for p in inspect.signature(owner).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def type_text(annotation: Any) -> str:
    """A type as a person writes it: ``int``, ``int or null``, ``one of 'a', 'b'``, ``dict[str, Any]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if isinstance(annotation, type) and not args:
        return annotation.__name__
    return re.sub(r"\btyping\.|<class '([\w.]+)'>", lambda m: m.group(1) or "", str(annotation))


def _annotation(owner: Any, name: str) -> Any:
    for target in (owner, getattr(owner, "__init__", None)):
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # noqa: BLE001 - unresolvable annotations: try the next, else the parser's words
            continue
        if name in hints:
            return hints[name]
    return None


def _task_classes() -> dict[str, str]:
    """``{class name: task name}`` of the installed tasks (entry-point group ``collapsekit.tasks``)."""
    from importlib.metadata import entry_points

    return {ep.value.rpartition(":")[2] or ep.value.rpartition(".")[2]: ep.name
            for ep in entry_points(group="collapsekit.tasks")}


def _close(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def explain(exc: BaseException) -> str | None:
    """One line naming the key at fault and what it accepts, or ``None`` when ``exc`` is not a
    jsonargparse error about a key's value (the caller then words it)."""
    path, class_path, inner = located(exc)
    if not path:
        return None
    key = ".".join(path)
    line = _first_line(inner)
    unknown = re.match(r"Option '([^']+)' is not accepted", line)
    if unknown:
        name = unknown.group(1)
        owner = _owner(path, class_path)
        accepted = _parameters(owner) if owner is not None else []
        where = getattr(owner, "__name__", "it")
        return (f"invalid config: unknown key {key}.{name}{_close(name, accepted)}; {where} accepts "
                f"{', '.join(accepted) or 'other keys'}.{HELP}")
    bad_import = isinstance(inner, (ImportError, AttributeError)) and class_path is not None
    if path[:1] == ["task"] and (bad_import or line.startswith(("Expected a dot import path", "Import path"))):
        given = re.match(r"Expected a dot import path string: (\S+)|Import path (\S+) does not", line)
        value = class_path if class_path else next((g for g in given.groups() if g), "?") if given else "?"
        tasks = _task_classes()
        named = {t: c for c, t in tasks.items()}
        hint = (f" (the class of task {value!r} is {named[value]})" if value in named
                else _close(value.rpartition(".")[2], sorted(tasks)))
        known = ", ".join(f"{c} ({t})" for c, t in sorted(tasks.items()))
        return (f"invalid config: task.class_path {value!r} is not a task class{hint}; the installed tasks are "
                f"{known}, or give the import path of a collapsekit.Task subclass.{HELP}")
    wrong = re.match(r"Expected a (.+?)\. Got value: (.*)$", _one_line(inner)) or \
        re.match(r"Expected a (.+)$", _one_line(inner))
    if wrong:
        owner = _owner(path, class_path)
        annotation = _annotation(owner, path[-1]) if owner is not None else None
        expected = type_text(annotation) if annotation is not None else \
            re.sub(r"<class '([\w.]+)'>|\btyping\.", lambda m: m.group(1) or "", wrong.group(1))
        got = f", got {wrong.group(2)!r}" if wrong.lastindex and wrong.lastindex > 1 else ""
        return f"invalid config: {key} must be {expected}{got}.{HELP}"
    if UNION_DUMP in line or line.startswith("Parser key"):
        return None
    return f"invalid config: {key}: {_one_line(inner)}"


def innermost_message(exc: BaseException) -> str:
    """The innermost error of a chain in one line (a class's own refusal of its arguments, raised while
    jsonargparse instantiated it)."""
    return _one_line(causes(exc)[-1])
