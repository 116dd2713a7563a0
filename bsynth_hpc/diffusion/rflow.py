"""Rectified flow (RFlow; Liu et al. 2023), the default WFDM sampler (seed 003 §4.3, Tables 5 and 7:
velocity prediction, ℓ2, 50 Euler steps instead of 1000 DDPM steps).

Convention (MONAI's ``RFlowScheduler``, which the tests use as the reference): time s ∈ [0, 1]
with s = 0 clean and s = 1 pure noise,

    x_s = (1 - s) x0 + s ε,        target v = x0 - ε   (MONAI's sign: dx/ds = -v),

the network sees ``s · T`` (MONAI's ``timesteps``, T = num_train_timesteps), and from a velocity
estimate x̂0 = x_s + s v̂, ε̂ = x_s - (1 - s) v̂. Euler sampling from s to s' < s:
``x_{s'} = x_s + (s - s') v̂`` on the grid s_i = 1 - i/N, i = 0..N-1, ending at s = 0.

Training times (``time_from_uniform``; MONAI ``sample_timesteps``) from a uniform draw u:
``uniform`` s = u or ``logit-normal`` s = sigmoid(loc + scale Φ⁻¹(u)) (Esser et al. 2024),
then optionally floored onto the T-grid (``discrete_timesteps``, MONAI's default) and shifted
towards noise for volumes larger than a reference (``timestep_transform``; MONAI's
resolution-dependent shift, Esser et al. 2024 §5.3.2)::

    r = (numel(spatial) / base_img_size_numel)^(1/spatial_dims) · transform_scale
    s' = r s / (1 + (r - 1) s)

Intentional differences from MONAI: the spatial dimensionality of the shift always comes from
the sample's shape (MONAI's ``set_timesteps`` uses its constructor's ``spatial_dim``); the
inference grid with a shift is not quantised through float16, and discrete grids are rounded
after the shift (MONAI truncates); ``add_noise`` takes any rank, not only 4-D/5-D tensors.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

from ..errors import ConfigError
from .process import DiffusionProcess, StepOutput, Time, expand_to

TimeSampling = Literal["uniform", "logit-normal"]
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit-normal")
RFLOW_DEFAULT_STEPS = 50


def timestep_transform(s: torch.Tensor, sample_shape: Sequence[int], base_img_size_numel: int = 32 ** 3,
                       scale: float = 1.0) -> torch.Tensor:
    """Resolution-dependent shift s' = r s/(1 + (r-1) s) for samples shaped (B, C, *spatial)."""
    spatial = tuple(sample_shape[2:])
    if not spatial:
        raise ValueError(f"timestep_transform needs (B, C, *spatial) sample shapes; got {tuple(sample_shape)}")
    ratio = (math.prod(spatial) / base_img_size_numel) ** (1.0 / len(spatial)) * scale
    return ratio * s / (1.0 + (ratio - 1.0) * s)


