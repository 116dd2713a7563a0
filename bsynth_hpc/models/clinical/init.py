"""Xavier-uniform initialisation (seed 002 §2.5: "All models were initialized with Xavier uniform weights").

Applied to every convolution (the depth-wise ``bsynth_hpc.nn.DepthwiseConv3d`` included) and linear layer of a
module tree (weights Xavier-uniform, biases zero);
normalisation layers keep their unit/zero affine parameters. A depth-wise kernel is Xavier over its own
fan-in/fan-out, as ``torch.nn.init.xavier_uniform_`` computes them. A layer whose initial value is part of
its definition (StyleGAN2's style affine with bias 1) sets ``xavier_exempt = True`` and is left alone.
"""
from __future__ import annotations

from torch import nn

from ... import nn as bnn

__all__ = ["xavier_init"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, bnn.DepthwiseConv3d)


def xavier_init(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """Xavier-uniform weights and zero biases for every Linear/Conv layer under ``module``; returns it."""
    for layer in module.modules():
        if isinstance(layer, _LAYERS) and not getattr(layer, "xavier_exempt", False):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module
