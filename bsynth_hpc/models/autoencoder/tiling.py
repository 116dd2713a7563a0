"""Tiled (sliding-window) decoding, so a full 192x224x160 volume decodes on a 6 GB card.

The latent is cut into overlapping tiles (evenly spaced; consecutive tiles overlap by at least
``overlap`` latent voxels), each tile is decoded on its own, and the decoded tiles are blended
with per-voxel weights into the output (a weighted average, so the weights need not sum to one):

* ``linear``   weights ramp linearly across each overlap (partition of unity);
* ``gaussian`` a Gaussian centred on the tile (sigma = ``sigma_scale`` x tile size), as MONAI's
               sliding-window inferer.

``margin`` latent voxels at every interior tile edge get zero weight: the part of a tile that
"sees" the artificial tile border is discarded. When the decoder is local (convolutions only)
and ``margin`` is at least its receptive-field radius in latent voxels, the tiled decode equals
the full decode up to float round-off (requires ``overlap >= 2 * margin``). Decoders with
global operations (GroupNorm statistics, global attention) compute them per tile, as in the
tiled VAE decoders of latent-diffusion toolkits: the result then differs slightly from a full
decode and the blending hides the seams; use large tiles and overlaps for them.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Literal, Sequence

import torch

__all__ = ["tile_starts", "blend_profile", "tiled_decode"]

Blend = Literal["linear", "gaussian"]


def _per_axis(value: int | Sequence[int], name: str, ndim: int) -> tuple[int, ...]:
    t = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(t) != ndim:
        raise ValueError(f"{name} must be an int or {ndim} ints (one per spatial axis), got {value!r}")
    return t


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of tiles of size ``tile`` covering [0, n), neighbours overlapping by
    at least ``overlap``; one tile when ``tile >= n``."""
    if tile >= n:
        return [0]
    count = math.ceil((n - overlap) / (tile - overlap))
    return [round(i * (n - tile) / (count - 1)) for i in range(count)]


def _ramp(d: torch.Tensor, o: float, m: float) -> torch.Tensor:
    """Weight at distance ``d`` (voxel centres) from an interior edge with overlap ``o``, margin ``m``."""
    if o - 2 * m > 0:
        return ((d - m) / (o - 2 * m)).clamp(0.0, 1.0)
    return (d > m).to(d.dtype)


def blend_profile(length: int, left: int, right: int, margin: int, blend: Blend = "linear",
                  sigma_scale: float = 0.125) -> torch.Tensor:
    """1D blending weights (float64) of a tile of ``length`` output voxels overlapping its
    neighbours by ``left``/``right`` voxels (0: a volume border), ``margin`` voxels dropped at each
    interior edge."""
    d_left = torch.arange(length, dtype=torch.float64) + 0.5
    d_right = length - d_left
    if blend == "linear":
        w = torch.ones(length, dtype=torch.float64)
        if left > 0:
            w = torch.minimum(w, _ramp(d_left, left, margin))
        if right > 0:
            w = torch.minimum(w, _ramp(d_right, right, margin))
        return w
    if blend == "gaussian":
        sigma = max(sigma_scale * length, 1e-3)
        w = torch.exp(-0.5 * ((d_left - length / 2) / sigma) ** 2)
        if left > 0:
            w = w * (d_left > margin)
        if right > 0:
            w = w * (d_right > margin)
        return w
    raise ValueError(f"blend={blend!r}: use 'linear' or 'gaussian'")


# Kept over monai.inferers.SlidingWindowInferer: it has no margin (discarded tile border) and no linear ramps;
# on a local conv decoder (16^3 latent, tile 8, overlap 4) it is 0.29 off the full decode, ours (margin 2) 7e-7.
def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, factor: int,
                 tile: int | Sequence[int], overlap: int | Sequence[int] = 4, margin: int | Sequence[int] = 0,
                 blend: Blend = "linear", sigma_scale: float = 0.125,
                 output_device: torch.device | str | None = None) -> torch.Tensor:
    """Decode latent ``z`` (B, C, x, y[, z]) (2D or 3D) tile by tile; ``decode`` maps a latent tile to
    an output ``factor`` times larger per axis. Sizes (tile, overlap, margin) are in latent voxels;
    the output is accumulated in float32 on ``output_device`` (default: z's device) and returned in
    the decoder's dtype. Runs under the caller's grad mode (wrap in ``torch.no_grad()`` for inference)."""
    if z.dim() not in (4, 5):
        raise ValueError(f"tiled decode needs a 4-D (B, C, x, y) or 5-D (B, C, x, y, z) latent, got shape "
                         f"{tuple(z.shape)}")
    nd = z.dim() - 2
    tiles, overlaps, margins = (_per_axis(tile, "tile", nd), _per_axis(overlap, "overlap", nd),
                                _per_axis(margin, "margin", nd))
    for a, (t, o, m) in enumerate(zip(tiles, overlaps, margins)):
        if t < 1 or not 0 <= o < t or not 0 <= 2 * m <= o:
            raise ValueError(f"axis {a}: need tile >= 1, 0 <= overlap < tile and 0 <= 2*margin <= overlap "
                             f"(got tile={t}, overlap={o}, margin={m})")
    spatial = tuple(z.shape[2:])
    out_device = torch.device(output_device) if output_device is not None else z.device
    axes = []  # per axis: list of (start, length, 1D weights on out_device)
    for n, t, o, m in zip(spatial, tiles, overlaps, margins):
        starts = tile_starts(n, t, o)
        length = min(t, n)
        entries = []
        for j, s in enumerate(starts):
            left = starts[j - 1] + length - s if j > 0 else 0
            right = s + length - starts[j + 1] if j + 1 < len(starts) else 0
            w = blend_profile(length * factor, left * factor, right * factor, m * factor, blend, sigma_scale)
            entries.append((s, length, w.to(out_device, torch.float32)))
        axes.append(entries)

    out: torch.Tensor | None = None
    wsum = torch.zeros(tuple(n * factor for n in spatial), device=out_device, dtype=torch.float32)
    dtype = z.dtype
    for combo in itertools.product(*axes):
        y = decode(z[(slice(None), slice(None)) + tuple(slice(s, s + n) for s, n, _ in combo)])
        expect = tuple(n * factor for _, n, _ in combo)
        if tuple(y.shape[2:]) != expect:
            raise ValueError(f"decoder returned spatial size {tuple(y.shape[2:])} for a latent tile of "
                             f"{tuple(n for _, n, _ in combo)}; expected {expect} (factor {factor})")
        if out is None:
            out = torch.zeros((y.shape[0], y.shape[1]) + tuple(wsum.shape), device=out_device, dtype=torch.float32)
            dtype = y.dtype
        w = combo[0][2]
        for _, _, wa in combo[1:]:  # outer product of the per-axis profiles
            w = w[..., None] * wa
        region = tuple(slice(s * factor, (s + n) * factor) for s, n, _ in combo)
        out[(slice(None), slice(None)) + region] += y.to(out_device, torch.float32) * w
        wsum[region] += w
    assert out is not None
    return (out / wsum.clamp_min(1e-12)).to(dtype)
