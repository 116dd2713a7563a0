"""The ε-predictor of seed 002's diffusion prior p_psi(c) over the 7-D clinical vector (§2.4 "Diffusion
Model", Algorithm 2): "a three-layer MLP that predicts the added Gaussian noise at each diffusion step".

The noisy vector x_t (six normalised ROI ratios + the AD/CN bit) is concatenated with the project's
timestep embedding (:class:`~bsynth_hpc.models.conditioning.TimestepEmbedder`: sinusoid -> 2-layer MLP,
fed the process's model time) and passed through Linear -> SiLU -> Linear -> SiLU -> Linear. The forward
signature ``(x_t, t, cond=None)`` is the ``model_fn`` of :func:`bsynth_hpc.diffusion.sample`; the prior is
unconditional, so ``cond`` must be None (fixing the label is done by the sampler, not the network).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..conditioning import TimestepEmbedder, batch_timesteps
from .init import xavier_init

__all__ = ["ClinicalEpsMLP"]


class ClinicalEpsMLP(nn.Module):
    """(x_t (B, dim), t (B,)) -> predicted noise (B, dim)."""

    def __init__(self, dim: int = 7, hidden: int = 256, time_dim: int = 128) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or time_dim < 2:
            raise ValueError(f"ClinicalEpsMLP: dim={dim}, hidden={hidden} must be >= 1 and time_dim={time_dim} >= 2")
        self.dim, self.hidden, self.time_dim = dim, hidden, time_dim
        self.time_embed = TimestepEmbedder(time_dim, frequency_dim=time_dim)
        self.mlp = xavier_init(nn.Sequential(
            nn.Linear(dim + time_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        ))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("ClinicalEpsMLP is unconditional: pass cond=None")
        if x_t.dim() != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"ClinicalEpsMLP: x_t must be (B, {self.dim}), got {tuple(x_t.shape)}")
        t = batch_timesteps(t, x_t.shape[0], x_t.device)
        dtype = self.mlp[0].weight.dtype
        h = torch.cat([x_t.to(dtype), self.time_embed(t).to(dtype)], dim=1)
        return self.mlp(h)
