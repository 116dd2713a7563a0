"""Stage-A compressors (seed 003 §2.5.1-2.5.3, §3.1; seed 000 §3.1, §5.1), 2D or 3D.

One family, :class:`Autoencoder` (alias ``Autoencoder3d``), whose variants are :class:`CompressorConfig`
presets (``PRESETS``: wf-vae, wf-sa-vae, wavelet-vae, vae-gan, tle-vaegan; ``spatial_dims=2`` for
slices with the conv kind; slice001 and slice004 are the 2D VAEs of seeds 001 and 004), the PatchGAN
discriminator, tiled decoding and the latent scale estimator.
"""
from __future__ import annotations

from ..attention import SpatialSelfAttention
from .blocks import (ACTIVATIONS, UPSAMPLE_MODES, Downsample, GroupNormAct, OutputHead, ResBlock, Upsample,
                     norm_act, set_activation_checkpointing)
from .config import KINDS, PRESETS, CompressorConfig, preset_config
from .discriminator import PatchDiscriminator, PatchDiscriminator3d, PatchDiscriminatorConfig, patchgan3d
from .latent_scale import RunningMoments, estimate_latent_scale
from .model import (Autoencoder, Autoencoder3d, build_compressor, slice001_vae, slice004_vae, tle_vaegan, vae_gan,
                    wavelet_vae, wf_sa_vae, wf_vae)
from .posterior import DiagonalGaussian
from .tiling import blend_profile, tile_starts, tiled_decode
from .trunk import Decoder, Encoder, SideFusion
from .wavelet import CoefficientFusion, PixelTransform, WaveletFusion, WaveletStack, subband_channels

__all__ = [
    "Autoencoder", "Autoencoder3d", "CompressorConfig", "PRESETS", "KINDS", "preset_config", "build_compressor",
    "wf_vae", "wf_sa_vae", "wavelet_vae", "vae_gan", "tle_vaegan", "slice001_vae", "slice004_vae",
    "DiagonalGaussian", "Encoder", "Decoder", "SideFusion",
    "PixelTransform", "WaveletStack", "WaveletFusion", "CoefficientFusion", "subband_channels",
    "ResBlock", "Downsample", "Upsample", "SpatialSelfAttention", "OutputHead", "GroupNormAct", "norm_act",
    "ACTIVATIONS", "UPSAMPLE_MODES",
    "set_activation_checkpointing",
    "PatchDiscriminator", "PatchDiscriminator3d", "PatchDiscriminatorConfig", "patchgan3d",
    "tiled_decode", "tile_starts", "blend_profile",
    "RunningMoments", "estimate_latent_scale",
]
