"""The hook reference, rendered from the hook specs' docstrings (single source of truth)."""
from __future__ import annotations

import inspect

from . import hookspecs
from .markers import PROJECT

HOOK_ORDER = ("configure", "requirements", "compose_pool", "synthesize", "filter_samples", "loss_terms",
              "generation_start", "generation_end", "metrics")


def hook_specs() -> dict[str, object]:
    """Every hook spec function of :mod:`collapsekit.hookspecs`, in loop order."""
    specs = {n: f for n, f in vars(hookspecs).items() if hasattr(f, f"{PROJECT}_spec")}
    return {n: specs[n] for n in sorted(specs, key=lambda n: (HOOK_ORDER.index(n) if n in HOOK_ORDER else 99, n))}


def hook_reference() -> str:
    """Markdown table: hook, signature, combination rule and the first paragraph of the contract."""
    rows = ["| hook | combine | contract |", "| --- | --- | --- |"]
    for name, fn in hook_specs().items():
        opts = getattr(fn, f"{PROJECT}_spec")
        combine = "first non-None result wins" if opts.get("firstresult") else "all called"
        doc = inspect.getdoc(fn) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        args = ", ".join(inspect.signature(fn).parameters)
        rows.append(f"| `{name}({args})` | {combine} | {summary} |")
    return "\n".join(rows)
