"""The VAE-GAN compressor stage shared by the recipes (``wfdm-vae``, ``dit3d-vae``).

Both recipes train an :class:`~bsynth_hpc.models.autoencoder.Autoencoder3d` (model ``vae``)
against a 3D PatchGAN (model ``disc``) with :class:`~bsynth_hpc.losses.VAEGANLoss`:
L1 + KL + LPIPS on tri-planar slices (:class:`~bsynth_hpc.losses.SlicePerceptualLoss`) +
the adversarial term, in a generator phase and a discriminator phase. This base class holds
what is the same:

* the loss wiring: the perceptual loss (a random smoke trunk, allowed by a config flag, is
  seeded so every rank and every resume use the same network, and the log and the export
  sidecar say ``perceptual: random-smoke``), the weights and the adversarial kind;
* the generator phase: reconstruction, the adversarial term when :meth:`adversarial_on`, the
  detached reconstruction left in ``ctx.cache`` for the discriminator phase;
* the discriminator phase: one forward over ``cat(real, fake)`` (the cached reconstruction,
  or a posterior-mean reconstruction without gradients when the generator did not update);
* validation of the posterior-mean reconstruction: per-volume ``l1`` and ``psnr`` (clamped to
  [0, 1] when ``clamp_validation``), and the weighted L1 + KL + LPIPS ``loss`` when
  ``validation_loss`` (the adversarial term is left out: the discriminator keeps changing);
* the export ``vae``: factory + kwargs, the latent scale s_z = 1 / std of posterior means, and a
  sidecar with the perceptual mode, downsample factor and latent channels.

The ``recipe:`` fields both stages share have one name through :class:`VAEGANConfig`, the base
of both recipe configs: ``perceptual: {weights, slices_per_plane, allow_random}``,
``discriminator: {channels, num_layers, norm, ...}`` (the typed
:class:`~bsynth_hpc.models.autoencoder.PatchDiscriminatorConfig`), the loss weights, the
adversarial kind and the learning rates. Each recipe lists its old key names in
``config_aliases``; they still load, with a warning naming the new key.

What a recipe states (hooks): its phase names and optimizers, when the discriminator updates
and when the adversarial term is on (WFDM: every ``disc_every`` steps after a ``disc_start``
warm-up; seed 000: a gated two-phase schedule), how the reparameterisation noise is drawn,
which volumes estimate s_z, its compressor.
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, Mapping

import torch
from torch import nn

from ...configtools import require
from ...engine.config import ScheduleConfig
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...eval.figures import recon_figure, write_overview
from ...losses import SlicePerceptualLoss, VAEGANLoss, VAEGANWeights
from ...models.autoencoder import PatchDiscriminator3d, PatchDiscriminatorConfig, estimate_latent_scale
from .stage_utils import bare_module, per_sample_mean

log = logging.getLogger(__name__)
_ANNOUNCED: set[str] = set()  # the smoke-mode warning is printed once per process

__all__ = ["PerceptualConfig", "VAEGANConfig", "VAEGANStage"]


@dataclass
class PerceptualConfig:
    """``recipe.perceptual``: LPIPS on tri-planar slices (:class:`~bsynth_hpc.losses.SlicePerceptualLoss`)."""

    weights: str | None = None
    """LPIPS AlexNet weights (None: $BSYNTH_WEIGHTS_DIR)."""
    slices_per_plane: int = 8
    """Slices per plane (sagittal, coronal, axial) fed to LPIPS."""
    allow_random: bool = False
    """Smoke/CPU mode: a seeded random AlexNet trunk when no LPIPS weights exist (stated in log + export)."""

    def validate(self, where: str) -> None:
        require(self.slices_per_plane >= 1, f"{where}.slices_per_plane must be >= 1")


@dataclass
class VAEGANConfig:
    """The ``recipe:`` fields every VAE-GAN stage shares (one name per concept; see the module docstring).

    A recipe's config subclasses it, restates the defaults that differ and lists its old key names
    in ``config_aliases``."""

    config_aliases: ClassVar[dict[str, str]] = {"perceptual_weights": "perceptual.weights"}
    discriminator: PatchDiscriminatorConfig = field(default_factory=PatchDiscriminatorConfig)
    """The 3D PatchGAN (model ``disc``)."""
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    adversarial: Literal["bce", "hinge", "lsgan"] = "bce"
    recon_weight: float = 1.0
    kl_weight: float = 1e-7
    perceptual_weight: float = 0.3
    adv_weight: float = 0.1
    lr: float = 1e-4
    disc_lr: float = 1e-4
    disc_schedule: ScheduleConfig | None = None

    def validate(self, where: str) -> None:
        """Loss weights >= 0, learning rates > 0 (a recipe adds its own checks)."""
        require(self.lr > 0 and self.disc_lr > 0, f"{where}.lr and {where}.disc_lr must be > 0")
        for name in ("recon_weight", "kl_weight", "perceptual_weight", "adv_weight"):
            require(getattr(self, name) >= 0, f"{where}.{name} must be >= 0")


class VAEGANStage(Stage):
    """Base of the VAE-GAN compressor stages (module docstring); subclasses fill in the hooks."""

    generator_phase: ClassVar[str] = "generator"
    discriminator_phase: ClassVar[str] = "discriminator"
    vae_factory: ClassVar[str]
    clamp_validation: ClassVar[bool] = False
    validation_loss: ClassVar[bool] = False

    def __init__(self, config: VAEGANConfig, info: Any):
        super().__init__(config, info)
        self.perceptual_mode = "off"
        perceptual = self._build_perceptual() if config.perceptual_weight > 0 else None
        self.criterion = self.build_criterion(perceptual)

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def vae_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``vae_factory`` (recorded in the export)."""

    @abstractmethod
    def build_vae(self) -> nn.Module:
        """A fresh compressor (model ``vae``)."""

    def build_discriminator(self) -> nn.Module:
        """A fresh discriminator (model ``disc``) from ``recipe.discriminator``."""
        return PatchDiscriminator3d(self.config.discriminator)

    @abstractmethod
    def generator_optimizer(self) -> OptimSpec:
        """The compressor's optimizer."""

    @abstractmethod
    def discriminator_optimizer(self) -> OptimSpec:
        """The discriminator's optimizer."""

    def discriminator_timing(self) -> dict[str, int]:
        """``start_step`` / ``every`` of the discriminator phase (default: every step)."""
        return {}

    def make_phase(self, name: str, model: str, optimizer: OptimSpec, **kwargs: Any) -> Phase:
        """The Phase object of one optimizer (a recipe may return a gated subclass)."""
        return Phase(name, model, optimizer, **kwargs)

    def trains_discriminator(self) -> bool:
        """Whether the discriminator phase exists (default: only with an adversarial term)."""
        return self.config.adv_weight > 0

    @abstractmethod
    def adversarial_on(self, ctx: StepContext) -> bool:
        """Whether the generator loss of step ``ctx.step`` includes the adversarial term."""

    def posterior_draw(self, x: torch.Tensor, ctx: StepContext) -> tuple[bool, torch.Generator | None]:
        """(sample_posterior, generator) of the generator phase; default: a reparameterised draw from
        the global RNG (restored from the checkpoint on resume)."""
        return True, None

    def generator_extras(self, terms: Mapping[str, torch.Tensor], ctx: StepContext,
                         device: torch.device) -> dict[str, torch.Tensor]:
        """Further logged terms of the generator phase (``terms``: the detached loss terms)."""
        return {}

    def discriminator_extras(self, ctx: StepContext, device: torch.device) -> dict[str, torch.Tensor]:
        """Further logged terms of the discriminator phase."""
        return {}

    @abstractmethod
    def latent_scale(self, vae: nn.Module, ctx: ExportContext) -> float | None:
        """s_z of the export (see :meth:`estimate_scale`); None leaves it to ``bsynth encode``."""

    def export_sidecar(self, vae: nn.Module) -> dict[str, Any]:
        """Recipe-specific sidecar fields of the export."""
        return {}

    # ------------------------------------------------------------------ losses
    perceptual_network: ClassVar[str] = "AlexNet"
    perceptual_label: ClassVar[str] = "LPIPS"
    """The perceptual network and loss named in the smoke-mode warning."""
    perceptual_kind: ClassVar[str] = "lpips"
    """``perceptual`` of the export sidecar when real weights are loaded."""

    def build_criterion(self, perceptual: nn.Module | None) -> VAEGANLoss:
        """The generator/discriminator objective (default: :class:`VAEGANLoss` with the config's weights)."""
        c = self.config
        weights = VAEGANWeights(recon=c.recon_weight, kl=c.kl_weight, perceptual=c.perceptual_weight,
                                adversarial=c.adv_weight)
        return VAEGANLoss(weights, perceptual=perceptual, adversarial=c.adversarial)

    def perceptual_loss(self, s: PerceptualConfig) -> nn.Module:
        """The perceptual loss module of ``recipe.perceptual`` (default: LPIPS on tri-planar slices)."""
        return SlicePerceptualLoss(s.weights, slices_per_plane=s.slices_per_plane, allow_random=s.allow_random,
                                   weights_option="recipe.perceptual.weights=",
                                   allow_random_option="recipe.perceptual.allow_random=true")

    def _build_perceptual(self) -> nn.Module:
        s: PerceptualConfig = self.config.perceptual
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a random smoke trunk is the same network on every rank and every resume
            loss = self.perceptual_loss(s)
        info = getattr(loss, "weights_info", None)
        if info is not None and getattr(info, "random", False):
            self.perceptual_mode = "random-smoke"
            label = self.perceptual_label
            msg = (f"[{self.name}] perceptual loss: RANDOM {self.perceptual_network} trunk (perceptual.allow_random "
                   f"smoke mode) - its values are not {label}; install the {label} weights for real training")
            if msg not in _ANNOUNCED:
                log.warning(msg)
                print(msg, flush=True)
                _ANNOUNCED.add(msg)
        else:
            self.perceptual_mode = self.perceptual_kind
        return loss

    def setup(self, device: torch.device) -> None:
        self.criterion.to(device)

    # ------------------------------------------------------------------ models and phases
    def build_models(self) -> dict[str, nn.Module]:
        return {"vae": self.build_vae(), "disc": self.build_discriminator()}

    def phases(self) -> list[Phase]:
        phases = [self.make_phase(self.generator_phase, "vae", self.generator_optimizer())]
        if self.trains_discriminator():
            phases.append(self.make_phase(self.discriminator_phase, "disc", self.discriminator_optimizer(),
                                          schedule=self.config.disc_schedule, **self.discriminator_timing()))
        return phases

    def ema_models(self) -> tuple[str, ...]:
        return ("vae",) if getattr(self.config, "ema", True) else ()

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        if phase == self.generator_phase:
            return self.generator_loss(batch, ctx)
        if phase == self.discriminator_phase:
            return self.discriminator_loss(batch, ctx)
        raise ValueError(f"{self.name} has no phase {phase!r}")

    def generator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = batch["image"]
        sample, generator = self.posterior_draw(x, ctx)
        recon, posterior = ctx.models["vae"](x, sample_posterior=sample, generator=generator)
        logits = ctx.models["disc"](recon) if self.adversarial_on(ctx) else None
        terms = self.criterion.generator_loss(x.float(), recon.float(), posterior,
                                              None if logits is None else logits.float())
        ctx.cache["recon"] = recon.detach()
        out = {"loss": terms.pop("total"), **terms}
        out.update(self.generator_extras(terms, ctx, x.device))
        return out

    def discriminator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = batch["image"]
        fake = ctx.cache.get("recon")
        if fake is None:  # the generator phase did not run this step
            with torch.no_grad():
                fake = bare_module(ctx.models["vae"]).reconstruct(x)
        logits = ctx.models["disc"](torch.cat([x, fake.to(x.dtype)], dim=0))
        real_logits, fake_logits = logits.chunk(2, dim=0)
        terms = self.criterion.discriminator_loss(real_logits.float(), fake_logits.float())
        out = {"loss": terms.pop("total"), **terms}
        out.update(self.discriminator_extras(ctx, x.device))
        return out

    # ------------------------------------------------------------------ validation
    def mean_reconstruction(self, vae: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(input, posterior-mean reconstruction, posterior) of a batch; a conditional recipe overrides it to
        pass its condition."""
        x = batch["image"]
        posterior = vae.encode(x)
        return x, vae.decode(posterior.mean, x.shape[2:]), posterior

    def preview(self, batch: Batch, ctx: StepContext, path: Path) -> Path | None:
        """Input | posterior-mean reconstruction | error of the batch's first volume (middle slices), and
        the folder's overview.png refreshed: every step's preview in one grid, so training is seen at once."""
        first = {k: v[:1] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
        vae = bare_module(ctx.models["vae"])
        with torch.no_grad():
            x, recon, _ = self.mean_reconstruction(vae, first)
            recon = recon.float().clamp(0, 1)
        written = recon_figure(x[0, 0].float().cpu().numpy(), recon[0, 0].cpu().numpy(), path,
                               f"{self.name} step {ctx.step}: validation reconstruction")
        write_overview(Path(path).parent, f"{self.name}: validation reconstructions by step", pattern="step-*.png")
        return written

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Per-volume ``l1`` and ``psnr`` of the posterior-mean reconstruction (+ ``loss``, see the
        module docstring)."""
        vae = bare_module(ctx.models["vae"])
        x, recon, posterior = self.mean_reconstruction(vae, batch)
        recon = recon.float()
        diff = (recon.clamp(0, 1) if self.clamp_validation else recon) - x.float()
        l1 = per_sample_mean(diff.abs())
        mse = per_sample_mean(diff ** 2)
        out = {"l1": l1, "psnr": 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))}
        if self.validation_loss:
            w = self.criterion.weights
            kl = posterior.kl().float()
            kl = kl.flatten(1).sum(1) if kl.dim() > 1 else kl
            total = w.recon * l1 + w.kl * kl
            if w.perceptual > 0 and self.criterion.perceptual is not None:
                perc = torch.stack([self.criterion.perceptual(recon[i:i + 1], x[i:i + 1].float())
                                    for i in range(x.shape[0])])
                total = total + w.perceptual * perc
            out["loss"] = total
        return out

    # ------------------------------------------------------------------ export
    @staticmethod
    def estimate_scale(vae: nn.Module, images: Iterable[torch.Tensor]) -> float:
        """s_z = 1 / std of the posterior means of ``images`` ((B, C, X, Y, Z) each), encoded on the GPU
        when there is one; raises BsynthError for no, constant or non-finite latents."""
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        vae = vae.to(device)
        dtype = next(vae.parameters()).dtype
        try:
            return estimate_latent_scale(vae.encode_latent(img.to(device, dtype)).float().cpu() for img in images)
        finally:
            vae.to("cpu")

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        vae = models["vae"]
        scale = self.latent_scale(vae, ctx)
        sidecar = {"perceptual": self.perceptual_mode, "downsample_factor": int(vae.downsample_factor),
                   "latent_channels": int(vae.latent_channels), **self.export_sidecar(vae)}
        return [ExportSpec("vae", "vae", self.vae_factory, self.vae_kwargs(), latent_scale=scale, sidecar=sidecar)]
