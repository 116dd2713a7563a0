"""Two small but real stages that exercise every engine path in tests and benchmarks.

``smoke-vaegan``   a 3D conv VAE (KL + L1 reconstruction) with a 3D PatchGAN discriminator
                   trained in alternating generator/discriminator phases (hinge or LSGAN).
                   The generator trains alone for ``disc_start`` steps (warm-up); then the
                   adversarial term switches on and the discriminator starts updating, every
                   ``disc_every`` steps, with its own optimizer and optional LR schedule.
                   Two optimizers, two DeepSpeed engines.
``smoke-denoiser`` a 3D conv denoiser with time-modulated GroupNorm, trained with the DDPM
                   epsilon-prediction objective (linear beta schedule) on volumes in [-1, 1].
                   One optimizer.

All norms are ``bsynth_hpc.ops.group_norm_silu`` (the fused kernel on GPU, the PyTorch
reference on CPU); the denoiser uses its adaptive scale/shift. Every model supports
activation checkpointing of its blocks (``set_activation_checkpointing``, through
:mod:`bsynth_hpc.models.checkpointing` like the real models); the denoiser's timestep features
are :func:`bsynth_hpc.models.conditioning.timestep_embedding`. Models are built by module-level
factories so exports can name them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..engine.config import ScheduleConfig
from ..engine.configtools import require
from ..engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ..models.checkpointing import CheckpointedBlock
from ..models.checkpointing import set_activation_checkpointing as _set_checkpointing
from ..models.conditioning import timestep_embedding
from .common.stage_utils import per_sample_mean
from ..engine.registry import Recipe


# ============================================================================ building blocks
class GNSiLU(nn.Module):
    """Affine GroupNorm + SiLU through the ops facade (optionally modulated by scale/shift)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels={channels} must be divisible by groups={groups}")
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        return ops.group_norm_silu(x, self.groups, self.weight, self.bias, scale=scale, shift=shift)


class ResBlock(CheckpointedBlock):
    """x + conv(GN-SiLU(conv(GN-SiLU(x)))), optionally modulated by an embedding (scale, shift)."""

    def __init__(self, channels: int, groups: int, emb_dim: int | None = None):
        super().__init__()
        self.norm1 = GNSiLU(channels, groups)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = GNSiLU(channels, groups)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * channels) if emb_dim else None

    def _forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(emb).chunk(2, dim=1)
            h = self.norm2(h, scale=scale, shift=shift)
        else:
            h = self.norm2(h)
        return x + self.conv2(h)


# ============================================================================ models
class SmokeVAE(nn.Module):
    """Tiny 3D VAE: 1 -> ``latent_channels`` channels at half resolution per axis."""

    def __init__(self, channels: int = 8, latent_channels: int = 2, groups: int = 4):
        super().__init__()
        c, z = channels, latent_channels
        self.latent_channels = z
        self.enc_in = nn.Conv3d(1, c, 3, padding=1)
        self.enc_block1 = ResBlock(c, groups)
        self.enc_down = nn.Conv3d(c, 2 * c, 3, stride=2, padding=1)
        self.enc_block2 = ResBlock(2 * c, groups)
        self.enc_norm = GNSiLU(2 * c, groups)
        self.enc_out = nn.Conv3d(2 * c, 2 * z, 1)
        self.dec_in = nn.Conv3d(z, 2 * c, 3, padding=1)
        self.dec_block1 = ResBlock(2 * c, groups)
        self.dec_up = nn.Conv3d(2 * c, c, 3, padding=1)
        self.dec_block2 = ResBlock(c, groups)
        self.dec_norm = GNSiLU(c, groups)
        self.dec_out = nn.Conv3d(c, 1, 3, padding=1)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        _set_checkpointing(self, enabled)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the latent, each (B, z, X/2, Y/2, Z/2)."""
        h = self.enc_block2(self.enc_down(self.enc_block1(self.enc_in(x))))
        mean, logvar = self.enc_out(self.enc_norm(h)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_block1(self.dec_in(z))
        h = self.dec_up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.dec_out(self.dec_norm(self.dec_block2(h)))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mean, logvar); ``eps`` None decodes the mean (no sampling)."""
        mean, logvar = self.encode(x)
        z = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


