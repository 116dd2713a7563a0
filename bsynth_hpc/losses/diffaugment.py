"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for 3D volumes (seed 002 §2.4 "Differentiable
Augmentation": "differentiable brightness, contrast, and 3-D translations to both real and generated samples
during each adversarial update").

Zhao et al.'s colour/translation transforms carried to (B, C, X, Y, Z), one parameter set per sample, the
same for every channel of that sample:

* brightness: x + (u - 0.5),                                      u ~ U[0, 1)
* contrast:   (x - mean(x)) * (u + 0.5) + mean(x),                mean over channels and voxels of the sample
* translation: an integer shift of up to ``ratio`` * size voxels along each axis, zero fill (Zhao's ratio 1/8)

Every transform is a differentiable function of x (translation moves values, so the gradient is the
reverse shift), so the generator receives gradient through D(T(G(z))). :meth:`DiffAugment3d.draw` returns
the parameters and :meth:`DiffAugment3d.apply` uses given ones, so one draw can be applied to several
tensors consistently (e.g. a volume and a mask); ``__call__`` draws and applies (a new draw per call, as
Zhao applies independent draws to the real and the fake batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["DIFFAUGMENT_POLICIES", "DiffAugmentParams", "DiffAugment3d", "translate3d"]

DIFFAUGMENT_POLICIES: tuple[str, ...] = ("brightness", "contrast", "translation")


@dataclass(frozen=True)
class DiffAugmentParams:
    """One draw: per-sample brightness offset (B,), contrast factor (B,), integer shift (B, 3); None = off."""

    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    shift: torch.Tensor | None


def translate3d(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x (B, C, X, Y, Z) moved by the integer voxel offsets ``shift`` (B, 3), out-of-volume voxels zero:
    out[b, :, i, j, k] = x[b, :, i - s0, j - s1, k - s2]."""
    if x.dim() != 5 or shift.shape != (x.shape[0], 3):
        raise ValueError(f"translate3d needs x (B, C, X, Y, Z) and shift (B, 3), got {tuple(x.shape)}, "
                         f"{tuple(shift.shape)}")
    b = x.shape[0]
    out = x
    for axis in range(3):
        size = x.shape[2 + axis]
        src = torch.arange(size, device=x.device)[None, :] - shift[:, axis].to(x.device)[:, None]  # (B, size)
        valid = (src >= 0) & (src < size)
        view = [b, 1, 1, 1, 1]
        view[2 + axis] = size
        index = src.clamp(0, size - 1).reshape(view).expand(*out.shape[:2 + axis], size, *out.shape[3 + axis:])
        out = torch.gather(out, 2 + axis, index) * valid.reshape(view).to(out.dtype)
    return out


class DiffAugment3d:
    """The differentiable augmentation of real and generated volumes before the discriminator."""

    def __init__(self, policy: Sequence[str] = DIFFAUGMENT_POLICIES, translation_ratio: float = 0.125) -> None:
        unknown = [p for p in policy if p not in DIFFAUGMENT_POLICIES]
        if unknown:
            raise ValueError(f"DiffAugment policy {unknown}: use any of {', '.join(DIFFAUGMENT_POLICIES)}")
        if not 0.0 <= translation_ratio < 0.5:
            raise ValueError(f"translation_ratio={translation_ratio} must lie in [0, 0.5)")
        self.policy = tuple(policy)
        self.translation_ratio = translation_ratio

    def draw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> DiffAugmentParams:
        """Parameters for the batch ``x`` (B, C, X, Y, Z); draws on ``generator``'s device (reproducible)."""
        b = x.shape[0]
        dev = generator.device if generator is not None else x.device

        def uniform() -> torch.Tensor:
            return torch.rand(b, generator=generator, device=dev).to(x.device)

        brightness = uniform() - 0.5 if "brightness" in self.policy else None
        contrast = uniform() + 0.5 if "contrast" in self.policy else None
        shift = None
        if "translation" in self.policy:
            limits = torch.tensor([int(s * self.translation_ratio + 0.5) for s in x.shape[2:]], device=dev)
            u = torch.rand(b, 3, generator=generator, device=dev)
            shift = (torch.floor(u * (2 * limits + 1)) - limits).long().to(x.device)
        return DiffAugmentParams(brightness, contrast, shift)

    def apply(self, x: torch.Tensor, params: DiffAugmentParams) -> torch.Tensor:
        """The transforms of ``params`` applied in Zhao's order (brightness, contrast, translation)."""
        if x.dim() != 5:
            raise ValueError(f"DiffAugment3d needs volumes (B, C, X, Y, Z), got {tuple(x.shape)}")
        per_sample = (-1, 1, 1, 1, 1)
        if params.brightness is not None:
            x = x + params.brightness.to(x.dtype).reshape(per_sample)
        if params.contrast is not None:
            mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
            x = (x - mean) * params.contrast.to(x.dtype).reshape(per_sample) + mean
        if params.shift is not None:
            x = translate3d(x, params.shift)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x, generator))
