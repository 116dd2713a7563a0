"""Evaluation: the metrics of the seeds, computed the way each seed did, with tables and figures.

* Reconstruction (seed 003 §2.5.7; Tables 3, 8-11): paired PSNR / SSIM / MS-SSIM / LPIPS / MSE,
  tri-planar 2D SSIM and LPIPS (seed 002 §3) - :func:`evaluate_recon`, ``bsynth eval recon``.
* Synthesis (seed 003 §2.5.7; Tables 4, 12-15): FID and MMD on pooled MedicalNet features of
  z-scored volumes, MS-SSIM diversity over random generated pairs, per modality / class / pooled;
  InceptionV3 2D-slice FID (seeds 000, 001) - :func:`evaluate_synth`, ``bsynth eval synth``.

Submodules import torch/MONAI; names load on first use so ``bsynth --help`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "frechet_distance": ".fid", "fid_from_features": ".fid", "feature_stats": ".fid", "RunningStats": ".fid",
    "mmd": ".mmd", "mmd2_unbiased": ".mmd", "median_heuristic": ".mmd", "MMDResult": ".mmd",
    "DEFAULT_SIGMA_RATIOS": ".mmd",
    "ssim": ".ssim", "ms_ssim": ".ssim", "ms_ssim_settings": ".ssim", "ssim_settings": ".ssim",
    "pairwise_ms_ssim": ".ssim", "triplanar_ssim": ".ssim",
    "psnr": ".paired", "mse": ".paired", "paired_metrics": ".paired",
    "triplanar_slices": "..slicing", "slice_indices": "..slicing",
    "load_lpips": "..nn.lpips", "triplanar_lpips": ".lpips_slices",
    "MedicalNetExtractor": ".features_medicalnet", "load_medicalnet": ".features_medicalnet",
    "extract_medicalnet_features": ".features_medicalnet", "zscore_volume": ".features_medicalnet",
    "InceptionExtractor": ".features_inception", "load_inception": ".features_inception",
    "extract_inception_features": ".features_inception",
    "WeightsError": "..weights", "WeightsInfo": "..weights",
    "VolumeSet": ".io", "open_volume_set": ".io",
    "evaluate_recon": ".protocols", "evaluate_synth": ".protocols", "ReconConfig": ".protocols",
    "SynthConfig": ".protocols",
    "reference_compressor": ".compressors", "reconstructor_from_module": ".compressors",
    "write_report": ".report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