class SmokePatchDiscriminator(nn.Module):
    """Tiny 3D PatchGAN: two stride-2 convs, one logit per patch."""

    def __init__(self, channels: int = 8, groups: int = 4):
        super().__init__()
        c = channels
        self.conv1 = nn.Conv3d(1, c, 4, stride=2, padding=1)
        self.norm1 = GNSiLU(c, groups)
        self.conv2 = nn.Conv3d(c, 2 * c, 4, stride=2, padding=1)
        self.norm2 = GNSiLU(2 * c, groups)
        self.out = nn.Conv3d(2 * c, 1, 3, padding=1)

    def set_activation_checkpointing(self, enabled: bool) -> None:  # too small to matter
        del enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm2(self.conv2(self.norm1(self.conv1(x)))))


class SmokeDenoiser(nn.Module):
    """Tiny 3D noise predictor: conv in, 3 time-modulated residual blocks over 2 scales, conv out."""

    def __init__(self, channels: int = 16, time_dim: int = 32, groups: int = 4):
        super().__init__()
        c = channels
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv3d(1, c, 3, padding=1)
        self.block1 = ResBlock(c, groups, time_dim)
        self.down = nn.Conv3d(c, 2 * c, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * c, groups, time_dim)
        self.up = nn.Conv3d(2 * c, c, 3, padding=1)
        self.block3 = ResBlock(c, groups, time_dim)
        self.norm_out = GNSiLU(c, groups)
        self.conv_out = nn.Conv3d(c, 1, 3, padding=1)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        _set_checkpointing(self, enabled)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(self.conv_in.weight.dtype))
        h1 = self.block1(self.conv_in(x), emb)
        h = self.block2(self.down(h1), emb)
        h = self.up(F.interpolate(h, scale_factor=2, mode="nearest")) + h1
        return self.conv_out(self.norm_out(self.block3(h, emb)))


def build_smoke_vae(channels: int = 8, latent_channels: int = 2, groups: int = 4) -> SmokeVAE:
    return SmokeVAE(channels, latent_channels, groups)


def build_smoke_discriminator(channels: int = 8, groups: int = 4) -> SmokePatchDiscriminator:
    return SmokePatchDiscriminator(channels, groups)


def build_smoke_denoiser(channels: int = 16, time_dim: int = 32, groups: int = 4) -> SmokeDenoiser:
    return SmokeDenoiser(channels, time_dim, groups)


# ============================================================================ configs
def _check_groups(where: str, groups: int, *channels: int) -> None:
    for c in channels:
        require(c >= 1 and c % groups == 0,
                f"{where}: channel count {c} must be a positive multiple of groups={groups}")


@dataclass
class SmokeVAEGANConfig:
    """recipe: section of smoke-vaegan."""

    channels: int = 8
    latent_channels: int = 2
    disc_channels: int = 8
    groups: int = 4
    lr: float = 1e-3
    disc_lr: float = 1e-3
    kl_weight: float = 1e-4
    adv_weight: float = 0.1
    gan_loss: Literal["hinge", "lsgan"] = "hinge"
    disc_start: int = 4
    disc_every: int = 1
    disc_schedule: ScheduleConfig | None = None

    def validate(self, where: str) -> None:
        require(self.groups >= 1, f"{where}.groups must be >= 1")
        _check_groups(where, self.groups, self.channels, self.disc_channels)
        require(self.latent_channels >= 1, f"{where}.latent_channels must be >= 1")
        require(self.lr > 0 and self.disc_lr > 0, f"{where}.lr and {where}.disc_lr must be > 0")
        require(self.kl_weight >= 0 and self.adv_weight >= 0, f"{where}.kl_weight/adv_weight must be >= 0")
        require(self.disc_start >= 0, f"{where}.disc_start={self.disc_start} must be >= 0 (generator warm-up steps)")
        require(self.disc_every >= 1, f"{where}.disc_every={self.disc_every} must be >= 1")


