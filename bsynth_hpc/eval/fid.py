"""Fréchet distance between Gaussian fits of two feature sets (FID).

Definition (seed 003 §2.5.7; the same formula underlies the InceptionV3 slice FID of seed 000 §4
and seed 001 §III.C and the 3D ResNet-18 FID of seed 002 §3):

    FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2})

with empirical means and (N-1)-normalised covariances. The trace of the matrix square root is
computed from symmetric eigendecompositions in float64,
Tr((S_r S_g)^{1/2}) = sum_i sqrt(lambda_i(S_r^{1/2} S_g S_r^{1/2})), which is exact for PSD
covariances and stays real and stable when they are singular (fewer samples than feature
dimensions, the usual case for 512/2048-d features), where scipy's general ``sqrtm`` of the
non-symmetric product can return complex or NaN values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set, with its size."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def feature_stats(features: np.ndarray) -> GaussianStats:
    """Empirical mean and unbiased covariance of features (N, d), N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got {f.shape[0]}")
    return GaussianStats(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]),
                         n=int(f.shape[0]))


class RunningStats:
    """Streaming mean/covariance of feature vectors (float64 sums), for feature sets too large to
    keep, such as InceptionV3 features of every slice of every volume."""

    def __init__(self, dim: int):
        self.n = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)
        self._shift: np.ndarray | None = None  # first batch mean: keeps the sums well conditioned

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.size == 0:
            return
        if self._shift is None:
            self._shift = f.mean(axis=0)
        c = f - self._shift
        self.n += f.shape[0]
        self._sum += c.sum(axis=0)
        self._outer += c.T @ c

    def stats(self) -> GaussianStats:
        if self.n < 2 or self._shift is None:
            raise ValueError(f"FID needs at least 2 feature vectors per set, got {self.n}")
        mean_c = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        return GaussianStats(mu=self._shift + mean_c, sigma=sigma, n=self.n)


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """FID between two fitted Gaussians."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clipped to 0)."""
    sym = 0.5 * (matrix + matrix.T)
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr((sigma_a sigma_b)^{1/2}) for PSD matrices, via the similar symmetric matrix
    sigma_a^{1/2} sigma_b sigma_a^{1/2}."""
    root_a = _psd_sqrt(np.asarray(sigma_a, dtype=np.float64))
    inner = root_a @ np.asarray(sigma_b, dtype=np.float64) @ root_a
    w = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (seed 003 §2.5.7), clamped at 0
    against round-off."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu_a.shape} vs {mu_b.shape}, sigma {sigma_a.shape} vs "
                         f"{sigma_b.shape}")
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    return max(float(value), 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray, standardize: bool = False) -> float:
    """FID between two feature sets (N_r, d) and (N_g, d).

    ``standardize``: first map both sets by the real features' per-dimension mean and standard deviation, so
    the distance is in units of the real spread. For random (untrained) networks, whose deep features have an
    arbitrary, tiny scale (~1e-7 after a random Inception trunk: FIDs of ~1e-14), this makes values comparable
    across runs; it is not the FID of the literature and the reports say so."""
    if np.asarray(real).shape[1:] != np.asarray(fake).shape[1:]:
        raise ValueError(f"feature dimensions differ: real {np.asarray(real).shape}, fake {np.asarray(fake).shape}")
    if standardize:
        real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
        mean, std = real.mean(0), real.std(0)
        std = np.where(std > 0, std, 1.0)
        real, fake = (real - mean) / std, (fake - mean) / std
    r, g = feature_stats(real), feature_stats(fake)
    return frechet_distance(r.mu, r.sigma, g.mu, g.sigma)
