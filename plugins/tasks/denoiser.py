"""The MLP noise predictor of ``image-diffusion``'s ``model: mlp`` (and so of ``digits-diffusion``).

A ``diffusers`` model (``ModelMixin`` + ``ConfigMixin``): ``save_pretrained`` writes ``config.json`` and
safetensors, and ``Denoiser.from_pretrained(run_dir / "gen_<k>" / "model")`` opens a saved generation.
Kept apart from :mod:`~collapsekit.plugins.tasks.image_diffusion` because importing ``diffusers``' model
classes takes seconds, which listing or configuring tasks should not pay.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]``, ``w_k = 10000^(-k / (dim/2))``, of ``t`` [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


class Denoiser(ModelMixin, ConfigMixin):
    """Class-conditional noise predictor ``eps(x_t, t, y)`` for ``dim``-dimensional (flattened) images.

    ``h = W_in x``; per block ``h = h + W_k silu(h + c)`` with ``c = time(t) + label(y)``;
    output ``W_out silu(h)``. Label ``num_classes`` is the null (unconditional) label.
    """

    @register_to_config
    def __init__(self, hidden: int = 256, depth: int = 2, time_dim: int = 64, num_classes: int = 10,
                 dim: int = 64) -> None:
        super().__init__()
        self.time_dim, self.num_classes = time_dim, num_classes
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps prediction [B, dim], last hidden layer [B, hidden])``."""
        c = self.time(timestep_embedding(t, self.time_dim)) + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + c))
        return self.out(F.silu(h)), h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, t, y)[0]
