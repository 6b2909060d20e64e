"""collapsekit plugins of collapsekit-seqvcr: ``seqvcr`` (the loss) and ``pause-tokens`` (the input format).

``seqvcr`` adds the Seq-VCR loss of a learnable linear projection of one layer's
hidden states to every training step. The projection is created in
``generation_start`` and handed to the engine with ``module.add_trainable``: the
task's optimizer trains it with the model, and it is never saved with the model,
so the saved generation holds exactly the task's architecture. A fresh projection
is drawn each generation.

``pause-tokens`` sets the task's ``pause_tokens`` option before its data are
built, so that benchmark methods can be combined as ``seqvcr+pause-tokens``.
"""
from __future__ import annotations

import math

import torch

from collapsekit import capabilities as caps
from collapsekit import hookimpl
from collapsekit.errors import CollapsekitError, TaskIncompatible

from .losses import seqvcr_terms

PROJECTION = "seqvcr_projection"


class SeqVCR:
    """Seq-VCR regularization of one layer's (projected) hidden states.

    Args:
        layer: index into the task's ``hidden_states`` tuple (0 = embeddings,
            ``i`` = output of block ``i``, negative counts from the end);
            ``None`` = the middle block, ``len(hidden_states) // 2``.
        proj_dim: width of the learnable linear projection; ``None`` = the hidden
            size; ``0`` = no projection (regularize the raw hidden states).
        var_coeff: λ1, weight of the variance hinge (paper, multiplication: 1.0).
        cov_coeff: λ2, weight of the off-diagonal covariance (paper, multiplication: 0.004;
            arithmetic and LIS: 0.1 / 0.5).
        eps: η inside the square root.

    Logged terms: ``seqvcr/var`` and ``seqvcr/cov`` (already weighted; their sum is
    ``seqvcr_loss``). A task may return ``outputs["attention_mask"]`` [N, T] (true =
    real token) to keep padded positions out of the covariances. A batch of one
    sequence has no covariance: its terms are 0 (the multiplication task drops
    such a last batch).
    """

    def __init__(self, layer: int | None = None, proj_dim: int | None = None, var_coeff: float = 1.0,
                 cov_coeff: float = 0.004, eps: float = 1e-3) -> None:
        if proj_dim is not None and proj_dim < 0:
            raise ValueError(f"proj_dim must be >= 0 (0 = no projection), got {proj_dim}")
        if var_coeff < 0 or cov_coeff < 0:
            raise ValueError(f"var_coeff and cov_coeff must be >= 0, got {var_coeff} and {cov_coeff}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.layer, self.proj_dim = layer, proj_dim
        self.var_coeff, self.cov_coeff, self.eps = var_coeff, cov_coeff, eps
        self.projection: torch.nn.Linear | None = None

    # -- set-up -----------------------------------------------------------------------
    @hookimpl
    def requirements(self):
        return {"hidden_states"}

    @hookimpl
    def configure(self, run):
        task = run.task
        caps.require(task, caps.HiddenStates, plugin="seqvcr", why="regularize one layer's hidden states")
        n_layer = task.n_layer
        if self.layer is not None and not -(n_layer + 1) <= self.layer <= n_layer:
            raise TaskIncompatible(f"seqvcr layer={self.layer} is out of range: task {task.name!r} has {n_layer} "
                                   f"blocks, so hidden_states holds {n_layer + 1} layers (0..{n_layer})")

    @hookimpl
    def generation_start(self, run, generation, module):
        self.projection = None
        if self.proj_dim == 0:
            return
        width = _hidden_size(module.model)
        out = self.proj_dim or width
        generator = run.torch_generator(generation, "seqvcr-projection")
        projection = torch.nn.Linear(width, out)
        with torch.no_grad():  # nn.Linear's default init, drawn from the run's seeded generator
            torch.nn.init.kaiming_uniform_(projection.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(width)
            projection.bias.uniform_(-bound, bound, generator=generator)
        param = next(module.model.parameters(), None)
        if param is not None:
            projection = projection.to(device=param.device, dtype=param.dtype)
        module.add_trainable(PROJECTION, projection)
        self.projection = projection

    # -- loss ----------------------------------------------------------------------------
    def select(self, hidden_states) -> torch.Tensor:
        """The hidden states [N, T, D] of the configured layer."""
        if hidden_states is None:
            raise CollapsekitError("seqvcr: the task step returned no 'hidden_states'; the task must return "
                                   "them when 'hidden_states' is in its requirements")
        layers = list(hidden_states) if isinstance(hidden_states, (tuple, list)) else [hidden_states]
        index = len(layers) // 2 if self.layer is None else self.layer
        if not -len(layers) <= index < len(layers):
            raise CollapsekitError(f"seqvcr: layer={self.layer} is out of range for {len(layers)} hidden-state layers")
        return layers[index]

    @hookimpl
    def loss_terms(self, module, outputs):
        h = self.select(outputs.get("hidden_states"))
        if self.proj_dim != 0:
            if PROJECTION not in module.trainables:
                raise CollapsekitError("seqvcr: the projection was not added to the module; it is created in "
                                       "generation_start, so train through collapsekit's generation loop (or "
                                       "use proj_dim=0, or call collapsekit_seqvcr.seqvcr_loss yourself)")
            h = module.trainable(PROJECTION)(h)
        mask = outputs.get("attention_mask")
        if h.shape[0] < 2:
            zero = h.sum() * 0.0
            return {"seqvcr/var": zero, "seqvcr/cov": zero}
        var_part, cov_part = seqvcr_terms(h, eps=self.eps, mask=None if mask is None else mask.bool())
        return {"seqvcr/var": self.var_coeff * var_part, "seqvcr/cov": self.cov_coeff * cov_part}


class PauseTokens:
    """Insert ``k`` learnable ``<pause>`` tokens between question and answer (Seq-VCR paper: k = 2).

    Sets the task's ``pause_tokens`` option in ``configure``, before the task
    builds its data; the task must have that option (the multiplication task does).
    """

    def __init__(self, k: int = 2) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"pause-tokens k must be an integer >= 1, got {k!r}")
        self.k = int(k)

    @hookimpl
    def configure(self, run):
        task = run.task
        caps.require(task, caps.PauseTokens, plugin="pause-tokens", why="insert pause tokens before the answer")
        current = task.pause_tokens
        if current not in (0, self.k):
            raise TaskIncompatible(f"pause-tokens k={self.k} conflicts with the task's pause_tokens={current}; "
                                   "set one of them")
        task.pause_tokens = self.k


def _hidden_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise TaskIncompatible("seqvcr: cannot tell the model's hidden size (no config.hidden_size / n_embd); "
                           "set proj_dim=0 to regularize the raw hidden states")
