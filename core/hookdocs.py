"""The hook reference, rendered from the hook specs' docstrings and :data:`collapsekit.contracts.HOOKS`
(single source of truth): a Markdown table for the docs and a plain-text reference for the terminal."""
from __future__ import annotations

import inspect
import textwrap

from . import hookspecs
from .contracts import HOOKS


def hook_specs() -> dict[str, object]:
    """Every hook spec function of :mod:`collapsekit.hookspecs`, in loop order."""
    return {name: getattr(hookspecs, name) for name in HOOKS}


def _signature(name: str, fn: object) -> str:
    return f"{name}({', '.join(inspect.signature(fn).parameters)})"


def hook_reference() -> str:
    """Markdown table: hook, signature, combination rule and the first paragraph of the contract."""
    rows = ["| hook | combine | contract |", "| --- | --- | --- |"]
    for name, fn in hook_specs().items():
        doc = inspect.getdoc(fn) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        rows.append(f"| `{_signature(name, fn)}` | {HOOKS[name].combine} | {summary} |")
    return "\n".join(rows)


def hook_text() -> str:
    """Plain-text reference: each hook's signature, combination rule and whole contract."""
    parts = []
    for name, fn in hook_specs().items():
        doc = textwrap.indent(inspect.getdoc(fn) or "", "    ")
        parts.append(f"{_signature(name, fn)}  [{HOOKS[name].combine}]\n{doc}")
    return "\n\n".join(parts)
