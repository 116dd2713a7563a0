"""The DeepSpeed config generated from ``engine:`` settings, overridable by a user JSON file.

The generated config covers batch geometry, ZeRO stage, CPU/NVMe offload, bf16/fp16 and
gradient clipping. ``engine.ds_config_override`` names a JSON file deep-merged on top (its
values win), for DeepSpeed knobs the run config does not model (bucket sizes, AIO settings,
prefetch limits, ...). The batch keys must stay consistent with the engine's own data
pipeline, so an override that changes them is refused with the engine key to set instead.
Optimizer and scheduler sections are refused too: the engine builds optimizers per phase
and drives the learning rate itself.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .config import EngineConfig

_QUIET_STEPS = 2**31 - 1


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively by ``override`` (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _offload(device: str, nvme_path: str | None, pin: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": pin}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def generate_ds_config(engine: EngineConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The ds_config for one model/optimizer pair of this run (before the user override)."""
    zero: dict[str, Any] = {"stage": engine.zero_stage, "contiguous_gradients": True,
                            "overlap_comm": on_gpu, "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    if engine.zero_stage == 3:
        zero.update({"stage3_prefetch_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e5,
                     "stage3_gather_16bit_weights_on_model_save": False})
    if engine.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(engine.offload_optimizer, engine.nvme_path, on_gpu)
    if engine.offload_param != "none":
        zero["offload_param"] = _offload(engine.offload_param, engine.nvme_path, on_gpu)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": engine.micro_batch,
        "gradient_accumulation_steps": engine.grad_accum,
        "train_batch_size": engine.micro_batch * engine.grad_accum * world_size,
        "gradient_clipping": engine.clip_grad,
        "zero_optimization": zero,
        "bf16": {"enabled": engine.precision == "bf16"},
        "fp16": {"enabled": engine.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    return config


_ENGINE_OWNED = {
    "train_micro_batch_size_per_gpu": "engine.micro_batch",
    "gradient_accumulation_steps": "engine.grad_accum",
    "train_batch_size": "engine.micro_batch and engine.grad_accum",
    "optimizer": "the stage's OptimSpec (recipe settings)",
    "scheduler": "engine.schedule",
}


def load_override(path: str | None) -> dict[str, Any]:
    """The user's ds_config JSON (empty without a path)."""
    if not path:
        return {}
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"engine.ds_config_override={path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"engine.ds_config_override={path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"engine.ds_config_override={path!r} must hold a JSON object")
    for key, owner in _ENGINE_OWNED.items():
        if key in data:
            raise ConfigError(f"engine.ds_config_override={path!r} sets {key!r}, which the engine owns: set "
                              f"{owner} instead and remove the key from the JSON file")
    return data


def build_ds_config(engine: EngineConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """Generated ds_config with the user override merged on top."""
    config = deep_merge(generate_ds_config(engine, world_size, on_gpu), load_override(engine.ds_config_override))
    if config["bf16"].get("enabled") and config["fp16"].get("enabled"):
        raise ConfigError("the ds_config enables both bf16 and fp16: choose one with engine.precision")
    return config
