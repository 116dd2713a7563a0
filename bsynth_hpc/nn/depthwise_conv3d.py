"""`DepthwiseConv3d` and `SeparableConv3d`: the depthwise(-separable) 3D convolutions of seed 002's
Xception encoder, decoder, PatchGAN and auxiliary heads, as nn.Modules over `bsynth_hpc.ops.depthwise_conv3d`
(csrc extension where built, `F.conv3d(groups=C)` elsewhere)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops

__all__ = ["DepthwiseConv3d", "SeparableConv3d"]


class DepthwiseConv3d(nn.Module):
    """One k x k x k filter per channel (groups = channels); parameters and init as `nn.Conv3d(groups=C)`."""

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if channels <= 0 or kernel_size <= 0 or stride <= 0 or padding < 0:
            raise ValueError(f"DepthwiseConv3d: invalid channels={channels}, kernel_size={kernel_size}, "
                             f"stride={stride}, padding={padding}")
        self.channels, self.kernel_size, self.stride, self.padding = channels, kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias with fan-in k^3, exactly as `nn.Conv3d` initialises."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size ** 3)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.depthwise_conv3d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}")


class SeparableConv3d(nn.Module):
    """Depthwise-separable 3D convolution: `DepthwiseConv3d` (spatial, per channel, no bias) followed by a
    1x1x1 point-wise `nn.Conv3d` mixing channels (with the bias), as in Xception."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.depthwise = DepthwiseConv3d(in_channels, kernel_size, stride, padding, bias=False)
        self.pointwise = nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))
