"""Recipes: trainable stages registered by name (see :mod:`.registry`) and their models.

A stage implements :class:`bsynth_hpc.engine.stage.Stage`. The built-in ``smoke-*`` stages
(:mod:`.smoke`) are small but real and exercise every engine path in tests and benchmarks.
"""
from __future__ import annotations

from .registry import get_stage_class, register_stage, stage_names

__all__ = ["get_stage_class", "register_stage", "stage_names"]
