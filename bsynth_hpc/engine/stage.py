"""The Stage interface: what a recipe implements so the engine can train it.

A recipe (WFDM, DiT-3D, ...) is a sequence of stages (``wfdm-vae`` then ``wfdm-ldm``). A stage
is a class registered in :mod:`bsynth_hpc.engine.registry` under its name. The engine owns
everything that depends on the backend, the launch and the run (devices, DDP/DeepSpeed
wrapping, optimizers, LR schedules, precision, EMA, checkpoints, logging); the stage owns the
science (models, losses, metrics, what to export). The same stage code therefore runs on one
CPU, under DDP and under DeepSpeed ZeRO-0..3.

What a stage declares
---------------------
``name``                       registry name, e.g. "wfdm-vae"
``config_class``               dataclass of the ``recipe:`` config section (validated like the rest)
``val_metric`` / ``val_mode``  the validation metric that selects the best checkpoint and drives
                               ReduceLROnPlateau ("min" or "max")

What a stage implements
-----------------------
``build_models() -> {name: nn.Module}``
    The trainable models, freshly initialised (the engine seeds the RNG first, so every rank
    builds identical weights). Build them with module-level factory functions so an export
    can name the factory. A model may offer ``set_activation_checkpointing(bool)``; the engine
    calls it when ``engine.activation_checkpointing`` is on (or the memory planner asks).
``phases() -> [Phase]``
    One phase per optimizer: which model it updates, the optimizer (``OptimSpec``; the engine
    builds it so backends can pick implementations), optional param groups, when it is active
    (``start_step``, ``every``) and an optional per-phase LR schedule. Phases run in list order within a step;
    a GAN stage lists the generator phase, then the discriminator phase. Each model belongs to
    at most one phase (one DeepSpeed engine per model).
``loss(phase, batch, ctx) -> {term: tensor}``
    The loss of one micro-batch for one phase; the ``"loss"`` term is minimised, the other
    terms are logged. ``ctx.models[name]`` is the model to call: for the phase's own model it
    is the wrapped one (DDP / DeepSpeed engine) so gradients are synchronised; the other
    models are frozen for the phase (no gradients flow into them). ``ctx.cache`` is a dict per
    micro-batch shared by the phases of one step (e.g. the generator phase leaves the detached
    reconstruction for the discriminator phase). Random draws come from ``ctx.randn`` /
    ``ctx.rand`` / ``ctx.randint`` (per-sample seeds, see :mod:`.noise`) so runs are
    reproducible whatever the number of ranks.
``validation_step(batch, ctx) -> {metric: (B,) tensor}``  (optional)
    Per-sample metric values; the engine averages them over the validation split and all
    ranks (padding items excluded) and reports ``val/<metric>``.
``ema_models() -> names``
    Models whose exponential moving average is kept (``engine.ema_decay``); validation and
    exports use the EMA weights when present.
``exports(models, ctx) -> [ExportSpec]``
    What to write to RUN/export at the end (and for the best checkpoint): one entry per model
    with its factory, factory kwargs and, for a compressor, the latent scale.

Optional hooks: ``dataset(split)`` (default: ``VolumeDataset`` over the store with the
configured modalities), ``sampling_weights(dataset)`` (per-item weights for balanced
sampling; default uniform shuffling), ``setup(device)`` (move frozen helpers to the device).

Stage state in checkpoints
--------------------------
``state_dict() -> dict`` / ``load_state_dict(state)``
    Training state the stage keeps itself, outside its models and optimizers (e.g. the round
    counter and running adversarial loss of a gated GAN schedule). ``state_dict`` returns plain
    data that ``torch.load(weights_only=True)`` reads back: dicts, lists, tuples, str, int,
    float, bool, None and tensors. The state must be the same on every rank (decide it from
    all-reduced values), like the step and the LR schedules: rank 0 writes it into the
    checkpoint's ``trainer.pt`` under ``"stage"`` for every backend (single, DDP, DeepSpeed),
    and on resume every rank passes it to ``load_state_dict`` after the models, optimizers and
    LR schedules are restored and before the first step. Default: ``{}`` and nothing to load.
    A checkpoint written before this hook existed has no ``"stage"`` entry; the stage then keeps
    its freshly initialised state (the engine says so when ``state_dict()`` is not empty).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.dataset import VolumeDataset
from ..errors import ConfigError
from .config import DataConfig, EngineConfig, ScheduleConfig
from .noise import sample_rand, sample_randint, sample_randn

Batch = dict[str, Any]


@dataclass(frozen=True)
class OptimSpec:
    """An optimizer the engine builds for a phase (AdamW, Adam or SGD)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.9

    def build(self, params: Any) -> torch.optim.Optimizer:
        """The torch optimizer over ``params`` (parameters or param groups)."""
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                     weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                    weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}")


