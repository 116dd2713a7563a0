"""Training backends: single process, PyTorch DDP, DeepSpeed ZeRO (see :mod:`.base`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ..config import EngineConfig
from ..stage import Phase
from ..ds_config import build_ds_config
from .base import StepResult, TrainUnit, resolve_backend
from .torch_native import TorchUnit

BACKENDS = ("single", "ddp", "deepspeed")


def build_units(kind: str, models: dict[str, nn.Module], phases: list[Phase], engine: EngineConfig,
                device: torch.device, world_size: int) -> dict[str, TrainUnit]:
    """One TrainUnit per phase, in phase order; ``models`` not owned by any phase stay bare."""
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)} or auto")
    if kind == "single" and world_size > 1:
        raise ConfigError(f"engine.backend=single with {world_size} processes: use ddp or deepspeed (or auto), or "
                          "launch one process")
    owners: dict[str, str] = {}
    for phase in phases:
        if phase.model not in models:
            raise ConfigError(f"phase {phase.name!r} trains model {phase.model!r}, which build_models() did not "
                              f"return (models: {', '.join(models)})")
        if phase.model in owners:
            raise ConfigError(f"model {phase.model!r} is trained by two phases ({owners[phase.model]!r}, "
                              f"{phase.name!r}): give each model one optimizer")
        owners[phase.model] = phase.name
    units: dict[str, TrainUnit] = {}
    ds_config: dict[str, Any] | None = None
    if kind == "deepspeed":
        from .deepspeed_unit import DeepSpeedUnit  # lazy: deepspeed is optional and heavy

        ds_config = build_ds_config(engine, world_size, device.type == "cuda")
    for phase in phases:
        module = models[phase.model]
        if kind == "deepspeed":
            assert ds_config is not None
            units[phase.name] = DeepSpeedUnit(phase, module.to(device), device, ds_config, engine.precision)
        else:
            units[phase.name] = TorchUnit(phase, module, device, engine.precision, engine.clip_grad,
                                          ddp=kind == "ddp")
    return units


__all__ = ["BACKENDS", "StepResult", "TrainUnit", "build_units", "resolve_backend"]
