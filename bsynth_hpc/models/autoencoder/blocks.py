"""3D building blocks of the compressors: ResNet block, down/up-sampling, global self-attention.

Every normalisation followed by SiLU is the fused ``bsynth_hpc.ops.group_norm_silu`` (through
``bsynth_hpc.nn.GroupNormSiLU``: the Triton kernel on GPU, the PyTorch reference elsewhere).
ResNet and attention blocks are the models' shared :class:`~bsynth_hpc.models.checkpointing.CheckpointedBlock`:
with ``checkpointing`` on (and training) they keep no activations and recompute them in backward.
The attention is the shared token :class:`~bsynth_hpc.models.attention.SelfAttention` (torch SDPA)
applied to the flattened grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as bnn
from ..attention import SelfAttention
from ..checkpointing import CheckpointedBlock, set_activation_checkpointing

__all__ = ["ResBlock3d", "Downsample3d", "Upsample3d", "SelfAttention3d", "OutputHead3d",
           "set_activation_checkpointing"]


class ResBlock3d(CheckpointedBlock):
    """x -> skip(x) + conv(GN-SiLU(conv(GN-SiLU(x)))): the LDM/MAISI ResNet block with GroupNorm
    (000 §5.1: GroupNorm for batch size 2); a 1x1x1 skip projection when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = bnn.GroupNormSiLU(groups, in_channels, eps)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = bnn.GroupNormSiLU(groups, out_channels, eps)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(self.norm2(self.conv1(self.norm1(x))))


class Downsample3d(nn.Module):
    """Learned x2 downsampling: 3x3x3 convolution with stride 2 (sizes must be even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3d(nn.Module):
    """x2 nearest-neighbour upsampling followed by a 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention3d(CheckpointedBlock):
    """Residual global multi-head self-attention over the flattened grid (WF-SA-VAE's deepest stage,
    003 §3.1): GroupNorm -> tokens (B, N, C) -> SelfAttention (qkv, SDPA: flash/memory-efficient
    kernels on GPU, output projection) -> back to (B, C, X, Y, Z)."""

    def __init__(self, channels: int, heads: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps)
        self.attn = SelfAttention(channels, heads)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(x.shape)


class OutputHead3d(nn.Module):
    """GN-SiLU -> 3x3x3 conv: maps trunk features to image / wavelet-coefficient channels."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = bnn.GroupNormSiLU(groups, in_channels, eps)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))
