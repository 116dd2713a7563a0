"""The clinical-style decoder g_theta(z, c) of seed 002 §2.4 (Fig. 2-B).

"The 7-D clinical vector c is mapped by an MLP to a style code w. At each up-sampling stage, we applied a
separable depth-wise 3x3x3 convolution (sd_c3) whose weights are modulated by w and then de-modulated
similar to StyleGAN2. A "style conv" (SC) mixes channels after every up-sample. This sequence,
upsample -> SC -> (sd_c3 + mod/demod), propagates clinical cues through the hierarchy. A final 1x1x1 layer
produces the reconstructed 3-D MRI."

z -> Linear -> an ``init_channels`` map on the 1/8 grid; a first stage at that resolution (SC -> sd_c3),
then one stage per further width (trilinear x2 upsample -> SC -> sd_c3), each modulated convolution
followed by a bias and LeakyReLU(0.2) as in StyleGAN2; a final 1x1x1 convolution, plus (``output_template``,
not in 002) a learned zero-initialised per-voxel bias that carries the cohort's mean anatomy. Without clinical
conditioning (the ablation rows of 002 Table 2) the style is a learned constant instead of MLP(c); with
``separable=False`` (the "3D VAE(-GAN)" rows) sd_c3 is a modulated standard 3x3x3 convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpointing import CheckpointedBlock
from .embedding import CLINICAL_DIM, ClinicalMLP
from .modulated import ModulatedFullConv3d, ModulatedSeparableConv3d

__all__ = ["StyleStage3d", "ClinicalStyleDecoder3d"]


class StyleStage3d(CheckpointedBlock):
    """[x2 upsample] -> SC (modulated 1x1x1) -> bias, LReLU -> sd_c3 (modulated separable 3x3x3; a modulated
    standard 3x3x3 when not ``separable``) -> bias, LReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, upsample: bool, separable: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.style_conv = ModulatedFullConv3d(in_channels, out_channels, w_dim)
        self.sd_c3 = (ModulatedSeparableConv3d(out_channels, out_channels, w_dim) if separable else
                      ModulatedFullConv3d(out_channels, out_channels, w_dim, kernel_size=3))
        self.bias1 = nn.Parameter(torch.zeros(out_channels))
        self.bias2 = nn.Parameter(torch.zeros(out_channels))

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        x = F.leaky_relu(self.style_conv(x, w) + self.bias1[:, None, None, None], 0.2)
        return F.leaky_relu(self.sd_c3(x, w) + self.bias2[:, None, None, None], 0.2)


class ClinicalStyleDecoder3d(nn.Module):
    """(z (B, latent_dim), c (B, 7) or None) -> x_hat (B, out_channels, S, S, S)."""

    def __init__(self, image_size: int, latent_dim: int, channels: tuple[int, ...] = (512, 256, 128, 64),
                 out_channels: int = 1, init_channels: int = 4, w_dim: int = 128, mapping_layers: int = 3,
                 clinical_dim: int = CLINICAL_DIM, conditional: bool = True, separable: bool = True,
                 output_template: bool = False) -> None:
        super().__init__()
        factor = 2 ** (len(channels) - 1)
        if image_size % factor:
            raise ValueError(f"image_size={image_size} must be divisible by {factor} ({len(channels)} widths)")
        self.grid, self.init_channels = image_size // factor, init_channels
        self.fc = nn.Linear(latent_dim, init_channels * self.grid ** 3)
        if conditional:
            self.mapping: nn.Module | None = ClinicalMLP(w_dim, w_dim, layers=mapping_layers, in_dim=clinical_dim,
                                                         final_activation=False)
            self.register_parameter("const_style", None)
        else:
            self.mapping = None
            self.const_style = nn.Parameter(torch.randn(w_dim))
        widths = (init_channels, *channels)
        self.stages = nn.ModuleList([StyleStage3d(a, b, w_dim, upsample=i > 0, separable=separable)
                                     for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        self.out = nn.Conv3d(channels[-1], out_channels, 1)
        self.template = (nn.Parameter(torch.zeros(1, out_channels, image_size, image_size, image_size))
                         if output_template else None)

    def style(self, c: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The style code w (B, w_dim): MLP(c), or the learned constant of the unconditional ablation."""
        if self.mapping is not None:
            if c is None:
                raise ValueError("the clinical-style decoder needs the clinical vector c")
            return self.mapping(c)
        return self.const_style[None].expand(batch, -1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        w = self.style(c, z.shape[0])
        g = self.grid
        x = self.fc(z).reshape(z.shape[0], self.init_channels, g, g, g)
        for stage in self.stages:
            x = stage(x, w.to(x.dtype))
        x = self.out(x)
        return x if self.template is None else x + self.template.to(x.dtype)
