"""The interface every diffusion process offers to training objectives and samplers.

A process owns the forward corruption (``add_noise``), the regression target of the network
(``training_target``), the conversions of a network output into the clean-sample and noise
estimates, the time grid of a sampler and one sampler step. Two implementations:
:class:`~bsynth_hpc.diffusion.ddpm.DDPMProcess` (discrete, ᾱ schedule; seeds 000 §5.2, 001, 003
§2.5.4, 004) and :class:`~bsynth_hpc.diffusion.rflow.RFlowProcess` (rectified flow; seed 003 §4.3).

Time representation ("process time"):
- DDPM: int64 index ``t`` in ``0 .. T-1`` (``-1`` = clean, only as a step's destination);
- RFlow: float ``s`` in ``[0, 1]`` (0 = clean, 1 = pure noise).
``model_time`` maps process time to what the network is fed (both in train-timestep units
``[0, T]``, as MONAI's schedulers feed their networks).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence, Union

import torch

from ..errors import ConfigError

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
Time = Union[int, float]


@dataclass(frozen=True)
class StepOutput:
    """One sampler step: the sample at the next (less noisy) time and the clean-sample estimate."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def expand_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d or (B,) coefficient as x's dtype/device, shaped to broadcast over x (B, ...)."""
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(f"timesteps of shape {tuple(coef.shape)} do not match a batch of {x.shape[0]} "
                         f"(x has shape {tuple(x.shape)}); pass one timestep per sample or a scalar")
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device and moved to x's.

    Drawing where the generator lives lets a CPU generator drive a CUDA sampler: the same seed
    then gives the same noise on every device type.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(tuple(x.shape), generator=generator, device=device, dtype=x.dtype).to(x.device)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTION_TYPES:
        raise ConfigError(f"prediction={prediction!r} is not supported: use one of {', '.join(PREDICTION_TYPES)}")
    return prediction


class DiffusionProcess(ABC):
    """Forward process + sampler steps; see the module docstring for the time convention."""

    kind: ClassVar[str]
    solvers: ClassVar[tuple[str, ...]]
    default_solver: ClassVar[str]
    prediction: str
    num_train_timesteps: int

    # --- training ---------------------------------------------------------------------------
    @abstractmethod
    def time_from_uniform(self, u: torch.Tensor, sample_shape: Sequence[int]) -> torch.Tensor:
        """Training times (B,) from uniform draws u ∈ [0, 1) (B,) for samples of ``sample_shape``."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        """x_t from the clean sample, standard normal noise and process time."""

    @abstractmethod
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        """What the network regresses at (x_t, t) for this process's prediction type."""

    @abstractmethod
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep tensor the network sees for process time ``t`` (B,)."""

    # --- conversions ------------------------------------------------------------------------
    @abstractmethod
    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        """Clean-sample estimate from a network output at (x_t, t)."""

    @abstractmethod
    def predict_epsilon(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | Time) -> torch.Tensor:
        """Noise estimate from a network output at (x_t, t)."""

    # --- sampling ---------------------------------------------------------------------------
    @abstractmethod
    def time_tensor(self, t: Time, batch: int, device: torch.device | str) -> torch.Tensor:
        """Process time ``t`` repeated over a batch, in the process's time dtype."""

    @abstractmethod
    def default_steps(self, solver: str) -> int:
        """Number of steps a solver takes when the caller gives none."""

    @abstractmethod
    def sampling_times(self, solver: str, steps: int, sample_shape: Sequence[int],
                       spacing: str | None = None) -> list[tuple[Time, Time]]:
        """The (t, t_next) pairs a solver visits, from pure noise to clean."""

    @abstractmethod
    def step(self, solver: str, model_out: torch.Tensor, x_t: torch.Tensor, t: Time, t_next: Time, *,
             generator: torch.Generator | None = None, eta: float = 0.0,
             clip_x0: tuple[float, float] | None = None) -> StepOutput:
        """One solver step from (x_t, t) to t_next given the network output at (x_t, t)."""

    def check_solver(self, solver: str) -> str:
        if solver not in self.solvers:
            raise ConfigError(f"solver {solver!r} does not apply to scheduler {self.kind!r}: use one of "
                              f"{', '.join(self.solvers)}")
        return solver


__all__ = ["DiffusionProcess", "StepOutput", "PredictionType", "PREDICTION_TYPES", "expand_to", "randn_like",
           "check_prediction", "Time"]
