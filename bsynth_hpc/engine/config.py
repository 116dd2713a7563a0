"""The run configuration: ``stage`` + ``engine`` + ``data`` + ``recipe`` sections.

A run config YAML looks like::

    stage: wfdm-vae              # the registered stage (the CLI's STAGE argument must agree)
    engine: {backend: auto, micro_batch: 2, max_steps: 1000, schedule: {name: cosine, warmup: 50}, ...}
    data: {train_split: train, val_split: val, num_workers: 2}
    recipe: {...}                # the stage's own dataclass (Stage.config_class)

``load_run_config`` applies dotted command-line overrides (``engine.zero_stage=3``) before
validation, so an override is checked exactly like a YAML value. The resolved config (every
default filled in) is written as RUN/config.yaml by the trainer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from ..configtools import _closest, apply_overrides, field_names, from_mapping, require, to_plain
from ..errors import ConfigError
from .registry import get_stage_class

Backend = Literal["auto", "deepspeed", "ddp", "single"]
Offload = Literal["none", "cpu", "nvme"]
Precision = Literal["fp32", "bf16", "fp16"]
ScheduleName = Literal["constant", "cosine", "cosine_restarts", "plateau"]


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of one optimizer, counted in that optimizer's own steps.

    ``warmup`` linear steps from lr/warmup to lr, then ``name``: constant; cosine (to
    ``min_lr_ratio`` * lr at the last step); cosine_restarts (SGDR: first period
    ``restart_period`` steps, each next one ``restart_mult`` times longer); plateau
    (ReduceLROnPlateau on the stage's validation metric: multiply by ``plateau_factor`` after
    ``plateau_patience`` validations without a relative improvement of ``plateau_threshold``,
    never below ``min_lr_ratio``).
    """

    name: ScheduleName = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.0
    restart_period: int = 1000
    restart_mult: int = 1
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    plateau_threshold: float = 1e-4
    plateau_cooldown: int = 0

    def validate(self, where: str) -> None:
        require(self.warmup >= 0, f"{where}.warmup={self.warmup} must be >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, f"{where}.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        require(self.restart_period >= 1, f"{where}.restart_period={self.restart_period} must be >= 1")
        require(self.restart_mult >= 1, f"{where}.restart_mult={self.restart_mult} must be an integer >= 1")
        require(0.0 < self.plateau_factor < 1.0, f"{where}.plateau_factor={self.plateau_factor} must be in (0, 1)")
        require(self.plateau_patience >= 0, f"{where}.plateau_patience must be >= 0")
        require(self.plateau_threshold >= 0, f"{where}.plateau_threshold must be >= 0")
        require(self.plateau_cooldown >= 0, f"{where}.plateau_cooldown must be >= 0")


@dataclass
class TimeoutConfig:
    """How long to wait before declaring a peer dead (seconds).

    ``collective``: process-group timeout (a collective waiting longer raises on every live
    rank); ``init``: rendezvous at start-up; ``step``: watchdog on the training loop (no step
    finished for this long -> stack dump and exit 5); 0 disables the watchdog.
    """

    collective: float = 1800.0
    init: float = 900.0
    step: float = 3600.0

    def validate(self, where: str) -> None:
        require(self.collective > 0, f"{where}.collective={self.collective} must be > 0 seconds")
        require(self.init > 0, f"{where}.init={self.init} must be > 0 seconds")
        require(self.step >= 0, f"{where}.step={self.step} must be >= 0 seconds (0 = no watchdog)")


@dataclass
class EngineConfig:
    """Backend, batch geometry, optimisation and bookkeeping of a training run.

    ``micro_batch`` is per rank and per forward; the global batch of one optimizer step is
    micro_batch * grad_accum * world_size. ``zero_stage``, ``offload_*`` and ``ds_config_override``
    apply to the deepspeed backend. ``backend=auto``: one process -> single; several ->
    deepspeed when the Adam state of the stage's models would take more than a quarter of
    one device's memory (ZeRO pays off), else ddp (ZeRO's per-parameter hooks cost more than
    they save on small conv nets).
    """

    backend: Backend = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    zero_stage: int = 2
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"
    nvme_path: str | None = None
    precision: Precision = "fp32"
    micro_batch: int = 1
    grad_accum: int = 1
    global_batch: int | None = None
    """The batch of one optimizer step whatever the launch layout: micro_batch (at most) and grad_accum are
    derived from it for the world size (``batch_layout``); None: micro_batch x grad_accum x world size."""
    clip_grad: float = 1.0
    ema_decay: float = 0.999
    ema_every: int = 1
    ema_start: int = 0
    activation_checkpointing: bool = False
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_steps: int = 1000
    val_every: int = 500
    val_batches: int | None = None
    ckpt_every: int = 1000
    keep_last: int = 3
    keep_best: bool = True
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    seed: int = 0
    deterministic: bool = False
    ds_config_override: str | None = None
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    nan_tolerance: int = 5
    gpu_mem_gb: float | None = None
    export_at_end: bool = True

    def validate(self, where: str) -> None:
        require(self.zero_stage in (0, 1, 2, 3), f"{where}.zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        require(self.micro_batch >= 1, f"{where}.micro_batch={self.micro_batch} must be >= 1")
        require(self.grad_accum >= 1, f"{where}.grad_accum={self.grad_accum} must be >= 1")
        require(self.global_batch is None or self.global_batch >= 1,
                f"{where}.global_batch={self.global_batch} must be >= 1 or null (micro_batch x grad_accum x ranks)")
        require(self.clip_grad >= 0, f"{where}.clip_grad={self.clip_grad} must be >= 0 (0 = no clipping)")
        require(0.0 <= self.ema_decay < 1.0, f"{where}.ema_decay={self.ema_decay} must be in [0, 1) (0 = no EMA)")
        require(self.ema_every >= 1, f"{where}.ema_every={self.ema_every} must be >= 1")
        require(self.ema_start >= 0, f"{where}.ema_start={self.ema_start} must be >= 0")
        require(self.max_steps >= 1, f"{where}.max_steps={self.max_steps} must be >= 1")
        require(self.val_every >= 0, f"{where}.val_every={self.val_every} must be >= 0 (0 = never)")
        require(self.val_batches is None or self.val_batches >= 1,
                f"{where}.val_batches={self.val_batches} must be >= 1 or null (all)")
        require(self.ckpt_every >= 0, f"{where}.ckpt_every={self.ckpt_every} must be >= 0 (0 = only at the end)")
        require(self.keep_last >= 1, f"{where}.keep_last={self.keep_last} must be >= 1")
        require(self.log_every >= 1, f"{where}.log_every={self.log_every} must be >= 1")
        require(self.nan_tolerance >= 1, f"{where}.nan_tolerance={self.nan_tolerance} must be >= 1")
        require(self.gpu_mem_gb is None or self.gpu_mem_gb > 0, f"{where}.gpu_mem_gb must be > 0 or null")
        if self.backend in ("ddp", "single"):
            require(self.offload_optimizer == "none" and self.offload_param == "none",
                    f"{where}.offload_optimizer/offload_param need {where}.backend=deepspeed (or auto); "
                    f"backend={self.backend} keeps everything on the device")
        require(self.offload_param == "none" or self.zero_stage == 3,
                f"{where}.offload_param={self.offload_param} needs {where}.zero_stage=3 (parameters are only "
                "partitioned, hence offloadable, in ZeRO-3)")
        require(self.offload_optimizer == "none" or self.zero_stage >= 1,
                f"{where}.offload_optimizer={self.offload_optimizer} needs {where}.zero_stage >= 1")
        require(self.offload_param != "nvme" or self.offload_optimizer == "nvme",
                f"{where}.offload_param=nvme requires {where}.offload_optimizer=nvme as well (DeepSpeed rule)")
        if "nvme" in (self.offload_optimizer, self.offload_param):
            require(bool(self.nvme_path), f"{where}.nvme_path is required with NVMe offload: set it to a fast "
                                          "local directory, e.g. engine.nvme_path=/local/scratch/$USER")
        if self.ds_config_override is not None:
            require(Path(self.ds_config_override).is_file(),
                    f"{where}.ds_config_override={self.ds_config_override!r} does not exist: give the path of a "
                    "DeepSpeed JSON file whose keys override the generated ds_config")

    def batch_layout(self, world_size: int) -> dict[str, int]:
        """micro_batch and grad_accum that give ``global_batch`` on ``world_size`` ranks: the largest
        micro-batch up to the configured one that divides the per-rank share ({} when global_batch is unset)."""
        if self.global_batch is None:
            return {}
        if self.global_batch % world_size:
            divisors = [d for d in range(1, self.global_batch + 1) if self.global_batch % d == 0]
            raise ConfigError(f"engine.global_batch={self.global_batch} cannot be split evenly over {world_size} "
                              f"ranks: launch {', '.join(map(str, divisors))} ranks, or change engine.global_batch")
        per_rank = self.global_batch // world_size
        micro = max(d for d in range(1, min(self.micro_batch, per_rank) + 1) if per_rank % d == 0)
        return {"micro_batch": micro, "grad_accum": per_rank // micro}

    @property
    def per_rank_batch(self) -> int:
        """Samples one rank consumes per optimizer step."""
        return self.micro_batch * self.grad_accum


@dataclass
class DataConfig:
    """Which volumes feed the stage. ``modalities`` None = all; ``val_split`` None = no validation."""

    train_split: str = "train"
    val_split: str | None = "val"
    modalities: list[str] | None = None
    num_workers: int = 2
    val_micro_batch: int | None = None

    def validate(self, where: str) -> None:
        require(self.num_workers >= 0, f"{where}.num_workers={self.num_workers} must be >= 0")
        require(self.val_micro_batch is None or self.val_micro_batch >= 1,
                f"{where}.val_micro_batch must be >= 1 or null (= engine.micro_batch)")


@dataclass
class RunConfig:
    """A complete, validated run configuration (``recipe`` is the stage's own dataclass)."""

    stage: str
    engine: EngineConfig
    data: DataConfig
    recipe: Any
    store: str | None = None
    run_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what RUN/config.yaml holds)."""
        return {"stage": self.stage, "store": self.store, "run_dir": self.run_dir,
                "engine": to_plain(self.engine), "data": to_plain(self.data), "recipe": to_plain(self.recipe)}

    def with_engine(self, **changes: Any) -> "RunConfig":
        """A copy with some engine fields replaced (re-validated)."""
        engine = replace(self.engine, **changes)
        engine.validate("engine")
        return replace(self, engine=engine)


TOP_LEVEL_KEYS = ("stage", "store", "run_dir", "engine", "data", "recipe")


PACKAGED_CONFIGS = "bsynth_hpc.configs"
"""The package holding the default recipe configs (configs/ in the checkout, YAML package data)."""


def packaged_config(name: str) -> Path:
    """The packaged default config ``name`` (``wfdm-vae_tiny.yaml``; the ``.yaml`` may be left off), read
    with importlib.resources so it works from a wheel as from the checkout; ConfigError lists them."""
    root = resources.files(PACKAGED_CONFIGS)
    for candidate in (name, f"{name}.yaml"):
        entry = root / candidate
        if entry.is_file():
            return Path(str(entry))
    names = sorted(e.name for e in root.iterdir() if e.name.endswith(".yaml"))
    raise ConfigError(f"no packaged config named {name!r}; packaged configs: {', '.join(names)}")


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """``--config`` as given when that file exists, else the packaged config of that bare name (so
    ``--config wfdm-vae_tiny.yaml`` works from any folder and from a non-editable install)."""
    p = Path(path)
    if p.is_file() or p.name != str(path):
        return p
    try:
        return packaged_config(str(path))
    except ConfigError:
        return p


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping from ``path`` (see :func:`resolve_config_path`; empty file -> {}); ConfigError when
    missing or not a mapping."""
    p = resolve_config_path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist: pass --config with a YAML file or the name of a "
                          f"packaged config (see configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return data


def build_run_config(raw: dict[str, Any], stage: str | None = None, overrides: Sequence[str] = (),
                     source: str = "config", default_stage: str | None = None) -> RunConfig:
    """Validate a raw config dict (+ overrides) into a RunConfig.

    ``stage`` is the CLI's STAGE (must agree with the config's ``stage:``); ``default_stage``
    (a launcher's) applies only when neither names one.
    """
    raw = apply_overrides(json.loads(json.dumps(raw)), overrides)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown top-level key {key!r} in {source}{_closest(str(key), TOP_LEVEL_KEYS)}; "
                              f"valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    declared = raw.get("stage")
    if stage and declared and stage != declared:
        raise ConfigError(f"{source} is for stage {declared!r} but the command asks for {stage!r}: "
                          "use the matching configs/<stage>.yaml or fix the `stage:` key")
    name = stage or declared or default_stage
    if not name:
        raise ConfigError(f"no stage given: pass STAGE on the command line or set `stage:` in {source}")
    stage_cls = get_stage_class(str(name))
    engine = from_mapping(EngineConfig, raw.get("engine"), "engine")
    data = from_mapping(DataConfig, raw.get("data"), "data")
    recipe = from_mapping(stage_cls.config_class, raw.get("recipe"), "recipe")
    for key in ("store", "run_dir"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{key}={raw[key]!r} in {source} must be a path string")
    return RunConfig(stage=str(name), engine=engine, data=data, recipe=recipe, store=raw.get("store"),
                     run_dir=raw.get("run_dir"))


def load_run_config(path: str | os.PathLike[str] | None, stage: str | None = None,
                    overrides: Sequence[str] = (), default_stage: str | None = None) -> RunConfig:
    """Read ``path`` (None = defaults only), apply overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    return build_run_config(raw, stage, overrides, source=str(path) if path else "the defaults",
                            default_stage=default_stage)


def save_run_config(config: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, p)
    return p


__all__ = ["ScheduleConfig", "TimeoutConfig", "EngineConfig", "DataConfig", "RunConfig", "load_run_config",
           "build_run_config", "save_run_config", "read_yaml", "packaged_config", "resolve_config_path",
           "field_names", "TOP_LEVEL_KEYS"]
