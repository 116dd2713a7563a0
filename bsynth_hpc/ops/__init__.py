"""The only place models call accelerated ops (shared/DESIGN.md).

Each op dispatches to the Triton kernel on CUDA (or on CPU under TRITON_INTERPRET=1) and to
the PyTorch reference elsewhere; `_dispatch` holds the rules. Models never import `kernels`.
Kernel modules are imported lazily so that importing this facade never imports triton.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence

import torch

from ._dispatch import set_triton_enabled, triton_available, use_triton

__all__ = [
    "haar_dwt3d",
    "haar_idwt3d",
    "haar_dwt3d_two_level",
    "group_norm_silu",
    "window_attention3d",
    "set_triton_enabled",
    "triton_available",
    "use_triton",
]


def _kernel(name: str) -> ModuleType:
    return importlib.import_module(f"bsynth_hpc.kernels.{name}")


def haar_dwt3d(x: torch.Tensor) -> torch.Tensor:
    """3D orthonormal Haar DWT: (B, C, X, Y, Z) -> (B, 8C, ceil(X/2), ceil(Y/2), ceil(Z/2)).

    Subband s = 4*a_x + 2*a_y + a_z (0 low, 1 high) in blocks of C channels; equals
    PyWavelets `dwtn(x, 'haar')` keys 'aaa'..'ddd' (odd sizes: last sample repeated).
    """
    k = _kernel("haar_dwt3d")
    return k.haar_dwt3d_triton(x) if use_triton(x) else k.haar_dwt3d_reference(x)


def haar_idwt3d(y: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of `haar_dwt3d`; `output_shape` (X, Y, Z) crops back odd input sizes."""
    k = _kernel("haar_dwt3d")
    return k.haar_idwt3d_triton(y, output_shape) if use_triton(y) else k.haar_idwt3d_reference(y, output_shape)


def haar_dwt3d_two_level(x: torch.Tensor, subbands: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level helper for the WF-VAE: returns (level-1 subbands, level-2 transform of the selected
    level-1 subbands); `subbands` None selects all eight (seed 003 §2.5.2)."""
    k = _kernel("haar_dwt3d")
    return k.haar_dwt3d_two_level(x, subbands, dwt=haar_dwt3d)


def group_norm_silu(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(GroupNorm(x) * (1 + scale) + shift) with fp32 statistics; x is (B, C, *spatial), 2D or 3D,
    scale/shift are (B, C) (adaptive GroupNorm of diffusion U-Net/DiT blocks)."""
    k = _kernel("group_norm_silu")
    tensors = [t for t in (x, weight, bias, scale, shift) if t is not None]
    fn = k.group_norm_silu_triton if use_triton(*tensors) else k.group_norm_silu_reference
    return fn(x, num_groups, weight, bias, eps, scale, shift)


def window_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Sequence[int],
                       shift_size: Sequence[int] = (0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                       scale: float | None = None) -> torch.Tensor:
    """Attention within non-overlapping 3D windows; q, k, v (B, heads, X, Y, Z, head_dim).

    Optional Swin-style cyclic shift (with the region mask) and a per-head relative-position
    bias; sizes not divisible by the window are padded and the padding masked out.
    """
    mod = _kernel("window_attention3d")
    tensors = [t for t in (q, k, v, rel_pos_bias) if t is not None]
    fn = mod.window_attention3d_triton if use_triton(*tensors) else mod.window_attention3d_reference
    return fn(q, k, v, tuple(window_size), tuple(shift_size), rel_pos_bias, scale)
