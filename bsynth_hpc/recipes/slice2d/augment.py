"""Seed 001's slice augmentation (§III.A): horizontal flip, rotation within ±10°, translation and
scaling within 5 %, applied to a batch on its device (one affine warp per slice).

The random parameters come from the caller as uniform draws (the engine's per-sample
``ctx.rand``), so an augmented batch is the same whatever the launch layout and after a resume.
Pixels moved in from outside the slice take the background value (the low end of the slice
store's value range, -1 by default), not a replicated border.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...configtools import require

__all__ = ["SliceAugmentConfig", "augment_slices", "DRAWS"]

DRAWS = 5
"""Uniform draws per slice: flip, angle, shift x, shift y, scale."""


@dataclass
class SliceAugmentConfig:
    """``recipe.augment``: 001's flip / ±10° rotation / 5 % translate-scale (``enabled: false`` turns it off)."""

    enabled: bool = True
    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    translate: float = 0.05
    """Largest shift as a fraction of the slice size."""
    scale: float = 0.05
    """Largest zoom in or out (1 ± scale)."""

    def validate(self, where: str) -> None:
        require(0.0 <= self.flip_prob <= 1.0, f"{where}.flip_prob must lie in [0, 1]")
        require(0.0 <= self.rotate_deg <= 180.0, f"{where}.rotate_deg must lie in [0, 180]")
        require(0.0 <= self.translate < 1.0 and 0.0 <= self.scale < 1.0,
                f"{where}.translate and {where}.scale must lie in [0, 1)")


def augment_slices(x: torch.Tensor, u: torch.Tensor, config: SliceAugmentConfig,
                   background: float = -1.0) -> torch.Tensor:
    """``x`` (B, C, H, W) warped per slice by the draws ``u`` (B, :data:`DRAWS`) in [0, 1)."""
    if not config.enabled:
        return x
    if x.dim() != 4 or u.shape != (x.shape[0], DRAWS):
        raise ValueError(f"augment_slices needs (B, C, H, W) slices and (B, {DRAWS}) draws, got {tuple(x.shape)} "
                         f"and {tuple(u.shape)}")
    u = u.to(x.device, torch.float32)
    sym = 2.0 * u - 1.0                                              # uniform in [-1, 1)
    flip = torch.where(u[:, 0] < config.flip_prob, -1.0, 1.0)
    angle = sym[:, 1] * math.radians(config.rotate_deg)
    zoom = 1.0 + sym[:, 4] * config.scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, sym[:, 2] * 2 * config.translate], dim=1),
                         torch.stack([sin * flip, cos, sym[:, 3] * 2 * config.translate], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    shifted = x.float() - background                                  # zero padding = background after the shift
    out = F.grid_sample(shifted, grid.to(shifted.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + background).to(x.dtype)
