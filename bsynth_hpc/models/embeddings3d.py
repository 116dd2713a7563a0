"""3D tokenisation for the DiT-3D denoiser (seed 000 §3.2, Fig. 2): patchify / unpatchify,
the patch-embedding layer and fixed 3D sin-cos positional embeddings.

Token order everywhere is x-major over the token grid (t = (gx_i * gy + gy_i) * gz + gz_i), the
order of ``bsynth_hpc.ops.window_attention3d``'s (X, Y, Z) grid, so a token sequence of length
gx*gy*gz can be viewed as that grid without copies. Inside a patch the features are ordered
(px, py, pz, C), C fastest (DiT's ``p q c`` order).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["Int3", "as_int3", "token_grid", "patchify", "unpatchify", "sincos_pos_embed_3d", "PatchEmbed3d"]

Int3 = tuple[int, int, int]


def as_int3(value: int | Sequence[int], name: str) -> Int3:
    """An int or three ints as a positive (x, y, z) triple; ValueError naming ``name`` otherwise."""
    items = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(items) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in items):
        raise ValueError(f"{name} must be one positive integer or three (x, y, z), got {value!r}")
    return items  # type: ignore[return-value]


def token_grid(spatial: Sequence[int], patch: Sequence[int]) -> Int3:
    """Token-grid size of a latent grid cut into patches; ValueError unless the patch divides it."""
    spatial, patch = tuple(spatial), tuple(patch)
    if len(spatial) != 3 or len(patch) != 3 or any(s % p for s, p in zip(spatial, patch)):
        raise ValueError(f"patch size {patch} must divide the latent grid {spatial} on every axis: choose a patch "
                         "whose entries divide the grid (e.g. (4, 2, 4) for 28x34x28) or crop/pad the latents")
    return tuple(s // p for s, p in zip(spatial, patch))  # type: ignore[return-value]


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, gx*gy*gz, px*py*pz*C) non-overlapping patches, x-major tokens."""
    b, c, *spatial = x.shape
    (gx, gy, gz), (px, py, pz) = token_grid(spatial, patch), tuple(patch)
    x = x.reshape(b, c, gx, px, gy, py, gz, pz)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, gx * gy * gz, px * py * pz * c)


def unpatchify(tokens: torch.Tensor, grid: Sequence[int], patch: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, gx*gy*gz, px*py*pz*C) -> (B, C, gx*px, gy*py, gz*pz)."""
    (gx, gy, gz), (px, py, pz) = tuple(grid), tuple(patch)
    b, n, f = tokens.shape
    if n != gx * gy * gz or f != px * py * pz * channels:
        raise ValueError(f"unpatchify: tokens of shape {tuple(tokens.shape)} do not match grid {tuple(grid)}, "
                         f"patch {tuple(patch)} and {channels} channels")
    x = tokens.reshape(b, gx, gy, gz, px, py, pz, channels)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, channels, gx * px, gy * py, gz * pz)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(n,) positions -> (n, dim): [sin(p * w_i), cos(p * w_i)], w_i = 10000 ** (-i / (dim/2)) (MAE/DiT)."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_pos_embed_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Fixed 3D sin-cos positional embeddings (gx*gy*gz, dim) float32, x-major tokens.

    The channels are three equal parts for the x, y and z coordinate (DiT-3D's 3D extension of
    DiT's 2D embedding), so ``dim`` must be divisible by 6.
    """
    if dim % 6:
        raise ValueError(f"3D sin-cos positional embeddings need a width divisible by 6, got {dim}")
    gx, gy, gz = tuple(grid)
    coords = torch.stack(torch.meshgrid(torch.arange(gx), torch.arange(gy), torch.arange(gz), indexing="ij"))
    coords = coords.reshape(3, -1)
    emb = torch.cat([_sincos_1d(dim // 3, coords[axis]) for axis in range(3)], dim=1)
    return emb.float()


class PatchEmbed3d(nn.Module):
    """Linear embedding of non-overlapping 3D patches: (B, C, X, Y, Z) -> (B, gx*gy*gz, dim).

    A Conv3d with kernel = stride = patch (one GEMM per patch, as DiT's PatchEmbed), tokens
    x-major. Initialised like DiT: Xavier-uniform on the flattened kernel, zero bias.
    """

    def __init__(self, in_channels: int, dim: int, patch: Sequence[int]) -> None:
        super().__init__()
        self.patch = as_int3(tuple(patch), "patch_size")
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch, stride=self.patch)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token_grid(x.shape[2:], self.patch)  # clear error for a grid the patch does not divide
        return self.proj(x).flatten(2).transpose(1, 2)