@dataclass
class SmokeDenoiserConfig:
    """recipe: section of smoke-denoiser."""

    channels: int = 16
    time_dim: int = 32
    groups: int = 4
    lr: float = 1e-3
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def validate(self, where: str) -> None:
        require(self.groups >= 1, f"{where}.groups must be >= 1")
        _check_groups(where, self.groups, self.channels)
        require(self.time_dim >= 2 and self.time_dim % 2 == 0, f"{where}.time_dim must be an even number >= 2")
        require(self.lr > 0, f"{where}.lr must be > 0")
        require(self.num_timesteps >= 1, f"{where}.num_timesteps must be >= 1")
        require(0 < self.beta_start < self.beta_end < 1,
                f"{where}: need 0 < beta_start < beta_end < 1 (got {self.beta_start}, {self.beta_end})")


# ============================================================================ stages
def _images(batch: Batch) -> torch.Tensor:
    x = batch["image"]
    if x.dim() != 5:
        raise ValueError(f"smoke stages train on 3D volumes (B, 1, X, Y, Z); got image shape {tuple(x.shape)}")
    return x


class SmokeVAEGANStage(Stage):
    """smoke-vaegan: see the module docstring."""

    name = "smoke-vaegan"
    config_class = SmokeVAEGANConfig
    val_metric = "l1"
    val_mode = "min"

    def build_models(self) -> dict[str, nn.Module]:
        c: SmokeVAEGANConfig = self.config
        return {"vae": build_smoke_vae(c.channels, c.latent_channels, c.groups),
                "disc": build_smoke_discriminator(c.disc_channels, c.groups)}

    def phases(self) -> list[Phase]:
        c: SmokeVAEGANConfig = self.config
        return [
            Phase("generator", "vae", OptimSpec("adamw", lr=c.lr, betas=(0.9, 0.999))),
            Phase("discriminator", "disc", OptimSpec("adamw", lr=c.disc_lr, betas=(0.5, 0.9)),
                  start_step=c.disc_start, every=c.disc_every, schedule=c.disc_schedule),
        ]

    def ema_models(self) -> tuple[str, ...]:
        return ("vae",)

    def _adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return -logits.mean() if self.config.gan_loss == "hinge" else ((logits - 1.0) ** 2).mean()

    def _discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real, fake = real.float(), fake.float()
        if self.config.gan_loss == "hinge":
            return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return 0.5 * (((real - 1.0) ** 2).mean() + (fake ** 2).mean())

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        c: SmokeVAEGANConfig = self.config
        x = _images(batch)
        if phase == "generator":
            latent_shape = (c.latent_channels, *(math.ceil(s / 2) for s in x.shape[2:]))
            eps = ctx.randn(latent_shape, salt="vae-eps", dtype=x.dtype)
            recon, mean, logvar = ctx.models["vae"](x, eps)
            l1 = (recon.float() - x.float()).abs().mean()
            kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
            terms = {"l1": l1, "kl": kl}
            loss = l1 + c.kl_weight * kl
            if ctx.step >= c.disc_start:
                adv = self._adversarial(ctx.models["disc"](recon))
                terms["adv"] = adv
                loss = loss + c.adv_weight * adv
            ctx.cache["recon"] = recon.detach()
            return {"loss": loss, **terms}
        if phase == "discriminator":
            fake = ctx.cache.get("recon")
            if fake is None:  # generator phase inactive this step: reconstruct without gradients
                with torch.no_grad():
                    fake = ctx.models["vae"](x)[0]
            logits = ctx.models["disc"](torch.cat([x, fake.to(x.dtype)], dim=0))
            real_logits, fake_logits = logits.chunk(2, dim=0)
            d_loss = self._discriminator(real_logits, fake_logits)
            return {"loss": d_loss, "real_logit": real_logits.float().mean().detach(),
                    "fake_logit": fake_logits.float().mean().detach()}
        raise ValueError(f"smoke-vaegan has no phase {phase!r}")

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = _images(batch)
        recon = ctx.models["vae"](x)[0]
        diff = recon.float() - x.float()
        return {"l1": per_sample_mean(diff.abs()), "mse": per_sample_mean(diff ** 2)}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        c: SmokeVAEGANConfig = self.config
        vae = models["vae"]
        dtype = next(vae.parameters()).dtype
        latents = [vae.encode(b["image"].to(dtype))[0].float() for b in ctx.batches(4)]
        scale = None
        if latents:
            std = torch.cat([z.flatten() for z in latents]).std().item()
            scale = 1.0 / std if std > 0 and math.isfinite(std) else None
        kwargs = {"channels": c.channels, "latent_channels": c.latent_channels, "groups": c.groups}
        return [ExportSpec("vae", "vae", "smoke-vae", kwargs, latent_scale=scale)]


