"""StyleGAN2 weight modulation and demodulation (Karras et al. 2020) for the clinical-style decoder of seed 002
§2.4 ("a separable depth-wise 3x3x3 convolution (sd_c3) whose weights are modulated by w and then
de-modulated similar to StyleGAN2", and the channel-mixing "style conv" SC).

StyleGAN2 scales the input-channel slices of the weight by a per-sample style s = A(w) and then
normalises each output filter: W'_oik = s_i W_oik,  W''_oik = W'_oik / sqrt(sum_ik W'_oik^2 + eps).
Because both factors are per-sample, per-channel scalars, the same result is

    y = d * conv_W(s * x),   d_o = 1 / sqrt(sum_i s_i^2 N_oi + eps),   N_oi = sum_k W_oik^2,

i.e. one shared-weight convolution between two activation scalings (StyleGAN2's own "fused = False"
form); no per-sample weights nor grouped convolution over the batch are needed. For the depth-wise
separable convolution (depth-wise D_i then point-wise P_oi) the effective weight is W_oik = P_oi D_ik, so
N_oi = P_oi^2 ||D_i||^2. For unit-variance i.i.d. input, every output channel then has unit variance
(away from the zero-padded border): Var(y_o) = d_o^2 sum_ik (s_i W_oik)^2 = 1 (tested).
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from ... import nn as bnn

__all__ = ["ModulatedConv3d", "ModulatedFullConv3d", "ModulatedSeparableConv3d", "StyleAffine"]


class StyleAffine(nn.Linear):
    """A: style w (B, w_dim) -> per-channel scales s (B, C), bias initialised to 1 (StyleGAN2) so that the
    modulation starts near the identity; weights Xavier-uniform (seed 002), kept by ``xavier_init``."""

    xavier_exempt = True

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.ones_(self.bias)


class ModulatedConv3d(nn.Module, abc.ABC):
    """Base: y = d(w) * conv(s(w) * x) (see the module docstring); subclasses give the convolution and
    its squared weight norms N (out, in)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, demodulate: bool = True,
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.affine = StyleAffine(w_dim, in_channels)
        self.demodulate, self.eps = demodulate, eps

    @abc.abstractmethod
    def weight_sq_norms(self) -> torch.Tensor:
        """N_oi = sum_k W_oik^2 of the effective (out, in, k, k, k) weight, shape (out, in)."""

    @abc.abstractmethod
    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """The shared-weight convolution."""

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, in)
        y = self.conv(x * s.to(x.dtype)[:, :, None, None, None])
        if self.demodulate:  # the normalisers in float32 (sums of squares under bf16 autocast lose digits)
            ct = torch.promote_types(s.dtype, torch.float32)
            d = torch.rsqrt(s.to(ct).square() @ self.weight_sq_norms().to(ct).t() + self.eps)  # (B, out)
            y = y * d.to(y.dtype)[:, :, None, None, None]
        return y


class ModulatedFullConv3d(ModulatedConv3d):
    """A modulated/demodulated dense convolution: the style conv SC at ``kernel_size=1`` (mixes channels), and
    the standard 3x3x3 stand-in for sd_c3 in the non-separable ablation (002 Table 2, "3D VAE-GAN")."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 demodulate: bool = True) -> None:
        super().__init__(in_channels, out_channels, w_dim, demodulate)
        self.weight_conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def weight_sq_norms(self) -> torch.Tensor:
        return self.weight_conv.weight.square().flatten(2).sum(2)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_conv(x)


class ModulatedSeparableConv3d(ModulatedConv3d):
    """sd_c3: depth-wise k^3 (``bsynth_hpc.nn.DepthwiseConv3d``, the fast op) then point-wise 1x1x1, with
    the effective weight P_oi D_ik modulated and demodulated as one kernel."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3,
                 demodulate: bool = True) -> None:
        super().__init__(in_channels, out_channels, w_dim, demodulate)
        self.depthwise = bnn.DepthwiseConv3d(in_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=False)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def weight_sq_norms(self) -> torch.Tensor:
        depth = self.depthwise.weight.flatten(1).square().sum(1)  # (in,)
        return self.pointwise.weight.flatten(1).square() * depth[None, :]

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))
