"""Discrete-time Gaussian diffusion (DDPM) with ancestral and DDIM sampling.

Forward process (seed 003 §2.5.4, seed 000 §5.2): with α_t = 1 - β_t and ᾱ_t = prod α,
``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε``. With a = √ᾱ_t, σ = √(1-ᾱ_t) the three prediction types are
``epsilon`` (ε), ``sample`` (x0) and ``v_prediction`` (v = a ε - σ x0, Salimans & Ho 2022; the
DDPM variants of seed 003 Table 5); any one determines the others given x_t:
``x0 = (x_t - σ ε)/a = a x_t - σ v`` and ``ε = (x_t - a x0)/σ = σ x_t + a v``.

Posterior between any two grid times s < t (s = t - 1 is seed 003's formula; other s give
the respaced chain of Nichol & Dhariwal 2021 §4), with α_{t|s} = ᾱ_t/ᾱ_s, β_{t|s} = 1 - α_{t|s}::

    μ = √ᾱ_s β_{t|s}/(1-ᾱ_t) · x0 + √α_{t|s} (1-ᾱ_s)/(1-ᾱ_t) · x_t
      = (x_t - β_{t|s}/√(1-ᾱ_t) · ε)/√α_{t|s}                      (seed 003: μ_θ from ε_θ)
    β̃ = (1-ᾱ_s)/(1-ᾱ_t) · β_{t|s}

Ancestral step: x_s = μ(x̂0, x_t) + √β̃ z ("fixed_small"; "fixed_large" uses β_{t|s}); no noise
when s is the clean end (index -1, ᾱ = 1), where μ = x̂0. DDIM step (Song et al. 2021 Eq. 12):
x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z with σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s); η = 0 is the
deterministic sampler of seed 001 (50 steps).

Sampling grids (``ddpm_timesteps``), all descending, each step going to the next grid entry and
the last to the clean end:
- ``linspace``: round(linspace(T-1, 0, n)) - starts at the noisiest index and ends at 0 (MONAI's
  ``set_timesteps``; the default);
- ``leading``: (n-1, ..., 0) · ⌊T/n⌋ - diffusers' "leading" (starts below T-1 when n does not
  reach it, e.g. 980 for T=1000, n=50);
- ``trailing``: round(T - k T/n) - 1 - starts at T-1 and ends at ⌈T/n⌉-1 (Lin et al. 2024 Table 2).

Intentional differences from MONAI's schedulers (tests check the agreement everywhere else):
the tables are float64; a DDIM step goes to the next entry of its grid where MONAI steps to
``t - T//n`` (the same for ``leading`` grids); the ancestral step with fewer than T steps uses the
respaced posterior where MONAI's uses t - 1 whatever the grid.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .process import DiffusionProcess, StepOutput, Time, check_prediction, expand_to, randn_like
from .schedules import NoiseSchedule

Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
VarianceType = Literal["fixed_small", "fixed_large"]
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large")
DDIM_DEFAULT_STEPS = 50


def ddpm_timesteps(num_train_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Descending timestep indices of an ``steps``-step sampler over T training steps (see module doc)."""
    T = num_train_timesteps
    if not 1 <= steps <= T:
        raise ConfigError(f"sampling steps={steps} must be between 1 and num_train_timesteps={T}")
    if spacing == "linspace":  # float32 like MONAI, so rounding ties (e.g. 499.5 at n=999) fall the same way
        ts = torch.linspace(T - 1, 0, steps, dtype=torch.float32).round().numpy()
    elif spacing == "leading":
        ts = np.arange(steps - 1, -1, -1) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(T - np.arange(steps) * (T / steps)) - 1
    else:
        raise ConfigError(f"timestep_spacing={spacing!r} is not supported: use one of {', '.join(SPACINGS)}")
    return [int(v) for v in ts]


