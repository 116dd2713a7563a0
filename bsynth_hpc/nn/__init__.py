"""Neural-network building blocks for the models: nn.Module forms of the fast ops (one module per
op), each calling the `bsynth_hpc.ops` facade, so model code imports blocks from here and never
from `bsynth_hpc.kernels`."""
from __future__ import annotations

from .depthwise_conv3d import DepthwiseConv3d, SeparableConv3d
from .group_norm_silu import GroupNormSiLU
from .haar_dwt3d import HaarDWT3d, HaarIDWT3d
from .window_attention3d import WindowAttention3d, relative_position_index

__all__ = ["DepthwiseConv3d", "SeparableConv3d", "GroupNormSiLU", "HaarDWT3d", "HaarIDWT3d", "WindowAttention3d",
           "relative_position_index"]
