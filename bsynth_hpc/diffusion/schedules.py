"""Discrete-time noise (β) schedules and their registry.

Index convention (MONAI / diffusers): index ``i = 0 .. T-1`` is the papers' step ``t = i + 1``,
``alphas_cumprod[i] = ᾱ_{i+1} = prod_{j <= i} (1 - β_j)``; the clean end ``ᾱ_0 = 1`` is index
``-1`` wherever a process accepts a timestep. Every schedule is computed in float64 (the
cumulative product over 1000 steps loses ~1e-6 relative in float32) and cast only where used.

Registered schedules:

``linear``         β linear from ``beta_start`` to ``beta_end`` (seed 000 §5.2: 1e-4 -> 2e-2, T=1000;
                   Ho et al. 2020)
``scaled_linear``  √β linear, i.e. β = linspace(√beta_start, √beta_end)² (LDM / MONAI
                   ``scaled_linear_beta``; seed 003 §4.3 Table 5 ablation)
``cosine``         Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2),
                   β_t = min(1 - ᾱ_t/ᾱ_{t-1}, max_beta) (seed 003 Table 5 default DDPM, seeds 001/004)
``cosine_ramp``    seed 001 Eq. (2) as printed: β_t = β_min + (β_max - β_min)(1 - cos(t/T · π/2)),
                   t = 1..T. Kept because the paper writes it; its text cites Nichol & Dhariwal,
                   whose schedule is ``cosine``.

``register_schedule`` adds more; a schedule is a function ``(num_train_timesteps, **params) ->
betas`` (float64 numpy array of length T, every value in (0, 1)).
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError

BetaFn = Callable[..., np.ndarray]
_REGISTRY: dict[str, BetaFn] = {}


def register_schedule(name: str) -> Callable[[BetaFn], BetaFn]:
    """Decorator registering a β schedule under ``name`` (a duplicate name is a programming error)."""

    def wrap(fn: BetaFn) -> BetaFn:
        if name in _REGISTRY:
            raise ValueError(f"noise schedule {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_schedules() -> tuple[str, ...]:
    """Registered schedule names, sorted."""
    return tuple(sorted(_REGISTRY))


def _lookup(name: str) -> BetaFn:
    if name not in _REGISTRY:
        match = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"unknown beta_schedule {name!r}{hint}; available: {', '.join(available_schedules())}")
    return _REGISTRY[name]


def schedule_params(name: str) -> tuple[str, ...]:
    """Keyword parameters the schedule ``name`` accepts (besides num_train_timesteps)."""
    sig = inspect.signature(_lookup(name))
    return tuple(p for p in sig.parameters if p != "num_train_timesteps")


def _check_range(num_train_timesteps: int, beta_start: float, beta_end: float, name: str) -> None:
    if num_train_timesteps < 1:
        raise ConfigError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ConfigError(f"{name} schedule needs 0 < beta_start <= beta_end < 1; got beta_start={beta_start}, "
                          f"beta_end={beta_end}")


@register_schedule("linear")
def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
    """β_t linear in t (Ho et al. 2020; seed 000 §5.2)."""
    _check_range(num_train_timesteps, beta_start, beta_end, "linear")
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


@register_schedule("scaled_linear")
def scaled_linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
    """√β_t linear in t (Rombach et al. 2022; MONAI ``scaled_linear_beta``)."""
    _check_range(num_train_timesteps, beta_start, beta_end, "scaled_linear")
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=np.float64) ** 2


@register_schedule("cosine")
def cosine_betas(num_train_timesteps: int, cosine_s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 Eq. (17): β from the cos² ᾱ curve, clipped at ``max_beta``."""
    if num_train_timesteps < 1:
        raise ConfigError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
    if not cosine_s > 0.0:
        raise ConfigError(f"cosine schedule needs cosine_s > 0; got {cosine_s}")
    if not 0.0 < max_beta < 1.0:
        raise ConfigError(f"cosine schedule needs 0 < max_beta < 1; got {max_beta}")
    steps = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    f = np.cos((steps + cosine_s) / (1.0 + cosine_s) * (math.pi / 2.0)) ** 2
    abar = f / f[0]
    return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)


@register_schedule("cosine_ramp")
def cosine_ramp_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
    """Seed 001 Eq. (2): β rises from β_min to β_max along 1 - cos(t/T · π/2)."""
    _check_range(num_train_timesteps, beta_start, beta_end, "cosine_ramp")
    t = np.arange(1, num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    return beta_start + (beta_end - beta_start) * (1.0 - np.cos(t * (math.pi / 2.0)))


@dataclass(frozen=True)
class NoiseSchedule:
    """β, α = 1 - β and ᾱ = cumprod(α) as float64 CPU tensors of length T (index convention above)."""

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, betas: np.ndarray | torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        """Build from any β sequence; every β must lie in (0, 1)."""
        b = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if b.ndim != 1 or b.numel() == 0:
            raise ConfigError(f"noise schedule {name!r}: betas must be a non-empty 1-D sequence; got shape "
                              f"{tuple(b.shape)}")
        if not bool(torch.all((b > 0) & (b < 1))):
            raise ConfigError(f"noise schedule {name!r}: every beta must lie in (0, 1); got min {b.min().item():.3g}, "
                              f"max {b.max().item():.3g}")
        alphas = 1.0 - b
        return cls(name, b, alphas, torch.cumprod(alphas, dim=0))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.numel())

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ/(1 - ᾱ) per index (float64)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)


def make_schedule(name: str, num_train_timesteps: int = 1000, **params: float) -> NoiseSchedule:
    """The registered schedule ``name`` with ``params`` (unknown parameters are a ConfigError)."""
    fn = _lookup(name)
    accepted = schedule_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"beta_schedule {name!r} does not take {', '.join(unknown)}; it takes "
                          f"{', '.join(accepted) or 'no parameters'}")
    return NoiseSchedule.from_betas(fn(num_train_timesteps, **params), name)


__all__ = ["NoiseSchedule", "make_schedule", "register_schedule", "available_schedules", "schedule_params",
           "linear_betas", "scaled_linear_betas", "cosine_betas", "cosine_ramp_betas"]
