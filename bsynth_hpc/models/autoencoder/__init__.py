"""Stage-A compressors (seed 003 §2.5.1-2.5.3, §3.1; seed 000 §3.1, §5.1).

One family, :class:`Autoencoder3d`, whose variants are :class:`CompressorConfig` presets
(``PRESETS``: wf-vae, wf-sa-vae, wavelet-vae, vae-gan, tle-vaegan), the 3D PatchGAN
discriminator, tiled decoding and the latent scale estimator.
"""
from __future__ import annotations

from .blocks import (Downsample3d, OutputHead3d, ResBlock3d, SelfAttention3d, Upsample3d,
                     set_activation_checkpointing)
from .config import KINDS, PRESETS, CompressorConfig, preset_config
from .discriminator import PatchDiscriminator3d, PatchDiscriminatorConfig, patchgan3d
from .latent_scale import RunningMoments, estimate_latent_scale
from .model import Autoencoder3d, build_compressor, tle_vaegan, vae_gan, wavelet_vae, wf_sa_vae, wf_vae
from .posterior import DiagonalGaussian
from .tiling import blend_profile, tile_starts, tiled_decode
from .trunk import Decoder3d, Encoder3d, SideFusion3d
from .wavelet import CoefficientFusion, PixelTransform, WaveletFusion, WaveletStack, subband_channels

__all__ = [
    "Autoencoder3d", "CompressorConfig", "PRESETS", "KINDS", "preset_config", "build_compressor",
    "wf_vae", "wf_sa_vae", "wavelet_vae", "vae_gan", "tle_vaegan",
    "DiagonalGaussian", "Encoder3d", "Decoder3d", "SideFusion3d",
    "PixelTransform", "WaveletStack", "WaveletFusion", "CoefficientFusion", "subband_channels",
    "ResBlock3d", "Downsample3d", "Upsample3d", "SelfAttention3d", "OutputHead3d",
    "set_activation_checkpointing",
    "PatchDiscriminator3d", "PatchDiscriminatorConfig", "patchgan3d",
    "tiled_decode", "tile_starts", "blend_profile",
    "RunningMoments", "estimate_latent_scale",
]
