"""Learned conditional prior p(z|c) = N(mu_p(c), sigma_p^2(c)) of seed 002 §2.1/§2.4 (blocks Prior_mu /
Prior_sigma of Fig. 1-A): "a shallow prior network maps c to its own parameters (mu_p, sigma_p)".

c -> :class:`~.embedding.ClinicalMLP` -> two linear heads (mean, log-variance). Training minimises
KL(q(z|x,c) || p(z|c)) in closed form (:func:`bsynth_hpc.losses.kl.gaussian_kl_between`, through
:func:`prior_kl`); sampling (Algorithm 3) draws z = mu_p + sigma_p * eps. The log-variance is clamped to
``logvar_range`` as the project's posteriors are (no overflow of exp at initialisation).
"""
from __future__ import annotations

import torch
from torch import nn

from ...losses.kl import gaussian_kl_between
from .embedding import CLINICAL_DIM, ClinicalMLP

__all__ = ["ConditionalPrior", "prior_kl", "reparameterize"]


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (drawn on ``generator``'s device when given)."""
    dev = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def prior_kl(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor,
             logvar_p: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(q(z|x,c) || p(z|c)), each summed over the latent dimensions (L_KL of 002 eq. 2)."""
    return gaussian_kl_between(mean_q, logvar_q, mean_p, logvar_p).mean()


class ConditionalPrior(nn.Module):
    """c (B, clinical_dim) -> (mu_p, logvar_p), each (B, latent_dim)."""

    def __init__(self, latent_dim: int, hidden: int = 128, clinical_dim: int = CLINICAL_DIM,
                 logvar_range: tuple[float, float] = (-30.0, 20.0)) -> None:
        super().__init__()
        self.embed = ClinicalMLP(hidden, hidden, layers=2, in_dim=clinical_dim)
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.latent_dim, self.logvar_range = latent_dim, logvar_range

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(c)
        return self.mu(h), self.logvar(h).clamp(*self.logvar_range)

    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z|c) (Algorithm 3, line 4)."""
        mean, logvar = self(c)
        return reparameterize(mean, logvar, generator)
