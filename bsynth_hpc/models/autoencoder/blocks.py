"""Building blocks of the compressors, 2D or 3D (``spatial_dims``): ResNet block, down/up-sampling,
output head (the deepest stage's self-attention is :class:`~bsynth_hpc.models.attention.SpatialSelfAttention`).

Every normalisation followed by SiLU is the fused ``bsynth_hpc.ops.group_norm_silu`` (through
``bsynth_hpc.nn.GroupNormSiLU``: the Triton kernel on GPU, the PyTorch reference elsewhere; it takes
(B, C, H, W) and (B, C, X, Y, Z) alike). ResNet blocks are the models' shared
:class:`~bsynth_hpc.models.checkpointing.CheckpointedBlock`: with ``checkpointing`` on (and
training) they keep no activations and recompute them in backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as bnn
from ..checkpointing import CheckpointedBlock, set_activation_checkpointing
from ..spatial import conv_nd

__all__ = ["ResBlock", "Downsample", "Upsample", "OutputHead",
           "set_activation_checkpointing"]


class ResBlock(CheckpointedBlock):
    """x -> skip(x) + conv(GN-SiLU(conv(GN-SiLU(x)))): the LDM/MAISI ResNet block with GroupNorm
    (000 §5.1: GroupNorm for batch size 2); a 1x1(x1) skip projection when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.norm1 = bnn.GroupNormSiLU(groups, in_channels, eps)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = bnn.GroupNormSiLU(groups, out_channels, eps)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(self.norm2(self.conv1(self.norm1(x))))


class Downsample(nn.Module):
    """Learned x2 downsampling: 3x3(x3) convolution with stride 2 (sizes must be even)."""

    def __init__(self, channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """x2 nearest-neighbour upsampling followed by a 3x3(x3) convolution."""

    def __init__(self, channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class OutputHead(nn.Module):
    """GN-SiLU -> 3x3(x3) conv: maps trunk features to image / wavelet-coefficient channels."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        self.norm = bnn.GroupNormSiLU(groups, in_channels, eps)
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))
