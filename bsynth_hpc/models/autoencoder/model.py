"""`Autoencoder`: the Stage-A compressor family (seed 003 §2.5.1-2.5.2, §3.1; seed 000 §3.1, §5.1), 2D or 3D.

One network, variants by :class:`CompressorConfig` (WF-VAE, WF-SA-VAE, Wavelet VAE, VAE-GAN,
TLE VAE-GAN): an image transform (:mod:`.wavelet`) feeds an encoder trunk (:mod:`.trunk`) that
outputs a diagonal Gaussian posterior (mu and log sigma^2 from separate 1x1x1 convs, log sigma^2
clamped); a mirrored decoder trunk produces the transform's coefficients, which the transform
inverts into the image.

``config.spatial_dims`` is 3 (volumes (B, C, X, Y, Z)) or 2 (slices (B, C, H, W)); ``Autoencoder3d``
is the same class (the name exports and recipes use).

Spatial sizes: the latent is the input divided by f per axis. Sizes that are not multiples of f
raise :class:`~bsynth_hpc.errors.InputError` unless ``pad_input`` is set, in which case the
input is replicate-padded up to the next multiple and reconstructions are cropped back
(``decode`` returns the padded size unless given ``output_shape``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from .blocks import set_activation_checkpointing
from .config import CompressorConfig, preset_config
from .posterior import DiagonalGaussian
from .tiling import Blend, tiled_decode
from .trunk import Decoder, Encoder
from .wavelet import PixelTransform, WaveletFusion, WaveletStack

__all__ = ["Autoencoder", "Autoencoder3d", "build_compressor", "slice001_vae", "slice004_vae"]


def _transform(cfg: CompressorConfig) -> PixelTransform:
    if cfg.kind == "wavelet_fusion":
        return WaveletFusion(cfg.in_channels, cfg.subbands, cfg.decoder_fusion)
    if cfg.kind == "wavelet":
        return WaveletStack(cfg.in_channels, cfg.dwt_levels)
    return PixelTransform(cfg.in_channels)


class Autoencoder(nn.Module):
    """VAE compressor: ``encode`` -> posterior, ``decode`` -> image (see the module docstring)."""

    def __init__(self, config: CompressorConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = (config or CompressorConfig()).replace(**overrides)
        cfg.validate()
        self.config = cfg
        self.transform = _transform(cfg)
        dwt = self.transform.dwt_levels
        sides = {e - dwt: ch for e, ch in self.transform.side_channels.items()}
        common = dict(channels=cfg.channels, num_res_blocks=cfg.num_res_blocks, groups=cfg.norm_groups,
                      eps=cfg.norm_eps, attention=cfg.attention, heads=cfg.attention_heads,
                      spatial_dims=cfg.spatial_dims)
        self.encoder = Encoder(self.transform.front_channels, latent_channels=cfg.latent_channels,
                                 side_inputs=sides, fusion=cfg.encoder_fusion, activation=cfg.encoder_activation,
                                 **common)
        self.decoder = Decoder(cfg.latent_channels, out_channels=self.transform.front_channels,
                                 side_outputs=sides, activation=cfg.decoder_activation, upsample=cfg.upsample,
                                 **common)
        self._side_exponent = {e - dwt: e for e in self.transform.side_channels}  # trunk level -> exponent
        set_activation_checkpointing(self, cfg.checkpointing)

    # ------------------------------------------------------------------ properties
    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    def latent_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """(C_z, x, y[, z]) of the latent of an image with spatial size ``spatial`` (after padding)."""
        f = self.downsample_factor
        self._check_spatial(tuple(spatial))
        return (self.latent_channels,) + tuple(-(-int(n) // f) for n in spatial)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward (engine hook; see ``CompressorConfig.checkpointing``)."""
        set_activation_checkpointing(self, enabled)

    def factory_kwargs(self) -> dict[str, Any]:
        """JSON-friendly kwargs that rebuild this architecture with :func:`build_compressor`/the class."""
        return self.config.to_dict()

    # ------------------------------------------------------------------ shape handling
    def _layout(self, latent: bool = False) -> str:
        axes = ("x", "y", "z") if latent else ("X", "Y", "Z")
        return ", ".join(axes[:self.spatial_dims])

    def _check_spatial(self, spatial: tuple[int, ...]) -> None:
        f = self.downsample_factor
        if len(spatial) != self.spatial_dims:
            raise InputError(f"compressor expects {self.spatial_dims} spatial dims (B, C, {self._layout()}), got "
                             f"spatial shape {spatial}")
        bad = [(a, n) for a, n in enumerate(spatial) if n % f]
        if bad and not self.config.pad_input:
            raise InputError(
                f"volume spatial shape {spatial} is not divisible by the downsampling factor f={f} "
                f"(axis {bad[0][0]} has {bad[0][1]}); crop/pad volumes to multiples of {f} or set pad_input=True")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.config.in_channels:
            raise InputError(f"compressor expects (B, {self.config.in_channels}, {self._layout()}), got shape "
                             f"{tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        self._check_spatial(spatial)
        f = self.downsample_factor
        pad = [(-n) % f for n in spatial]
        if any(pad):
            x = F.pad(x, tuple(p for n in reversed(pad) for p in (0, n)), mode="replicate")
        return x

    def _crop(self, y: torch.Tensor, output_shape: Sequence[int] | None) -> torch.Tensor:
        if output_shape is None:
            return y
        keep = tuple(slice(0, int(s)) for s in tuple(output_shape)[-self.spatial_dims:])
        return y[(slice(None), slice(None)) + keep]

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 2 + self.spatial_dims or z.shape[1] != self.latent_channels:
            raise InputError(f"decode expects a latent (B, {self.latent_channels}, {self._layout(latent=True)}), "
                             f"got shape {tuple(z.shape)}")

    # ------------------------------------------------------------------ API
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x): a :class:`DiagonalGaussian` with mean/logvar (B, C_z, X/f, Y/f[, Z/f])."""
        front, sides = self.transform.analyze(self._prepare(x))
        dwt = self.transform.dwt_levels
        mean, logvar = self.encoder(front, {e - dwt: t for e, t in sides.items()})
        return DiagonalGaussian(mean, logvar, (self.config.logvar_min, self.config.logvar_max))

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean (unscaled), what the latent cache stores (003 §2.5.3)."""
        return self.encode(x).mean

    def decode(self, z: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Image from latent ``z``; ``output_shape`` (X, Y[, Z]) crops a padded reconstruction."""
        self._check_latent(z)
        main, sides = self.decoder(z)
        image = self.transform.synthesize(main, {self._side_exponent[lvl]: t for lvl, t in sides.items()})
        if self.config.output_activation == "tanh":
            image = torch.tanh(image)
        return self._crop(image, output_shape)

    def decode_tiled(self, z: torch.Tensor, tile: int | Sequence[int] = 16, overlap: int | Sequence[int] = 4,
                     margin: int | Sequence[int] = 0, blend: Blend = "linear",
                     output_shape: Sequence[int] | None = None,
                     output_device: torch.device | str | None = None) -> torch.Tensor:
        """Sliding-window :meth:`decode` (sizes in latent voxels; see :mod:`.tiling` for exactness)."""
        self._check_latent(z)
        y = tiled_decode(self.decode, z, self.downsample_factor, tile, overlap, margin, blend,
                         output_device=output_device)
        return self._crop(y, output_shape)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(reconstruction, posterior); decodes a reparameterised sample, or the mean when
        ``sample_posterior`` is False."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, x.shape[2:]), posterior

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the posterior mean (evaluation)."""
        return self.decode(self.encode(x).mean, x.shape[2:])


Autoencoder3d = Autoencoder
"""The historic name (registry entry "autoencoder3d" and format-1 sidecars name ``model:Autoencoder3d``)."""


def build_compressor(preset: str = "wf-vae", **overrides: Any) -> Autoencoder:
    """An :class:`Autoencoder` from a named preset (``config.PRESETS``) with field overrides
    (``spatial_dims=2`` for slices)."""
    return Autoencoder(preset_config(preset, **overrides))


def wf_vae(**overrides: Any) -> Autoencoder:
    """WF-VAE (003 §2.5.2)."""
    return build_compressor("wf-vae", **overrides)


def wf_sa_vae(**overrides: Any) -> Autoencoder:
    """WF-SA-VAE: WF-VAE with self-attention in the deepest stage (003 §3.1)."""
    return build_compressor("wf-sa-vae", **overrides)


def wavelet_vae(**overrides: Any) -> Autoencoder:
    """Wavelet VAE: fixed two-stage DWT + light bottleneck (003 §3.1)."""
    return build_compressor("wavelet-vae", **overrides)


def vae_gan(**overrides: Any) -> Autoencoder:
    """Plain conv VAE-GAN baseline (003 §3.1)."""
    return build_compressor("vae-gan", **overrides)


def tle_vaegan(**overrides: Any) -> Autoencoder:
    """The TLE VAE-GAN of seed 000 §5.1 (three ResNet blocks, two downsampling, f = 4)."""
    return build_compressor("tle-vaegan", **overrides)


def slice001_vae(**overrides: Any) -> Autoencoder:
    """Seed 001's slice VAE, 1x128^2 -> 8x16^2 (config ``slice001``)."""
    return build_compressor("slice001", **overrides)


def slice004_vae(**overrides: Any) -> Autoencoder:
    """Seed 004's slice VAE, 1x256^2 -> 8x32^2 (config ``slice004``)."""
    return build_compressor("slice004", **overrides)
