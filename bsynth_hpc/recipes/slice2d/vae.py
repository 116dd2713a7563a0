"""Stage ``slice2d-vae``: the 2D slice VAE of seeds 001 and 004 on a slice store (``bsynth prep --slices-from``).

Model: a preset of the dimension-generic :class:`~bsynth_hpc.models.autoencoder.Autoencoder`
(``recipe.compressor``): ``slice001`` (1x128^2 -> 8x16^2, widths [32, 64, 128, 256], two ResNet blocks
per stage, bottleneck attention, transposed-conv decoder, tanh) or ``slice004`` (1x256^2 -> 8x32^2,
LeakyReLU encoder, ReLU decoder), plus ``compressor_kwargs`` overrides. Objective (through the shared
:class:`~bsynth_hpc.recipes.common.vaegan_stage.VAEGANStage`, adversarial and perceptual terms off by
default): ``recon_loss`` (001: MSE ``l2``; 004: ``l1``) + β KL, with β ramped linearly from 0 to
``kl_weight`` over the first ``kl_warmup_steps`` steps (001: 1e-5 over its first 20 epochs; here the
ramp is counted in optimizer steps). Optimizer ``optimizer`` (001: AdamW 1e-4, weight decay 1e-5;
004: Adam 1e-3); LR schedule, gradient clipping (001: 1.0) and AMP are the engine's. Augmentation
(001: flip, ±10° rotation, 5 % translate/scale) is applied to each training batch on the device.

Validation on the posterior-mean reconstruction, in the [0, 1] display range (slices live in the
store's value range, [-1, 1] by default): per-slice ``l1`` (selects the best checkpoint), ``psnr``
and ``ssim`` (2D SSIM, the evaluation's settings). The export ``vae`` records s_z = 1 / std of the
posterior means of up to ``scale_slices`` training slices, and the store's value range.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ...configtools import Overrides, require, to_plain
from ...engine.stage import Batch, ExportContext, OptimSpec, StepContext
from ...errors import ConfigError
from ...eval.figures import recon_figure, write_overview
from ...eval.ssim import ssim_settings
from ...losses import VAEGANLoss, VAEGANWeights
from ...models.autoencoder import CompressorConfig, PatchDiscriminator3d, build_compressor, preset_config
from ..common.stage_utils import bare_module, per_sample_mean
from ..common.vaegan_stage import VAEGANConfig, VAEGANStage
from .augment import DRAWS, SliceAugmentConfig, augment_slices
from .ranges import slice_ssim, store_value_range, to_unit

COMPRESSOR_FACTORY = "compressor"  # registry name (bsynth_hpc.models)
SLICE_COMPRESSORS = ("slice001", "slice004")

__all__ = ["Slice2dVAEConfig", "Slice2dVAEStage", "kl_beta"]


def kl_beta(step: int, weight: float, warmup_steps: int) -> float:
    """001's β: linear from 0 at step 0 to ``weight`` at ``warmup_steps`` (constant afterwards)."""
    if warmup_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, step / float(warmup_steps))


