"""Diagonal Gaussian approximate posterior q(z|v) = N(mu, diag(sigma^2)) (seed 003 §2.5.1)."""
from __future__ import annotations

import torch

from ...losses.kl import gaussian_kl

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    """Posterior with ``mean`` and clamped ``logvar``; ``sample()`` uses the reparameterisation
    z = mu + sigma * eps, sigma = exp(logvar / 2), so gradients reach both parameters."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, clamp: tuple[float, float] = (-30.0, 20.0)) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        self.logvar = logvar.clamp(*clamp)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised draw; ``generator`` makes it reproducible."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The posterior mean (used for evaluation and the latent cache)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """Per-sample KL from N(0, I), summed over latent elements: shape (B,)."""
        return gaussian_kl(self.mean, self.logvar)
