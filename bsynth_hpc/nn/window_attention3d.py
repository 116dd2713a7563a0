"""`WindowAttention3d`: multi-head self-attention in (shifted) 3D windows, as an nn.Module.

The module owns the qkv/output projections and the learnable relative-position bias table; the
attention itself is `bsynth_hpc.ops.window_attention3d` (Triton on CUDA, the PyTorch reference
elsewhere), whose semantics `bsynth_hpc.kernels.window_attention3d` documents.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import ops
from ..kernels.window_attention3d import as_int3

__all__ = ["WindowAttention3d", "relative_position_index"]


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """(N, N) long index into a ((2wx-1)(2wy-1)(2wz-1), heads) table: the Video-Swin relative index.

    Entry [i, j] encodes the offset (coords_i - coords_j) of window-local tokens i, j (x-major order).
    """
    wx, wy, wz = as_int3(window_size, "window_size")
    coords = torch.stack(torch.meshgrid(torch.arange(wx), torch.arange(wy), torch.arange(wz), indexing="ij"))
    coords = coords.flatten(1)                                   # (3, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor([wx - 1, wy - 1, wz - 1])
    return rel[..., 0] * (2 * wy - 1) * (2 * wz - 1) + rel[..., 1] * (2 * wz - 1) + rel[..., 2]


class WindowAttention3d(nn.Module):
    """Multi-head self-attention in (shifted) 3D windows over channels-last tokens (B, X, Y, Z, C).

    qkv projection -> `bsynth_hpc.ops.window_attention3d` (Triton on CUDA, reference elsewhere) with
    a learnable relative-position bias table ((2wx-1)(2wy-1)(2wz-1), heads) -> output projection.
    The q/k/v views of the fused projection are passed without copies (the kernel takes strides).
    """

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shift_size: Sequence[int] = (0, 0, 0),
                 qkv_bias: bool = True, rel_pos_bias: bool = True, scale: float | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention3d: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = as_int3(window_size, "window_size")
        self.shift_size = as_int3(shift_size, "shift_size")
        if any(s < 0 or s >= w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"WindowAttention3d: need 0 <= shift_size < window_size, got {self.shift_size} "
                             f"for {self.window_size}")
        self.scale = scale
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        wx, wy, wz = self.window_size
        if rel_pos_bias:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * wx - 1) * (2 * wy - 1) * (2 * wz - 1), num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(self.window_size),
                                 persistent=False)
        else:
            self.relative_position_bias_table = None

    def relative_position_bias(self) -> torch.Tensor | None:
        """(heads, N, N) bias gathered from the table (None without a table)."""
        if self.relative_position_bias_table is None:
            return None
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"WindowAttention3d: expected (B, X, Y, Z, {self.dim}) tokens, got {tuple(x.shape)}")
        b, gx, gy, gz, c = x.shape
        hd = c // self.num_heads
        qkv = self.qkv(x).view(b, gx, gy, gz, 3, self.num_heads, hd).permute(4, 0, 5, 1, 2, 3, 6)
        q, k, v = qkv.unbind(0)                                   # (B, H, X, Y, Z, hd) views
        bias = self.relative_position_bias()  # kept in the table's dtype: both paths add it in fp32
        out = ops.window_attention3d(q, k, v, self.window_size, self.shift_size, bias, self.scale)
        out = out.permute(0, 2, 3, 4, 1, 5).reshape(b, gx, gy, gz, c)
        return self.proj(out)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}")