class SmokeDenoiserStage(Stage):
    """smoke-denoiser: see the module docstring."""

    name = "smoke-denoiser"
    config_class = SmokeDenoiserConfig
    val_metric = "eps_mse"
    val_mode = "min"

    def __init__(self, config: SmokeDenoiserConfig, info):  # type: ignore[no-untyped-def]
        super().__init__(config, info)
        betas = torch.linspace(config.beta_start, config.beta_end, config.num_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()

    def setup(self, device: torch.device) -> None:
        self.alphas_cumprod = self.alphas_cumprod.to(device)

    def build_models(self) -> dict[str, nn.Module]:
        c: SmokeDenoiserConfig = self.config
        return {"denoiser": build_smoke_denoiser(c.channels, c.time_dim, c.groups)}

    def phases(self) -> list[Phase]:
        return [Phase("denoiser", "denoiser", OptimSpec("adamw", lr=self.config.lr))]

    def ema_models(self) -> tuple[str, ...]:
        return ("denoiser",)

    def _eps_mse(self, batch: Batch, ctx: StepContext, salt: str) -> torch.Tensor:
        x = _images(batch)
        x0 = x * 2.0 - 1.0
        t = ctx.randint(self.config.num_timesteps, salt=f"{salt}-t")
        eps = ctx.randn(x0.shape[1:], salt=f"{salt}-eps", dtype=x0.dtype)
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        xt = abar.sqrt().to(x0.dtype) * x0 + (1.0 - abar).sqrt().to(x0.dtype) * eps
        pred = ctx.models["denoiser"](xt, t)
        return per_sample_mean((pred.float() - eps.float()) ** 2)

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        mse = self._eps_mse(batch, ctx, "train").mean()
        return {"loss": mse}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"eps_mse": self._eps_mse(batch, ctx, "val")}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        c: SmokeDenoiserConfig = self.config
        kwargs = {"channels": c.channels, "time_dim": c.time_dim, "groups": c.groups}
        return [ExportSpec("denoiser", "denoiser", "smoke-denoiser", kwargs)]


__all__ = ["SmokeVAE", "SmokePatchDiscriminator", "SmokeDenoiser", "build_smoke_vae", "build_smoke_discriminator",
           "build_smoke_denoiser", "SmokeVAEGANConfig", "SmokeDenoiserConfig", "SmokeVAEGANStage",
           "SmokeDenoiserStage", "timestep_embedding"]


RECIPE = Recipe(
    name="smoke",
    description="engine test fixture: a tiny VAE-GAN and denoiser that exercise every engine path",
    stages={"smoke-vaegan": SmokeVAEGANStage, "smoke-denoiser": SmokeDenoiserStage},
    default_stage="smoke-vaegan",
)
