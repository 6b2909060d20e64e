"""The ``vicreg`` plugin: VICReg on any layer's representations, as extra loss terms.

Two modes:

* two views -- the task has a method ``augmented_views(model, batch)`` returning
  two augmented views of the batch forwarded through the model (each a dict with
  ``"features"`` and ``"hidden_states"``, shaped as the step outputs), and the full
  VICReg loss (invariance + variance + covariance) is added;
* single view -- variance + covariance only, on the ordinary batch's
  representations (a regularizer against dimensional collapse in supervised
  training).

Representations with more than two dimensions (e.g. [N, T, D] hidden states of a
token model) are flattened to [N*T, D]: every position counts as a sample.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import TaskIncompatible

from .losses import VARIANTS, variance_covariance_terms, vicreg_terms

VIEW_MODES = ("auto", "two", "single")
PREFIX = "vicreg/"


class VICReg:
    """VICReg (Bardes et al., ICLR 2022) on the ``loss_terms`` hook.

    Args:
        layer: ``"features"`` (the task's per-item representation, ``outputs["features"]``)
            or an integer index into ``outputs["hidden_states"]`` (negative counts from the end).
        views: ``"two"`` (the task must have ``augmented_views(model, batch)``), ``"single"``
            (variance + covariance on the batch itself) or ``"auto"`` (two when the task
            has ``augmented_views``, else single).
        sim_coeff, std_coeff, cov_coeff: weights of invariance, variance and covariance (paper: 25, 25, 1).
        eps: added to the variance before the square root (1e-4).
        variant: ``"official"`` (facebookresearch/vicreg scaling, default) or ``"paper"``;
            see :mod:`collapsekit_vicreg.losses`.

    Loss terms (weighted, summed onto the task loss): ``vicreg/invariance`` (two
    views only), ``vicreg/variance``, ``vicreg/covariance``. A batch of a single
    item gives zero terms (batch statistics are undefined there).
    """

    def __init__(self, layer: str | int = "features", views: str = "auto", sim_coeff: float = 25.0,
                 std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4,
                 variant: str = "official") -> None:
        if not (layer == "features" or (isinstance(layer, int) and not isinstance(layer, bool))):
            raise ValueError(f"vicreg: layer must be 'features' or an integer index into hidden_states, "
                             f"got {layer!r}")
        if views not in VIEW_MODES:
            raise ValueError(f"vicreg: views must be one of {VIEW_MODES}, got {views!r}")
        if variant not in VARIANTS:
            raise ValueError(f"vicreg: variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"vicreg: {name} must be >= 0, got {value}")
        if eps <= 0:
            raise ValueError(f"vicreg: eps must be > 0, got {eps}")
        self.layer, self.views, self.variant = layer, views, variant
        self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps = sim_coeff, std_coeff, cov_coeff, eps

    # -- set-up ---------------------------------------------------------------------------
    def _source(self) -> type[caps.Capability]:
        return caps.StepFeatures if self.layer == "features" else caps.HiddenStates

    def _two_views(self, task: Any) -> bool:
        return self.views == "two" or (self.views == "auto" and caps.TwoViews.requirement in caps.provides(task))

    @hookimpl
    def configure(self, run: Any) -> None:
        caps.require(run.task, self._source(), plugin="vicreg", why=f"regularize layer={self.layer!r}")
        if self.views == "two":
            caps.require(run.task, caps.TwoViews, plugin="vicreg",
                         why="compare two augmented views (or set views: single, variance + covariance only)")

    @hookimpl
    def requirements(self, task: Any) -> list[str]:
        return [self._source().requirement]

    # -- training ---------------------------------------------------------------------------
    def _pick(self, source: Mapping[str, Any], where: str) -> torch.Tensor:
        if self.layer == "features":
            if "features" not in source:
                raise TaskIncompatible(f"vicreg: the task's {where} has no 'features'; is the requirement honoured?")
            z = source["features"]
        else:
            hidden = source.get("hidden_states")
            if hidden is None:
                raise TaskIncompatible(f"vicreg: the task's {where} has no 'hidden_states'")
            if not -len(hidden) <= self.layer < len(hidden):
                raise ValueError(f"vicreg: layer={self.layer} is out of range; the task gives {len(hidden)} "
                                 f"hidden states (use 0..{len(hidden) - 1} or a negative index)")
            z = hidden[self.layer]
        return z.reshape(-1, z.shape[-1])

    @hookimpl
    def loss_terms(self, module: Any, batch: Any, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self._two_views(module.task):
            views = module.task.augmented_views(module.model, batch)
            if len(views) != 2:
                raise TaskIncompatible(f"vicreg: the task's augmented_views returned {len(views)} views, not 2")
            z_a, z_b = self._pick(views[0], "first view"), self._pick(views[1], "second view")
            if len(z_a) < 2:
                return {PREFIX + k: z_a.sum() * 0.0 for k in ("invariance", "variance", "covariance")}
            terms = vicreg_terms(z_a, z_b, self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps, self.variant)
        else:
            z = self._pick(outputs, "step output")
            if len(z) < 2:
                return {PREFIX + k: z.sum() * 0.0 for k in ("variance", "covariance")}
            terms = variance_covariance_terms(z, self.std_coeff, self.cov_coeff, self.eps)
        return {PREFIX + k: v for k, v in terms.items()}
