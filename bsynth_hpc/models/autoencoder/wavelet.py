"""Image <-> trunk transforms of the compressor variants (seed 003 §2.5.2 and §3.1).

A transform turns the image into the trunk's input (``analyze``: the *front* tensor plus side
tensors keyed by their downsampling exponent e, i.e. at 1/2^e resolution) and the decoder's
outputs back into an image (``synthesize``). All Haar transforms go through the ops facade.

* :class:`PixelTransform`   (plain VAE-GAN) identity.
* :class:`WaveletStack`     (Wavelet VAE) a fixed ``levels``-level DWT keeping all eight subbands at
                            every level: C -> 8^levels * C channels (64 for two levels), and its
                            exact inverse.
* :class:`WaveletFusion`    (WF-VAE) c1 = cat(W(v)) is the front (Pi_1 is the trunk's input conv);
                            c2 = cat(W(S(c1))) is a side tensor at 1/4 (Pi_2 and the fusion live in
                            the encoder). Synthesis: S_rec = W^-1(c2_hat) recovers the selected
                            stage-1 subbands, which are fused with the decoder's own prediction of
                            those subbands in c1_hat to give c1_tilde, and v_hat = W^-1(c1_tilde).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from ... import ops

__all__ = ["PixelTransform", "WaveletStack", "WaveletFusion", "CoefficientFusion", "subband_channels"]

Sides = dict[int, torch.Tensor]


class PixelTransform(nn.Module):
    """Identity: the trunk sees the image itself (conv VAE-GAN)."""

    dwt_levels = 0

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.front_channels = in_channels
        self.side_channels: dict[int, int] = {}
        """Downsampling exponent e -> channels of the side tensor at 1/2^e."""

    def analyze(self, x: torch.Tensor) -> tuple[torch.Tensor, Sides]:
        return x, {}

    def synthesize(self, front: torch.Tensor, sides: Sides) -> torch.Tensor:
        return front


class WaveletStack(PixelTransform):
    """``levels`` full 3D Haar DWTs (all subbands): (B, C, X, Y, Z) -> (B, 8^levels C, X/2^l, ...)."""

    def __init__(self, in_channels: int, levels: int) -> None:
        super().__init__(in_channels)
        if levels < 1:
            raise ValueError(f"WaveletStack needs at least one level, got {levels}")
        self.levels = levels
        self.dwt_levels = levels
        self.front_channels = in_channels * 8 ** levels

    def analyze(self, x: torch.Tensor) -> tuple[torch.Tensor, Sides]:
        for _ in range(self.levels):
            x = ops.haar_dwt3d(x)
        return x, {}

    def synthesize(self, front: torch.Tensor, sides: Sides) -> torch.Tensor:
        for _ in range(self.levels):
            front = ops.haar_idwt3d(front)
        return front


def subband_channels(subbands: Sequence[int], in_channels: int) -> list[int]:
    """Channel indices of the listed subbands in a stacked DWT (channel s*C + c, see `ops.haar_dwt3d`)."""
    return [s * in_channels + c for s in subbands for c in range(in_channels)]


class CoefficientFusion(nn.Module):
    """Fuse the decoder's stage-1 prediction of the subset S with W^-1(c2_hat) (003 §2.5.2).

    ``conv``: a learned 1x1x1 conv over both, initialised to their average (so two consistent
    predictions pass unchanged); ``add``: their sum (the stage-1 head then predicts a residual).
    """

    def __init__(self, channels: int, mode: Literal["conv", "add"]) -> None:
        super().__init__()
        self.mode = mode
        if mode == "conv":
            self.mix = nn.Conv3d(2 * channels, channels, 1)
            with torch.no_grad():
                eye = torch.eye(channels).reshape(channels, channels, 1, 1, 1)
                self.mix.weight.copy_(torch.cat((eye, eye), 1) * 0.5)
                self.mix.bias.zero_()
        elif mode != "add":
            raise ValueError(f"CoefficientFusion: mode={mode!r}, use 'conv' or 'add'")

    def forward(self, stage1: torch.Tensor, from_stage2: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return stage1 + from_stage2
        return self.mix(torch.cat((stage1, from_stage2), 1))


class WaveletFusion(PixelTransform):
    """Two-stage Haar pathway of WF-VAE (see the module docstring)."""

    dwt_levels = 1

    def __init__(self, in_channels: int, subbands: Sequence[int], fusion: Literal["conv", "add"] = "conv") -> None:
        super().__init__(in_channels)
        self.subbands = tuple(int(s) for s in subbands)
        k = len(self.subbands) * in_channels
        self.front_channels = 8 * in_channels
        self.side_channels = {2: 8 * k}
        self.register_buffer("subset", torch.tensor(subband_channels(self.subbands, in_channels)), persistent=False)
        self.fusion = CoefficientFusion(k, fusion)

    def analyze(self, x: torch.Tensor) -> tuple[torch.Tensor, Sides]:
        c1, c2 = ops.haar_dwt3d_two_level(x, self.subbands)
        return c1, {2: c2}

    def synthesize(self, front: torch.Tensor, sides: Sides) -> torch.Tensor:
        c1_hat, c2_hat = front, sides[2]
        from_stage2 = ops.haar_idwt3d(c2_hat, tuple(c1_hat.shape[2:]))
        fused = self.fusion(c1_hat.index_select(1, self.subset), from_stage2)
        c1_tilde = c1_hat.index_copy(1, self.subset, fused.to(c1_hat.dtype))
        return ops.haar_idwt3d(c1_tilde)
