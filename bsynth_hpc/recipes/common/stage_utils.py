"""Small helpers shared by the recipe stages."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bare_module", "per_sample_mean"]


def bare_module(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DeepSpeed wrapper (the model itself when unwrapped)."""
    while hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module):
        model = model.module
    return model


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) float32 mean over everything but the batch axis."""
    return x.float().flatten(1).mean(dim=1)
