"""The sampling loop shared by every recipe: DDPM-ancestral, DDIM and RFlow-Euler, with
classifier-free guidance and an optional x̂0 trajectory.

``model_fn(x_t, model_t, cond) -> prediction`` is any callable (a module, an EMA copy, a
wrapper adding the WFDM modality/metadata embedding or the DiT-3D class token); ``cond`` is
passed through untouched (a pytree of tensors, see :mod:`.guidance`). Randomness comes only
from ``generator``: the initial noise and every stochastic step draw on the generator's device,
so a seeded generator gives the same samples run after run (and a CPU generator the same
initial noise on any device). Seeds: 003 §2.5.4 (ancestral DDPM, 1000 steps) and §4.3 (RFlow,
50 Euler steps), 001 (DDIM, 50 steps, η = 0, trajectory figure Fig. 5), 004 (guidance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .guidance import Cond, ModelFn, guided_output
from .process import DiffusionProcess, StepOutput, Time


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each step (``model_out`` is the guided output at (x_t, t))."""

    index: int
    t: Time
    t_next: Time
    x_t: torch.Tensor
    model_out: torch.Tensor
    step: StepOutput


@dataclass(frozen=True)
class SampleOutput:
    """Final samples, plus the x̂0 estimates after the recorded steps and those steps' times."""

    sample: torch.Tensor
    intermediates: tuple[torch.Tensor, ...] = ()
    intermediate_times: tuple[Time, ...] = ()
    steps_taken: int = 0


def trajectory_indices(num_steps: int, count: int) -> list[int]:
    """``count`` step indices spread evenly over ``num_steps`` steps, always including the last."""
    if count <= 0:
        return []
    return sorted({int(i) for i in np.round(np.linspace(0, num_steps - 1, min(count, num_steps)))})


@torch.no_grad()
def sample(model_fn: ModelFn, shape: Sequence[int], process: DiffusionProcess, steps: int | None = None, *,
           solver: str | None = None, generator: torch.Generator | None = None, cond: Cond = None,
           uncond: Cond = None, guidance_scale: float = 1.0, return_intermediates: int = 0, eta: float = 0.0,
           spacing: str | None = None, clip_x0: tuple[float, float] | None = None,
           x_init: torch.Tensor | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32,
           callback: Callable[[StepInfo], bool | None] | None = None) -> SampleOutput:
    """Generate ``shape`` samples by integrating ``process`` backwards with ``model_fn``.

    ``solver``: ``ddpm`` (ancestral) or ``ddim`` for DDPM processes, ``euler`` for RFlow
    (default: the process's). ``steps``: default T for ``ddpm``, 50 otherwise. ``guidance_scale``
    != 1 needs ``uncond`` (the null condition, same structure as ``cond``).
    ``return_intermediates=K`` records x̂0 after K evenly spaced steps (the last included).
    ``x_init`` replaces the initial N(0, I) draw. ``callback(info)`` returning True stops early;
    the sample is then that step's x̂0 (seed 001's adaptive early stop is such a callback).
    """
    solver = process.check_solver(solver or process.default_solver)
    steps = process.default_steps(solver) if steps is None else int(steps)
    times = process.sampling_times(solver, steps, tuple(shape), spacing)
    if return_intermediates < 0:
        raise ConfigError(f"return_intermediates={return_intermediates} must be >= 0")
    if not np.isfinite(guidance_scale):
        raise ConfigError(f"guidance_scale={guidance_scale} must be a finite number")
    use_cfg = guidance_scale != 1.0
    if use_cfg and uncond is None:
        raise ConfigError(f"guidance_scale={guidance_scale} needs the unconditional (null) condition: pass uncond=...")
    if clip_x0 is not None and not clip_x0[0] < clip_x0[1]:
        raise ConfigError(f"clip_x0={clip_x0} must be (low, high) with low < high")

    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init shape {tuple(x_init.shape)} differs from the requested shape {tuple(shape)}")
        x = x_init.to(dtype=dtype, device=device if device is not None else x_init.device)
    else:
        noise_device = generator.device if generator is not None else torch.device(device or "cpu")
        x = torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=dtype)
        x = x.to(device if device is not None else noise_device)
    batch = x.shape[0]
    record = set(trajectory_indices(len(times), return_intermediates))
    inter: list[torch.Tensor] = []
    inter_t: list[Time] = []

    taken = 0
    for i, (t, t_next) in enumerate(times):
        model_t = process.model_time(process.time_tensor(t, batch, x.device))
        if use_cfg:
            out = guided_output(model_fn, x, model_t, cond, uncond, guidance_scale)
        else:
            out = model_fn(x, model_t, cond)
        if out.shape != x.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} differs from the sample shape {tuple(x.shape)} "
                             f"(learned-variance outputs are not supported)")
        out = out.to(x.dtype)
        result = process.step(solver, out, x, t, t_next, generator=generator, eta=eta, clip_x0=clip_x0)
        taken = i + 1
        stop = bool(callback(StepInfo(i, t, t_next, x, out, result))) if callback is not None else False
        x = result.pred_x0 if stop else result.prev_sample
        if i in record or (stop and return_intermediates > 0):
            inter.append(result.pred_x0)
            inter_t.append(t)
        if stop:
            break
    return SampleOutput(x, tuple(inter), tuple(inter_t), taken)


class EarlyStop:
    """Seed 001's adaptive early stop as a ``sample(callback=...)``: stop once ‖ε̂‖ < ``threshold``.

    ‖ε̂‖ is the root-mean-square of the predicted noise per sample (independent of the latent
    size); the loop stops when every sample of the batch is below the threshold, after at least
    ``min_steps`` steps, and ``sample`` then returns that step's x̂0. With a ``process`` the
    network output is converted to ε first (v- or x0-prediction models); without one it is taken
    as ε. After the run: ``steps_taken``, ``stopped`` and the per-step batch maximum ``norms``.
    """

    def __init__(self, threshold: float = 0.05, process: DiffusionProcess | None = None, min_steps: int = 1) -> None:
        if not threshold > 0.0:
            raise ConfigError(f"early-stop threshold={threshold} must be > 0")
        if min_steps < 1:
            raise ConfigError(f"early-stop min_steps={min_steps} must be >= 1")
        self.threshold, self.process, self.min_steps = float(threshold), process, int(min_steps)
        self.norms: list[float] = []
        self.steps_taken = 0
        self.stopped = False

    def __call__(self, info: StepInfo) -> bool:
        eps = info.model_out if self.process is None else self.process.predict_epsilon(info.model_out, info.x_t,
                                                                                        info.t)
        norm = float(eps.float().flatten(1).square().mean(dim=1).sqrt().max())
        self.norms.append(norm)
        self.steps_taken = info.index + 1
        self.stopped = self.steps_taken >= self.min_steps and norm < self.threshold
        return self.stopped


def early_stop_callback(threshold: float = 0.05, process: DiffusionProcess | None = None,
                        min_steps: int = 1) -> EarlyStop:
    """An :class:`EarlyStop` callback (001: DDIM 50, η = 0, threshold 0.05); its ``steps_taken`` (and
    ``SampleOutput.steps_taken``) report the steps actually run."""
    return EarlyStop(threshold, process, min_steps)


__all__ = ["sample", "SampleOutput", "StepInfo", "trajectory_indices", "EarlyStop", "early_stop_callback"]
