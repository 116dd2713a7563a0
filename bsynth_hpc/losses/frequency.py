"""Frequency-aware loss of seed 001 (§III.B.3, Eq. 4): match the noise prediction in Fourier space.

``L_freq = ||FFT(eps) - FFT(eps_hat)||^2`` over the spatial axes of (B, C, *spatial) tensors
(2D slices or 3D volumes), averaged over elements, combined with the eps-MSE as
``L = MSE + lambda_freq * L_freq`` with ``lambda_freq = 0.1`` (001).

Two modes:

``complex``    Eq. (4) as printed: the squared modulus of the complex difference of the spectra.
               With the orthonormal DFT used here this equals the MSE exactly (Parseval), so the
               combined loss is ``(1 + lambda_freq) * MSE``: the term changes the loss scale, not
               what the network is asked to match. It is kept because it is 001's definition.
``amplitude``  the squared difference of the spectral magnitudes ``| |FFT(eps)| - |FFT(eps_hat)| |^2``
               (how frequency losses are commonly implemented): phase-blind, so it is *not*
               a rescaled MSE and does weight matching the power spectrum, which is the effect 001
               describes ("encourages the model to match spectral characteristics").

The FFT runs in float32 whatever the input dtype (half-precision FFTs are limited to power-of-two
sizes on CUDA and lose precision).
"""
from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError

__all__ = ["FFT_MODES", "LAMBDA_FREQ", "fft_loss", "eps_fft_loss"]

FFT_MODES: tuple[str, ...] = ("complex", "amplitude")
LAMBDA_FREQ = 0.1
"""001's weight of the frequency term."""
FFTMode = Literal["complex", "amplitude"]


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DFT over every axis after (B, C)."""
    return torch.fft.fftn(x.float(), dim=tuple(range(2, x.ndim)), norm="ortho")


def fft_loss(pred: torch.Tensor, target: torch.Tensor, mode: str = "complex",
             reduction: str = "mean") -> torch.Tensor:
    """Frequency loss between ``pred`` and ``target`` (B, C, *spatial); see the module docstring.

    ``reduction``: "mean" over every element, or "per_sample" -> (B,).
    """
    if mode not in FFT_MODES:
        raise ConfigError(f"fft loss mode={mode!r} is not supported: use one of {', '.join(FFT_MODES)}")
    if reduction not in ("mean", "per_sample"):
        raise ConfigError(f"fft loss reduction={reduction!r}: use 'mean' or 'per_sample'")
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.ndim < 3:
        raise ValueError(f"fft loss needs (B, C, *spatial) tensors, got shape {tuple(pred.shape)}")
    fp, ft = _spectrum(pred), _spectrum(target)
    err = (fp - ft).abs().square() if mode == "complex" else (fp.abs() - ft.abs()).square()
    return err.flatten(1).mean(dim=1) if reduction == "per_sample" else err.mean()


def eps_fft_loss(pred: torch.Tensor, target: torch.Tensor, lambda_freq: float = LAMBDA_FREQ,
                 mode: str = "complex") -> torch.Tensor:
    """001's diffusion loss: ``MSE(pred, target) + lambda_freq * fft_loss(pred, target, mode)`` (float32)."""
    if not lambda_freq >= 0.0:
        raise ConfigError(f"lambda_freq={lambda_freq} must be >= 0")
    mse = (pred.float() - target.float()).square().mean()
    if lambda_freq == 0.0:
        return mse
    return mse + lambda_freq * fft_loss(pred, target, mode)
