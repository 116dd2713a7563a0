"""One training objective for every process, so recipes switch DDPM <-> RFlow by config.

A recipe's loss step is::

    nb = objective.draw(x0, noise=ctx.randn(x0.shape[1:]), u=ctx.rand())   # or generator=g
    pred = model(nb.x_t, nb.model_t, cond)
    loss = objective.loss(pred, nb)

``draw`` takes the noise and the uniform time draws from the caller when given (the engine's
per-sample seeded draws keep losses independent of the data-parallel layout) and otherwise
draws them from ``generator``. Time draws go through ``process.time_from_uniform``, so the same
uniform numbers serve DDPM indices, uniform or logit-normal RFlow times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import LOSS_KINDS, diffusion_loss
from .process import DiffusionProcess, randn_like
from ..errors import ConfigError


@dataclass(frozen=True)
class NoisedBatch:
    """Network input (``x_t``, ``model_t``), regression ``target``, and the draws behind them."""

    x_t: torch.Tensor
    model_t: torch.Tensor
    target: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor


class TrainingObjective:
    """Draws (t, ε), corrupts x0 and gives the target of ``process`` (seed 003 §2.5.4, 000 §5.2)."""

    def __init__(self, process: DiffusionProcess, loss: str = "l2"):
        if loss not in LOSS_KINDS:
            raise ConfigError(f"loss={loss!r} is not supported: use one of {', '.join(LOSS_KINDS)}")
        self.process = process
        self.loss_kind = loss

    def __repr__(self) -> str:
        return f"TrainingObjective({self.process!r}, loss={self.loss_kind!r})"

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None, *,
             noise: torch.Tensor | None = None, u: torch.Tensor | None = None) -> NoisedBatch:
        """Noised batch for clean samples x0 (B, ...); ``noise`` like x0 and ``u`` (B,) in [0, 1) optional."""
        if x0.ndim < 1 or x0.shape[0] == 0:
            raise ValueError(f"x0 must be a non-empty batch (B, ...); got shape {tuple(x0.shape)}")
        batch = x0.shape[0]
        if noise is None:
            noise = randn_like(x0, generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        if u is None:
            device = generator.device if generator is not None else x0.device
            u = torch.rand((batch,), generator=generator, device=device).to(x0.device)
        elif u.shape != (batch,):
            raise ValueError(f"u must have shape ({batch},); got {tuple(u.shape)}")
        noise = noise.to(dtype=x0.dtype)
        t = self.process.time_from_uniform(u, tuple(x0.shape))
        x_t = self.process.add_noise(x0, noise, t)
        target = self.process.training_target(x0, noise, t)
        return NoisedBatch(x_t, self.process.model_time(t), target, t, noise)

    def loss(self, model_out: torch.Tensor, batch: NoisedBatch, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """``diffusion_loss`` of the network output against ``batch.target`` with the configured norm."""
        return diffusion_loss(model_out, batch.target, self.loss_kind, reduction, weight)


__all__ = ["TrainingObjective", "NoisedBatch"]
