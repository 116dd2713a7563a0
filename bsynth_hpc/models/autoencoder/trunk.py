"""Encoder and decoder trunks shared by every compressor variant.

The trunk is a stack of levels (finest first), each ``num_res_blocks`` ResNet blocks wide, with a
learned x2 down/up-sampling between levels and optional self-attention in the deepest level.
Wavelet variants plug into it through *side inputs* (extra features fused at the input of an
encoder level: Pi_2 of 003 §2.5.2) and *side outputs* (extra coefficient heads at the output of a
decoder level: the stage-2 prediction c2_hat). The posterior parameters mu and log sigma^2 come
from separate 1x1(x1) convolutions (003 §2.5.1). ``spatial_dims`` (2 or 3) picks the convolutions;
``activation`` (per trunk: 004's LeakyReLU encoder / ReLU decoder) and the decoder's ``upsample`` mode
(001's transposed convolutions) are the options of :mod:`.blocks`.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
from torch import nn

from ..attention import SpatialSelfAttention
from ..spatial import conv_nd
from .blocks import Downsample, OutputHead, ResBlock, Upsample, norm_act

__all__ = ["Encoder", "Decoder", "SideFusion"]


def _level(in_ch: int, out_ch: int, n_blocks: int, groups: int, eps: float, attention: bool,
           heads: int, spatial_dims: int, activation: str = "silu") -> nn.Sequential:
    blocks: list[nn.Module] = []
    for b in range(n_blocks):
        blocks.append(ResBlock(in_ch if b == 0 else out_ch, out_ch, groups, eps, spatial_dims, activation))
        if attention:
            blocks.append(SpatialSelfAttention(out_ch, heads, groups, eps))
    return nn.Sequential(*blocks)


class SideFusion(nn.Module):
    """Project side features (Pi_2: 3x3(x3) conv) and fuse them into the trunk: ``concat`` then a
    1x1(x1) conv back to the trunk width, or ``add``."""

    def __init__(self, side_channels: int, channels: int, mode: Literal["concat", "add"],
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.mode = mode
        self.project = conv(side_channels, channels, 3, padding=1)
        self.mix = conv(2 * channels, channels, 1) if mode == "concat" else None

    def forward(self, h: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        w = self.project(side)
        if w.shape[2:] != h.shape[2:]:
            raise ValueError(f"side features of spatial size {tuple(w.shape[2:])} cannot be fused into encoder "
                             f"features of size {tuple(h.shape[2:])}")
        return self.mix(torch.cat((h, w), 1)) if self.mix is not None else h + w


class Encoder(nn.Module):
    """Input (B, in, ...) -> (mean, raw log-variance), each (B, latent, .../2^(levels-1))."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_res_blocks: int, latent_channels: int,
                 groups: int, eps: float = 1e-6, attention: bool = False, heads: int = 1,
                 side_inputs: Mapping[int, int] | None = None, fusion: Literal["concat", "add"] = "concat",
                 spatial_dims: int = 3, activation: str = "silu") -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        side_inputs = dict(side_inputs or {})
        last = len(channels) - 1
        if any(not 0 <= i <= last for i in side_inputs):
            raise ValueError(f"side inputs at levels {sorted(side_inputs)} outside 0..{last}")
        self.conv_in = conv(in_channels, channels[0], 3, padding=1)
        self.fusions = nn.ModuleDict()
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            if i in side_inputs:
                self.fusions[str(i)] = SideFusion(side_inputs[i], prev, fusion, spatial_dims)
            self.levels.append(_level(prev, ch, num_res_blocks, groups, eps, attention and i == last, heads,
                                      spatial_dims, activation))
            self.downs.append(Downsample(ch, spatial_dims) if i < last else nn.Identity())
            prev = ch
        self.norm_out = norm_act(groups, prev, eps, activation)
        self.to_mean = conv(prev, latent_channels, 1)
        self.to_logvar = conv(prev, latent_channels, 1)

    def forward(self, x: torch.Tensor, sides: Mapping[int, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        sides = sides or {}
        missing = sorted(set(int(k) for k in self.fusions) - set(sides))
        if missing:
            raise ValueError(f"encoder expects side features at levels {missing}")
        h = self.conv_in(x)
        for i, (level, down) in enumerate(zip(self.levels, self.downs)):
            if str(i) in self.fusions:
                h = self.fusions[str(i)](h, sides[i])
            h = down(level(h))
        h = self.norm_out(h)
        return self.to_mean(h), self.to_logvar(h)


class Decoder(nn.Module):
    """Latent (B, latent, ...) -> (main output at level 0, {level: side output})."""

    def __init__(self, latent_channels: int, channels: Sequence[int], num_res_blocks: int, out_channels: int,
                 groups: int, eps: float = 1e-6, attention: bool = False, heads: int = 1,
                 side_outputs: Mapping[int, int] | None = None, spatial_dims: int = 3, activation: str = "silu",
                 upsample: str = "nearest") -> None:
        super().__init__()
        side_outputs = dict(side_outputs or {})
        last = len(channels) - 1
        if any(not 1 <= i <= last for i in side_outputs):
            raise ValueError(f"side outputs at levels {sorted(side_outputs)} outside 1..{last}")
        self.conv_in = conv_nd(spatial_dims)(latent_channels, channels[-1], 3, padding=1)
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.heads = nn.ModuleDict()
        prev = channels[-1]
        for i in range(last, -1, -1):  # deepest first; index k of the lists = level last - k
            ch = channels[i]
            self.levels.append(_level(prev, ch, num_res_blocks, groups, eps, attention and i == last, heads,
                                      spatial_dims, activation))
            if i in side_outputs:
                self.heads[str(i)] = OutputHead(ch, side_outputs[i], groups, eps, spatial_dims, activation)
            self.ups.append(Upsample(ch, spatial_dims, upsample) if i > 0 else nn.Identity())
            prev = ch
        self.head_out = OutputHead(prev, out_channels, groups, eps, spatial_dims, activation)
        self.num_levels = last + 1

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        h = self.conv_in(z)
        sides: dict[int, torch.Tensor] = {}
        for k, (level, up) in enumerate(zip(self.levels, self.ups)):
            i = self.num_levels - 1 - k
            h = level(h)
            if str(i) in self.heads:
                sides[i] = self.heads[str(i)](h)
            h = up(h)
        return self.head_out(h), sides
