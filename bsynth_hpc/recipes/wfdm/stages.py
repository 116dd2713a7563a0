"""The two training stages of WFDM (seed 003 §2.5).

``wfdm-vae`` (stage A, §2.5.1-2.5.3)
    A compressor from ``recipe.compressor`` (wf-sa-vae | wf-vae | wavelet-vae | vae-gan, plus
    ``compressor_kwargs`` overrides) trained with
    L_VAE = L1 + lambda_KL KL + lambda_perc LPIPS(tri-planar slices) + lambda_adv L_adv^G
    (the adversarial term switches on after ``disc_start`` warm-up steps), alternating with the
    3D PatchGAN discriminator phase L_D (both BCE by default, §2.5.1). Validation: per-volume L1
    (selects the best checkpoint) and PSNR of the posterior-mean reconstruction. The export
    ``vae`` records s_z = 1 / std of the posterior means of the **training split** (§2.5.3),
    estimated at export time over ``scale_volumes`` volumes. ``perceptual: {allow_random: true}``
    replaces the LPIPS AlexNet trunk by a seeded random one when no weights are installed (CPU
    demo/tests only): the log and the export sidecar (``perceptual: random-smoke``) say so. Loss
    wiring, discriminator phase, validation and export come from the shared
    :class:`~bsynth_hpc.recipes.common.vaegan_stage.VAEGANStage`.

``wfdm-ldm`` (stage B, §2.5.4-2.5.6)
    ``UNet3dConditional`` on the scaled latents of ``recipe.latents`` (a ``bsynth encode`` cache),
    conditioned on the target modality and the metadata values + availability mask, with the
    objective of ``recipe.diffusion`` (default: RFlow, velocity prediction, 50 Euler steps; DDPM
    with cosine / scaled-linear schedules selectable). CFG condition dropout drops the modality
    and the metadata groups of the model's conditioning interface with per-sample draws
    (reproducible for any rank count). Modality-balanced sampling (§2.5.6, ``balanced``, formerly
    ``balance_modalities``). The export ``unet`` carries the diffusion config, the compressor run,
    s_z, the store's affine and shape and the metadata z-score statistics, so ``bsynth sample
    wfdm`` needs nothing else. Data, training, validation and export come from the shared
    :class:`~bsynth_hpc.recipes.common.ldm_stage.LatentDiffusionStage`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ...constants import MODALITIES
from ...diffusion import DiffusionConfig, SamplingConfig
from ...configtools import Overrides, require, to_plain
from ...engine.stage import Batch, ExportContext, OptimSpec, StepContext
from ...errors import ConfigError
from ...models.autoencoder import CompressorConfig, build_compressor, preset_config
from ...models.conditioning import Conditioning
from ...models.unet3d import UNet3dConfig, build_unet3d, unet3d_config
from ..common.ldm_stage import LatentDiffusionConfig, LatentDiffusionStage
from ..common.vaegan_stage import VAEGANConfig, VAEGANStage

COMPRESSORS = ("wf-sa-vae", "wf-vae", "wavelet-vae", "vae-gan")
COMPRESSOR_FACTORY = "compressor"  # registry names (bsynth_hpc.models)
DISCRIMINATOR_FACTORY = "patchgan3d"
UNET_FACTORY = "unet3d"


# ============================================================================ stage A
@dataclass
class WFDMVAEConfig(VAEGANConfig):
    """recipe: section of wfdm-vae (seed 003 §2.5.1 / Table 5 defaults); shared fields in VAEGANConfig."""

    config_aliases = {**VAEGANConfig.config_aliases, "perceptual_slices": "perceptual.slices_per_plane",
                      "allow_random_perceptual": "perceptual.allow_random"}
    compressor: Literal["wf-sa-vae", "wf-vae", "wavelet-vae", "vae-gan"] = "wf-vae"
    compressor_kwargs: Overrides[CompressorConfig] = field(default_factory=Overrides)
    """CompressorConfig fields overriding the preset's (latent_channels, base_channels, ...)."""
    betas: tuple[float, float] = (0.9, 0.999)
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_start: int = 0
    """Generator warm-up steps: the adversarial term and the discriminator updates start here."""
    disc_every: int = 1
    sample_posterior: bool = True
    scale_volumes: int = 16
    """Training volumes whose posterior means estimate s_z at export time."""
    ema: bool = True

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.disc_start >= 0, f"{where}.disc_start={self.disc_start} must be >= 0 (warm-up steps)")
        require(self.disc_every >= 1, f"{where}.disc_every={self.disc_every} must be >= 1")
        require(self.scale_volumes >= 1, f"{where}.scale_volumes must be >= 1")
        try:
            preset_config(self.compressor, **self.compressor_kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}.compressor_kwargs: {exc}") from exc


