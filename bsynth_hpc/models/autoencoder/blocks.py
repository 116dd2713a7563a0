"""Building blocks of the compressors, 2D or 3D (``spatial_dims``): ResNet block, down/up-sampling,
output head (the deepest stage's self-attention is :class:`~bsynth_hpc.models.attention.SpatialSelfAttention`).

Every normalisation followed by SiLU is the fused ``bsynth_hpc.ops.group_norm_silu`` (through
``bsynth_hpc.nn.GroupNormSiLU``: the Triton kernel on GPU, the PyTorch reference elsewhere; it takes
(B, C, H, W) and (B, C, X, Y, Z) alike). ResNet blocks are the models' shared
:class:`~bsynth_hpc.models.checkpointing.CheckpointedBlock`: with ``checkpointing`` on (and
training) they keep no activations and recompute them in backward.

Options for the 2D slice VAEs (seeds 001/004; defaults keep the 3D networks unchanged):
``activation`` "silu" (default, the fused op), "leaky_relu" (slope 0.2) or "relu" after each
GroupNorm (004: LeakyReLU encoder, ReLU decoder; ``norm_groups=1`` makes the GroupNorm 004's layer
norm over (C, H, W)); ``Upsample(mode="transposed")`` is a learned 4x4(x4) transposed convolution
with stride 2 (001's decoder) instead of nearest-neighbour + 3x3(x3) convolution. Both keep the
parameter names (``norm*.weight/bias``, ``conv.weight/bias``) of the defaults.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import nn as bnn
from ..checkpointing import CheckpointedBlock, set_activation_checkpointing
from ..spatial import check_spatial_dims, conv_nd

__all__ = ["ResBlock", "Downsample", "Upsample", "OutputHead", "GroupNormAct", "norm_act", "ACTIVATIONS",
           "UPSAMPLE_MODES", "set_activation_checkpointing"]

ACTIVATIONS: tuple[str, ...] = ("silu", "leaky_relu", "relu")
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "transposed")
LEAKY_SLOPE = 0.2
_CONV_TRANSPOSE: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class GroupNormAct(nn.GroupNorm):
    """GroupNorm followed by ReLU or LeakyReLU (the non-SiLU activations of seed 004's VAE)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, activation: str) -> None:
        super().__init__(num_groups, num_channels, eps)
        if activation not in ("relu", "leaky_relu"):
            raise ValueError(f"GroupNormAct: activation {activation!r} must be 'relu' or 'leaky_relu'")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)
        return F.relu(h) if self.activation == "relu" else F.leaky_relu(h, LEAKY_SLOPE)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def norm_act(groups: int, channels: int, eps: float, activation: str = "silu") -> nn.Module:
    """GroupNorm + activation: the fused ``GroupNormSiLU`` for "silu", else :class:`GroupNormAct`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if activation == "silu":
        return bnn.GroupNormSiLU(groups, channels, eps)
    return GroupNormAct(groups, channels, eps, activation)


class ResBlock(CheckpointedBlock):
    """x -> skip(x) + conv(GN-SiLU(conv(GN-SiLU(x)))): the LDM/MAISI ResNet block with GroupNorm
    (000 §5.1: GroupNorm for batch size 2); a 1x1(x1) skip projection when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6,
                 spatial_dims: int = 3, activation: str = "silu") -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.norm1 = norm_act(groups, in_channels, eps, activation)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm_act(groups, out_channels, eps, activation)
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
    """Learned x2 upsampling: nearest-neighbour then a 3x3(x3) convolution (``mode="nearest"``), or a
    4x4(x4) transposed convolution with stride 2 and padding 1 (``mode="transposed"``, seed 001)."""

    def __init__(self, channels: int, spatial_dims: int = 3, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"Upsample: mode {mode!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        self.mode = mode
        if mode == "transposed":
            self.conv = _CONV_TRANSPOSE[check_spatial_dims(spatial_dims)](channels, channels, 4, stride=2, padding=1)
        else:
            self.conv = conv_nd(spatial_dims)(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class OutputHead(nn.Module):
    """GN-activation -> 3x3(x3) conv: maps trunk features to image / wavelet-coefficient channels."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6,
                 spatial_dims: int = 3, activation: str = "silu") -> None:
        super().__init__()
        self.norm = norm_act(groups, in_channels, eps, activation)
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))
