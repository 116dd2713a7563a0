"""Voxel-space reconstruction loss (seed 003 §2.5.1: L_recon = ||v - v_hat||_1; seed 000 eq. 3).

Reduction: the mean absolute error over all voxels and the batch (the L1 norm divided by the
number of elements), so the loss weights do not depend on the volume size; seed 000 reports
L1 = 0.058 per voxel with weight 1.0. ``l2`` (mean squared error) is offered for ablations.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["ReconKind", "reconstruction_loss"]

ReconKind = Literal["l1", "l2"]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: ReconKind = "l1") -> torch.Tensor:
    """Mean |recon - target| (``l1``) or mean (recon - target)^2 (``l2``), computed in float32."""
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
    r, t = recon.float(), target.float()
    if kind == "l1":
        return F.l1_loss(r, t)
    if kind == "l2":
        return F.mse_loss(r, t)
    raise ValueError(f"reconstruction loss kind={kind!r}: use 'l1' or 'l2'")
