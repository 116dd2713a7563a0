"""KL divergence of a diagonal Gaussian posterior from N(0, I) (seed 003 §2.5.1, seed 000 eq. 1).

    KL(q(z|v) || N(0, I)) = 1/2 * sum_k (mu_k^2 + sigma_k^2 - log sigma_k^2 - 1)

Reduction: the sum runs over all latent elements of a sample (channels and voxels, as in 003),
then the per-sample values are averaged over the batch. Computed in float32 (float64 stays).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["gaussian_kl", "kl_loss", "posterior_parameters"]


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL (B,) of N(mean, exp(logvar)) from N(0, I), summed over every non-batch element."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
    ct = torch.promote_types(mean.dtype, torch.float32)
    mu, lv = mean.to(ct), logvar.to(ct)
    return 0.5 * (mu.square() + lv.exp() - lv - 1.0).flatten(1).sum(1)


def posterior_parameters(posterior: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of a posterior object (``.mean``/``.logvar``) or a (mean, logvar) pair."""
    if isinstance(posterior, (tuple, list)) and len(posterior) == 2:
        return posterior[0], posterior[1]
    mean, logvar = getattr(posterior, "mean", None), getattr(posterior, "logvar", None)
    if isinstance(mean, torch.Tensor) and isinstance(logvar, torch.Tensor):
        return mean, logvar
    raise TypeError(f"expected a posterior with .mean/.logvar or a (mean, logvar) pair, got {type(posterior).__name__}")


def kl_loss(posterior: Any, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of :func:`gaussian_kl`; pass a posterior, a (mean, logvar) pair, or mean and logvar."""
    mean, lv = (posterior, logvar) if logvar is not None else posterior_parameters(posterior)
    return gaussian_kl(mean, lv).mean()
