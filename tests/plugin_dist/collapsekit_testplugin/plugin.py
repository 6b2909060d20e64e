"""``testplugin``: counts its hook calls, adds a small L2 loss term and reports metrics.

Options make it misbehave on purpose for the safety tests: ``term_name`` and
``metric_prefix`` can be set to clash with another plugin, ``fail_in`` names a
hook that raises ``RuntimeError``.
"""
from __future__ import annotations

from collapsekit import hookimpl

HOOKS = ("configure", "requirements", "generation_start", "generation_end", "loss_terms", "metrics")


class CountingPlugin:
    """Counts hook calls; loss term ``<term_name>`` = weight * sum of squared weights; metrics are the counts."""

    def __init__(self, weight: float = 1e-3, term_name: str | None = "testplugin_l2",
                 metric_prefix: str = "testplugin", fail_in: str | None = None,
                 requires: list[str] | None = None) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if fail_in is not None and fail_in not in HOOKS:
            raise ValueError(f"fail_in must be one of {HOOKS}, got {fail_in!r}")
        self.weight, self.term_name, self.metric_prefix = weight, term_name, metric_prefix
        self.fail_in, self.requires = fail_in, list(requires or [])
        self.counts = {h: 0 for h in HOOKS}

    def _count(self, hook: str) -> None:
        self.counts[hook] += 1
        if self.fail_in == hook:
            raise RuntimeError(f"testplugin fails in {hook} on purpose")

    @hookimpl
    def configure(self, run):
        self._count("configure")

    @hookimpl
    def requirements(self, task):
        self._count("requirements")
        return self.requires

    @hookimpl
    def generation_start(self, generation):
        self._count("generation_start")

    @hookimpl
    def generation_end(self, generation):
        self._count("generation_end")

    @hookimpl
    def loss_terms(self, module):
        self._count("loss_terms")
        if self.term_name is None:
            return None
        return {self.term_name: self.weight * sum(p.pow(2).sum() for p in module.model.parameters())}

    @hookimpl
    def metrics(self, generation):
        self._count("metrics")
        return {f"{self.metric_prefix}/calls_{h}": float(n) for h, n in self.counts.items()}
