"""Intensity ranges and 2D SSIM of the slice recipe: slice stores hold images in a value range
([-1, 1] by default, ``bsynth prep --slices-from --value-range``); metrics, PNGs and the fidelity
command use [0, 1]."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from monai.metrics import SSIMMetric

from ...data.store import VolumeStore
from ...eval.ssim import SsimSettings

__all__ = ["store_value_range", "to_unit", "slice_ssim", "DEFAULT_RANGE"]

DEFAULT_RANGE: tuple[float, float] = (-1.0, 1.0)


def store_value_range(store: str | os.PathLike[str]) -> tuple[float, float]:
    """The value range a slice store's images lie in (its preprocessing record; default [-1, 1])."""
    prep = VolumeStore(store).info.get("preprocessing") or {}
    lo, hi = prep.get("value_range") or DEFAULT_RANGE
    return float(lo), float(hi)


def to_unit(x: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    """``x`` mapped linearly from ``value_range`` to [0, 1] (not clamped)."""
    lo, hi = float(value_range[0]), float(value_range[1])
    return (x - lo) / (hi - lo)


def slice_ssim(a: torch.Tensor, b: torch.Tensor, settings: SsimSettings) -> torch.Tensor:
    """(B,) 2D SSIM of (B, 1, H, W) slices in [0, 1] (MONAI, the evaluation's window settings)."""
    metric = SSIMMetric(spatial_dims=2, data_range=settings.data_range, win_size=settings.kernel_size,
                        kernel_sigma=settings.kernel_sigma, reduction="none")
    return metric(a.float(), b.float()).reshape(-1)
