"""KL divergence of a diagonal Gaussian posterior from N(0, I) (seed 003 §2.5.1, seed 000 eq. 1), and
from a learned diagonal Gaussian prior (seed 002 §2.4: KL(q(z|x,c) || p(z|c))).

    KL(q(z|v) || N(0, I)) = 1/2 * sum_k (mu_k^2 + sigma_k^2 - log sigma_k^2 - 1)
    KL(q || p)            = 1/2 * sum_k (log s_k^2 - log sigma_k^2 + (sigma_k^2 + (mu_k - m_k)^2) / s_k^2 - 1)

for q = N(mu, diag(sigma^2)) and p = N(m, diag(s^2)); the second is the first when m = 0, s = 1.

Reduction: the sum runs over all latent elements of a sample (channels and voxels, as in 003),
then the per-sample values are averaged over the batch. Computed in float32 (float64 stays).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["gaussian_kl", "gaussian_kl_between", "kl_loss", "posterior_parameters"]


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL (B,) of N(mean, exp(logvar)) from N(0, I), summed over every non-batch element."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
    ct = torch.promote_types(mean.dtype, torch.float32)
    mu, lv = mean.to(ct), logvar.to(ct)
    return 0.5 * (mu.square() + lv.exp() - lv - 1.0).flatten(1).sum(1)


def gaussian_kl_between(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor,
                        logvar_p: torch.Tensor) -> torch.Tensor:
    """Per-sample KL (B,) of N(mean_q, exp(logvar_q)) from N(mean_p, exp(logvar_p)), closed form, summed
    over every non-batch element (the prior's parameters broadcast against the posterior's)."""
    if mean_q.shape != logvar_q.shape:
        raise ValueError(f"mean {tuple(mean_q.shape)} and logvar {tuple(logvar_q.shape)} differ in shape")
    ct = torch.promote_types(mean_q.dtype, torch.float32)
    mq, lq = mean_q.to(ct), logvar_q.to(ct)
    mp, lp = torch.broadcast_tensors(mean_p.to(ct), logvar_p.to(ct), mq)[:2]
    return 0.5 * (lp - lq + (lq.exp() + (mq - mp).square()) * torch.exp(-lp) - 1.0).flatten(1).sum(1)


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
