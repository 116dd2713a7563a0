"""The only place models call accelerated ops (docs/design.md).

Each op dispatches to the Triton kernel on CUDA (or on CPU under TRITON_INTERPRET=1) and to
the PyTorch reference elsewhere; `_dispatch` holds the rules. Models never import `kernels`.
Triton is optional: without it the kernel modules still import and every op runs the reference.
Ops from the csrc extension (`bsynth_hpc._C`, optional too) come first where it is built.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..kernels import group_norm_silu as _gns
from ..kernels import haar_dwt3d as _haar
from ..kernels import window_attention3d as _wa
from . import depthwise_ext as _dw
from ._dispatch import set_ext_enabled, set_triton_enabled, triton_available, use_ext, use_triton

__all__ = [
    "haar_dwt3d",
    "haar_idwt3d",
    "haar_dwt3d_two_level",
    "group_norm_silu",
    "window_attention3d",
    "depthwise_conv3d",
    "set_ext_enabled",
    "set_triton_enabled",
    "triton_available",
    "use_ext",
    "use_triton",
]


def haar_dwt3d(x: torch.Tensor) -> torch.Tensor:
    """3D orthonormal Haar DWT: (B, C, X, Y, Z) -> (B, 8C, ceil(X/2), ceil(Y/2), ceil(Z/2)).

    Subband s = 4*a_x + 2*a_y + a_z (0 low, 1 high) in blocks of C channels; equals
    PyWavelets `dwtn(x, 'haar')` keys 'aaa'..'ddd' (odd sizes: last sample repeated).
    """
    return _haar.haar_dwt3d_triton(x) if use_triton(x) else _haar.haar_dwt3d_reference(x)


def haar_idwt3d(y: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of `haar_dwt3d`; `output_shape` (X, Y, Z) crops back odd input sizes."""
    if use_triton(y):
        return _haar.haar_idwt3d_triton(y, output_shape)
    return _haar.haar_idwt3d_reference(y, output_shape)


def haar_dwt3d_two_level(x: torch.Tensor, subbands: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level helper for the WF-VAE: returns (level-1 subbands, level-2 transform of the selected
    level-1 subbands); `subbands` None selects all eight (seed 003 §2.5.2)."""
    return _haar.haar_dwt3d_two_level(x, subbands, dwt=haar_dwt3d)


def group_norm_silu(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(GroupNorm(x) * (1 + scale) + shift) with fp32 statistics; x is (B, C, *spatial), 2D or 3D,
    scale/shift are (B, C) (adaptive GroupNorm of diffusion U-Net/DiT blocks)."""
    tensors = [t for t in (x, weight, bias, scale, shift) if t is not None]
    fn = _gns.group_norm_silu_triton if use_triton(*tensors) else _gns.group_norm_silu_reference
    return fn(x, num_groups, weight, bias, eps, scale, shift)


def window_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Sequence[int],
                       shift_size: Sequence[int] = (0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                       scale: float | None = None) -> torch.Tensor:
    """Attention within non-overlapping 3D windows; q, k, v (B, heads, X, Y, Z, head_dim).

    Optional Swin-style cyclic shift (with the region mask) and a per-head relative-position
    bias; sizes not divisible by the window are padded and the padding masked out.
    """
    tensors = [t for t in (q, k, v, rel_pos_bias) if t is not None]
    fn = _wa.window_attention3d_triton if use_triton(*tensors) else _wa.window_attention3d_reference
    return fn(q, k, v, tuple(window_size), tuple(shift_size), rel_pos_bias, scale)


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 1) -> torch.Tensor:
    """Depthwise 3D convolution (groups = channels): x (B, C, X, Y, Z), weight (C, 1, kx, ky, kz), bias (C,).

    The csrc extension (CUDA kernel on CUDA tensors, C++/OpenMP kernel on CPU) where it is built and
    supports the dtype, else `F.conv3d(x, weight, bias, stride, padding, groups=C)`; same result either way.
    """
    stride3, padding3 = _dw.triple(stride, "stride"), _dw.triple(padding, "padding")
    tensors = [t for t in (x, weight, bias) if t is not None]
    if use_ext(_dw.OP, _dw.DTYPES, *tensors):
        return _dw.depthwise_conv3d_ext(x, weight, bias, stride3, padding3)
    return _dw.depthwise_conv3d_reference(x, weight, bias, stride3, padding3)
