"""The two training stages of WFDM (seed 003 §2.5).

``wfdm-vae`` (stage A, §2.5.1-2.5.3)
    A compressor from ``recipe.compressor`` (wf-sa-vae | wf-vae | wavelet-vae | vae-gan, plus
    ``compressor_kwargs`` overrides) trained with
    L_VAE = L1 + lambda_KL KL + lambda_perc LPIPS(tri-planar slices) + lambda_adv L_adv^G
    (the adversarial term switches on after ``disc_start`` warm-up steps), alternating with the
    3D PatchGAN discriminator phase L_D (both BCE by default, §2.5.1). Validation: per-volume L1
    (selects the best checkpoint) and PSNR of the posterior-mean reconstruction. The export
    ``vae`` records s_z = 1 / std of the posterior means of the **training split** (§2.5.3),
    estimated at export time over ``scale_volumes`` volumes. ``allow_random_perceptual: true``
    replaces the LPIPS AlexNet trunk by a seeded random one when no weights are installed (CPU
    demo/tests only): the log and the export sidecar (``perceptual: random-smoke``) say so. Loss
    wiring, discriminator phase, validation and export come from the shared
    :class:`~bsynth_hpc.recipes.common.vaegan_stage.VAEGANStage`.

``wfdm-ldm`` (stage B, §2.5.4-2.5.6)
    ``UNet3dConditional`` on the scaled latents of ``recipe.latents`` (a ``bsynth encode`` cache),
    conditioned on the target modality and the metadata values + availability mask, with the
    objective of ``recipe.diffusion`` (default: RFlow, velocity prediction, 50 Euler steps; DDPM
    with cosine / scaled-linear schedules selectable). CFG condition dropout goes through the
    model's ``drop_conditions`` with per-sample draws from ``ctx.rand`` (reproducible for any
    rank count). Modality-balanced sampling (§2.5.6) through ``sampling_weights``. The export
    ``unet`` carries the diffusion config, the compressor run, s_z, the store's affine and shape
    and the metadata z-score statistics, so ``bsynth sample wfdm`` needs nothing else.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ...diffusion import DiffusionConfig, SamplingConfig, build_objective, build_process
from ...engine.config import ScheduleConfig
from ...engine.configtools import require
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...errors import ConfigError
from ..common.provenance import check_cache_is_current
from ..common.stage_utils import bare_module as _bare
from ..common.vaegan_stage import PerceptualSettings, VAEGANStage, validate_vaegan_config

COMPRESSORS = ("wf-sa-vae", "wf-vae", "wavelet-vae", "vae-gan")
COMPRESSOR_FACTORY = "compressor"  # registry names (bsynth_hpc.models)
DISCRIMINATOR_FACTORY = "patchgan3d"
UNET_FACTORY = "unet3d"


# ============================================================================ stage A
@dataclass
class WFDMVAEConfig:
    """recipe: section of wfdm-vae (seed 003 §2.5.1 / Table 5 defaults)."""

    compressor: Literal["wf-sa-vae", "wf-vae", "wavelet-vae", "vae-gan"] = "wf-vae"
    compressor_kwargs: dict[str, Any] = field(default_factory=dict)
    discriminator: dict[str, Any] = field(default_factory=dict)
    """patchgan3d overrides (channels, num_layers, norm, ...)."""
    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    disc_betas: tuple[float, float] = (0.5, 0.9)
    recon_weight: float = 1.0
    kl_weight: float = 1e-7
    perceptual_weight: float = 0.3
    adv_weight: float = 0.1
    adversarial: Literal["bce", "hinge", "lsgan"] = "bce"
    disc_start: int = 0
    """Generator warm-up steps: the adversarial term and the discriminator updates start here."""
    disc_every: int = 1
    disc_schedule: ScheduleConfig | None = None
    perceptual_weights: str | None = None
    """LPIPS AlexNet weights (None: $BSYNTH_WEIGHTS_DIR)."""
    perceptual_slices: int = 8
    """Slices per plane (sagittal, coronal, axial) fed to LPIPS."""
    allow_random_perceptual: bool = False
    """Smoke/CPU mode: a seeded random AlexNet trunk when no LPIPS weights exist (stated in log + export)."""
    sample_posterior: bool = True
    scale_volumes: int = 16
    """Training volumes whose posterior means estimate s_z at export time."""
    ema: bool = True

    def validate(self, where: str) -> None:
        validate_vaegan_config(self, where)
        require(self.disc_start >= 0, f"{where}.disc_start={self.disc_start} must be >= 0 (warm-up steps)")
        require(self.disc_every >= 1, f"{where}.disc_every={self.disc_every} must be >= 1")
        require(self.perceptual_slices >= 1, f"{where}.perceptual_slices must be >= 1")
        require(self.scale_volumes >= 1, f"{where}.scale_volumes must be >= 1")
        try:
            from ...models.autoencoder import preset_config

            preset_config(self.compressor, **self.compressor_kwargs)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}.compressor_kwargs: {exc}") from exc


class WFDMVAEStage(VAEGANStage):
    """wfdm-vae: see the module docstring."""

    name = "wfdm-vae"
    config_class = WFDMVAEConfig
    val_metric = "l1"
    val_mode = "min"
    vae_factory = COMPRESSOR_FACTORY
    clamp_validation = True

    def perceptual_settings(self) -> PerceptualSettings:
        c: WFDMVAEConfig = self.config
        return PerceptualSettings(c.perceptual_weights, c.perceptual_slices, c.allow_random_perceptual,
                                  "allow_random_perceptual")

    # ------------------------------------------------------------------ models and phases
    def vae_kwargs(self) -> dict[str, Any]:
        return {"preset": self.config.compressor, **self.config.compressor_kwargs}

    def build_vae(self) -> nn.Module:
        from ...models.autoencoder import build_compressor

        return build_compressor(self.config.compressor, **self.config.compressor_kwargs)

    def build_discriminator(self) -> nn.Module:
        from ...models.autoencoder import patchgan3d

        return patchgan3d(**self.config.discriminator)

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


@dataclass
class WFDMLDMConfig:
    """recipe: section of wfdm-ldm (seed 003 §2.5.4-2.5.6 / Table 5 defaults)."""

    latents: str = ""
    """The latent cache written by `bsynth encode` (required)."""
    compressor_run: str | None = None
    """Stage-A run used at sampling time (default: the one recorded in the latent cache)."""
    unet_preset: str = "unet3d-wfdm"
    unet: dict[str, Any] = field(default_factory=dict)
    """UNet3dConfig overrides (base_channels, channel_mult, attention_levels, dropout probs, ...)."""
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    balance_modalities: bool = True
    """Modality-balanced draws (each modality equally likely, §2.5.6); false: uniform over latents."""
    ema: bool = True

    def validate(self, where: str) -> None:
        require(bool(self.latents), f"{where}.latents is required: the latent cache of `bsynth encode --out ...` "
                                    f"(e.g. recipe.latents=runs/latents.zarr on the command line)")
        require(self.lr > 0, f"{where}.lr must be > 0")
        require(self.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
        from ...models.unet3d import unet3d_config

        try:
            unet3d_config(self.unet_preset, **self.unet).validate(f"{where}.unet")
        except TypeError as exc:
            raise ConfigError(f"{where}.unet: {exc}") from exc


class WFDMLDMStage(Stage):
    """wfdm-ldm: see the module docstring."""

    name = "wfdm-ldm"
    config_class = WFDMLDMConfig
    val_metric = "diffusion_loss"
    val_mode = "min"

    def __init__(self, config: WFDMLDMConfig, info: Any):
        super().__init__(config, info)
        from ...data.latent_cache import LatentCache

        if not Path(config.latents).exists():
            raise ConfigError(f"recipe.latents={config.latents!r} does not exist: run `bsynth encode --run RUN_A "
                              f"--store STORE --out {config.latents}` first")
        self.cache_info = LatentCache(config.latents, mode="r").info
        check_cache_is_current(config.latents, self.cache_info)
        self.process = build_process(config.diffusion)
        self.objective = build_objective(config.diffusion, self.process)

    def _unet_kwargs(self) -> dict[str, Any]:
        kw = dict(self.config.unet)
        kw.setdefault("in_channels", int(self.cache_info["latent_shape"][0]))
        for k, v in list(kw.items()):
            if isinstance(v, tuple):
                kw[k] = list(v)
        return {"preset": self.config.unet_preset, **kw}

    def dataset(self, split: str | None) -> Dataset:
        from ...data.latent_cache import LatentDataset

        return LatentDataset(self.config.latents, split=split)

    def sampling_weights(self, dataset: Dataset) -> Sequence[float] | None:
        if not self.config.balance_modalities:
            return None
        ids = list(getattr(dataset, "modality_ids"))
        counts = Counter(ids)
        return [1.0 / (len(counts) * counts[m]) for m in ids]

    def build_models(self) -> dict[str, nn.Module]:
        from ...models.unet3d import build_unet3d

        kw = self._unet_kwargs()
        return {"unet": build_unet3d(kw.pop("preset"), **kw)}

    def phases(self) -> list[Phase]:
        c: WFDMLDMConfig = self.config
        return [Phase("denoiser", "unet", OptimSpec("adamw", lr=c.lr, betas=c.betas, weight_decay=c.weight_decay))]

    def ema_models(self) -> tuple[str, ...]:
        return ("unet",) if self.config.ema else ()

    @staticmethod
    def conditions(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        return {"modality": torch.as_tensor(batch["modality_id"], device=device).long(),
                "metadata": batch["metadata"].to(device).float(),
                "metadata_mask": batch["metadata_mask"].to(device).float()}

    def _cfg_dropout(self, unet: nn.Module, cond: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """CFG condition dropout: the model's null conditions where per-sample draws fall under its rates."""
        bare = _bare(unet)
        cfg = bare.config
        null = bare.drop_conditions(cond, modality_prob=1.0, metadata_prob=1.0)
        drop_mod = ctx.rand(salt="cfg-modality") < cfg.modality_dropout_prob
        drop_meta = (ctx.rand(salt="cfg-metadata") < cfg.metadata_dropout_prob)[:, None]
        return {"modality": torch.where(drop_mod, null["modality"], cond["modality"]),
                "metadata": torch.where(drop_meta, null["metadata"], cond["metadata"]),
                "metadata_mask": torch.where(drop_meta, null["metadata_mask"], cond["metadata_mask"])}

    def _diffusion_loss(self, batch: Batch, ctx: StepContext, salt: str, dropout: bool) -> torch.Tensor:
        z0 = batch["latent"].to(ctx.device, ctx.compute_dtype)
        unet = ctx.models["unet"]
        cond = self.conditions(batch, z0.device)
        if dropout:
            cond = self._cfg_dropout(unet, cond, ctx)
        nb = self.objective.draw(z0, noise=ctx.randn(z0.shape[1:], salt=f"{salt}-noise", dtype=z0.dtype),
                                 u=ctx.rand(salt=f"{salt}-t"))
        pred = unet(nb.x_t, nb.model_t, cond)
        return self.objective.loss(pred, nb, reduction="per_sample")

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": self._diffusion_loss(batch, ctx, "train", dropout=True).mean()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"diffusion_loss": self._diffusion_loss(batch, ctx, "val", dropout=False)}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        from ...engine.configtools import to_plain

        info = self.cache_info
        compressor = self.config.compressor_run or info.get("compressor_run")
        sidecar = {
            "recipe": "wfdm", "compressor_run": None if compressor is None else str(Path(compressor).resolve()),
            "compressor_export": info.get("compressor_export", "vae"),
            "compressor_sha256": info.get("compressor_sha256"),
            "latents": str(Path(self.config.latents).resolve()), "latent_shape": list(info["latent_shape"]),
            "latent_scale_cache": info.get("scale_factor"), "volume_shape": info.get("volume_shape"),
            "affine": info.get("affine"), "metadata_stats": info.get("metadata_stats"),
            "diffusion": to_plain(self.config.diffusion), "modalities": ["T1w", "T2w", "T1Gd", "FLAIR"],
        }
        return [ExportSpec("unet", "unet", UNET_FACTORY, self._unet_kwargs(), latent_scale=info.get("scale_factor"),
                           sidecar=sidecar)]


__all__ = ["WFDMVAEConfig", "WFDMVAEStage", "WFDMLDMConfig", "WFDMLDMStage", "COMPRESSORS"]
