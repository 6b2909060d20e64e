"""collapsekit: generational training with pluggy hook points, for studying model collapse.

Stable public names: :data:`hookimpl`, :func:`registered`, :class:`Pool`, :data:`REAL`,
:class:`Task`, :class:`GenerationalModule`, :class:`RunConfig`, :class:`Run`,
and the errors in :mod:`collapsekit.errors`.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from .errors import CollapsekitError
from .markers import hookimpl, hookspec
from .pool import REAL, Pool, PoolHistory
from .registry import register, registered, unregister
from .seeds import derive_seed

try:
    __version__ = _version("collapsekit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["hookimpl", "hookspec", "registered", "register", "unregister", "Pool", "PoolHistory", "REAL", "Task",
           "GenerationalModule", "Run", "RunConfig", "CollapsekitError", "derive_seed", "__version__"]


def __getattr__(name):  # lazy: importing Lightning takes seconds, plugins only need hookimpl
    if name == "Task":
        from .task import Task
        return Task
    if name == "GenerationalModule":
        from .module import GenerationalModule
        return GenerationalModule
    if name in ("Run", "RunConfig"):
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module 'collapsekit' has no attribute {name!r}")
