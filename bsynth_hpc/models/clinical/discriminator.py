"""The clinically conditioned 3D PatchGAN of seed 002 §2.4 ("a 3D PatchGAN architecture and replaced its
standard convolutions with depth-wise separable 3x3x3 kernels ... the network outputs a spatial map of
authenticity scores"; Table 1: "PatchGAN adversarial loss conditioned on c").

The network is the project's :class:`~bsynth_hpc.models.autoencoder.PatchDiscriminator` with
``conv="separable"`` (``standard`` for the non-separable ablation) and 3x3x3 kernels. 002 does not say
how c enters; this is a projection discriminator (Miyato & Koyama 2018) applied per patch:
logit = head(h) + <h, E(c)> at every position of the last feature map h, with E an MLP embedding of c to
the width of h. The unconditional ablation leaves the
projection out.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..autoencoder.discriminator import PatchDiscriminator, PatchDiscriminatorConfig
from .embedding import CLINICAL_DIM, ClinicalMLP

__all__ = ["ClinicalPatchDiscriminator"]


class ClinicalPatchDiscriminator(nn.Module):
    """(x (B, 1, S, S, S), c (B, 7) or None) -> logit map (B, 1, s, s, s)."""

    def __init__(self, config: PatchDiscriminatorConfig | None = None, conditional: bool = True,
                 clinical_dim: int = CLINICAL_DIM, separable: bool = True) -> None:
        """``config`` gives widths, depth and norm; the convolutions are always 3x3x3, separable unless
        ``separable=False`` (the standard-convolution ablation)."""
        super().__init__()
        cfg = dataclasses.replace(config or PatchDiscriminatorConfig(), kernel_size=3,
                                  conv="separable" if separable else "standard")
        self.patchgan = PatchDiscriminator(cfg)
        width = min(cfg.channels * 2 ** cfg.num_layers, cfg.max_channels)  # the last stage's width
        self.projection = (ClinicalMLP(width, width, in_dim=clinical_dim, final_activation=False)
                           if conditional else None)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.patchgan.features(x)
        logits = self.patchgan.head(h)
        if self.projection is None:
            return logits
        if c is None:
            raise ValueError("the conditional discriminator needs the clinical vector c")
        e = self.projection(c).to(h.dtype)[:, :, None, None, None]
        return logits + (h * e).sum(1, keepdim=True)
