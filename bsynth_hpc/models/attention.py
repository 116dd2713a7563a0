"""Multi-head self-attention over token sequences, shared by the denoisers.

``SelfAttention`` is plain global attention through ``torch.nn.functional.scaled_dot_product_attention``
(flash / memory-efficient kernels on GPU): the global blocks of DiT-3D (seed 000 §3.2) and the
low-resolution attention of the conditional 3D U-Net (seed 003 §2.5.4). The head split/merge
helpers are also used by DiT-3D's window attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttention", "qkv_heads", "merge_heads"]


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
