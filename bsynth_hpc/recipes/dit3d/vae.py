"""Stage ``dit3d-vae``: seed 000's VAE-GAN compressor and its two-phase training schedule (000 §5.1).

Model: ``tle-vaegan`` (:func:`bsynth_hpc.models.autoencoder.build_compressor`; f = 4, 4 latent
channels: 112x136x112 -> 4x28x34x28) + a 3D PatchGAN (``patchgan3d``). Losses: ``VAEGANLoss``
with 000's weights (preset ``tle``: L1 1.0, LPIPS 0.6, KL 1e-6, adversarial 0.02), LPIPS on
tri-planar slices (``SlicePerceptualLoss``; ``perceptual.allow_random`` is the smoke-test flag).
Loss wiring, discriminator phase, validation (``l1``, ``psnr`` and 000's weighted ``loss``, which
selects the best checkpoint) and the export with s_z come from the shared
:class:`~bsynth_hpc.recipes.common.vaegan_stage.VAEGANStage`; this module adds the schedule.

Schedule (000 §5.1), as a state machine shared by both engine phases:

* phase 1 (steps < ``phase1_steps``): the VAE trains alone on L1 + LPIPS + KL; the
  discriminator phase is inactive (``start_step = phase1_steps``).
* phase 2, ``rounds`` rounds of: the discriminator trains alone for ``disc_steps`` steps (000:
  "2 epochs"), then the VAE trains alone with the adversarial term added until the running
  (EMA, ``adv_ema``) adversarial loss falls below ``adv_threshold`` (000: 0.1), after at least
  ``vae_min_steps`` and at most ``vae_max_steps`` steps.
* after the last round the VAE keeps training with the adversarial term, the discriminator frozen.

How the engine expresses it: a phase's activity is ``Phase.active(step)``; the two phases here
are :class:`GatedPhase` whose ``active`` asks the schedule (decided once per step, identically on
every rank: the adversarial values feeding the EMA are all-reduced over ranks in ``loss()``).
``updates_before`` counts the phase's real updates so per-phase LR schedules advance per update.
The schedule's state (mode, round, steps in the mode, adversarial EMA, per-phase update counts) is
the stage's ``state_dict()``, saved in every engine checkpoint, so a resumed run continues the
round it was interrupted in exactly as the uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from ...configtools import require
from ...engine.stage import ExportContext, OptimSpec, Phase, StepContext
from ...models.autoencoder import Autoencoder3d, preset_config
from ..common.vaegan_stage import VAEGANConfig, VAEGANStage

VAE_FACTORY = "autoencoder3d"  # registry name (bsynth_hpc.models)

Mode = Literal["vae", "disc", "vae_adv", "final"]


@dataclass
class DiT3dVAEConfig(VAEGANConfig):
    """recipe: section of dit3d-vae (defaults: seed 000 §5.1 at full size); shared fields in VAEGANConfig."""

    config_aliases = {**VAEGANConfig.config_aliases, "slices_per_plane": "perceptual.slices_per_plane",
                      "perceptual_allow_random": "perceptual.allow_random", "disc_channels": "discriminator.channels",
                      "disc_layers": "discriminator.num_layers"}
    # the compressor: overrides of the tle-vaegan preset
    base_channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    latent_channels: int = 4
    downsample_factor: int = 4
    num_res_blocks: int = 1
    norm_groups: int = 32
    pad_input: bool = False
    # 000's loss weights and learning rates
    adversarial: Literal["bce", "hinge", "lsgan"] = "lsgan"
    perceptual_weight: float = 0.6
    kl_weight: float = 1e-6
    adv_weight: float = 0.02
    lr: float = 1e-3
    # the two-phase schedule
    phase1_steps: int = 10000
    disc_steps: int = 200
    vae_min_steps: int = 1
    vae_max_steps: int = 2000
    adv_threshold: float = 0.1
    adv_ema: float = 0.9
    rounds: int = 65

    def validate(self, where: str) -> None:
        require(self.base_channels >= 1 and self.latent_channels >= 1, f"{where}: channels must be >= 1")
        super().validate(where)
        require(self.phase1_steps >= 0, f"{where}.phase1_steps must be >= 0")
        require(self.disc_steps >= 1, f"{where}.disc_steps must be >= 1 (discriminator steps per round)")
        require(1 <= self.vae_min_steps <= self.vae_max_steps,
                f"{where}: need 1 <= vae_min_steps ({self.vae_min_steps}) <= vae_max_steps ({self.vae_max_steps})")
        require(0.0 <= self.adv_ema < 1.0, f"{where}.adv_ema must lie in [0, 1)")
        require(self.rounds >= 0, f"{where}.rounds must be >= 0")


class GANSchedule:
    """000's alternation as a per-step decision (see the module docstring)."""

    def __init__(self, c: DiT3dVAEConfig):
        self.c = c
        self.step: int | None = None
        self.mode: Mode | None = None
        self.round = 0
        self.in_mode = 0  # completed steps in the current mode
        self.ema: float | None = None
        self.pending: list[float] = []
        self.updates = {"vae": 0, "disc": 0}
        self.history: list[tuple[int, str]] = []

    def record_adv(self, value: float) -> None:
        """An (all-rank averaged) adversarial generator loss of the current step."""
        self.pending.append(float(value))

    def _enter(self, step: int) -> None:
        c, prev = self.c, self.mode
        if prev is not None:
            self.in_mode += 1
            for phase in self.phases_of(prev):
                self.updates[phase] += 1
        if prev == "vae_adv" and self.pending:
            v = sum(self.pending) / len(self.pending)
            self.ema = v if self.ema is None else c.adv_ema * self.ema + (1.0 - c.adv_ema) * v
        self.pending = []
        if step < c.phase1_steps:
            mode: Mode = "vae"
        elif prev is None or prev == "vae":
            mode = "disc" if c.rounds > 0 else "final"
            self.round, self.in_mode = 0, 0
        elif prev == "disc" and self.in_mode >= c.disc_steps:
            mode, self.in_mode, self.ema = "vae_adv", 0, None
        elif prev == "vae_adv" and self.in_mode >= c.vae_min_steps and (
                (self.ema is not None and self.ema < c.adv_threshold) or self.in_mode >= c.vae_max_steps):
            self.round += 1
            mode = "final" if self.round >= c.rounds else "disc"
            self.in_mode = 0
        else:
            mode = prev
        if mode != prev:
            self.history.append((step, mode))
        self.mode, self.step = mode, step

    def mode_at(self, step: int) -> Mode:
        if self.step != step:
            self._enter(step)
        assert self.mode is not None
        return self.mode

    @staticmethod
    def phases_of(mode: Mode) -> tuple[str, ...]:
        return ("disc",) if mode == "disc" else ("vae",)

    def active(self, phase: str, step: int) -> bool:
        return phase in self.phases_of(self.mode_at(step))

    def updates_before(self, phase: str, step: int) -> int:
        self.mode_at(step)
        return self.updates[phase]

    def state_dict(self) -> dict[str, Any]:
        """Plain data (checkpoint-safe) of the decision made for the last step seen."""
        return {"step": self.step, "mode": self.mode, "round": self.round, "in_mode": self.in_mode,
                "ema": self.ema, "pending": list(self.pending), "updates": dict(self.updates),
                "history": [[step, mode] for step, mode in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = None if state["step"] is None else int(state["step"])
        self.mode = state["mode"]
        self.round, self.in_mode = int(state["round"]), int(state["in_mode"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.pending = [float(v) for v in state["pending"]]
        self.updates = {k: int(v) for k, v in state["updates"].items()}
        self.history = [(int(step), str(mode)) for step, mode in state["history"]]


@dataclass(frozen=True)
class GatedPhase(Phase):
    """A Phase whose activity is decided at run time by ``gate(name, step)`` (rank-consistent)."""

    gate: Callable[[str, int], bool] | None = None
    counter: Callable[[str, int], int] | None = None

    def active(self, step: int) -> bool:
        if not super().active(step):
            return False
        return True if self.gate is None else bool(self.gate(self.name, step))

    def updates_before(self, step: int) -> int:
        if self.counter is None:
            return super().updates_before(step)
        return int(self.counter(self.name, step))

    def total_updates(self, max_steps: int) -> int:
        """The ungated bound (the gate decides at run time, so the real count is not known ahead);
        asking the gate about step ``max_steps`` would advance its state machine before step 0."""
        return max(1, super().updates_before(max_steps))


def _global_mean(value: torch.Tensor) -> float:
    v = value.detach().float().reshape(1).clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(v)
            v = v / world
    return float(v.item())


class DiT3dVAEStage(VAEGANStage):
    """dit3d-vae: see the module docstring."""

    name = "dit3d-vae"
    config_class = DiT3dVAEConfig
    val_metric = "loss"
    val_mode = "min"
    generator_phase = "vae"
    discriminator_phase = "disc"
    vae_factory = VAE_FACTORY
    validation_loss = True

    def __init__(self, config: DiT3dVAEConfig, info: Any):
        self.schedule = GANSchedule(config)
        super().__init__(config, info)

    # ------------------------------------------------------------------ models and the schedule
    def vae_kwargs(self) -> dict[str, Any]:
        c: DiT3dVAEConfig = self.config
        overrides: dict[str, Any] = dict(base_channels=c.base_channels, latent_channels=c.latent_channels,
                                         downsample_factor=c.downsample_factor, num_res_blocks=c.num_res_blocks,
                                         norm_groups=c.norm_groups, pad_input=c.pad_input)
        if c.channel_mult is not None:
            overrides["channel_mult"] = tuple(c.channel_mult)
        return preset_config("tle-vaegan", **overrides).to_dict()

    def build_vae(self) -> nn.Module:
        return Autoencoder3d(**self.vae_kwargs())

    def generator_optimizer(self) -> OptimSpec:
        return OptimSpec("adam", lr=self.config.lr)

    def discriminator_optimizer(self) -> OptimSpec:
        return OptimSpec("adam", lr=self.config.disc_lr, betas=(0.5, 0.999))

    def discriminator_timing(self) -> dict[str, int]:
        return {"start_step": self.config.phase1_steps}

    def trains_discriminator(self) -> bool:
        return True  # the schedule alternates whatever the adversarial weight

    def make_phase(self, name: str, model: str, optimizer: OptimSpec, **kwargs: Any) -> Phase:
        return GatedPhase(name, model, optimizer, gate=self.schedule.active, counter=self.schedule.updates_before,
                          **kwargs)

    def adversarial_on(self, ctx: StepContext) -> bool:
        return self.schedule.mode_at(ctx.step) in ("vae_adv", "final")

    def generator_extras(self, terms: Mapping[str, torch.Tensor], ctx: StepContext,
                         device: torch.device) -> dict[str, torch.Tensor]:
        if "adv_g" in terms:
            self.schedule.record_adv(_global_mean(terms["adv_g"]))
        ema = self.schedule.ema
        return {"gan_round": torch.tensor(float(self.schedule.round), device=device),
                "adv_ema": torch.tensor(float("nan") if ema is None else ema, device=device)}

    def discriminator_extras(self, ctx: StepContext, device: torch.device) -> dict[str, torch.Tensor]:
        return {"gan_round": torch.tensor(float(self.schedule.round), device=device)}

    def state_dict(self) -> dict[str, Any]:
        return {"gan_schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "gan_schedule" in state:
            self.schedule.load_state_dict(state["gan_schedule"])

    # ------------------------------------------------------------------ export
    def latent_scale(self, vae: nn.Module, ctx: ExportContext) -> float | None:
        """s_z over up to 8 validation batches; None (left to ``bsynth encode``) when they give none."""
        try:
            scale = float(self.estimate_scale(vae, [b["image"] for b in ctx.batches(8)]))
        except Exception:  # no batches, constant/untrained encoder: leave it to `bsynth encode`
            return None
        return scale if math.isfinite(scale) else None

    def export_sidecar(self, vae: nn.Module) -> dict[str, Any]:
        return {"latent_scale_source": "validation split (training split without one), 8 batches max"}


__all__ = ["DiT3dVAEConfig", "DiT3dVAEStage", "GANSchedule", "GatedPhase"]
