"""What the clinical stages share: the model sizes of a ``recipe:`` section, the MONAI augmentation of training
volumes and the per-batch random generators (seeded by the engine's per-sample seeds, so draws do not depend on
the launch layout and replay exactly on resume)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from ...configtools import Overrides
from ...data.augment3d import ConventionalAugment3d
from ...engine.stage import StepContext
from ...errors import ConfigError
from ...models.clinical.config import ClinicalModelConfig, clinical_preset

__all__ = ["ClinicalModelSection", "batch_generator", "batch_seed", "sample_seed", "per_sample", "augment_batch"]


@dataclass
class ClinicalModelSection:
    """``recipe.preset`` (full: 002's 128^3 sizes; tiny: 32^3) + ``recipe.model`` overrides of its fields."""

    preset: Literal["full", "tiny"] = "full"
    model: Overrides[ClinicalModelConfig] = field(default_factory=Overrides)
    augment: bool = True
    """MONAI blur / noise / gamma on the training volumes (002 §2.4 (i))."""

    def model_config(self) -> ClinicalModelConfig:
        return clinical_preset(self.preset, **dict(self.model))

    def validate(self, where: str) -> None:
        try:
            self.model_config().validate(f"{where}.model")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.model: {exc}") from exc


def batch_seed(ctx: StepContext, salt: int) -> int:
    """One integer from the batch's sample seeds, the step and ``salt``."""
    seed = int((ctx.sample_seeds.detach().cpu().long() * 1000003).sum().item()) % (2 ** 61)
    return (seed + 7919 * ctx.step + 104729 * salt) % (2 ** 62)


def sample_seed(ctx: StepContext, index: int, salt: int) -> int:
    """One integer from sample ``index``'s own seed and ``salt`` (the same on any launch layout)."""
    return (int(ctx.sample_seeds[index].item()) * 1000003 + 104729 * salt) % (2 ** 62)


def batch_generator(ctx: StepContext, device: torch.device, salt: int) -> torch.Generator:
    """A torch generator on ``device`` seeded by :func:`batch_seed` (draws that depend on the local batch)."""
    return torch.Generator(device=device).manual_seed(batch_seed(ctx, salt))


def per_sample(fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], x: torch.Tensor, ctx: StepContext,
               salt: int) -> torch.Tensor:
    """``fn(x[i:i+1], generator_i)`` for every sample, each generator seeded by that sample's seed: random
    transforms that do not depend on how the global batch is split over ranks."""
    return torch.cat([fn(x[i:i + 1], torch.Generator(device=x.device).manual_seed(sample_seed(ctx, i, salt)))
                      for i in range(x.shape[0])], dim=0)


_AUGMENT: ConventionalAugment3d | None = None


def augment_batch(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The conventional augmentation of a training batch, sample by sample from each sample's seed."""
    global _AUGMENT
    if _AUGMENT is None:
        _AUGMENT = ConventionalAugment3d()
    aug = _AUGMENT
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            aug.reseed(sample_seed(ctx, i, 11) % (2 ** 32))
            out.append(aug(x[i].float()).to(x.dtype))
    return torch.stack(out)
