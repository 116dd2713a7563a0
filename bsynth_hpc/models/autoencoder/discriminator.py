"""PatchGAN discriminator D_omega of the VAE-GAN training, 2D or 3D (seed 003 §2.5.1, seed 000 §3.1).

MONAI-PatchDiscriminator-like: a stride-2 conv + LeakyReLU(0.2) without normalisation, then
``num_layers`` conv + norm + LeakyReLU stages doubling the width (stride 2 except the last,
stride 1), and a final conv to one logit per patch. The output is a logit map (no sigmoid):
the adversarial losses in :mod:`bsynth_hpc.losses.adversarial` take logits. ``spatial_dims``
picks 2D or 3D layers; ``PatchDiscriminator3d`` is the same class. ``conv="separable"`` replaces every
convolution by a depth-wise separable one (``bsynth_hpc.nn.SeparableConv3d``; seed 002 §2.4, 3D only).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ... import nn as bnn
from ...errors import ConfigError
from ..checkpointing import CheckpointedBlock, set_activation_checkpointing
from ..spatial import batch_norm_nd, check_spatial_dims, conv_nd, instance_norm_nd

__all__ = ["PatchDiscriminatorConfig", "PatchDiscriminator", "PatchDiscriminator3d", "patchgan3d"]

NormKind = Literal["instance", "batch", "group", "none"]
ConvKind = Literal["standard", "separable"]


@dataclass
class PatchDiscriminatorConfig:
    """Architecture of :class:`PatchDiscriminator`."""

    in_channels: int = 1
    channels: int = 64
    """Width of the first stage; stage i has channels * 2^i (capped at ``max_channels``)."""
    num_layers: int = 3
    """Normalised stages after the first conv (MONAI's num_layers_d)."""
    kernel_size: int = 4
    norm: NormKind = "instance"
    """instance (default: batch sizes of 1-2 make batch statistics unreliable), batch, group (32 groups
    or fewer) or none."""
    max_channels: int = 512
    negative_slope: float = 0.2
    checkpointing: bool = False
    spatial_dims: int = 3
    """3: volumes, 2: slices."""
    conv: ConvKind = "standard"
    """standard, or separable (depth-wise k^3 + point-wise 1^3, seed 002; spatial_dims 3 only)."""

    def validate(self, where: str = "discriminator") -> None:
        if self.in_channels < 1 or self.channels < 1 or self.num_layers < 1 or self.kernel_size < 1:
            raise ConfigError(f"{where}: in_channels, channels, num_layers and kernel_size must be >= 1")
        if self.norm not in ("instance", "batch", "group", "none"):
            raise ConfigError(f"{where}: norm={self.norm!r}, use instance, batch, group or none")
        if self.max_channels < self.channels:
            raise ConfigError(f"{where}: max_channels={self.max_channels} is below channels={self.channels}")
        check_spatial_dims(self.spatial_dims, where)
        if self.conv not in ("standard", "separable"):
            raise ConfigError(f"{where}: conv={self.conv!r}, use standard or separable")
        if self.conv == "separable" and self.spatial_dims != 3:
            raise ConfigError(f"{where}: conv=separable needs spatial_dims=3")


def _conv_factory(cfg: PatchDiscriminatorConfig) -> Any:
    """The convolution class the config asks for (same positional/keyword arguments as nn.Conv3d)."""
    return bnn.SeparableConv3d if cfg.conv == "separable" else conv_nd(cfg.spatial_dims)


def _norm(kind: NormKind, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "instance":
        return instance_norm_nd(spatial_dims)(channels, affine=True)
    if kind == "batch":
        return batch_norm_nd(spatial_dims)(channels)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class _Stage(CheckpointedBlock):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, norm: NormKind, slope: float,
                 spatial_dims: int, conv: Any) -> None:
        super().__init__()
        self.conv = conv(in_ch, out_ch, kernel, stride=stride, padding=1, bias=norm == "none")
        self.norm = _norm(norm, out_ch, spatial_dims)
        self.act = nn.LeakyReLU(slope)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


# Kept over monai.networks.nets.PatchDiscriminator: the same network (mapped weights give identical logits,
# tests/test_models_2d.py), but its keys (initial_conv.conv.*, 0.adn.N.*) would not load the exports' stem.*/stages.*
# and it has no max_channels cap (64 ch, 4 layers: 44.6 M vs 27.8 M parameters) nor activation checkpointing.
class PatchDiscriminator(nn.Module):
    """(B, C, X, Y[, Z]) -> logit map (B, 1, x, y[, z]), one logit per receptive-field patch."""

    def __init__(self, config: PatchDiscriminatorConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = dataclasses.replace(config or PatchDiscriminatorConfig(), **overrides)
        cfg.validate()
        self.config = cfg
        k, slope, conv = cfg.kernel_size, cfg.negative_slope, _conv_factory(cfg)
        self.stem = nn.Sequential(conv(cfg.in_channels, cfg.channels, k, stride=2, padding=1), nn.LeakyReLU(slope))
        stages, width = [], cfg.channels
        for i in range(cfg.num_layers):
            out = min(width * 2, cfg.max_channels)
            stages.append(_Stage(width, out, k, 1 if i == cfg.num_layers - 1 else 2, cfg.norm, slope, cfg.spatial_dims,
                                 conv))
            width = out
        self.stages = nn.Sequential(*stages)
        self.head = conv(width, 1, k, stride=1, padding=1)
        set_activation_checkpointing(self, cfg.checkpointing)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        set_activation_checkpointing(self, enabled)

    def factory_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, before the logit head (what a projection discriminator reads)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


PatchDiscriminator3d = PatchDiscriminator
"""The historic name of :class:`PatchDiscriminator`."""


def patchgan3d(**overrides: Any) -> PatchDiscriminator:
    """Registry factory of the PatchGAN ("patchgan3d"; ``spatial_dims=2`` builds the 2D one)."""
    return PatchDiscriminator(PatchDiscriminatorConfig(**overrides))