@dataclass(frozen=True)
class Phase:
    """One optimizer's update: runs at steps ``start_step + k * every``.

    ``param_groups(model)`` may return torch param groups (dicts with "params" and per-group
    overrides such as "lr" or "weight_decay"); default: one group of all trainable parameters.
    """

    name: str
    model: str
    optimizer: OptimSpec
    start_step: int = 0
    every: int = 1
    schedule: ScheduleConfig | None = None
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None

    def optimizer_params(self, model: nn.Module) -> Any:
        """What the optimizer is built over: the custom groups or all trainable parameters."""
        if self.param_groups is not None:
            return self.param_groups(model)
        return [p for p in model.parameters() if p.requires_grad]

    def active(self, step: int) -> bool:
        """Whether the phase updates at global step ``step`` (0-based)."""
        return step >= self.start_step and (step - self.start_step) % self.every == 0

    def updates_before(self, step: int) -> int:
        """How many updates this phase made in steps [0, step)."""
        if step <= self.start_step:
            return 0
        return (step - self.start_step - 1) // self.every + 1

    def total_updates(self, max_steps: int) -> int:
        """Updates over a whole run of ``max_steps`` steps (the schedule's length)."""
        return max(1, self.updates_before(max_steps))


@dataclass(frozen=True)
class ExportSpec:
    """One inference export: RUN/export/<name>.safetensors + <name>.json."""

    name: str
    model: str
    factory: str
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    latent_scale: float | None = None
    use_ema: bool = True
    sidecar: Mapping[str, Any] = field(default_factory=dict)
    """Further JSON fields for the sidecar (e.g. metadata statistics, a pointer to the compressor run)."""


@dataclass(frozen=True)
class StageInfo:
    """Facts a stage may need at construction: the store and the engine settings."""

    store: str | None
    volume_shape: tuple[int, ...] | None
    data: DataConfig
    engine: EngineConfig


class StepContext:
    """What ``Stage.loss`` / ``validation_step`` see besides the batch (see the module docstring)."""

    def __init__(self, step: int, phase: str | None, models: Mapping[str, nn.Module], device: torch.device,
                 sample_seeds: torch.Tensor, cache: dict[str, Any] | None = None, training: bool = True,
                 compute_dtype: torch.dtype = torch.float32):
        self.step = step
        self.phase = phase
        self.models = models
        self.device = device
        self.sample_seeds = sample_seeds
        self.cache: dict[str, Any] = cache if cache is not None else {}
        self.training = training
        self.compute_dtype = compute_dtype

    def randn(self, shape: Sequence[int], salt: int | str = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, *shape) per-sample standard normal noise."""
        return sample_randn(self.sample_seeds, shape, salt, self.device, dtype or self.compute_dtype)

    def rand(self, salt: int | str = 0) -> torch.Tensor:
        """(B,) per-sample uniform [0, 1)."""
        return sample_rand(self.sample_seeds, salt, self.device)

    def randint(self, high: int, salt: int | str = 0) -> torch.Tensor:
        """(B,) per-sample integers in [0, high)."""
        return sample_randint(self.sample_seeds, high, salt, self.device)


class ExportContext:
    """What ``Stage.exports`` may use: the step, a few validation/training batches on CPU and the run
    folder (for a recipe's info file beside the exports; None outside a run)."""

    def __init__(self, step: int, batches: Iterator[Batch] | None = None, run_dir: Path | None = None):
        self.step = step
        self._batches = batches
        self.run_dir = run_dir

    def batches(self, n: int) -> list[Batch]:
        """Up to ``n`` batches (CPU tensors) for statistics such as the latent scale."""
        out: list[Batch] = []
        if self._batches is None:
            return out
        for batch in self._batches:
            out.append(batch)
            if len(out) >= n:
                break
        return out


class Stage(ABC):
    """Base class of a trainable recipe stage; see the module docstring for the contract."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    val_metric: ClassVar[str] = "loss"
    val_mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(self, config: Any, info: StageInfo):
        self.config = config
        self.info = info

    # ------------------------------------------------------------------ required
    @abstractmethod
    def build_models(self) -> dict[str, nn.Module]:
        """Fresh trainable models by name."""

    @abstractmethod
    def phases(self) -> list[Phase]:
        """One phase per optimizer, in update order."""

    @abstractmethod
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch for ``phase``; ``"loss"`` is minimised."""

    # ------------------------------------------------------------------ optional
    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Per-sample validation metrics, each a (B,) tensor; default: none."""
        return {}

    def preview(self, batch: Batch, ctx: StepContext, path: Path) -> Path | None:
        """Write a picture of the models' output on the first validation batch to ``path`` (a PNG under
        RUN/logs/previews/, rank 0 only) and return it; default: none. Lets a user see reconstructions
        while training runs."""
        return None

    def ema_models(self) -> tuple[str, ...]:
        """Models with an EMA copy (default: none)."""
        return ()

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        """Inference exports (default: none)."""
        return []

    def dataset(self, split: str | None) -> Dataset:
        """The dataset of one split (default: VolumeDataset over the store)."""
        if not self.info.store:
            raise ConfigError(f"stage {self.name} reads volumes: pass --store STORE.zarr (or set `store:` in the "
                              "config)")
        return VolumeDataset(self.info.store, split=split, modalities=self.info.data.modalities)

    def sampling_weights(self, dataset: Dataset) -> Sequence[float] | None:
        """Per-item draw weights for balanced sampling (None: uniform shuffling without replacement)."""
        return None

    def setup(self, device: torch.device) -> None:
        """Move frozen helpers (e.g. a pretrained encoder) to ``device``."""

    def state_dict(self) -> dict[str, Any]:
        """The stage's own training state, identical on every rank (module docstring); default: none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, on every rank); default: nothing to restore."""
        del state


__all__ = ["Batch", "OptimSpec", "Phase", "ExportSpec", "StageInfo", "StepContext", "ExportContext", "Stage"]
