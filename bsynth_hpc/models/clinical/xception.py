"""The 3D Xception encoder e_phi of seed 002 §2.4 (Fig. 2-A): q(z|x, c) = N(mu_e, diag(sigma_e^2)).

"Each stage uses depth-wise separable 3x3x3 convolutions followed by a 1x1x1 point-wise convolution
(Xception factorization), then down-samples with 3D max-pooling. Channels increase 64 -> 128 -> 256 -> 512,
yielding a feature map at one-eighth spatial resolution. We flatten this map and concatenate an MLP
embedding of the clinical vector; two linear heads then predict the posterior parameters."

Layout (Chollet's entry-flow block carried to 3D): a standard 3x3x3 stem to ``channels[0]`` (a separable
convolution of a one-channel image would be a single filter), then one block per width, each
``ReLU -> SepConv -> GN -> ReLU -> SepConv -> GN -> MaxPool(3, stride 2, pad 1)`` plus a residual 1x1x1
shortcut (stride 2 where the block pools), as Xception does; every block but the last pools, so four
widths reach 1/8. GroupNorm stands for Xception's BatchNorm (002 trains with batch 4). Before flattening,
a 1x1x1 convolution narrows the map to ``flat_channels`` (002 gives no latent size; flattening 512 x 16^3
features into the heads would alone cost 2M parameters per latent dimension). ``separable=False`` gives
the standard-convolution encoder of 002 Table 2's "3D VAE(-GAN)" ablation rows.
"""
from __future__ import annotations

import torch
from torch import nn

from ... import nn as bnn
from ..checkpointing import CheckpointedBlock
from .embedding import CLINICAL_DIM, ClinicalMLP

__all__ = ["group_norm", "conv3x3x3", "XceptionBlock3d", "XceptionEncoder3d"]


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def conv3x3x3(in_channels: int, out_channels: int, stride: int = 1, separable: bool = True,
              bias: bool = False) -> nn.Module:
    """A 3x3x3 convolution (padding 1): depth-wise separable (``bsynth_hpc.nn.SeparableConv3d``, the fast op)
    or, for the non-separable ablation, a standard one."""
    if separable:
        return bnn.SeparableConv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class XceptionBlock3d(CheckpointedBlock):
    """Two depth-wise separable 3x3x3 convolutions (+ optional 3D max-pool) with a 1x1x1 residual shortcut."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool, separable: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), conv3x3x3(in_channels, out_channels, separable=separable), group_norm(out_channels),
            nn.ReLU(), conv3x3x3(out_channels, out_channels, separable=separable), group_norm(out_channels),
            nn.MaxPool3d(3, stride=2, padding=1) if pool else nn.Identity(),
        )
        stride = 2 if pool else 1
        self.shortcut = (nn.Identity() if in_channels == out_channels and not pool else
                         nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       group_norm(out_channels)))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class XceptionEncoder3d(nn.Module):
    """(x (B, C, S, S, S), c (B, 7) or None) -> (mu_e, logvar_e), each (B, latent_dim)."""

    def __init__(self, image_size: int, latent_dim: int, channels: tuple[int, ...] = (64, 128, 256, 512),
                 in_channels: int = 1, flat_channels: int = 4, clinical_embed_dim: int = 64,
                 clinical_dim: int = CLINICAL_DIM, conditional: bool = True, separable: bool = True,
                 logvar_range: tuple[float, float] = (-30.0, 20.0)) -> None:
        super().__init__()
        factor = 2 ** (len(channels) - 1)
        if image_size % factor:
            raise ValueError(f"image_size={image_size} must be divisible by {factor} ({len(channels)} widths)")
        self.stem = nn.Sequential(nn.Conv3d(in_channels, channels[0], 3, padding=1, bias=False),
                                  group_norm(channels[0]))
        widths = (channels[0], *channels)
        self.blocks = nn.Sequential(*[XceptionBlock3d(a, b, pool=i < len(channels) - 1, separable=separable)
                                      for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        self.narrow = nn.Sequential(nn.ReLU(), nn.Conv3d(channels[-1], flat_channels, 1))
        self.grid = image_size // factor
        features = flat_channels * self.grid ** 3
        self.clinical = ClinicalMLP(clinical_embed_dim, in_dim=clinical_dim) if conditional else None
        if conditional:
            features += clinical_embed_dim
        self.mu = nn.Linear(features, latent_dim)
        self.logvar = nn.Linear(features, latent_dim)
        self.logvar_range = logvar_range

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1/8-resolution feature map (B, channels[-1], S/8, S/8, S/8)."""
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.narrow(self.features(x)).flatten(1)
        if self.clinical is not None:
            if c is None:
                raise ValueError("the conditional encoder needs the clinical vector c")
            h = torch.cat([h, self.clinical(c).to(h.dtype)], dim=1)
        return self.mu(h), self.logvar(h).clamp(*self.logvar_range)
