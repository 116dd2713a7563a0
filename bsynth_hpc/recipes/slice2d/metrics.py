"""Weight-free measures of the slice evaluation (seed 001 §IV): paired SSIM/PSNR, nearest-real SSIM/PSNR of
generated slices, radially averaged power spectra (001 Fig. 7), pairwise-distance diversity and latent channel
statistics (001 Fig. 6). Slices are float arrays (H, W) in [0, 1]."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...eval.ssim import ssim_settings
from .ranges import slice_ssim

__all__ = ["paired_ssim_psnr", "nearest_real", "radial_power_spectrum", "spectrum_distance", "pairwise_diversity",
           "channel_statistics", "summary"]


def _batch(slices: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack([np.asarray(s, dtype=np.float32) for s in slices]))[:, None]


def paired_ssim_psnr(real: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (SSIM, PSNR in dB, data range 1) of two equally long slice lists."""
    a, b = _batch(real), _batch(other)
    ssim = slice_ssim(a, b, ssim_settings(a.shape[2:])).double().numpy()
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return ssim, (10.0 * torch.log10(1.0 / mse)).numpy()


def nearest_real(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], chunk: int = 64
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each generated slice the real slice of highest SSIM: (SSIM, PSNR of that pair, its index)."""
    reals = _batch(real)
    settings = ssim_settings(reals.shape[2:])
    best_s, best_i = [], []
    for g in generated:
        q = _batch([g])
        scores = torch.cat([slice_ssim(q.expand_as(reals[k:k + chunk]), reals[k:k + chunk], settings)
                            for k in range(0, len(reals), chunk)])
        j = int(torch.argmax(scores))
        best_s.append(float(scores[j]))
        best_i.append(j)
    idx = np.asarray(best_i, dtype=np.int64)
    _, psnr = paired_ssim_psnr([real[i] for i in idx], generated)
    return np.asarray(best_s), psnr, idx


def radial_power_spectrum(slices: Sequence[np.ndarray]) -> np.ndarray:
    """Mean radially averaged power |FFT|^2 over the slices (mean removed), one value per integer frequency
    radius 0 .. min(H, W) // 2."""
    x = np.stack([np.asarray(s, dtype=np.float64) for s in slices])
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(1, 2))) ** 2).mean(axis=0) / x[0].size
    h, w = power.shape
    yy, xx = np.indices((h, w))
    r = np.hypot(yy - h // 2, xx - w // 2).round().astype(np.int64)
    n = min(h, w) // 2 + 1
    keep = r < n
    sums = np.bincount(r[keep], weights=power[keep], minlength=n)
    counts = np.bincount(r[keep], minlength=n)
    return sums / np.maximum(counts, 1)


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |log10 a - log10 b| over the non-zero frequencies (0 = identical spectra)."""
    la, lb = np.log10(np.maximum(a[1:], 1e-12)), np.log10(np.maximum(b[1:], 1e-12))
    return float(np.mean(np.abs(la - lb)))


def pairwise_diversity(slices: Sequence[np.ndarray], max_pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean pairwise RMS distance and mean 1 - SSIM over (up to ``max_pairs`` random) distinct pairs."""
    n = len(slices)
    if n < 2:
        return {"pairs": 0, "rms_distance": float("nan"), "one_minus_ssim": float("nan")}
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[k] for k in pick]
    a, b = [slices[i] for i, _ in pairs], [slices[j] for _, j in pairs]
    ssim, _ = paired_ssim_psnr(a, b)
    rms = np.sqrt(((_batch(a).double() - _batch(b).double()) ** 2).flatten(1).mean(1).numpy())
    return {"pairs": len(pairs), "rms_distance": float(rms.mean()), "one_minus_ssim": float(1.0 - ssim.mean())}


def channel_statistics(latents: np.ndarray) -> dict[str, list[float]]:
    """Per latent channel of (N, C, H, W) latents: mean, std, and the mean of per-slice stds."""
    z = np.asarray(latents, dtype=np.float64)
    return {"mean": z.mean(axis=(0, 2, 3)).tolist(), "std": z.std(axis=(0, 2, 3)).tolist(),
            "within_slice_std": z.std(axis=(2, 3)).mean(axis=0).tolist()}


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std, median of finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}
