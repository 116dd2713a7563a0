"""Multi-head self-attention over token sequences and over 2D/3D feature grids, shared by the models.

``SelfAttention`` is plain global attention through ``torch.nn.functional.scaled_dot_product_attention``
(flash / memory-efficient kernels on GPU): the global blocks of DiT-3D (seed 000 §3.2).
``SpatialSelfAttention`` applies it to every position of a (B, C, *spatial) grid of any rank: the
low-resolution attention of the conditional U-Net (seed 003 §2.5.4) and the deepest stage of
WF-SA-VAE (003 §3.1). The head split/merge helpers are also used by DiT-3D's window attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import CheckpointedBlock

__all__ = ["SelfAttention", "SpatialSelfAttention", "qkv_heads", "merge_heads"]


def qkv_heads(qkv: nn.Linear, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, C) -> q, k, v each (B, heads, N, C // heads): views of one fused projection."""
    b, n, c = x.shape
    q, k, v = qkv(x).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def merge_heads(o: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads * head_dim)."""
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all N tokens of (B, N, C): fused qkv Linear, SDPA, output Linear."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SelfAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv_heads(self.qkv, x, self.num_heads)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class SpatialSelfAttention(CheckpointedBlock):
    """Residual global self-attention over the flattened grid of (B, C, *spatial), 2D or 3D:
    GroupNorm -> tokens (B, N, C) -> :class:`SelfAttention` -> back to the grid, added to x.
    ``zero_init`` zeroes the output projection (ADM: the block starts as the identity)."""

    def __init__(self, channels: int, heads: int, groups: int, eps: float = 1e-6, zero_init: bool = False) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps)
        self.attn = SelfAttention(channels, heads)
        if zero_init:
            nn.init.zeros_(self.attn.proj.weight)
            nn.init.zeros_(self.attn.proj.bias)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(x.shape)
