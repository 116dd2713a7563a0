"""Stage ``clinical-aux``: seed 002's two auxiliary 3D ResNet-18 heads (§2.4, §2.5), trained on real volumes
before the VAE-GAN and frozen during it.

* Data: :class:`~.data.ClinicalVolumeDataset` (clinical T1w volumes fitted to the model's cube), MONAI
  augmentation (``augment``).
* Models: :class:`~bsynth_hpc.models.clinical.aux_heads.ClinicalAuxHeads`: an AD/CN classifier (two
  logits, cross-entropy against the label bit) and a regressor of the six ROI ratios (MSE against their
  z-scores under the training split's statistics), depth-wise separable 3D ResNet-18 each (widths from
  ``preset`` / ``model``).
* Optimisation: Adam β (0.5, 0.999) at ``lr`` (002 gives 1e-4 for the VAE-GAN and none for the heads);
  clipping 5.0 and batch 8 are ``engine:`` settings (002 §2.5).
* Validation: per-volume ``loss`` (CE + MSE, selects the best checkpoint), ``accuracy`` and ``roi_mse``.
* Export ``aux``: factory + kwargs, ``clinical_stats`` (the regressor's units) and the cube side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...configtools import require
from ...engine.export import load_exported
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...errors import ConfigError
from ...models.clinical.aux_heads import ClinicalAuxHeads
from ...models.clinical.init import xavier_init
from .common import ClinicalModelSection, augment_batch
from .data import LABEL_INDEX, ClinicalNormalizer, ClinicalVolumeDataset
from .factories import AUX_FACTORY

__all__ = ["ClinicalAuxConfig", "ClinicalAuxStage", "load_aux_heads", "head_outputs"]


@dataclass
class ClinicalAuxConfig(ClinicalModelSection):
    """``recipe:`` section of clinical-aux."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    cls_weight: float = 1.0
    reg_weight: float = 1.0

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.lr > 0, f"{where}.lr must be > 0")
        require(self.cls_weight >= 0 and self.reg_weight >= 0 and self.cls_weight + self.reg_weight > 0,
                f"{where}.cls_weight and reg_weight must be >= 0, not both 0")


def head_outputs(heads: nn.Module, x: torch.Tensor, c_aux: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-volume ``ce``, ``sq_err`` (mean over the six ROIs), ``correct`` and the raw ``logits`` / ``rois`` of the
    heads on ``x`` against ``c_aux`` (ROI z-scores in the heads' units + label bit)."""
    logits, rois = heads(x)
    label = (c_aux[:, LABEL_INDEX] > 0.5).long()
    return {"ce": F.cross_entropy(logits.float(), label, reduction="none"),
            "sq_err": (rois.float() - c_aux[:, :LABEL_INDEX].float()).square().mean(dim=1),
            "correct": (logits.argmax(dim=1) == label).float(), "logits": logits, "rois": rois}


class ClinicalAuxStage(Stage):
    """clinical-aux: see the module docstring."""

    name = "clinical-aux"
    config_class = ClinicalAuxConfig
    val_metric = "loss"
    val_mode = "min"

    def __init__(self, config: ClinicalAuxConfig, info: Any):
        super().__init__(config, info)
        self.model_config = config.model_config()
        self.normalizer = ClinicalNormalizer.fit(self.dataset(info.data.train_split).vectors)

    def dataset(self, split: str | None) -> Dataset:
        if not self.info.store:
            raise ConfigError(f"stage {self.name} reads volumes: pass --store STORE.zarr")
        return ClinicalVolumeDataset(self.info.store, split, self.model_config.image_size)

    def model_kwargs(self) -> dict[str, Any]:
        m = self.model_config
        return {"widths": list(m.aux_widths), "blocks": list(m.aux_blocks), "in_channels": m.in_channels}

    def build_models(self) -> dict[str, nn.Module]:
        return {"aux": xavier_init(ClinicalAuxHeads(**self.model_kwargs()))}

    def phases(self) -> list[Phase]:
        return [Phase("heads", "aux", OptimSpec("adam", lr=self.config.lr, betas=self.config.betas))]

    def _terms(self, batch: Batch, ctx: StepContext, augment: bool) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if augment and self.config.augment:
            x = augment_batch(x, ctx)
        c_aux = self.normalizer.normalize(batch["clinical"].to(x.device).float())
        return head_outputs(ctx.models["aux"], x, c_aux)

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        t = self._terms(batch, ctx, augment=True)
        cls, reg = t["ce"].mean(), t["sq_err"].mean()
        return {"loss": self.config.cls_weight * cls + self.config.reg_weight * reg, "cls": cls.detach(),
                "reg": reg.detach(), "accuracy": t["correct"].mean().detach()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        t = self._terms(batch, ctx, augment=False)
        return {"loss": self.config.cls_weight * t["ce"] + self.config.reg_weight * t["sq_err"],
                "accuracy": t["correct"], "roi_mse": t["sq_err"]}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        return [ExportSpec("aux", "aux", AUX_FACTORY, self.model_kwargs(), use_ema=False,
                           sidecar={"recipe": "clinical", "clinical_stats": self.normalizer.to_dict(),
                                    "image_size": self.model_config.image_size})]


def load_aux_heads(run: str, device: torch.device | str = "cpu") -> tuple[ClinicalAuxHeads, ClinicalNormalizer, int]:
    """The frozen heads of a clinical-aux run, their ROI normalisation and cube side."""
    heads, meta = load_exported(run, "aux", device)
    stats = meta.get("clinical_stats")
    if not stats or "image_size" not in meta:
        raise ConfigError(f"{run}/export/aux.json lacks clinical_stats/image_size: not a clinical-aux export")
    return heads.freeze(), ClinicalNormalizer.from_dict(stats), int(meta["image_size"])
