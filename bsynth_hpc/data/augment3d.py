"""Conventional 3D augmentation of training volumes (seed 002 §2.4 "Differentiable Augmentation", part (i):
"Each training volume was randomly blurred, noised, or gamma adjusted with fixed probabilities").

The three MONAI transforms in that order, each applied with its own fixed probability: RandGaussianSmooth
(blur), RandGaussianNoise (additive noise) and RandAdjustContrast (gamma, which keeps the intensity
range). 002 gives no probabilities or strengths; the defaults below are MONAI-typical for [0, 1]
volumes. The differentiable augmentation of the adversarial updates (part (ii)) is
:class:`bsynth_hpc.losses.diffaugment.DiffAugment3d`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.transforms import Compose, RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth

__all__ = ["ConventionalAugmentConfig", "ConventionalAugment3d"]


@dataclass(frozen=True)
class ConventionalAugmentConfig:
    """Probabilities and strengths of the three transforms."""

    prob_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    prob_noise: float = 0.2
    noise_std: float = 0.02
    prob_gamma: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.5)

    def validate(self) -> None:
        for name in ("prob_blur", "prob_noise", "prob_gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augmentation {name}={getattr(self, name)} must lie in [0, 1]")
        if self.noise_std < 0 or min(self.blur_sigma) <= 0 or min(self.gamma) <= 0:
            raise ValueError("augmentation noise_std must be >= 0, blur_sigma and gamma > 0")


class ConventionalAugment3d:
    """Blur / noise / gamma on channel-first volumes (C, X, Y, Z), or a batch (B, C, X, Y, Z) sample by sample."""

    def __init__(self, config: ConventionalAugmentConfig | None = None, seed: int | None = None) -> None:
        cfg = config or ConventionalAugmentConfig()
        cfg.validate()
        self.config = cfg
        sx = sy = sz = cfg.blur_sigma
        self.transform = Compose([
            RandGaussianSmooth(sigma_x=sx, sigma_y=sy, sigma_z=sz, prob=cfg.prob_blur),
            RandGaussianNoise(prob=cfg.prob_noise, mean=0.0, std=cfg.noise_std),
            RandAdjustContrast(prob=cfg.prob_gamma, gamma=cfg.gamma),
        ])
        if seed is not None:
            self.transform.set_random_state(seed=seed)

    def reseed(self, seed: int) -> None:
        """Restart the transforms' random stream (e.g. from a per-sample seed, so ranks do not matter)."""
        self.transform.set_random_state(seed=seed)

    def _one(self, volume: torch.Tensor) -> torch.Tensor:
        out = self.transform(volume)
        out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)  # MetaTensor -> Tensor
        return out.to(volume.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (C, X, Y, Z) or (B, C, X, Y, Z) -> the augmented volume(s), same shape, dtype and device."""
        if x.dim() == 4:
            return self._one(x)
        if x.dim() == 5:
            return torch.stack([self._one(v) for v in x])
        raise ValueError(f"ConventionalAugment3d needs (C, X, Y, Z) or (B, C, X, Y, Z), got {tuple(x.shape)}")
