"""The pluggy markers of the ``collapsekit`` project."""
import pluggy

PROJECT = "collapsekit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
