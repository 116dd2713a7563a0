"""Unbiased MMD^2 with a Gaussian-mixture kernel, reported as sqrt(max(MMD^2, 0)) (seed 003 §2.5.7).

    MMD^2(G, R) = 1/(n_g(n_g-1)) sum_{a!=b} k(g_a, g_b) + 1/(n_r(n_r-1)) sum_{a!=b} k(r_a, r_b)
                  - 2/(n_g n_r) sum_{a,b} k(g_a, r_b)
    k(x, y) = sum_l w_l exp(-||x - y||^2 / (2 sigma_l^2)),  w_l >= 0, sum_l w_l = 1
    MMD = sqrt(max(MMD^2, 0))

Seed 003 leaves the bandwidths and weights to its evaluation package (medmetric); its defaults are
used here: sigma_0 is the median heuristic (median Euclidean distance over distinct pairs of the
pooled sample G u R), the bank is sigma_0 x (1/8, 1/4, 1/2, 1, 2, 4, 8), the weights uniform. All
three are configurable and are recorded with every result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

DEFAULT_SIGMA_RATIOS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_EPS = 1e-12


@dataclass(frozen=True)
class MMDResult:
    """The unbiased MMD^2 estimate, the reported MMD, and the kernel that produced them."""

    mmd2: float
    mmd: float
    sigmas: tuple[float, ...] = field(default=())
    weights: tuple[float, ...] = field(default=())


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (n_x, n_y), float64, clipped at 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.clip(d2, 0.0, None)


def median_heuristic(z: np.ndarray) -> float:
    """Median Euclidean distance over distinct pairs of the rows of z (>= 1e-12)."""
    n = np.asarray(z).shape[0]
    if n < 2:
        return 1.0
    d = np.sqrt(squared_distances(z, z)[np.triu_indices(n, k=1)])
    return max(float(np.median(d)), _EPS)


def gaussian_mixture_kernel(d2: np.ndarray, sigmas: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """k = sum_l w_l exp(-d2 / (2 sigma_l^2)) applied to squared distances."""
    out = np.zeros_like(d2)
    for s, w in zip(sigmas, weights):
        out += w * np.exp(-d2 / (2.0 * max(float(s), _EPS) ** 2))
    return out


def resolve_kernel(x: np.ndarray, y: np.ndarray, sigmas: Sequence[float] | None = None,
                   ratios: Sequence[float] = DEFAULT_SIGMA_RATIOS,
                   weights: Sequence[float] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Bandwidths (explicit, or median heuristic x ratios) and normalised non-negative weights."""
    if sigmas is None:
        if not ratios:
            raise ValueError("MMD needs at least one sigma ratio (or explicit sigmas)")
        sigma0 = median_heuristic(np.concatenate([np.asarray(x), np.asarray(y)], axis=0))
        sig = tuple(sigma0 * float(r) for r in ratios)
    else:
        sig = tuple(float(s) for s in sigmas)
    if not sig or any(s <= 0 for s in sig):
        raise ValueError(f"MMD bandwidths must be positive, got {sig}")
    if weights is None:
        w = np.full(len(sig), 1.0 / len(sig))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sig),):
            raise ValueError(f"{len(w)} MMD kernel weights for {len(sig)} bandwidths: give one weight per sigma")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"MMD kernel weights must be non-negative with a positive sum, got {tuple(w)}")
        w = w / w.sum()
    return sig, tuple(float(v) for v in w)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigmas: Sequence[float], weights: Sequence[float]) -> float:
    """The unbiased estimator of seed 003 §2.5.7 for a given Gaussian-mixture kernel (n_x, n_y >= 2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx = gaussian_mixture_kernel(squared_distances(x, x), sigmas, weights)
    kyy = gaussian_mixture_kernel(squared_distances(y, y), sigmas, weights)
    kxy = gaussian_mixture_kernel(squared_distances(x, y), sigmas, weights)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def mmd(real: np.ndarray, fake: np.ndarray, sigmas: Sequence[float] | None = None,
        ratios: Sequence[float] = DEFAULT_SIGMA_RATIOS, weights: Sequence[float] | None = None) -> MMDResult:
    """MMD between two feature sets as seed 003 reports it: sqrt(max(unbiased MMD^2, 0))."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"MMD needs feature sets (N, d) of one dimension, got {real.shape} and {fake.shape}")
    sig, w = resolve_kernel(real, fake, sigmas, ratios, weights)
    value = mmd2_unbiased(fake, real, sig, w)
    return MMDResult(mmd2=value, mmd=float(np.sqrt(max(value, 0.0))), sigmas=sig, weights=w)
