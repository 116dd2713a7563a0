"""The diffusion layer shared by every denoiser recipe (WFDM, DiT-3D, the 2D LDMs).

Modules (each has one job):

``schedules``  β schedules (linear, scaled_linear, cosine, cosine_ramp) and their registry
``process``    the DiffusionProcess interface (time convention, conversions, sampler hooks)
``ddpm``       discrete Gaussian diffusion: forward, ε/v/x0 conversions, posterior, ancestral and DDIM steps
``rflow``      rectified flow: interpolation, velocity target, training-time sampling, Euler steps
``losses``     ``diffusion_loss`` (ℓ2 / ℓ1, float32, per-sample reductions)
``objective``  ``TrainingObjective``: x0 -> (x_t, model time, target) for any process
``guidance``   classifier-free guidance over pytree conditions, one batched forward
``sampling``   the ``sample`` loop (all solvers, guidance, x̂0 trajectory, early stop) and 001's ε-norm early stop
``cutmix``     latent CutMix (001): one random box swapped between latents of a batch, same box for the noise
``config``     ``DiffusionConfig`` / ``SamplingConfig`` and the ``build_*`` factories

Typical use in a recipe::

    cfg = DiffusionConfig.from_dict(raw["diffusion"])
    process = build_process(cfg); objective = build_objective(cfg, process)
    nb = objective.draw(z0, noise=ctx.randn(z0.shape[1:]), u=ctx.rand())
    loss = objective.loss(model(nb.x_t, nb.model_t, cond), nb)
    out = sample(model_fn, shape, process, generator=g, cond=c, uncond=null, **cfg.sampling_kwargs())
"""
from __future__ import annotations

from .config import DiffusionConfig, SamplingConfig, build_objective, build_process, build_schedule
from .ddpm import DDPMProcess, ddpm_timesteps
from .guidance import cfg_combine, concat_conditions, guided_output
from .losses import diffusion_loss
from .objective import NoisedBatch, TrainingObjective
from .process import PREDICTION_TYPES, DiffusionProcess, StepOutput
from .rflow import RFlowProcess, timestep_transform
from .cutmix import CutMix, cutmix_boxes, latent_cutmix
from .sampling import EarlyStop, SampleOutput, StepInfo, early_stop_callback, sample, trajectory_indices
from .schedules import NoiseSchedule, available_schedules, make_schedule, register_schedule

__all__ = ["DiffusionConfig", "SamplingConfig", "build_objective", "build_process", "build_schedule",
           "DDPMProcess", "ddpm_timesteps", "cfg_combine", "concat_conditions", "guided_output", "diffusion_loss",
           "NoisedBatch", "TrainingObjective", "PREDICTION_TYPES", "DiffusionProcess", "StepOutput", "RFlowProcess",
           "timestep_transform", "SampleOutput", "StepInfo", "sample", "trajectory_indices", "EarlyStop",
           "early_stop_callback", "CutMix", "cutmix_boxes", "latent_cutmix", "NoiseSchedule",
           "available_schedules", "make_schedule", "register_schedule"]
