"""Stage-A losses (seed 003 §2.5.1, seed 000 §3.1/§5.1): L1 reconstruction, KL of the diagonal
Gaussian posterior, LPIPS on tri-planar 2D slices, adversarial (BCE / hinge / LSGAN) and the
VAE-GAN combiner; seed 001's frequency-aware (FFT) loss of the noise prediction. The perceptual
loss (which imports lpips/torchvision) loads on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .adversarial import (ADVERSARIAL_KINDS, AdversarialKind, discriminator_adversarial_loss,
                          generator_adversarial_loss)
from .frequency import FFT_MODES, LAMBDA_FREQ, eps_fft_loss, fft_loss
from .kl import gaussian_kl, kl_loss, posterior_parameters
from .reconstruction import ReconKind, reconstruction_loss
from .vaegan import LOSS_PRESETS, VAEGANLoss, VAEGANWeights

_LAZY = {"SlicePerceptualLoss": ".perceptual", "lpips_input": ".perceptual"}

__all__ = [
    "reconstruction_loss", "ReconKind", "gaussian_kl", "kl_loss", "posterior_parameters",
    "generator_adversarial_loss", "discriminator_adversarial_loss", "AdversarialKind", "ADVERSARIAL_KINDS",
    "VAEGANLoss", "VAEGANWeights", "LOSS_PRESETS", "fft_loss", "eps_fft_loss", "FFT_MODES", "LAMBDA_FREQ",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'bsynth_hpc.losses' has no attribute {name!r}")
