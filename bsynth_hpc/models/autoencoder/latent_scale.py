"""Latent scale factor s_z = 1 / std of the training-split latents (seed 003 §2.5.3).

The diffusion model trains on z = s_z * z_raw so that its inputs have about unit variance; the
inverse scaling is applied before decoding. The std is the *global* population standard
deviation over every element of every latent (all samples, channels and voxels), computed in one
streaming pass with the numerically stable parallel-variance merge of Chan, Golub & LeVeque
(1979) in float64: each batch contributes its count, mean and sum of squared deviations, so
large means or many batches do not lose precision the way sum/sum-of-squares does.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from ...errors import BsynthError

__all__ = ["RunningMoments", "estimate_latent_scale"]


class RunningMoments:
    """Streaming count / mean / variance of all elements seen (float64, Chan et al. merge)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, values: torch.Tensor | np.ndarray) -> None:
        """Merge every element of ``values`` (any shape, any float dtype, any device)."""
        if isinstance(values, torch.Tensor):
            x = values.detach().to("cpu", torch.float64).reshape(-1)
            n = x.numel()
            if n == 0:
                return
            mean_b = float(x.mean())
            m2_b = float((x - mean_b).square().sum())
        else:
            x = np.asarray(values, dtype=np.float64).reshape(-1)
            n = x.size
            if n == 0:
                return
            mean_b = float(x.mean())
            m2_b = float(np.square(x - mean_b).sum())
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * self.count * n / total
        self.count = total

    @property
    def var(self) -> float:
        """Population variance (ddof = 0), like ``numpy.var``."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count else math.nan


def estimate_latent_scale(latents: Iterable[torch.Tensor | np.ndarray], max_batches: int | None = None) -> float:
    """s_z = 1 / (global std of the latents), streamed over batches (tensors or arrays, any shapes).

    Pass unscaled posterior means of the training split (``Autoencoder3d.encode_latent``). Raises
    BsynthError when no element was seen, the std is zero or a value is not finite.
    """
    moments = RunningMoments()
    for i, batch in enumerate(latents):
        if max_batches is not None and i >= max_batches:
            break
        moments.update(batch)
    if moments.count == 0:
        raise BsynthError("estimate_latent_scale: no latents were given (empty iterable or empty tensors)")
    std = moments.std
    if not math.isfinite(std):
        raise BsynthError("estimate_latent_scale: the latents contain NaN or infinite values; check the encoder")
    if std <= 0.0:
        raise BsynthError("estimate_latent_scale: the latents have zero variance (constant encoder output)")
    return 1.0 / std