@dataclass
class Slice2dVAEConfig(VAEGANConfig):
    """recipe: section of slice2d-vae (defaults: seed 001 §III.B.1); shared fields in VAEGANConfig."""

    compressor: Literal["slice001", "slice004"] = "slice001"
    compressor_kwargs: Overrides[CompressorConfig] = field(default_factory=Overrides)
    """CompressorConfig fields overriding the preset's (base_channels, norm_groups, ...)."""
    recon_loss: Literal["l2", "l1"] = "l2"
    kl_weight: float = 1e-5
    kl_warmup_steps: int = 0
    """Steps of the linear β ramp 0 -> kl_weight (0: constant β)."""
    perceptual_weight: float = 0.0
    adv_weight: float = 0.0
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    augment: SliceAugmentConfig = field(default_factory=SliceAugmentConfig)
    scale_slices: int = 64
    """Training slices whose posterior means estimate s_z at export time."""
    ema: bool = True

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.kl_warmup_steps >= 0, f"{where}.kl_warmup_steps must be >= 0")
        require(self.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
        require(self.scale_slices >= 1, f"{where}.scale_slices must be >= 1")
        require(self.perceptual_weight == 0, f"{where}.perceptual_weight: the slice VAE has no perceptual term "
                                             "(001 and 004 train on reconstruction + KL); set it to 0")
        self.augment.validate(f"{where}.augment")
        try:
            cfg = preset_config(self.compressor, **self.compressor_kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}.compressor_kwargs: {exc}") from exc
        require(cfg.spatial_dims == 2, f"{where}.compressor_kwargs: the slice VAE needs spatial_dims=2")


class Slice2dVAEStage(VAEGANStage):
    """slice2d-vae: see the module docstring."""

    name = "slice2d-vae"
    config_class = Slice2dVAEConfig
    val_metric = "l1"
    val_mode = "min"
    vae_factory = COMPRESSOR_FACTORY

    def __init__(self, config: Slice2dVAEConfig, info: Any):
        super().__init__(config, info)
        self.value_range = store_value_range(info.store) if info.store else (-1.0, 1.0)

    # ------------------------------------------------------------------ models and phases
    def vae_kwargs(self) -> dict[str, Any]:
        return {"preset": self.config.compressor, **to_plain(self.config.compressor_kwargs)}

    def build_vae(self) -> nn.Module:
        return build_compressor(self.config.compressor, **self.config.compressor_kwargs)

    def build_discriminator(self) -> nn.Module:
        return PatchDiscriminator3d(replace(self.config.discriminator, spatial_dims=2))

    def build_models(self) -> dict[str, nn.Module]:
        """The VAE, and a 2D PatchGAN only when the adversarial term is on (001/004 train without one)."""
        return super().build_models() if self.trains_discriminator() else {"vae": self.build_vae()}

    def build_criterion(self, perceptual: nn.Module | None) -> VAEGANLoss:
        c: Slice2dVAEConfig = self.config
        weights = VAEGANWeights(recon=c.recon_weight, kl=kl_beta(0, c.kl_weight, c.kl_warmup_steps),
                                perceptual=c.perceptual_weight, adversarial=c.adv_weight)
        return VAEGANLoss(weights, perceptual=perceptual, adversarial=c.adversarial, recon=c.recon_loss)

    def generator_optimizer(self) -> OptimSpec:
        c: Slice2dVAEConfig = self.config
        return OptimSpec(c.optimizer, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

    def discriminator_optimizer(self) -> OptimSpec:
        return OptimSpec("adam", lr=self.config.disc_lr, betas=(0.5, 0.999))

    def adversarial_on(self, ctx: StepContext) -> bool:
        return self.config.adv_weight > 0

    # ------------------------------------------------------------------ losses
    def generator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The shared generator phase on the augmented batch, with this step's β."""
        c: Slice2dVAEConfig = self.config
        beta = kl_beta(ctx.step, c.kl_weight, c.kl_warmup_steps)
        self.criterion.weights = replace(self.criterion.weights, kl=beta)
        if c.augment.enabled:
            u = torch.stack([ctx.rand(salt=f"augment-{k}") for k in range(DRAWS)], dim=1)
            batch = {**batch, "image": augment_slices(batch["image"], u, c.augment, background=self.value_range[0])}
        out = super().generator_loss(batch, ctx)
        out["kl_beta"] = torch.tensor(beta, device=batch["image"].device)
        return out

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Per-slice ``l1``, ``psnr`` and ``ssim`` of the posterior-mean reconstruction in [0, 1]."""
        vae = bare_module(ctx.models["vae"])
        x, recon, _ = self.mean_reconstruction(vae, batch)
        real, fake = to_unit(x.float(), self.value_range), to_unit(recon.float(), self.value_range).clamp(0, 1)
        diff = fake - real
        mse = per_sample_mean(diff ** 2)
        settings = ssim_settings(real.shape[2:])
        return {"l1": per_sample_mean(diff.abs()), "psnr": 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10)),
                "ssim": slice_ssim(real, fake, settings)}

    def preview(self, batch: Batch, ctx: StepContext, path: Path) -> Path | None:
        """Input | reconstruction | error of the first validation slice; the folder's overview refreshed."""
        vae = bare_module(ctx.models["vae"])
        with torch.no_grad():
            x, recon, _ = self.mean_reconstruction(vae, {"image": batch["image"][:1]})
        real = to_unit(x[0, 0].float(), self.value_range).cpu().numpy()
        fake = to_unit(recon[0, 0].float(), self.value_range).clamp(0, 1).cpu().numpy()
        written = recon_figure(real, fake, path, f"{self.name} step {ctx.step}: validation reconstruction")
        write_overview(Path(path).parent, f"{self.name}: validation reconstructions by step", pattern="step-*.png")
        return written

    # ------------------------------------------------------------------ export
    def latent_scale(self, vae: nn.Module, ctx: ExportContext) -> float:
        """s_z over the posterior means of up to ``scale_slices`` training slices."""
        ds = self.dataset(self.info.data.train_split)
        n = min(len(ds), self.config.scale_slices)
        scale = self.estimate_scale(vae, (ds[i]["image"][None] for i in range(n)))
        print(f"[{self.name}] latent scale s_z = {scale:.5g} (1 / std of the posterior means of {n} training slices)",
              flush=True)
        return scale

    def export_sidecar(self, vae: nn.Module) -> dict[str, Any]:
        return {"recipe": "slice2d", "compressor": self.config.compressor, "spatial_dims": 2,
                "value_range": list(self.value_range),
                "latent_scale_source": f"train split, {self.config.scale_slices} slices max"}

    def dataset(self, split: str | None):  # type: ignore[override]
        ds = super().dataset(split)
        if getattr(ds, "kind", "slice2d") != "slice2d":
            raise ConfigError(f"{self.name} trains on a slice store; {self.info.store} holds {ds.kind} data: cut "
                              f"slices first (`bsynth prep --slices-from {self.info.store} --out SLICES.zarr`)")
        return ds
