"""Stage ``clinical``: seed 002's clinically conditioned 3D VAE-GAN (§2.1-2.5, Algorithm 1).

Per step, on a batch (x, c) of clinical T1w volumes fitted to the cube (:class:`~.data.ClinicalVolumeDataset`,
MONAI blur / noise / gamma when ``augment``; c = ROI z-scores + label bit):

1. generator phase (model ``vae`` = :class:`~bsynth_hpc.models.clinical.model.ClinicalVAEGAN`: Xception
   encoder, learned prior p(z|c), clinical-style decoder): z ~ q(z|x,c) (reparameterised, noise seeded by the
   batch), x̂ = g(z, c); L = λ_rec L1 + λ_KL KL(q || p(z|c)) + λ_perc EfficientNet-B0 (tri-planar slices)
   + λ_adv L_adv(D(DiffAug(x̂), c)) + λ_cls CE + λ_reg MSE of the **frozen** auxiliary heads on x̂ (the
   ``clinical-aux`` export named by ``aux_run``; no gradient reaches their weights, only through them);
2. discriminator phase (model ``disc``: conditional separable PatchGAN): L_D on DiffAug(x) and DiffAug(x̂)
   (brightness, contrast, 3D translation; fresh draws for real and fake at every update).

Defaults are 002's: λ 10 / 0.1 / 1 / 20 / 1 / 1, Adam β (0.5, 0.999), lr 1e-4 (E, G) and 1e-3 (D), Xavier
init; ReduceLROnPlateau (factor 0.75) and clipping 1.0 are ``engine:`` settings. Validation: per-volume
``l1`` (best checkpoint) and ``psnr`` of the posterior-mean reconstruction. Export ``vaegan``: the
ClinicalVAEGAN factory + kwargs, the normalisation (``clinical_stats``), the cube side and its world affine
(``affine``: the store's grid fitted to the cube), the aux run and the perceptual mode.

Loss wiring, phases, validation and preview come from the shared
:class:`~bsynth_hpc.recipes.common.vaegan_stage.VAEGANStage`; this class adds the condition, the aux heads
and DiffAugment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ...configtools import require
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, StepContext
from ...errors import ConfigError
from ...losses.diffaugment import DIFFAUGMENT_POLICIES, DiffAugment3d
from ...models.autoencoder import PatchDiscriminatorConfig
from ...models.clinical.discriminator import ClinicalPatchDiscriminator
from ...models.clinical.init import xavier_init
from ...models.clinical.loss import ClinicalLossWeights, ClinicalVAEGANLoss
from ...models.clinical.model import ClinicalVAEGAN
from ..common.outputs import store_affine
from ..common.stage_utils import bare_module
from ..common.vaegan_stage import PerceptualConfig, VAEGANConfig, VAEGANStage
from .aux import load_aux_heads
from .common import ClinicalModelSection, augment_batch, batch_generator, per_sample
from .data import ClinicalNormalizer, ClinicalVolumeDataset, cube_affine
from .factories import VAEGAN_FACTORY

__all__ = ["ClinicalConfig", "ClinicalStage"]


def _disc_default() -> PatchDiscriminatorConfig:
    return PatchDiscriminatorConfig(channels=64, num_layers=3, kernel_size=3, conv="separable")


@dataclass
class ClinicalConfig(ClinicalModelSection, VAEGANConfig):
    """``recipe:`` section of clinical (002 defaults; the shared VAE-GAN keys of VAEGANConfig)."""

    discriminator: PatchDiscriminatorConfig = field(default_factory=_disc_default)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    """EfficientNet-B0 weights (``weights``: a local file or $BSYNTH_WEIGHTS_DIR), slices per plane."""
    recon_weight: float = 10.0
    kl_weight: float = 0.1
    perceptual_weight: float = 20.0
    adv_weight: float = 1.0
    cls_weight: float = 1.0
    reg_weight: float = 1.0
    lr: float = 1e-4
    disc_lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    disc_betas: tuple[float, float] = (0.5, 0.999)
    aux_run: str | None = None
    """The clinical-aux run whose frozen heads give L_cls / L_reg (needed when cls_weight or reg_weight > 0)."""
    diffaugment: list[str] = field(default_factory=lambda: list(DIFFAUGMENT_POLICIES))
    translation_ratio: float = 0.125
    ema: bool = True

    def validate(self, where: str) -> None:
        ClinicalModelSection.validate(self, where)
        VAEGANConfig.validate(self, where)
        require(self.cls_weight >= 0 and self.reg_weight >= 0, f"{where}.cls_weight / reg_weight must be >= 0")
        require(self.aux_run is not None or (self.cls_weight == 0 and self.reg_weight == 0),
                f"{where}.aux_run is needed for cls_weight/reg_weight > 0: train clinical-aux first and pass "
                f"recipe.aux_run=RUN_AUX (or set both weights to 0: the 'w/o Cls/Reg' ablation)")
        unknown = [p for p in self.diffaugment if p not in DIFFAUGMENT_POLICIES]
        require(not unknown, f"{where}.diffaugment {unknown}: use any of {', '.join(DIFFAUGMENT_POLICIES)}")


class ClinicalStage(VAEGANStage):
    """clinical: see the module docstring."""

    name = "clinical"
    config_class = ClinicalConfig
    val_metric = "l1"
    val_mode = "min"
    vae_factory = VAEGAN_FACTORY
    clamp_validation = True
    perceptual_network: ClassVar[str] = "EfficientNet-B0"
    perceptual_label: ClassVar[str] = "EfficientNet-B0 features (ImageNet)"
    perceptual_kind: ClassVar[str] = "efficientnet-b0"

    def __init__(self, config: ClinicalConfig, info: Any):
        self.model_config = config.model_config()
        super().__init__(config, info)
        self.normalizer = ClinicalNormalizer.fit(self.dataset(info.data.train_split).vectors)
        self.diffaugment = DiffAugment3d(config.diffaugment, config.translation_ratio) if config.diffaugment else None
        self.aux: nn.Module | None = None
        self.aux_normalizer: ClinicalNormalizer | None = None
        if config.aux_run and (config.cls_weight > 0 or config.reg_weight > 0):
            self.aux, self.aux_normalizer, side = load_aux_heads(config.aux_run)
            if side != self.model_config.image_size:
                raise ConfigError(f"recipe.aux_run {config.aux_run}: its heads read {side}^3 volumes, this model "
                                  f"makes {self.model_config.image_size}^3; train clinical-aux with the same preset")

    # ------------------------------------------------------------------ data, models, losses
    def dataset(self, split: str | None) -> Dataset:
        if not self.info.store:
            raise ConfigError(f"stage {self.name} reads volumes: pass --store STORE.zarr")
        return ClinicalVolumeDataset(self.info.store, split, self.model_config.image_size)

    def build_criterion(self, perceptual: nn.Module | None) -> ClinicalVAEGANLoss:
        c = self.config
        weights = ClinicalLossWeights(recon=c.recon_weight, kl=c.kl_weight, perceptual=c.perceptual_weight,
                                      adversarial=c.adv_weight, cls=c.cls_weight, reg=c.reg_weight)
        return ClinicalVAEGANLoss(weights, perceptual=perceptual, adversarial=c.adversarial)

    def perceptual_loss(self, s: PerceptualConfig) -> nn.Module:
        from ...losses.perceptual import EfficientNetPerceptualLoss  # lazy: torchvision loads only when weighted

        return EfficientNetPerceptualLoss(s.weights, slices_per_plane=s.slices_per_plane, allow_random=s.allow_random,
                                          weights_option="recipe.perceptual.weights=",
                                          allow_random_option="recipe.perceptual.allow_random=true")

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        if self.aux is not None:
            self.aux.to(device)

    def vae_kwargs(self) -> dict[str, Any]:
        return self.model_config.as_dict()

    def build_vae(self) -> nn.Module:
        return ClinicalVAEGAN(self.model_config)

    def build_discriminator(self) -> nn.Module:
        m = self.model_config
        disc = ClinicalPatchDiscriminator(self.config.discriminator, conditional=m.conditioning,
                                          clinical_dim=m.clinical_dim, separable=m.separable)
        return xavier_init(disc)

    def generator_optimizer(self) -> OptimSpec:
        return OptimSpec("adam", lr=self.config.lr, betas=self.config.betas)

    def discriminator_optimizer(self) -> OptimSpec:
        return OptimSpec("adam", lr=self.config.disc_lr, betas=self.config.disc_betas)

    def adversarial_on(self, ctx: StepContext) -> bool:
        return self.config.adv_weight > 0

    def latent_scale(self, vae: nn.Module, ctx: ExportContext) -> float | None:
        return None  # the decoder reads z ~ p(z|c) directly; there is no latent diffusion on z

    def condition(self, batch: Batch, device: torch.device) -> torch.Tensor:
        """c in network units (ROI z-scores + label bit), (B, 7)."""
        return self.normalizer.normalize(batch["clinical"].to(device).float())

    def _augment(self, x: torch.Tensor, ctx: StepContext, salt: int) -> torch.Tensor:
        if self.diffaugment is None:
            return x
        return per_sample(self.diffaugment, x, ctx, salt)

    def _input(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """The (augmented) training volumes of this step, the same in both phases."""
        x = ctx.cache.get("x")
        if x is None:
            x = batch["image"]
            x = augment_batch(x, ctx) if self.config.augment else x
            ctx.cache["x"] = x
        return x

    def generator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = self._input(batch, ctx)
        c = self.condition(batch, x.device)
        out = ctx.models["vae"](x, c, generator=batch_generator(ctx, x.device, 1))
        recon = out["recon"]
        logits = None
        if self.adversarial_on(ctx):
            logits = ctx.models["disc"](self._augment(recon, ctx, 2), c).float()
        aux = None
        if self.aux is not None:
            aux = self.aux.losses(recon.float(), self.aux_normalizer.normalize(batch["clinical"].to(x.device).float()))
        terms = self.criterion.generator_loss(x.float(), recon.float(), (out["mu"].float(), out["logvar"].float()),
                                              (out["mu_p"].float(), out["logvar_p"].float()), logits, aux)
        ctx.cache["recon"] = recon.detach()
        return {"loss": terms.pop("total"), **terms}

    def discriminator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = self._input(batch, ctx)
        c = self.condition(batch, x.device)
        fake = ctx.cache.get("recon")
        if fake is None:  # the generator phase did not run this step
            with torch.no_grad():
                vae = bare_module(ctx.models["vae"])
                fake = vae.decode(vae.encode(x, c)[0], c)
        real_aug, fake_aug = self._augment(x, ctx, 3), self._augment(fake.to(x.dtype), ctx, 4)
        logits = ctx.models["disc"](torch.cat([real_aug, fake_aug], dim=0), torch.cat([c, c], dim=0))
        real_logits, fake_logits = logits.chunk(2, dim=0)
        terms = self.criterion.discriminator_loss(real_logits.float(), fake_logits.float())
        return {"loss": terms.pop("total"), **terms}

    def mean_reconstruction(self, vae: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Any]:
        x = batch["image"]
        c = self.condition(batch, x.device)
        mu, logvar = vae.encode(x, c)
        return x, vae.decode(mu, c), (mu, logvar)

    # ------------------------------------------------------------------ export
    def cube_affine(self) -> list[list[float]]:
        """World affine of the cube grid (the store's grid fitted to the cube)."""
        store = self.info.store
        shape = ClinicalVolumeDataset(store, None, self.model_config.image_size).store_shape
        return cube_affine(store_affine(store), shape, self.model_config.image_size).tolist()

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        c: ClinicalConfig = self.config
        sidecar = {"recipe": "clinical", "clinical_stats": self.normalizer.to_dict(),
                   "image_size": self.model_config.image_size, "affine": self.cube_affine(),
                   "store": str(Path(self.info.store).resolve()), "perceptual": self.perceptual_mode,
                   "aux_run": None if c.aux_run is None else str(Path(c.aux_run).resolve()),
                   "conditioning": self.model_config.conditioning,
                   "cls_reg_losses": self.aux is not None}
        return [ExportSpec("vaegan", "vae", self.vae_factory, self.vae_kwargs(), sidecar=sidecar)]
