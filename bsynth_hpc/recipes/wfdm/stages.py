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
    demo/tests only): the log and the export sidecar (``perceptual: random-smoke``) say so.

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

import logging
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

log = logging.getLogger(__name__)
_ANNOUNCED: set[str] = set()  # the smoke-mode warning is printed once per process

COMPRESSORS = ("wf-sa-vae", "wf-vae", "wavelet-vae", "vae-gan")
COMPRESSOR_FACTORY = "bsynth_hpc.models.autoencoder:build_compressor"
DISCRIMINATOR_FACTORY = "bsynth_hpc.models.autoencoder:patchgan3d"
UNET_FACTORY = "bsynth_hpc.models.unet3d:build_unet3d"


def _bare(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DeepSpeed wrapper."""
    while hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module):
        model = model.module
    return model


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().flatten(1).mean(dim=1)


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
        require(self.lr > 0 and self.disc_lr > 0, f"{where}.lr and {where}.disc_lr must be > 0")
        for name in ("recon_weight", "kl_weight", "perceptual_weight", "adv_weight"):
            require(getattr(self, name) >= 0, f"{where}.{name} must be >= 0")
        require(self.disc_start >= 0, f"{where}.disc_start={self.disc_start} must be >= 0 (warm-up steps)")
        require(self.disc_every >= 1, f"{where}.disc_every={self.disc_every} must be >= 1")
        require(self.perceptual_slices >= 1, f"{where}.perceptual_slices must be >= 1")
        require(self.scale_volumes >= 1, f"{where}.scale_volumes must be >= 1")
        try:
            from ...models.autoencoder import preset_config

            preset_config(self.compressor, **self.compressor_kwargs)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}.compressor_kwargs: {exc}") from exc


class WFDMVAEStage(Stage):
    """wfdm-vae: see the module docstring."""

    name = "wfdm-vae"
    config_class = WFDMVAEConfig
    val_metric = "l1"
    val_mode = "min"

    def __init__(self, config: WFDMVAEConfig, info: Any):
        super().__init__(config, info)
        self._perceptual: nn.Module | None = None
        self.perceptual_mode = "off"
        if config.perceptual_weight > 0:
            self._perceptual = self._build_perceptual()
        from ...losses import VAEGANLoss, VAEGANWeights

        weights = VAEGANWeights(recon=config.recon_weight, kl=config.kl_weight, perceptual=config.perceptual_weight,
                                adversarial=config.adv_weight)
        self.losses = VAEGANLoss(weights, perceptual=self._perceptual, adversarial=config.adversarial)

    def _build_perceptual(self) -> nn.Module:
        from ...losses import SlicePerceptualLoss

        c: WFDMVAEConfig = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a random smoke trunk is the same network on every rank and every resume
            loss = SlicePerceptualLoss(c.perceptual_weights, slices_per_plane=c.perceptual_slices,
                                       allow_random=c.allow_random_perceptual)
        info = getattr(loss, "weights_info", None)
        if info is not None and getattr(info, "random", False):
            self.perceptual_mode = "random-smoke"
            msg = ("[wfdm-vae] perceptual loss: RANDOM AlexNet trunk (allow_random_perceptual smoke mode) - its "
                   "values are not LPIPS; install the LPIPS weights for real training")
            if not _ANNOUNCED:
                log.warning(msg)
                print(msg, flush=True)
                _ANNOUNCED.add(msg)
        else:
            self.perceptual_mode = "lpips"
        return loss

    def setup(self, device: torch.device) -> None:
        self.losses.to(device)

    # ------------------------------------------------------------------ models
    def _compressor_kwargs(self) -> dict[str, Any]:
        return {"preset": self.config.compressor, **self.config.compressor_kwargs}

    def build_models(self) -> dict[str, nn.Module]:
        from ...models.autoencoder import build_compressor, patchgan3d

        c: WFDMVAEConfig = self.config
        return {"vae": build_compressor(c.compressor, **c.compressor_kwargs), "disc": patchgan3d(**c.discriminator)}

    def phases(self) -> list[Phase]:
        c: WFDMVAEConfig = self.config
        phases = [Phase("generator", "vae", OptimSpec("adamw", lr=c.lr, betas=c.betas))]
        if c.adv_weight > 0:
            phases.append(Phase("discriminator", "disc", OptimSpec("adamw", lr=c.disc_lr, betas=c.disc_betas),
                                start_step=c.disc_start, every=c.disc_every, schedule=c.disc_schedule))
        return phases

    def ema_models(self) -> tuple[str, ...]:
        return ("vae",) if self.config.ema else ()

    # ------------------------------------------------------------------ losses
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        c: WFDMVAEConfig = self.config
        x = batch["image"]
        if phase == "generator":
            generator = None
            if c.sample_posterior:  # reparameterisation noise seeded by the batch's sample seeds (resume-exact)
                seed = int((ctx.sample_seeds.detach().cpu().long() * 1000003).sum().item()) % (2 ** 62)
                generator = torch.Generator(device=x.device).manual_seed(seed + 7919 * ctx.step)
            recon, posterior = ctx.models["vae"](x, sample_posterior=c.sample_posterior, generator=generator)
            adv_on = c.adv_weight > 0 and ctx.step >= c.disc_start
            fake_logits = ctx.models["disc"](recon) if adv_on else None
            terms = self.losses.generator_loss(x, recon, posterior, fake_logits)
            ctx.cache["recon"] = recon.detach()
            out = {"loss": terms.pop("total"), **terms}
            return out
        if phase == "discriminator":
            fake = ctx.cache.get("recon")
            if fake is None:
                with torch.no_grad():
                    fake = _bare(ctx.models["vae"]).reconstruct(x)
            disc = ctx.models["disc"]
            logits = disc(torch.cat([x, fake.to(x.dtype)], dim=0))
            real_logits, fake_logits = logits.chunk(2, dim=0)
            terms = self.losses.discriminator_loss(real_logits, fake_logits)
            return {"loss": terms.pop("total"), **terms}
        raise ValueError(f"wfdm-vae has no phase {phase!r}")

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = batch["image"]
        recon = _bare(ctx.models["vae"]).reconstruct(x).float().clamp(0, 1)
        diff = recon - x.float()
        mse = _per_sample_mean(diff ** 2)
        psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
        return {"l1": _per_sample_mean(diff.abs()), "psnr": psnr}

    # ------------------------------------------------------------------ export
    def latent_scale(self, vae: nn.Module) -> float:
        """s_z over the posterior means of the training split (§2.5.3)."""
        from ...models.autoencoder import estimate_latent_scale

        ds = self.dataset(self.info.data.train_split)
        n = min(len(ds), self.config.scale_volumes)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        vae = vae.to(device)
        dtype = next(vae.parameters()).dtype

        def means():
            for i in range(n):
                yield vae.encode_latent(ds[i]["image"][None].to(device, dtype)).float().cpu()

        try:
            return estimate_latent_scale(means())
        finally:
            vae.to("cpu")

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        vae = models["vae"]
        scale = self.latent_scale(vae)
        print(f"[wfdm-vae] latent scale s_z = {scale:.5g} (1 / std of the posterior means of "
              f"{min(self.config.scale_volumes, len(self.dataset(self.info.data.train_split)))} training volumes)",
              flush=True)
        sidecar = {"perceptual": self.perceptual_mode, "compressor": self.config.compressor,
                   "downsample_factor": int(vae.downsample_factor), "latent_channels": int(vae.latent_channels),
                   "latent_scale_source": f"train split, {self.config.scale_volumes} volumes max"}
        return [ExportSpec("vae", "vae", COMPRESSOR_FACTORY, self._compressor_kwargs(), latent_scale=scale,
                           sidecar=sidecar)]


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
            "latents": str(Path(self.config.latents).resolve()), "latent_shape": list(info["latent_shape"]),
            "latent_scale_cache": info.get("scale_factor"), "volume_shape": info.get("volume_shape"),
            "affine": info.get("affine"), "metadata_stats": info.get("metadata_stats"),
            "diffusion": to_plain(self.config.diffusion), "modalities": ["T1w", "T2w", "T1Gd", "FLAIR"],
        }
        return [ExportSpec("unet", "unet", UNET_FACTORY, self._unet_kwargs(), latent_scale=info.get("scale_factor"),
                           sidecar=sidecar)]


__all__ = ["WFDMVAEConfig", "WFDMVAEStage", "WFDMLDMConfig", "WFDMLDMStage", "COMPRESSORS"]
