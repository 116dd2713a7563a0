"""Stage ``dit3d-vae``: seed 000's VAE-GAN compressor and its two-phase training schedule (000 §5.1).

Model: ``tle-vaegan`` (:func:`bsynth_hpc.models.autoencoder.build_compressor`; f = 4, 4 latent
channels: 112x136x112 -> 4x28x34x28) + a 3D PatchGAN (``patchgan3d``). Losses: ``VAEGANLoss``
with 000's weights (preset ``tle``: L1 1.0, LPIPS 0.6, KL 1e-6, adversarial 0.02), LPIPS on
tri-planar slices (``SlicePerceptualLoss``; ``perceptual_allow_random`` is the smoke-test flag).

Schedule (000 §5.1), as a state machine shared by both engine phases:

* phase 1 (steps < ``phase1_steps``): the VAE trains alone on L1 + LPIPS + KL; the
  discriminator phase is inactive (``start_step = phase1_steps``).
* phase 2, ``rounds`` rounds of: the discriminator trains alone for ``disc_steps`` steps (000:
  "2 epochs"), then the VAE trains alone with the adversarial term added until the running
  (EMA, ``adv_ema``) adversarial loss falls below ``adv_threshold`` (000: 0.1), after at least
  ``vae_min_steps`` and at most ``vae_max_steps`` steps.
* after the last round the VAE keeps training with the adversarial term, the discriminator frozen.

How the engine expresses it: a phase's activity is ``Phase.active(step)``; the two phases here
are :class:`GatedPhase` whose ``active`` asks the schedule (decided once per step, identically on
every rank: the adversarial values feeding the EMA are all-reduced over ranks in ``loss()``).
``updates_before`` counts the phase's real updates so per-phase LR schedules advance per update.

Limitation: the schedule state (round, EMA) is not part of the engine checkpoint; a resumed run
restarts phase 2 at a discriminator round with the round counter at 0 (documented in the README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from ...engine.config import ScheduleConfig
from ...engine.configtools import require
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext

VAE_FACTORY = "bsynth_hpc.models.autoencoder.model:Autoencoder3d"

Mode = Literal["vae", "disc", "vae_adv", "final"]


@dataclass
class DiT3dVAEConfig:
    """recipe: section of dit3d-vae (defaults: seed 000 §5.1 at full size)."""

    base_channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    latent_channels: int = 4
    downsample_factor: int = 4
    num_res_blocks: int = 1
    norm_groups: int = 32
    pad_input: bool = False
    disc_channels: int = 64
    disc_layers: int = 3
    adversarial: Literal["bce", "hinge", "lsgan"] = "lsgan"
    recon_weight: float = 1.0
    perceptual_weight: float = 0.6
    kl_weight: float = 1e-6
    adv_weight: float = 0.02
    perceptual_weights: str | None = None
    perceptual_allow_random: bool = False
    slices_per_plane: int = 8
    lr: float = 1e-3
    disc_lr: float = 1e-4
    disc_schedule: ScheduleConfig | None = None
    # the two-phase schedule
    phase1_steps: int = 10000
    disc_steps: int = 200
    vae_min_steps: int = 1
    vae_max_steps: int = 2000
    adv_threshold: float = 0.1
    adv_ema: float = 0.9
    rounds: int = 65

    def validate(self, where: str) -> None:
        require(self.base_channels >= 1 and self.latent_channels >= 1, f"{where}: channels must be >= 1")
        for name in ("recon_weight", "perceptual_weight", "kl_weight", "adv_weight"):
            require(getattr(self, name) >= 0, f"{where}.{name} must be >= 0")
        require(self.lr > 0 and self.disc_lr > 0, f"{where}.lr and {where}.disc_lr must be > 0")
        require(self.phase1_steps >= 0, f"{where}.phase1_steps must be >= 0")
        require(self.disc_steps >= 1, f"{where}.disc_steps must be >= 1 (discriminator steps per round)")
        require(1 <= self.vae_min_steps <= self.vae_max_steps,
                f"{where}: need 1 <= vae_min_steps ({self.vae_min_steps}) <= vae_max_steps ({self.vae_max_steps})")
        require(0.0 <= self.adv_ema < 1.0, f"{where}.adv_ema must lie in [0, 1)")
        require(self.rounds >= 0, f"{where}.rounds must be >= 0")
        require(self.slices_per_plane >= 1, f"{where}.slices_per_plane must be >= 1")


class GANSchedule:
    """000's alternation as a per-step decision (see the module docstring)."""

    def __init__(self, c: DiT3dVAEConfig):
        self.c = c
        self.step: int | None = None
        self.mode: Mode | None = None
        self.round = 0
        self.in_mode = 0  # completed steps in the current mode
        self.ema: float | None = None
        self.pending: list[float] = []
        self.updates = {"vae": 0, "disc": 0}
        self.history: list[tuple[int, str]] = []

    def record_adv(self, value: float) -> None:
        """An (all-rank averaged) adversarial generator loss of the current step."""
        self.pending.append(float(value))

    def _enter(self, step: int) -> None:
        c, prev = self.c, self.mode
        if prev is not None:
            self.in_mode += 1
            for phase in self.phases_of(prev):
                self.updates[phase] += 1
        if prev == "vae_adv" and self.pending:
            v = sum(self.pending) / len(self.pending)
            self.ema = v if self.ema is None else c.adv_ema * self.ema + (1.0 - c.adv_ema) * v
        self.pending = []
        if step < c.phase1_steps:
            mode: Mode = "vae"
        elif prev is None or prev == "vae":
            mode = "disc" if c.rounds > 0 else "final"
            self.round, self.in_mode = 0, 0
        elif prev == "disc" and self.in_mode >= c.disc_steps:
            mode, self.in_mode, self.ema = "vae_adv", 0, None
        elif prev == "vae_adv" and self.in_mode >= c.vae_min_steps and (
                (self.ema is not None and self.ema < c.adv_threshold) or self.in_mode >= c.vae_max_steps):
            self.round += 1
            mode = "final" if self.round >= c.rounds else "disc"
            self.in_mode = 0
        else:
            mode = prev
        if mode != prev:
            self.history.append((step, mode))
        self.mode, self.step = mode, step

    def mode_at(self, step: int) -> Mode:
        if self.step != step:
            self._enter(step)
        assert self.mode is not None
        return self.mode

    @staticmethod
    def phases_of(mode: Mode) -> tuple[str, ...]:
        return ("disc",) if mode == "disc" else ("vae",)

    def active(self, phase: str, step: int) -> bool:
        return phase in self.phases_of(self.mode_at(step))

    def updates_before(self, phase: str, step: int) -> int:
        self.mode_at(step)
        return self.updates[phase]


