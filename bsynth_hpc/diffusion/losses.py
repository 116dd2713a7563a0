"""Regression loss of a denoiser against its target (ε, v or x0).

Seed 003 §2.5.4/§2.5.6 and seed 000 Eq. (7) use ℓ2 (MSE); seed 003 Table 5 also ablates ℓ1.
The loss is computed in float32 whatever the network's output dtype (bf16/fp16 squared errors
lose most of their mantissa), and ``per_sample`` keeps one value per batch item so recipes can
weight by timestep (e.g. min-SNR) or log the loss per t.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError

LossKind = Literal["l2", "l1"]
Reduction = Literal["mean", "sum", "per_sample", "none"]
LOSS_KINDS: tuple[str, ...] = ("l2", "l1")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "per_sample", "none")


def diffusion_loss(model_out: torch.Tensor, target: torch.Tensor, kind: str = "l2", reduction: str = "mean",
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """ℓ2 (squared error) or ℓ1 (absolute error) between prediction and target.

    ``reduction``: ``mean`` over every element, ``sum``, ``per_sample`` (mean over all but the
    batch dimension -> (B,)) or ``none`` (elementwise). ``weight`` (B,) scales each sample's
    errors before the reduction.
    """
    if kind not in LOSS_KINDS:
        raise ConfigError(f"loss={kind!r} is not supported: use one of {', '.join(LOSS_KINDS)}")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r} is not supported: use one of {', '.join(REDUCTIONS)}")
    if model_out.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(model_out.shape)} differs from target shape {tuple(target.shape)}")
    diff = model_out.float() - target.float()
    err = diff.square() if kind == "l2" else diff.abs()
    if weight is not None:
        if weight.ndim != 1 or weight.shape[0] != err.shape[0]:
            raise ValueError(f"weight must have shape ({err.shape[0]},); got {tuple(weight.shape)}")
        err = err * weight.float().reshape(-1, *([1] * (err.ndim - 1)))
    if reduction == "none":
        return err
    if reduction == "per_sample":
        return err.flatten(1).mean(dim=1) if err.ndim > 1 else err
    return err.mean() if reduction == "mean" else err.sum()


__all__ = ["diffusion_loss", "LOSS_KINDS", "REDUCTIONS", "LossKind", "Reduction"]
