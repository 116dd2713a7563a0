"""`HaarDWT3d` / `HaarIDWT3d`: parameter-free module forms of the 3D Haar transform.

They call `bsynth_hpc.ops.haar_dwt3d` / `haar_idwt3d`, so the facade's dispatch rules pick the
Triton kernel or the PyTorch reference (`bsynth_hpc.kernels.haar_dwt3d` documents the layout).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import ops

__all__ = ["HaarDWT3d", "HaarIDWT3d"]


class HaarDWT3d(nn.Module):
    """3D orthonormal Haar DWT: (B, C, X, Y, Z) -> (B, 8C, ceil(X/2), ceil(Y/2), ceil(Z/2))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.haar_dwt3d(x)


class HaarIDWT3d(nn.Module):
    """Inverse 3D Haar DWT; `output_shape` crops odd sizes back."""

    def forward(self, y: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
        return ops.haar_idwt3d(y, output_shape)