class WFDMVAEStage(VAEGANStage):
    """wfdm-vae: see the module docstring."""

    name = "wfdm-vae"
    config_class = WFDMVAEConfig
    val_metric = "l1"
    val_mode = "min"
    vae_factory = COMPRESSOR_FACTORY
    clamp_validation = True

    # ------------------------------------------------------------------ models and phases
    def vae_kwargs(self) -> dict[str, Any]:
        return {"preset": self.config.compressor, **to_plain(self.config.compressor_kwargs)}

    def build_vae(self) -> nn.Module:
        return build_compressor(self.config.compressor, **self.config.compressor_kwargs)

    def generator_optimizer(self) -> OptimSpec:
        return OptimSpec("adamw", lr=self.config.lr, betas=self.config.betas)

    def discriminator_optimizer(self) -> OptimSpec:
        return OptimSpec("adamw", lr=self.config.disc_lr, betas=self.config.disc_betas)

    def discriminator_timing(self) -> dict[str, int]:
        return {"start_step": self.config.disc_start, "every": self.config.disc_every}

    def adversarial_on(self, ctx: StepContext) -> bool:
        return self.config.adv_weight > 0 and ctx.step >= self.config.disc_start

    def posterior_draw(self, x: torch.Tensor, ctx: StepContext) -> tuple[bool, torch.Generator | None]:
        if not self.config.sample_posterior:
            return False, None
        # reparameterisation noise seeded by the batch's sample seeds (resume-exact)
        seed = int((ctx.sample_seeds.detach().cpu().long() * 1000003).sum().item()) % (2 ** 62)
        return True, torch.Generator(device=x.device).manual_seed(seed + 7919 * ctx.step)

    # ------------------------------------------------------------------ export
    def latent_scale(self, vae: nn.Module, ctx: ExportContext) -> float:
        """s_z over the posterior means of the training split (§2.5.3)."""
        ds = self.dataset(self.info.data.train_split)
        n = min(len(ds), self.config.scale_volumes)
        scale = self.estimate_scale(vae, (ds[i]["image"][None] for i in range(n)))
        print(f"[wfdm-vae] latent scale s_z = {scale:.5g} (1 / std of the posterior means of {n} training volumes)",
              flush=True)
        return scale

    def export_sidecar(self, vae: nn.Module) -> dict[str, Any]:
        return {"compressor": self.config.compressor,
                "latent_scale_source": f"train split, {self.config.scale_volumes} volumes max"}


# ============================================================================ stage B
def _default_diffusion() -> DiffusionConfig:
    return DiffusionConfig(scheduler="rflow", sampling=SamplingConfig(steps=50))


_UNET_DROPOUT_KEYS = ("modality_dropout_prob", "metadata_dropout_prob")


@dataclass
class WFDMLDMConfig(LatentDiffusionConfig):
    """recipe: section of wfdm-ldm (seed 003 §2.5.4-2.5.6 / Table 5 defaults); the fields shared with
    the other latent-diffusion stages (latents, compressor_run, modalities, balanced, cfg_dropout_prob,
    diffusion, lr, weight_decay, betas, ema) are LatentDiffusionConfig's."""

    config_aliases: ClassVar[dict[str, str]] = {"balance_modalities": "balanced"}
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    unet_preset: str = "unet3d-wfdm"
    unet: Overrides[UNet3dConfig] = field(default_factory=Overrides)
    """UNet3dConfig overrides (base_channels, channel_mult, attention_levels, dropout probs, ...)."""

    def validate(self, where: str) -> None:
        super().validate(where)
        both = [k for k in _UNET_DROPOUT_KEYS if k in self.unet]
        require(self.cfg_dropout_prob is None or not both,
                f"{where}.cfg_dropout_prob and {where}.unet.{both[0] if both else ''} both set the CFG dropout rate; "
                "keep one")
        try:
            unet3d_config(self.unet_preset, **self.unet).validate(f"{where}.unet")
        except TypeError as exc:
            raise ConfigError(f"{where}.unet: {exc}") from exc


class WFDMLDMStage(LatentDiffusionStage):
    """wfdm-ldm: see the module docstring; training, CFG dropout, validation and export come from the
    shared :class:`~bsynth_hpc.recipes.common.ldm_stage.LatentDiffusionStage`."""

    name = "wfdm-ldm"
    config_class = WFDMLDMConfig
    val_metric = "diffusion_loss"
    val_mode = "min"
    model_name = "unet"
    phase_name = "denoiser"
    factory = UNET_FACTORY

    def model_kwargs(self) -> dict[str, Any]:
        c: WFDMLDMConfig = self.config
        kw = dict(c.unet)
        kw.setdefault("in_channels", self.latent_shape[0])
        if c.cfg_dropout_prob is not None:
            kw.update({k: c.cfg_dropout_prob for k in _UNET_DROPOUT_KEYS})
        return {"preset": c.unet_preset, **to_plain(kw)}

    def build_denoiser(self) -> nn.Module:
        kw = self.model_kwargs()
        return build_unet3d(kw.pop("preset"), **kw)

    def conditions(self, batch: Batch, device: torch.device) -> Conditioning:
        return {"modality": torch.as_tensor(batch["modality_id"], device=device).long(),
                "metadata": batch["metadata"].to(device).float(),
                "metadata_mask": batch["metadata_mask"].to(device).float()}

    def balance_groups(self, dataset: Any) -> list[int]:
        """Modality-balanced draws (§2.5.6): the target modality."""
        return list(dataset.modality_ids)

    def export_sidecar(self) -> dict[str, Any]:
        # modalities: the model's modality vocabulary (any of them can be sampled)
        return {"recipe": "wfdm", "metadata_stats": self.cache_meta.get("metadata_stats"),
                "modalities": list(MODALITIES)}


__all__ = ["WFDMVAEConfig", "WFDMVAEStage", "WFDMLDMConfig", "WFDMLDMStage", "COMPRESSORS"]
