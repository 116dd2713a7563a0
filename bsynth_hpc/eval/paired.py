"""Paired reconstruction metrics of one volume and its reconstruction (seed 003 §2.5.7,
"Autoencoder reconstruction fidelity"; Tables 3 and 8-11).

PSNR, SSIM, MS-SSIM, LPIPS and MSE "in the preprocessed image space": stored intensities lie in
[0, 1], so the data range / peak value is 1. PSNR and MSE use MONAI's ``PSNRMetric`` and
``MSEMetric`` (PSNR = 20 log10(MAX) - 10 log10(MSE)); (MS-)SSIM comes from :mod:`.ssim`, LPIPS
from :mod:`.lpips_slices`. A perfect reconstruction has MSE 0 and PSNR +inf.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from monai.metrics import MSEMetric, PSNRMetric

from .ssim import SsimSettings, ms_ssim, ssim, triplanar_ssim

DATA_RANGE = 1.0


def _pair(a: np.ndarray, b: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"paired metrics need volumes of one shape, got {np.shape(a)} and {np.shape(b)}")
    ta = torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device)[None, None]
    tb = torch.as_tensor(np.asarray(b), dtype=torch.float64, device=device)[None, None]
    return ta, tb


def mse(real: np.ndarray, recon: np.ndarray, device: torch.device | str = "cpu") -> float:
    """Mean squared error over all voxels (float64), MONAI ``MSEMetric``."""
    a, b = _pair(real, recon, device)
    return float(MSEMetric(reduction="none")(b, a).item())


def psnr(real: np.ndarray, recon: np.ndarray, data_range: float = DATA_RANGE,
         device: torch.device | str = "cpu") -> float:
    """PSNR in dB with peak ``data_range`` (float64), MONAI ``PSNRMetric``; +inf for identical volumes."""
    a, b = _pair(real, recon, device)
    if float(torch.max(torch.abs(a - b))) == 0.0:
        return math.inf
    return float(PSNRMetric(max_val=data_range, reduction="none")(b, a).item())


def paired_metrics(real: np.ndarray, recon: np.ndarray, *, ssim_settings: SsimSettings | None = None,
                   ms_ssim_settings: SsimSettings | None = None, per_plane: int = 32,
                   lpips_fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """PSNR, SSIM (3D), MS-SSIM (3D), MSE, tri-planar 2D SSIM (seed 002) and, with ``lpips_fn``,
    tri-planar LPIPS of one pair of volumes (X, Y, Z)."""
    real = np.asarray(real, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    out = {
        "psnr": psnr(real, recon, device=device),
        "ssim": ssim(real, recon, ssim_settings, device),
        "ms_ssim": ms_ssim(real, recon, ms_ssim_settings, device),
        "mse": mse(real, recon, device),
        "ssim_triplanar": triplanar_ssim(real, recon, per_plane, device),
    }
    if lpips_fn is not None:
        out["lpips"] = float(lpips_fn(real, recon))
    return out
