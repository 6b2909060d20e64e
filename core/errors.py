"""Errors a user can cause. Each carries one message that names the cause and the fix."""


class CollapsekitError(Exception):
    """Base class: the CLI prints ``str(error)`` alone, without a traceback."""


class ConfigError(CollapsekitError):
    """The run configuration is invalid (bad YAML, unknown key, bad value)."""


class PluginError(CollapsekitError):
    """A plugin could not be found, loaded, combined or called."""


class PluginNotFound(PluginError):
    """A plugin name is not known."""


class PluginLoadError(PluginError):
    """A discovered plugin failed to import."""


class PluginConflict(PluginError):
    """Two active plugins claim the same exclusive role or output name."""


class TaskIncompatible(PluginError):
    """A plugin's ``configure`` rejected the task."""


class HookError(PluginError):
    """A plugin's hook raised; names the plugin and its distribution."""


class NonFiniteLoss(CollapsekitError):
    """A loss term became NaN or infinite."""


class RunStateError(CollapsekitError):
    """The run directory cannot be resumed as it is (other config, corrupt file)."""


class Preempted(CollapsekitError):
    """Training stopped on a preemption signal (``SIGTERM``/``SIGUSR1``) after saving a step checkpoint;
    the same command resumes. The CLI exits with :data:`PREEMPTED_EXIT_CODE`."""


PREEMPTED_EXIT_CODE = 75
"""Exit status of ``collapsekit run`` after :class:`Preempted` (``EX_TEMPFAIL``: try again later)."""
