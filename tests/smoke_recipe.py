"""Test fixture recipe ``smoke``: two tiny stages that exercise every engine path, built from library parts.

``smoke-vaegan``   a tiny 3D VAE (KL + L1 reconstruction) with the library's 3D PatchGAN, trained in
                   alternating generator/discriminator phases (hinge or LSGAN). The generator trains
                   alone for ``disc_start`` steps; then the adversarial term switches on and the
                   discriminator updates every ``disc_every`` steps with its own optimizer and optional
                   LR schedule. Two optimizers, two DeepSpeed engines.
``smoke-denoiser`` a tiny 3D noise predictor with time-modulated GroupNorm, trained with the DDPM
                   epsilon objective (linear beta schedule) on volumes mapped to [-1, 1]. One optimizer.

Not part of the product: the package ships only real recipes. The tests register this module through
``$BSYNTH_PLUGINS=smoke_recipe`` with ``tests/`` on ``PYTHONPATH`` (tests/conftest.py), so every
subprocess the engine tests launch (python -m, torchrun, the deepspeed launcher, mpiexec, srun) finds
the stages; importing the module registers the recipe and its export factories (``smoke-vae``,
``smoke-denoiser``) with :func:`bsynth_hpc.models.register_model`.

Library parts used: the compressors' GN-SiLU ResNet blocks, down/up-sampling and output head
(``bsynth_hpc.models.autoencoder.blocks``, GN-SiLU through ``bsynth_hpc.nn``/``ops``), the U-Net's
time-modulated ResNet block and the DiT timestep embedder, ``PatchDiscriminator3d``, ``losses.kl``,
``losses.adversarial``, the DDPM forward process and ``diffusion_loss``, ``estimate_latent_scale``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import nn

from bsynth_hpc.configtools import require
from bsynth_hpc.diffusion import DDPMProcess, diffusion_loss, make_schedule
from bsynth_hpc.engine.config import ScheduleConfig
from bsynth_hpc.engine.registry import Recipe, register_recipe
from bsynth_hpc.engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from bsynth_hpc.errors import BsynthError
from bsynth_hpc.losses.adversarial import discriminator_adversarial_loss, generator_adversarial_loss
from bsynth_hpc.losses.kl import gaussian_kl
from bsynth_hpc.models import register_model
from bsynth_hpc.models.autoencoder import estimate_latent_scale
from bsynth_hpc.models.autoencoder.blocks import Downsample, OutputHead, ResBlock, Upsample
from bsynth_hpc.models.autoencoder.discriminator import PatchDiscriminator3d
from bsynth_hpc.models.checkpointing import set_activation_checkpointing
from bsynth_hpc.models.conditioning import TimestepEmbedder
from bsynth_hpc.models.unet3d import ResBlock3d as TimeResBlock3d
from bsynth_hpc.recipes.common.stage_utils import per_sample_mean

MODULE = __name__


# ============================================================================ models
class SmokeVAE(nn.Module):
    """Tiny 3D VAE: 1 -> ``latent_channels`` channels at half resolution per axis."""

    def __init__(self, channels: int = 8, latent_channels: int = 2, groups: int = 4):
        super().__init__()
        c, z = channels, latent_channels
        self.latent_channels = z
        self.encoder = nn.Sequential(nn.Conv3d(1, c, 3, padding=1), ResBlock(c, c, groups), Downsample(c),
                                     ResBlock(c, 2 * c, groups), OutputHead(2 * c, 2 * z, groups))
        self.decoder = nn.Sequential(nn.Conv3d(z, 2 * c, 3, padding=1), ResBlock(2 * c, c, groups), Upsample(c),
                                     ResBlock(c, c, groups), OutputHead(c, 1, groups))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        set_activation_checkpointing(self, enabled)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the latent, each (B, z, X/2, Y/2, Z/2)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mean, logvar); ``eps`` None decodes the mean (no sampling)."""
        mean, logvar = self.encode(x)
        z = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


class SmokeDenoiser(nn.Module):
    """Tiny 3D noise predictor: conv in, 3 time-modulated residual blocks over 2 scales, output head."""

    def __init__(self, channels: int = 16, time_dim: int = 32, groups: int = 4):
        super().__init__()
        c = channels
        self.time_embed = TimestepEmbedder(time_dim, frequency_dim=time_dim)
        self.conv_in = nn.Conv3d(1, c, 3, padding=1)
        self.block1 = TimeResBlock3d(c, c, time_dim, groups)
        self.down = Downsample(c)
        self.block2 = TimeResBlock3d(c, 2 * c, time_dim, groups)
        self.up = Upsample(2 * c)
        self.block3 = TimeResBlock3d(2 * c, c, time_dim, groups)
        self.head = OutputHead(c, 1, groups)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        set_activation_checkpointing(self, enabled)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(t)
        h1 = self.block1(self.conv_in(x), emb)
        h = self.up(self.block2(self.down(h1), emb))
        return self.head(self.block3(h, emb) + h1)


def build_smoke_vae(channels: int = 8, latent_channels: int = 2, groups: int = 4) -> SmokeVAE:
    return SmokeVAE(channels, latent_channels, groups)


