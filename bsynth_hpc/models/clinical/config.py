"""Sizes of seed 002's clinical VAE-GAN and its parts (``ClinicalModelConfig``), with presets and parameter counts.

``full``: 002's 128^3 volumes, Xception widths 64 -> 128 -> 256 -> 512 to 16^3, the mirrored decoder, a
64-wide separable PatchGAN and 3D ResNet-18 auxiliary heads. 002 gives no latent size nor head widths; a
128-D latent and a 4-channel flattening of the 16^3 map are chosen so that the VAE-GAN lands near the
8.1 M parameters of 002 Table 2 ("+ Clinical conditions"); the 13.2 M of the full row are that plus the
5.3 M of EfficientNet-B0 (its perceptual network). ``tiny`` is a 32^3 model for tests and the demo
(``image_size=16`` works too): three widths to an 8^3 grid (a 4^3 grid holds too little anatomy at these widths)
with a learned output template (``output_template``). ``conditioning=False`` is the unconditional ablation (encoder without c,
constant style, N(0, I) prior, unconditional discriminator); ``separable=False`` the standard-convolution one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ...configtools import from_mapping
from ...errors import ConfigError
from ..autoencoder.discriminator import PatchDiscriminatorConfig
from .embedding import CLINICAL_DIM

__all__ = ["ClinicalModelConfig", "CLINICAL_PRESETS", "clinical_preset"]


@dataclass
class ClinicalModelConfig:
    """Architecture of :class:`~.model.ClinicalVAEGAN`, its discriminator and its auxiliary heads."""

    image_size: int = 128
    in_channels: int = 1
    clinical_dim: int = CLINICAL_DIM
    conditioning: bool = True
    separable: bool = True
    """Depth-wise separable 3x3x3 convolutions in encoder, decoder and discriminator (False: the standard
    convolutions of 002 Table 2's "3D VAE" / "3D VAE-GAN" rows; the auxiliary heads stay separable)."""
    latent_dim: int = 128
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512)
    flat_channels: int = 4
    """Channels of the 1/8 map that is flattened into the posterior heads (and that z is mapped to)."""
    clinical_embed_dim: int = 64
    decoder_channels: tuple[int, ...] = (512, 256, 128, 64)
    w_dim: int = 128
    mapping_layers: int = 3
    prior_hidden: int = 128
    disc_channels: int = 64
    disc_layers: int = 3
    disc_max_channels: int = 512
    aux_widths: tuple[int, ...] = (64, 128, 256, 512)
    aux_blocks: tuple[int, ...] = (2, 2, 2, 2)
    output_template: bool = False
    """Add a learned per-voxel output bias (zero-init) to the decoder: the cohort's mean anatomy is then learned
    once, and the spatially shared modulated convolutions only model each subject's departure from it. Not in
    002; the tiny preset uses it because its 8-to-32 widths cannot draw a brain from a 4-channel map in a
    demo's few hundred steps (measured: val L1 0.036 -> 0.028 at 500 steps on demo-dementia)."""
    checkpointing: bool = False
    """Activation checkpointing of the encoder/decoder/aux-head blocks (recomputed in backward; 128^3 at
    64 channels keeps 0.5 GB per activation and sample)."""

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "decoder_channels", "aux_widths", "aux_blocks"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))

    def validate(self, where: str = "model") -> None:
        if len(self.encoder_channels) != len(self.decoder_channels):
            raise ConfigError(f"{where}: encoder_channels {self.encoder_channels} and decoder_channels "
                              f"{self.decoder_channels} must have the same length (the same 1/2^(n-1) grid)")
        factor = 2 ** (len(self.encoder_channels) - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ConfigError(f"{where}: image_size={self.image_size} must be a multiple of {factor}")
        positive = ("image_size", "in_channels", "clinical_dim", "latent_dim", "flat_channels", "clinical_embed_dim",
                    "w_dim", "mapping_layers", "prior_hidden", "disc_channels", "disc_layers", "disc_max_channels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name}={getattr(self, name)} must be >= 1")
        if min(self.encoder_channels + self.decoder_channels + self.aux_widths + self.aux_blocks) < 1:
            raise ConfigError(f"{where}: every width and block count must be >= 1")
        if len(self.aux_widths) != len(self.aux_blocks):
            raise ConfigError(f"{where}: aux_widths {self.aux_widths} and aux_blocks {self.aux_blocks} "
                              "differ in length")

    @property
    def latent_grid(self) -> int:
        """Side of the 1/8 (generally 1/2^(n-1)) feature grid."""
        return self.image_size // 2 ** (len(self.encoder_channels) - 1)

    def discriminator_config(self) -> PatchDiscriminatorConfig:
        """The 3x3x3 PatchGAN, separable unless the ablation says not (instance norm, the project's default)."""
        return PatchDiscriminatorConfig(in_channels=self.in_channels, channels=self.disc_channels,
                                        num_layers=self.disc_layers, kernel_size=3, max_channels=self.disc_max_channels,
                                        conv="separable" if self.separable else "standard", spatial_dims=3)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "model") -> "ClinicalModelConfig":
        """A config from a mapping (a YAML section); ``preset`` names the base, other keys override it."""
        raw = dict(raw or {})
        base = clinical_preset(str(raw.pop("preset", "full")))
        return from_mapping(cls, {**base.as_dict(), **raw}, where)


CLINICAL_PRESETS: dict[str, ClinicalModelConfig] = {
    "full": ClinicalModelConfig(),
    "tiny": ClinicalModelConfig(image_size=32, latent_dim=16, encoder_channels=(8, 16, 32), flat_channels=8,
                                clinical_embed_dim=16, decoder_channels=(32, 16, 8), w_dim=32, mapping_layers=2,
                                prior_hidden=32, output_template=True, disc_channels=8, disc_layers=2, disc_max_channels=64,
                                aux_widths=(8, 16, 32, 64), aux_blocks=(1, 1, 1, 1)),
}


def clinical_preset(name: str, **overrides: Any) -> ClinicalModelConfig:
    """A copy of preset ``name`` (full, tiny) with ``overrides``; ConfigError for an unknown name."""
    if name not in CLINICAL_PRESETS:
        raise ConfigError(f"unknown clinical model preset {name!r}: use one of {', '.join(CLINICAL_PRESETS)}")
    cfg = dataclasses.replace(CLINICAL_PRESETS[name], **overrides)
    cfg.validate(f"clinical preset {name}")
    return cfg
