"""The training engine: one trainer for single-process, DDP and DeepSpeed ZeRO runs.

Modules (each has one job):

``config``       run config dataclasses (engine/data sections), YAML + dotted overrides
``stage``        the Stage interface recipes implement (read its docstring first)
``trainer``      the training loop (phases, accumulation, EMA, validation, checkpoints)
``run``          ``bsynth train`` / launcher entry: arguments -> ranks -> Trainer -> exit status
``distributed``  rank discovery (torchrun, deepspeed, SLURM, MPI) and process groups
``backends``     single / DDP / DeepSpeed train units; ``ds_config`` generates DeepSpeed configs
``data``         layout-independent, resumable data order; ``noise`` per-sample random draws
``schedules``    LR schedules; ``ema`` weight averages; ``checkpoint`` atomic checkpoints
``export``       inference exports (safetensors + JSON sidecar)
``signals`` / ``watchdog`` / ``faults``  preemption, hang detection, fault injection for tests
``monitor``      progress bar, metrics.jsonl, TensorBoard, status.json
``planner``      single-card memory planner

Heavy imports (DeepSpeed, tensorboard) happen only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Trainer": ".trainer", "train_main": ".run", "RunConfig": ".config", "EngineConfig": ".config",
    "load_run_config": ".config", "Stage": ".stage", "Phase": ".stage", "OptimSpec": ".stage",
    "ExportSpec": ".stage", "StepContext": ".stage", "export_model": ".export", "load_exported": ".export",
    "discover": ".distributed", "DistInfo": ".distributed",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