class RFlowProcess(DiffusionProcess):
    """Rectified flow with velocity prediction (see the module docstring)."""

    kind = "rflow"
    solvers = ("euler",)
    default_solver = "euler"

    def __init__(self, num_train_timesteps: int = 1000, time_sampling: str = "uniform", loc: float = 0.0,
                 scale: float = 1.0, discrete_timesteps: bool = True, use_timestep_transform: bool = False,
                 transform_scale: float = 1.0, base_img_size_numel: int = 32 ** 3):
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
        if time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(f"time_sampling={time_sampling!r} is not supported: use one of "
                              f"{', '.join(TIME_SAMPLINGS)}")
        if not scale > 0:
            raise ConfigError(f"logit-normal scale={scale} must be > 0")
        if not transform_scale > 0:
            raise ConfigError(f"transform_scale={transform_scale} must be > 0")
        if base_img_size_numel < 1:
            raise ConfigError(f"base_img_size_numel={base_img_size_numel} must be >= 1")
        self.num_train_timesteps = num_train_timesteps
        self.prediction = "v_prediction"
        self.time_sampling = time_sampling
        self.loc = float(loc)
        self.scale = float(scale)
        self.discrete_timesteps = discrete_timesteps
        self.use_timestep_transform = use_timestep_transform
        self.transform_scale = float(transform_scale)
        self.base_img_size_numel = int(base_img_size_numel)

    def __repr__(self) -> str:
        return (f"RFlowProcess(T={self.num_train_timesteps}, time_sampling={self.time_sampling!r}, "
                f"discrete={self.discrete_timesteps}, transform={self.use_timestep_transform})")

    def _shift(self, s: torch.Tensor, sample_shape: Sequence[int]) -> torch.Tensor:
        if not self.use_timestep_transform:
            return s
        return timestep_transform(s, sample_shape, self.base_img_size_numel, self.transform_scale)

    @staticmethod
    def _s(t: torch.Tensor | Time, x: torch.Tensor) -> torch.Tensor:
        s = t.double() if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        return expand_to(s, x)

    # --- training ---------------------------------------------------------------------------
    def time_from_uniform(self, u: torch.Tensor, sample_shape: Sequence[int]) -> torch.Tensor:
        """Training times s (float32, (B,)) from uniform draws; see the module docstring."""
        T = self.num_train_timesteps
        s = u.double()
        if self.time_sampling == "logit-normal":
            s = torch.sigmoid(self.loc + self.scale * torch.special.ndtri(s))
        if self.discrete_timesteps:
            s = (s * T).floor().clamp_(0, T - 1) / T
        return self._shift(s, sample_shape).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        s = self._s(t, x0)
        return (1.0 - s) * x0 + s * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        return x0 - noise

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """s · T as float32 (whole numbers on the discrete grid without a shift)."""
        m = t.double() * self.num_train_timesteps
        if self.discrete_timesteps and not self.use_timestep_transform:
            m = m.round()
        return m.float()

    # --- conversions ------------------------------------------------------------------------
    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        return x_t + self._s(t, x_t) * model_out

    def predict_epsilon(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        return x_t - (1.0 - self._s(t, x_t)) * model_out

    # --- sampling ---------------------------------------------------------------------------
    def time_tensor(self, t: Time, batch: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch,), float(t), dtype=torch.float32, device=device)

    def default_steps(self, solver: str) -> int:
        self.check_solver(solver)
        return RFLOW_DEFAULT_STEPS

    def inference_times(self, steps: int, sample_shape: Sequence[int]) -> list[float]:
        """Descending s_i = 1 - i/N (i < N), on the T-grid when discrete, shifted when configured."""
        T = self.num_train_timesteps
        if steps < 1:
            raise ConfigError(f"sampling steps={steps} must be >= 1")
        if self.discrete_timesteps and steps > T:
            raise ConfigError(f"sampling steps={steps} exceed num_train_timesteps={T} on a discrete time grid")
        s = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
        if self.discrete_timesteps:
            s = (s * T).round() / T
        s = self._shift(s, sample_shape)
        if self.discrete_timesteps:
            s = (s * T).round() / T
        return [float(v) for v in s]

    def sampling_times(self, solver: str, steps: int, sample_shape: Sequence[int],
                       spacing: str | None = None) -> list[tuple[Time, Time]]:
        self.check_solver(solver)
        if spacing is not None:
            raise ConfigError(f"timestep_spacing={spacing!r} applies to DDPM grids; rectified flow uses the uniform "
                              f"grid 1 - i/N (leave it unset)")
        ss = self.inference_times(steps, sample_shape)
        return list(zip(ss, ss[1:] + [0.0]))

    def euler_step(self, model_out: torch.Tensor, x_t: torch.Tensor, t: Time, t_next: Time) -> StepOutput:
        """x_{s'} = x_s + (s - s') v̂, with x̂0 = x_s + s v̂."""
        return StepOutput(x_t + (float(t) - float(t_next)) * model_out, self.predict_x0(model_out, x_t, t))

    def step(self, solver: str, model_out: torch.Tensor, x_t: torch.Tensor, t: Time, t_next: Time, *,
             generator: torch.Generator | None = None, eta: float = 0.0,
             clip_x0: tuple[float, float] | None = None) -> StepOutput:
        self.check_solver(solver)
        if eta != 0.0:
            raise ConfigError(f"eta={eta} applies to the ddim solver only; rectified-flow Euler sampling is "
                              f"deterministic")
        if clip_x0 is not None:
            raise ConfigError("clip_x0 applies to DDPM solvers only; rectified-flow Euler steps use the raw velocity")
        return self.euler_step(model_out, x_t, t, t_next)


__all__ = ["RFlowProcess", "timestep_transform", "TIME_SAMPLINGS", "TimeSampling"]