@dataclass(frozen=True)
class GatedPhase(Phase):
    """A Phase whose activity is decided at run time by ``gate(name, step)`` (rank-consistent)."""

    gate: Callable[[str, int], bool] | None = None
    counter: Callable[[str, int], int] | None = None

    def active(self, step: int) -> bool:
        if not super().active(step):
            return False
        return True if self.gate is None else bool(self.gate(self.name, step))

    def updates_before(self, step: int) -> int:
        if self.counter is None:
            return super().updates_before(step)
        return int(self.counter(self.name, step))


def _global_mean(value: torch.Tensor) -> float:
    v = value.detach().float().reshape(1).clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(v)
            v = v / world
    return float(v.item())


class DiT3dVAEStage(Stage):
    """dit3d-vae: see the module docstring."""

    name = "dit3d-vae"
    config_class = DiT3dVAEConfig
    val_metric = "loss"
    val_mode = "min"

    def __init__(self, config: DiT3dVAEConfig, info: Any):
        super().__init__(config, info)
        from ...losses import VAEGANLoss, VAEGANWeights

        self.schedule = GANSchedule(config)
        perceptual = None
        if config.perceptual_weight > 0:
            from ...losses import SlicePerceptualLoss

            perceptual = SlicePerceptualLoss(config.perceptual_weights, slices_per_plane=config.slices_per_plane,
                                             allow_random=config.perceptual_allow_random)
        weights = VAEGANWeights(recon=config.recon_weight, kl=config.kl_weight, perceptual=config.perceptual_weight,
                                adversarial=config.adv_weight)
        self.criterion = VAEGANLoss(weights, perceptual=perceptual, adversarial=config.adversarial)

    # ------------------------------------------------------------------ models
    def vae_kwargs(self) -> dict[str, Any]:
        from ...models.autoencoder import preset_config

        c: DiT3dVAEConfig = self.config
        overrides: dict[str, Any] = dict(base_channels=c.base_channels, latent_channels=c.latent_channels,
                                         downsample_factor=c.downsample_factor, num_res_blocks=c.num_res_blocks,
                                         norm_groups=c.norm_groups, pad_input=c.pad_input)
        if c.channel_mult is not None:
            overrides["channel_mult"] = tuple(c.channel_mult)
        return preset_config("tle-vaegan", **overrides).to_dict()

    def build_models(self) -> dict[str, nn.Module]:
        from ...models.autoencoder import Autoencoder3d, patchgan3d

        c: DiT3dVAEConfig = self.config
        return {"vae": Autoencoder3d(**self.vae_kwargs()),
                "disc": patchgan3d(channels=c.disc_channels, num_layers=c.disc_layers)}

    def phases(self) -> list[Phase]:
        c: DiT3dVAEConfig = self.config
        s = self.schedule
        return [
            GatedPhase("vae", "vae", OptimSpec("adam", lr=c.lr), gate=s.active, counter=s.updates_before),
            GatedPhase("disc", "disc", OptimSpec("adam", lr=c.disc_lr, betas=(0.5, 0.999)),
                       start_step=c.phase1_steps, schedule=c.disc_schedule, gate=s.active,
                       counter=s.updates_before),
        ]

    def ema_models(self) -> tuple[str, ...]:
        return ("vae",)

    def setup(self, device: torch.device) -> None:
        self.criterion.to(device)

    # ------------------------------------------------------------------ losses
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = batch["image"]
        mode = self.schedule.mode_at(ctx.step)
        if phase == "vae":
            recon, posterior = ctx.models["vae"](x)
            logits = ctx.models["disc"](recon) if mode in ("vae_adv", "final") else None
            terms = self.criterion.generator_loss(x.float(), recon.float(), posterior,
                                                  None if logits is None else logits.float())
            ctx.cache["recon"] = recon.detach()
            out = {"loss": terms.pop("total"), **terms}
            if "adv_g" in terms:
                adv = _global_mean(terms["adv_g"])
                self.schedule.record_adv(adv)
            out["gan_round"] = torch.tensor(float(self.schedule.round), device=x.device)
            out["adv_ema"] = torch.tensor(float("nan") if self.schedule.ema is None else self.schedule.ema,
                                          device=x.device)
            return out
        if phase == "disc":
            fake = ctx.cache.get("recon")
            if fake is None:
                with torch.no_grad():
                    fake = ctx.models["vae"](x, sample_posterior=False)[0]
            real_logits = ctx.models["disc"](x)
            fake_logits = ctx.models["disc"](fake.to(x.dtype))
            terms = self.criterion.discriminator_loss(real_logits.float(), fake_logits.float())
            out = {"loss": terms.pop("total"), **terms}
            out["gan_round"] = torch.tensor(float(self.schedule.round), device=x.device)
            return out
        raise ValueError(f"dit3d-vae has no phase {phase!r}")

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Per-sample L1 and 000's weighted validation loss (L1 + LPIPS + KL; the adversarial term is
        left out because the discriminator changes between rounds)."""
        x = batch["image"]
        vae = ctx.models["vae"]
        vae = getattr(vae, "module", vae)
        posterior = vae.encode(x)
        recon = vae.decode(posterior.mean, x.shape[2:]).float()
        l1 = (recon - x.float()).abs().flatten(1).mean(1)
        kl = posterior.kl().float()
        kl = kl.flatten(1).sum(1) if kl.dim() > 1 else kl
        w = self.criterion.weights
        total = w.recon * l1 + w.kl * kl
        if w.perceptual > 0 and self.criterion.perceptual is not None:
            perc = torch.stack([self.criterion.perceptual(recon[i:i + 1], x[i:i + 1].float())
                                for i in range(x.shape[0])])
            total = total + w.perceptual * perc
        return {"l1": l1, "loss": total}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        from ...models.autoencoder import estimate_latent_scale

        vae = models["vae"]
        dtype = next(vae.parameters()).dtype
        latents = [vae.encode_latent(b["image"].to(dtype)).float() for b in ctx.batches(8)]
        scale = None
        if latents:
            try:
                scale = float(estimate_latent_scale(latents))
            except Exception:  # constant/untrained encoder: leave it to `bsynth encode`
                scale = None
            if scale is not None and not math.isfinite(scale):
                scale = None
        return [ExportSpec("vae", "vae", VAE_FACTORY, self.vae_kwargs(), latent_scale=scale)]


__all__ = ["DiT3dVAEConfig", "DiT3dVAEStage", "GANSchedule", "GatedPhase"]
