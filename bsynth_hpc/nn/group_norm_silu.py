"""`GroupNormSiLU`: the nn.Module form of the fused GroupNorm + modulation + SiLU op.

Holds the affine parameters and calls `bsynth_hpc.ops.group_norm_silu` (Triton on CUDA, the PyTorch
reference elsewhere); the kernel itself lives in `bsynth_hpc.kernels.group_norm_silu`.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops

__all__ = ["GroupNormSiLU"]


class GroupNormSiLU(nn.Module):
    """GroupNorm(num_groups, num_channels, eps, affine) followed by optional (1 + scale), + shift and
    SiLU, through the `bsynth_hpc.ops` facade (Triton on CUDA, reference elsewhere)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups != 0:
            raise ValueError(f"GroupNormSiLU: num_channels={num_channels} must be divisible by "
                             f"num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        return ops.group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
