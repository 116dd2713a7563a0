"""SSIM and MS-SSIM (MONAI's implementations), fitted to the volume size, and the MS-SSIM
diversity of generated samples.

* 3D SSIM / MS-SSIM between a volume and its reconstruction (seed 003 §2.5.7, "Autoencoder
  reconstruction fidelity"; Tables 3, 8-11), Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03,
  data range 1 (stored intensities lie in [0, 1]).
* MS-SSIM_ff = 1/K sum_k MS-SSIM(v^(a_k), v^(b_k)), a_k != b_k, over K random pairs of generated
  volumes of one modality or conditioning bin (seed 003 §2.5.7, "Diffusion sample diversity";
  Tables 4, 12-15): lower means more diverse.
* 2D SSIM averaged over tri-planar slices (seed 002 §3).

MONAI computes SSIM with a valid (unpadded) window and MS-SSIM over len(weights) dyadic scales,
requiring size // (len(weights) - 1)^2 > window - 1 on every axis. The standard setting (window
11, the five weights of Wang et al. 2003) needs axes of at least 176 voxels, so
:func:`ms_ssim_settings` keeps it where it fits and otherwise shrinks the window (isotropic,
odd, >= 3) and then drops the coarsest scales (remaining weights renormalised). The resolved
setting is recorded with every result.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

from ..errors import InputError
from ..slicing import DEFAULT_PER_PLANE, triplanar_slices

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
DEFAULT_WINDOW = 11
KERNEL_SIGMA = 1.5


@dataclass(frozen=True)
class SsimSettings:
    """Window and scale weights of one (MS-)SSIM computation."""

    kernel_size: int
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS
    kernel_sigma: float = KERNEL_SIGMA
    data_range: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def ssim_settings(shape: Sequence[int], window: int = DEFAULT_WINDOW, data_range: float = 1.0) -> SsimSettings:
    """Single-scale SSIM: the window shrinks (odd, >= 3) to the smallest axis when that is shorter."""
    k = min(window, min(int(s) for s in shape))
    k -= 1 - k % 2
    if k < 3:
        raise InputError(f"SSIM needs every axis to be at least 3 voxels long, got shape {tuple(shape)}")
    return SsimSettings(kernel_size=k, weights=(1.0,), data_range=data_range)


def ms_ssim_settings(shape: Sequence[int], window: int = DEFAULT_WINDOW, weights: Sequence[float] = MS_SSIM_WEIGHTS,
                     data_range: float = 1.0) -> SsimSettings:
    """The largest MS-SSIM setting MONAI accepts for this shape (see the module docstring)."""
    for n in range(len(weights), 0, -1):
        div = max(1, n - 1) ** 2
        k = min(window, min(int(s) // div for s in shape))
        k -= 1 - k % 2
        if k >= 3:
            w = tuple(float(v) for v in weights[:n])
            if n < len(weights):
                total = sum(w)
                w = tuple(v / total for v in w)
            return SsimSettings(kernel_size=k, weights=w, data_range=data_range)
    raise InputError(f"MS-SSIM needs every axis to be at least 3 voxels long, got shape {tuple(shape)}")


def _as_batch(x: np.ndarray | torch.Tensor, spatial_dims: int, device: torch.device | str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32, device=device)
    while t.ndim < spatial_dims + 2:
        t = t.unsqueeze(0)
    return t


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, settings: SsimSettings | None = None,
         device: torch.device | str = "cpu") -> float:
    """SSIM between two images/volumes of one shape (2D or 3D), MONAI ``SSIMMetric``."""
    shape = tuple(a.shape)
    dims = len(shape)
    s = settings or ssim_settings(shape)
    metric = SSIMMetric(spatial_dims=dims, data_range=s.data_range, win_size=s.kernel_size,
                        kernel_sigma=s.kernel_sigma, reduction="none")
    return float(metric(_as_batch(a, dims, device), _as_batch(b, dims, device)).mean())


def ms_ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, settings: SsimSettings | None = None,
            device: torch.device | str = "cpu") -> float:
    """MS-SSIM between two images/volumes of one shape, MONAI ``MultiScaleSSIMMetric``."""
    shape = tuple(a.shape)
    s = settings or ms_ssim_settings(shape)
    metric = MultiScaleSSIMMetric(spatial_dims=len(shape), data_range=s.data_range, kernel_size=s.kernel_size,
                                  kernel_sigma=s.kernel_sigma, weights=s.weights, reduction="none")
    return float(metric(_as_batch(a, len(shape), device), _as_batch(b, len(shape), device)).mean())


def triplanar_ssim(a: np.ndarray, b: np.ndarray, per_plane: int = DEFAULT_PER_PLANE,
                   device: torch.device | str = "cpu") -> float:
    """Mean 2D SSIM over tri-planar slice pairs (seed 002 §3: 32 per plane, 96 per volume)."""
    sa, sb = triplanar_slices(a, per_plane), triplanar_slices(b, per_plane)
    values = []
    for plane in sa:
        x, y = sa[plane], sb[plane]
        s = ssim_settings(x.shape[1:])
        metric = SSIMMetric(spatial_dims=2, data_range=s.data_range, win_size=s.kernel_size,
                            kernel_sigma=s.kernel_sigma, reduction="none")
        values.append(metric(_as_batch(x[:, None], 2, device), _as_batch(y[:, None], 2, device)).flatten())
    return float(torch.cat(values).mean())


def sample_pairs(n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``k`` distinct unordered pairs (a < b) drawn uniformly from range(n); all pairs when k >= n(n-1)/2."""
    total = n * (n - 1) // 2
    if total == 0:
        return []
    rows, cols = np.triu_indices(n, k=1)
    pick = np.arange(total) if k >= total else np.sort(rng.choice(total, size=k, replace=False))
    return [(int(rows[i]), int(cols[i])) for i in pick]


@dataclass(frozen=True)
class PairDiversity:
    """MS-SSIM_ff over generated pairs (seed 003 §2.5.7), with what produced it."""

    mean: float
    std: float
    n_pairs: int
    n_volumes: int
    settings: SsimSettings | None

    def as_dict(self) -> dict:
        return {"value": self.mean, "std": self.std, "n_pairs": self.n_pairs, "n_volumes": self.n_volumes,
                "settings": self.settings.as_dict() if self.settings else None}


def pairwise_ms_ssim(load: Callable[[int], np.ndarray], n: int, k: int, seed: int,
                     device: torch.device | str = "cpu", cache_size: int = 8) -> PairDiversity:
    """MS-SSIM_ff = mean MS-SSIM over ``k`` random pairs a != b of ``n`` volumes read by ``load(i)``.

    Volumes are loaded lazily (a small LRU cache; pairs are visited in index order), so a large
    generated set never has to fit in memory.
    """
    pairs = sample_pairs(n, k, np.random.default_rng(seed))
    if not pairs:
        return PairDiversity(mean=math.nan, std=math.nan, n_pairs=0, n_volumes=n, settings=None)
    cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(i: int) -> np.ndarray:
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        cache[i] = np.asarray(load(i), dtype=np.float32)
        if len(cache) > cache_size:
            cache.popitem(last=False)
        return cache[i]

    settings = ms_ssim_settings(get(pairs[0][0]).shape)
    values = np.array([ms_ssim(get(a), get(b), settings, device) for a, b in pairs])
    return PairDiversity(mean=float(values.mean()), std=float(values.std()), n_pairs=len(pairs), n_volumes=n,
                         settings=settings)
