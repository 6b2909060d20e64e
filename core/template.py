"""The plugin template (``collapsekit new-plugin NAME``) and the generated parts of the plugin guide.

:func:`create_plugin` writes a ready, installable distribution ``collapsekit-<name>``
from the files under ``collapsekit/templates/plugin/`` (``string.Template``
placeholders such as ``${entry}``). :func:`hook_reference_markdown` renders the hook
reference of ``PLUGIN_GUIDE.md`` from the hook specs' docstrings and
:func:`sync_guide` rewrites that section of the guide.
"""
from __future__ import annotations

import inspect
import keyword
import re
import shutil
import string
import tempfile
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path

from .errors import CollapsekitError
from .registry import PLUGIN_GROUP, normalize

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
RESERVED_NAMES = ("baseline", "replace", "ancestral", "probes")
"""Short names a new plugin may not take: the benchmark's ``baseline`` method and the built-in plugins."""
GUIDE = Path(__file__).with_name("PLUGIN_GUIDE.md")
BEGIN = "<!-- BEGIN GENERATED HOOK REFERENCE: python -c 'from collapsekit.template import sync_guide; sync_guide()' -->"
END = "<!-- END GENERATED HOOK REFERENCE -->"


class TemplateError(CollapsekitError, ValueError):
    """A plugin cannot be created: bad name, name taken, or the target folder exists."""


def plugin_names(name: str) -> dict[str, str]:
    """The names derived from ``name``: distribution, package, entry point, class, loss term.

    Raises :class:`TemplateError` naming the rule when ``name`` is not usable.
    """
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 40:
        raise TemplateError(
            f"invalid plugin name {name!r}: use 1-40 lowercase letters and digits, starting with a letter, "
            f"words separated by single '-' or '_' (e.g. 'my-regularizer')")
    if normalize(name).startswith("collapsekit"):
        raise TemplateError(f"invalid plugin name {name!r}: leave out the 'collapsekit' prefix; the distribution "
                            f"is named collapsekit-<name> automatically")
    taken = {normalize(n): n for n in RESERVED_NAMES}
    for ep in entry_points(group=PLUGIN_GROUP):
        taken.setdefault(normalize(ep.name), f"{ep.name} (from {ep.dist.name if ep.dist else 'an installed package'})")
    if normalize(name) in taken:
        raise TemplateError(f"plugin name {name!r} is already taken by {taken[normalize(name)]}; pick another name")
    dash, under = name.replace("_", "-"), name.replace("-", "_")
    cls = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name))
    if keyword.iskeyword(cls) or not cls.isidentifier():  # pragma: no cover - the regex excludes these
        raise TemplateError(f"invalid plugin name {name!r}")
    from . import __version__

    return {"name": name, "dist": f"collapsekit-{dash}", "package": f"collapsekit_{under}", "entry": dash,
            "name_us": under, "cls": cls, "term": f"{under}_l2", "title": cls,
            "collapsekit_version": ".".join(__version__.split(".")[:2])}


def _template_files(root, parts: tuple[str, ...] = ()) -> list:
    """``(relative path parts, traversable)`` of every template file under ``root``."""
    files = []
    for item in sorted(root.iterdir(), key=lambda i: i.name):
        if item.name == "__pycache__":
            continue
        files += _template_files(item, (*parts, item.name)) if item.is_dir() else [((*parts, item.name), item)]
    return files


def create_plugin(name: str, dest: str | Path = ".") -> Path:
    """Write the plugin distribution ``<dest>/collapsekit-<name>/`` and return its path.

    It holds ``pyproject.toml`` (entry point ``<name>`` in group ``collapsekit``),
    the package ``collapsekit_<name>`` (pure ``functional.py`` and ``plugin.py``
    with an example ``loss_terms``, ``filter_samples`` and ``metrics`` hook), ``README.md`` and
    ``tests/test_<name>.py`` using the conformance kit; it installs with
    ``pip install -e`` and its tests pass as generated. Never overwrites:
    raises :class:`TemplateError` when the folder exists or the name is bad or taken.
    """
    names = plugin_names(name)
    dest = Path(dest)
    target = dest / names["dist"]
    if target.exists():
        raise TemplateError(f"{target} already exists; remove it or choose another --dest")
    dest.mkdir(parents=True, exist_ok=True)
    root = resources.files("collapsekit").joinpath("templates", "plugin")
    staging = Path(tempfile.mkdtemp(prefix=f".{names['dist']}-", dir=dest))
    try:
        for rel, item in _template_files(root):
            parts = [names["package"] if p == "__package__" else p for p in rel]
            parts[-1] = parts[-1].removesuffix(".tmpl")
            if parts[-1] == "test_plugin.py":
                parts[-1] = f"test_{names['name_us']}.py"
            out = staging.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(string.Template(item.read_text()).substitute(names))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# -- the hook reference of the plugin guide -------------------------------------------------------------
def _markdown(text: str) -> str:
    """reStructuredText roles and literals of the docstrings as Markdown."""
    text = re.sub(r":\w+:`~[\w.]*?\.?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def hook_reference_markdown() -> str:
    """The guide's hook reference: the summary table of ``collapsekit hooks`` plus every hook's full contract."""
    from .hookdocs import hook_reference, hook_specs
    from .markers import PROJECT

    parts = [hook_reference(), ""]
    for name, fn in hook_specs().items():
        opts = getattr(fn, f"{PROJECT}_spec")
        args = ", ".join(inspect.signature(fn).parameters)
        combine = "firstresult (the first non-None result wins)" if opts.get("firstresult") else \
            "every implementation is called"
        parts += [f"### `{name}({args})`", "", f"*Combination:* {combine}.", "",
                  _markdown(inspect.getdoc(fn) or ""), ""]
    return "\n".join(parts).rstrip() + "\n"


def sync_guide(path: str | Path | None = None, check: bool = False) -> bool:
    """Rewrite the generated hook reference of the guide; return whether it was already up to date.

    With ``check`` nothing is written.
    """
    path = Path(path) if path is not None else GUIDE
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{hook_reference_markdown()}{END}{tail}"
    if new != text and not check:
        path.write_text(new)
    return new == text
