"""Diffusion section of a recipe config, and the factories recipes call.

YAML (every key optional; the defaults are seed 000 §5.2: DDPM, linear β 1e-4 -> 2e-2, T=1000,
ε-prediction, ℓ2, ancestral sampling)::

    diffusion:
      scheduler: rflow              # ddpm | rflow
      prediction: null              # epsilon | v_prediction | sample; null: epsilon (ddpm), v_prediction (rflow)
      beta_schedule: cosine         # linear | scaled_linear | cosine | cosine_ramp (ddpm only)
      num_train_timesteps: 1000
      loss: l2                      # l2 | l1
      time_sampling: logit-normal   # rflow training times: uniform | logit-normal
      sampling: {solver: auto, steps: 0, eta: 0.0, timestep_spacing: linspace, guidance_scale: 1.0}

The WFDM default (seed 003 Table 5) is ``scheduler: rflow`` with 50 Euler steps; its DDPM
ablations are ``beta_schedule: cosine|scaled_linear, prediction: v_prediction, loss: l1|l2``
with 1000 ancestral steps; seed 001 is ``beta_schedule: cosine`` with ``solver: ddim, steps: 50``.
Parameters of the other scheduler are ignored (β settings under rflow, RFlow time settings
under ddpm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..configtools import from_mapping, require
from .ddpm import DDPMProcess
from .objective import TrainingObjective
from .process import DiffusionProcess
from .rflow import RFlowProcess
from .schedules import NoiseSchedule, available_schedules, make_schedule, schedule_params

_SCHEDULE_FIELDS = ("beta_start", "beta_end", "cosine_s", "max_beta")  # DiffusionConfig fields = schedule params


@dataclass
class SamplingConfig:
    """How ``sample`` integrates the process.

    ``solver``: auto (ddpm for DDPM, euler for RFlow) | ddpm | ddim | euler; ``steps``: 0 = the
    solver's default (T for ddpm, 50 for ddim/euler); ``eta``: DDIM noise (0 deterministic);
    ``timestep_spacing``: DDPM grid (linspace | leading | trailing, see ``ddpm_timesteps``);
    ``guidance_scale``: classifier-free guidance s (1 = conditional only); ``clip_x0``: clamp
    the x̂0 estimate of DDPM steps to [low, high] (pixel-space models; leave null for latents).
    """

    solver: Literal["auto", "ddpm", "ddim", "euler"] = "auto"
    steps: int = 0
    eta: float = 0.0
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace"
    guidance_scale: float = 1.0
    clip_x0: Optional[tuple[float, float]] = None

    def validate(self, where: str = "sampling") -> None:
        require(self.steps >= 0, f"{where}.steps={self.steps} must be >= 0 (0 = the solver's default)")
        require(self.eta >= 0.0, f"{where}.eta={self.eta} must be >= 0")
        require(self.eta == 0.0 or self.solver == "ddim", f"{where}.eta={self.eta} applies to solver: ddim only")
        require(math.isfinite(self.guidance_scale),
                f"{where}.guidance_scale={self.guidance_scale} must be a finite number")
        require(self.clip_x0 is None or self.clip_x0[0] < self.clip_x0[1],
                f"{where}.clip_x0={self.clip_x0} must be [low, high] with low < high")


@dataclass
class DiffusionConfig:
    """Process + training objective + sampler of a denoiser stage (see the module docstring)."""

    scheduler: Literal["ddpm", "rflow"] = "ddpm"
    prediction: Optional[Literal["epsilon", "v_prediction", "sample"]] = None
    num_train_timesteps: int = 1000
    loss: Literal["l2", "l1"] = "l2"
    # DDPM
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    cosine_s: float = 0.008
    max_beta: float = 0.999
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small"
    # RFlow
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"
    logit_normal_loc: float = 0.0
    logit_normal_scale: float = 1.0
    discrete_timesteps: bool = True
    timestep_transform: bool = False
    transform_scale: float = 1.0
    base_img_size_numel: int = 32 ** 3
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_dict(cls, data: Any, where: str = "diffusion") -> "DiffusionConfig":
        """Typed, validated config from a YAML mapping (unknown keys and bad values are ConfigErrors)."""
        return from_mapping(cls, data, where)

    @property
    def prediction_type(self) -> str:
        """The prediction type in force (``prediction`` or the scheduler's natural one)."""
        if self.prediction is not None:
            return self.prediction
        return "v_prediction" if self.scheduler == "rflow" else "epsilon"

    @property
    def solver(self) -> str:
        """The sampling solver in force (``sampling.solver`` with auto resolved)."""
        if self.sampling.solver != "auto":
            return self.sampling.solver
        return "euler" if self.scheduler == "rflow" else "ddpm"

    def validate(self, where: str = "diffusion") -> None:
        T = self.num_train_timesteps
        require(T >= 1, f"{where}.num_train_timesteps={T} must be >= 1")
        self.sampling.validate(f"{where}.sampling")
        if self.scheduler == "rflow":
            require(self.prediction_type == "v_prediction",
                    f"{where}.prediction={self.prediction!r}: scheduler rflow predicts velocity; set "
                    f"prediction: v_prediction (or leave it unset)")
            require(self.solver == "euler",
                    f"{where}.sampling.solver={self.sampling.solver!r} does not apply to rflow: use euler (or auto)")
            require(self.logit_normal_scale > 0, f"{where}.logit_normal_scale={self.logit_normal_scale} must be > 0")
            require(self.transform_scale > 0, f"{where}.transform_scale={self.transform_scale} must be > 0")
            require(self.base_img_size_numel >= 1,
                    f"{where}.base_img_size_numel={self.base_img_size_numel} must be >= 1")
            require(self.sampling.clip_x0 is None, f"{where}.sampling.clip_x0 applies to scheduler ddpm only")
            require(not (self.discrete_timesteps and self.sampling.steps > T),
                    f"{where}.sampling.steps={self.sampling.steps} exceeds num_train_timesteps={T} on a discrete "
                    f"time grid (set discrete_timesteps: false or fewer steps)")
        else:
            require(self.solver in ("ddpm", "ddim"),
                    f"{where}.sampling.solver={self.sampling.solver!r} does not apply to ddpm: use ddpm, ddim or auto")
            require(self.beta_schedule in available_schedules(),
                    f"{where}.beta_schedule={self.beta_schedule!r} is unknown; available: "
                    f"{', '.join(available_schedules())}")
            require(self.sampling.steps <= T,
                    f"{where}.sampling.steps={self.sampling.steps} exceeds num_train_timesteps={T}")
            build_schedule(self)  # range checks of the β parameters, reported as ConfigError

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~bsynth_hpc.diffusion.sampling.sample` for this config."""
        s = self.sampling
        kwargs: dict[str, Any] = {"solver": self.solver, "steps": s.steps or None, "eta": s.eta,
                                  "guidance_scale": s.guidance_scale, "clip_x0": s.clip_x0}
        if self.scheduler == "ddpm":
            kwargs["spacing"] = s.timestep_spacing
        return kwargs


def build_schedule(cfg: DiffusionConfig) -> NoiseSchedule:
    """The β schedule of a DDPM config (only the parameters that schedule takes are passed)."""
    accepted = schedule_params(cfg.beta_schedule)
    params = {name: getattr(cfg, name) for name in _SCHEDULE_FIELDS if name in accepted}
    return make_schedule(cfg.beta_schedule, cfg.num_train_timesteps, **params)


def build_process(cfg: DiffusionConfig) -> DiffusionProcess:
    """DDPMProcess or RFlowProcess for ``cfg``."""
    if cfg.scheduler == "rflow":
        return RFlowProcess(cfg.num_train_timesteps, cfg.time_sampling, cfg.logit_normal_loc, cfg.logit_normal_scale,
                            cfg.discrete_timesteps, cfg.timestep_transform, cfg.transform_scale,
                            cfg.base_img_size_numel)
    return DDPMProcess(build_schedule(cfg), cfg.prediction_type, cfg.variance)


def build_objective(cfg: DiffusionConfig, process: DiffusionProcess | None = None) -> TrainingObjective:
    """The training objective of ``cfg`` (on ``process`` if given, else a fresh one)."""
    return TrainingObjective(process if process is not None else build_process(cfg), cfg.loss)


__all__ = ["DiffusionConfig", "SamplingConfig", "build_process", "build_objective", "build_schedule"]