def build_smoke_discriminator(channels: int = 8) -> PatchDiscriminator3d:
    """The library's PatchGAN at the fixture's width: one normalised stage (GroupNorm, batch-independent)."""
    return PatchDiscriminator3d(in_channels=1, channels=channels, num_layers=1, norm="group")


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
        _check_groups(where, self.groups, self.channels)
        require(self.disc_channels >= 1, f"{where}.disc_channels must be >= 1")
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
                "disc": build_smoke_discriminator(c.disc_channels)}

    def phases(self) -> list[Phase]:
        c: SmokeVAEGANConfig = self.config
        return [
            Phase("generator", "vae", OptimSpec("adamw", lr=c.lr, betas=(0.9, 0.999))),
            Phase("discriminator", "disc", OptimSpec("adamw", lr=c.disc_lr, betas=(0.5, 0.9)),
                  start_step=c.disc_start, every=c.disc_every, schedule=c.disc_schedule),
        ]

    def ema_models(self) -> tuple[str, ...]:
        return ("vae",)

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        c: SmokeVAEGANConfig = self.config
        x = _images(batch)
        if phase == "generator":
            latent_shape = (c.latent_channels, *(-(-s // 2) for s in x.shape[2:]))
            eps = ctx.randn(latent_shape, salt="vae-eps", dtype=x.dtype)
            recon, mean, logvar = ctx.models["vae"](x, eps)
            l1 = (recon.float() - x.float()).abs().mean()
            kl = gaussian_kl(mean, logvar).mean() / mean[0].numel()  # per latent element, like the L1 term
            terms = {"l1": l1, "kl": kl}
            loss = l1 + c.kl_weight * kl
            if ctx.step >= c.disc_start:
                adv = generator_adversarial_loss(ctx.models["disc"](recon), c.gan_loss)
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
            d_loss = discriminator_adversarial_loss(real_logits, fake_logits, c.gan_loss)
            return {"loss": d_loss, "real_logit": real_logits.float().mean().detach(),
                    "fake_logit": fake_logits.float().mean().detach()}
        raise ValueError(f"smoke-vaegan has no phase {phase!r}")

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = _images(batch)
        diff = ctx.models["vae"](x)[0].float() - x.float()
        return {"l1": per_sample_mean(diff.abs()), "mse": per_sample_mean(diff ** 2)}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        c: SmokeVAEGANConfig = self.config
        vae = models["vae"]
        dtype = next(vae.parameters()).dtype
        try:
            scale: float | None = estimate_latent_scale(vae.encode(b["image"].to(dtype))[0] for b in ctx.batches(4))
        except BsynthError:  # no batches, or degenerate latents: the export records no scale
            scale = None
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
        schedule = make_schedule("linear", config.num_timesteps, beta_start=config.beta_start,
                                 beta_end=config.beta_end)
        self.process = DDPMProcess(schedule, prediction="epsilon")

    def build_models(self) -> dict[str, nn.Module]:
        c: SmokeDenoiserConfig = self.config
        return {"denoiser": build_smoke_denoiser(c.channels, c.time_dim, c.groups)}

    def phases(self) -> list[Phase]:
        return [Phase("denoiser", "denoiser", OptimSpec("adamw", lr=self.config.lr))]

    def ema_models(self) -> tuple[str, ...]:
        return ("denoiser",)

    def _eps_mse(self, batch: Batch, ctx: StepContext, salt: str) -> torch.Tensor:
        x0 = _images(batch) * 2.0 - 1.0
        t = ctx.randint(self.config.num_timesteps, salt=f"{salt}-t")
        eps = ctx.randn(x0.shape[1:], salt=f"{salt}-eps", dtype=x0.dtype)
        pred = ctx.models["denoiser"](self.process.add_noise(x0, eps, t), self.process.model_time(t))
        return diffusion_loss(pred, self.process.training_target(x0, eps, t), "l2", "per_sample")

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": self._eps_mse(batch, ctx, "train").mean()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"eps_mse": self._eps_mse(batch, ctx, "val")}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        c: SmokeDenoiserConfig = self.config
        kwargs = {"channels": c.channels, "time_dim": c.time_dim, "groups": c.groups}
        return [ExportSpec("denoiser", "denoiser", "smoke-denoiser", kwargs)]


RECIPE = register_recipe(Recipe(
    name="smoke",
    description="test fixture: a tiny VAE-GAN and denoiser that exercise every engine path",
    stages={"smoke-vaegan": SmokeVAEGANStage, "smoke-denoiser": SmokeDenoiserStage},
    default_stage="smoke-vaegan",
))
register_model("smoke-vae", f"{MODULE}:build_smoke_vae")
register_model("smoke-denoiser", f"{MODULE}:build_smoke_denoiser")

__all__ = ["SmokeVAE", "SmokeDenoiser", "build_smoke_vae", "build_smoke_discriminator", "build_smoke_denoiser",
           "SmokeVAEGANConfig", "SmokeDenoiserConfig", "SmokeVAEGANStage", "SmokeDenoiserStage", "RECIPE"]