class DDPMProcess(DiffusionProcess):
    """Gaussian diffusion on a β schedule (see the module docstring for every formula)."""

    kind = "ddpm"
    solvers = ("ddpm", "ddim")
    default_solver = "ddpm"

    def __init__(self, schedule: NoiseSchedule, prediction: str = "epsilon", variance: str = "fixed_small"):
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        if variance not in VARIANCE_TYPES:
            raise ConfigError(f"variance={variance!r} is not supported: use one of {', '.join(VARIANCE_TYPES)}")
        self.variance = variance
        self.num_train_timesteps = schedule.num_train_timesteps
        # index t + 1: position 0 is the clean end (t = -1, ᾱ = 1)
        self._abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        self._tables: dict[torch.device, torch.Tensor] = {torch.device("cpu"): self._abar_ext}

    def __repr__(self) -> str:
        return (f"DDPMProcess(schedule={self.schedule.name!r}, T={self.num_train_timesteps}, "
                f"prediction={self.prediction!r}, variance={self.variance!r})")

    # --- ᾱ lookup ---------------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | Time, *, allow_clean: bool = False) -> torch.Tensor:
        """ᾱ at index t (int, 0-d or (B,) tensor) as float64 on t's device; t = -1 (clean) if allowed.

        The range is checked for ints and CPU tensors; device tensors are not (that would
        synchronise every training step), and come from ``time_from_uniform`` in range.
        """
        low = -1 if allow_clean else 0
        T = self.num_train_timesteps
        if isinstance(t, torch.Tensor):
            if t.is_floating_point():
                raise ValueError(f"DDPM timesteps must be integer indices; got dtype {t.dtype}")
            if t.device.type == "cpu" and t.numel() and (int(t.min()) < low or int(t.max()) >= T):
                raise ValueError(f"DDPM timesteps must lie in [{low}, {T - 1}]; got [{int(t.min())}, {int(t.max())}]")
            table = self._tables.get(t.device)
            if table is None:
                table = self._tables[t.device] = self._abar_ext.to(t.device)
            return table[t.long() + 1]
        if isinstance(t, float) and not t.is_integer():
            raise ValueError(f"DDPM timesteps must be integer indices; got {t}")
        if not low <= int(t) < T:
            raise ValueError(f"DDPM timestep {t} must lie in [{low}, {T - 1}]")
        return self._abar_ext[int(t) + 1]

    def _a_sigma(self, t: torch.Tensor | Time, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alpha_bar(t)
        return expand_to(abar.sqrt(), x), expand_to((1.0 - abar).sqrt(), x)

    # --- training ---------------------------------------------------------------------------
    def time_from_uniform(self, u: torch.Tensor, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        """t = ⌊u T⌋ ∈ {0, .., T-1}: uniform over the training indices."""
        T = self.num_train_timesteps
        return (u.double() * T).floor().long().clamp_(0, T - 1)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        a, sigma = self._a_sigma(t, x0)
        return a * x0 + sigma * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        """v = √ᾱ ε - √(1-ᾱ) x0 (MONAI ``get_velocity``)."""
        a, sigma = self._a_sigma(t, x0)
        return a * noise - sigma * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        return self.velocity(x0, noise, t)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.long()

    # --- conversions ------------------------------------------------------------------------
    def convert(self, value: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time, *, source: str,
                target: str) -> torch.Tensor:
        """Re-express a prediction of type ``source`` at (x_t, t) as type ``target`` (exact identities)."""
        check_prediction(source)
        check_prediction(target)
        if source == target:
            return value
        a, sigma = self._a_sigma(t, x_t)
        if source == "epsilon":
            eps, x0 = value, (x_t - sigma * value) / a
        elif source == "sample":
            x0, eps = value, (x_t - a * value) / sigma
        else:
            x0, eps = a * x_t - sigma * value, sigma * x_t + a * value
        if target == "epsilon":
            return eps
        if target == "sample":
            return x0
        return a * eps - sigma * x0

    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        return self.convert(model_out, x_t, t, source=self.prediction, target="sample")

    def predict_epsilon(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        return self.convert(model_out, x_t, t, source=self.prediction, target="epsilon")

    # --- posterior --------------------------------------------------------------------------
    def _transition(self, t: torch.Tensor | Time, t_prev: torch.Tensor | Time | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ᾱ_t, ᾱ_s, β_{t|s}) in float64 for s = t_prev (default t - 1)."""
        if t_prev is None:
            t_prev = t - 1
        abar_t = self.alpha_bar(t)
        abar_s = self.alpha_bar(t_prev, allow_clean=True)
        if bool(torch.any(abar_s <= abar_t)):
            raise ValueError(f"posterior needs t_prev < t; got t={t}, t_prev={t_prev}")
        return abar_t, abar_s, 1.0 - abar_t / abar_s

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time,
                  t_prev: torch.Tensor | Time | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_s | x_t, x0), s = t_prev (default t - 1); variance broadcasts over x."""
        abar_t, abar_s, beta_ts = self._transition(t, t_prev)
        c0 = abar_s.sqrt() * beta_ts / (1.0 - abar_t)
        ct = (1.0 - beta_ts).sqrt() * (1.0 - abar_s) / (1.0 - abar_t)
        var = (1.0 - abar_s) / (1.0 - abar_t) * beta_ts
        return expand_to(c0, x0) * x0 + expand_to(ct, x_t) * x_t, expand_to(var, x_t)

    def posterior_mean_from_epsilon(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time,
                                    t_prev: torch.Tensor | Time | None = None) -> torch.Tensor:
        """Seed 003 §2.5.4: μ = (x_t - β_{t|s}/√(1-ᾱ_t) · ε)/√α_{t|s}."""
        abar_t, _, beta_ts = self._transition(t, t_prev)
        return (x_t - expand_to(beta_ts / (1.0 - abar_t).sqrt(), x_t) * eps) / expand_to((1.0 - beta_ts).sqrt(), x_t)

    # --- sampler steps ----------------------------------------------------------------------
    @staticmethod
    def _clip(x0: torch.Tensor, clip_x0: tuple[float, float] | None) -> torch.Tensor:
        return x0 if clip_x0 is None else x0.clamp(clip_x0[0], clip_x0[1])

    def ddpm_step(self, model_out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, *,
                  generator: torch.Generator | None = None, clip_x0: tuple[float, float] | None = None,
                  noise: torch.Tensor | None = None) -> StepOutput:
        """Ancestral step x_t -> x_{t_prev} (t_prev = -1: the clean end, no noise added)."""
        x0 = self._clip(self.predict_x0(model_out, x_t, t), clip_x0)
        mean, var = self.posterior(x0, x_t, t, t_prev)
        if t_prev < 0:
            return StepOutput(mean, x0)
        if self.variance == "fixed_small":
            var = var.clamp(min=1e-20)
        else:
            _, _, beta_ts = self._transition(t, t_prev)
            var = expand_to(beta_ts, x_t)
        z = randn_like(x_t, generator) if noise is None else noise
        return StepOutput(mean + var.sqrt() * z, x0)

    def ddim_step(self, model_out: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int, *, eta: float = 0.0,
                  generator: torch.Generator | None = None, clip_x0: tuple[float, float] | None = None,
                  noise: torch.Tensor | None = None) -> StepOutput:
        """DDIM step x_t -> x_{t_prev}, η = 0 deterministic, η = 1 the ancestral variance."""
        if eta < 0:
            raise ConfigError(f"eta={eta} must be >= 0")
        abar_t, abar_s, _ = self._transition(t, t_prev)
        eps = self.predict_epsilon(model_out, x_t, t)
        x0 = self._clip(self.predict_x0(model_out, x_t, t), clip_x0)
        std = eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)).sqrt()
        direction = (1.0 - abar_s - std ** 2).clamp(min=0.0).sqrt()
        prev = expand_to(abar_s.sqrt(), x0) * x0 + expand_to(direction, eps) * eps
        if eta > 0 and t_prev >= 0:
            z = randn_like(x_t, generator) if noise is None else noise
            prev = prev + expand_to(std, z) * z
        return StepOutput(prev, x0)

    # --- DiffusionProcess sampling hooks ----------------------------------------------------
    def time_tensor(self, t: Time, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch,), int(t), dtype=torch.long, device=device)

    def default_steps(self, solver: str) -> int:
        self.check_solver(solver)
        return self.num_train_timesteps if solver == "ddpm" else min(DDIM_DEFAULT_STEPS, self.num_train_timesteps)

    def sampling_times(self, solver: str, steps: int, sample_shape: Sequence[int] = (),
                       spacing: str | None = None) -> list[tuple[Time, Time]]:
        self.check_solver(solver)
        ts = ddpm_timesteps(self.num_train_timesteps, steps, spacing or "linspace")
        return list(zip(ts, ts[1:] + [-1]))

    def step(self, solver: str, model_out: torch.Tensor, x_t: torch.Tensor, t: Time, t_next: Time, *,
             generator: torch.Generator | None = None, eta: float = 0.0,
             clip_x0: tuple[float, float] | None = None) -> StepOutput:
        self.check_solver(solver)
        if solver == "ddim":
            return self.ddim_step(model_out, x_t, int(t), int(t_next), eta=eta, generator=generator, clip_x0=clip_x0)
        if eta != 0.0:
            raise ConfigError(f"eta={eta} applies to the ddim solver only; the ancestral ddpm solver has its own "
                              f"variance (set variance: fixed_small|fixed_large)")
        return self.ddpm_step(model_out, x_t, int(t), int(t_next), generator=generator, clip_x0=clip_x0)


__all__ = ["DDPMProcess", "ddpm_timesteps", "SPACINGS", "VARIANCE_TYPES", "Spacing", "VarianceType"]
