"""Stage registry: name -> Stage class, imported lazily from "module:Class" targets.

Adding a recipe stage means adding one line to ``_BUILTIN`` (or calling ``register_stage``
from a plug-in); nothing is imported until the stage is asked for, so the CLI stays fast and
a recipe's heavy dependencies only load when that recipe trains.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..engine.stage import Stage

_BUILTIN: dict[str, str] = {
    "smoke-vaegan": "bsynth_hpc.recipes.smoke:SmokeVAEGANStage",
    "smoke-denoiser": "bsynth_hpc.recipes.smoke:SmokeDenoiserStage",
    "wfdm-vae": "bsynth_hpc.recipes.wfdm.stages:WFDMVAEStage",
    "wfdm-ldm": "bsynth_hpc.recipes.wfdm.stages:WFDMLDMStage",
    "dit3d-vae": "bsynth_hpc.recipes.dit3d.vae:DiT3dVAEStage",
    "dit3d": "bsynth_hpc.recipes.dit3d.ldm:DiT3dStage",
}

_PLANNED: dict[str, str] = {}

_registry: dict[str, "str | type[Stage]"] = dict(_BUILTIN)


def register_stage(name: str, target: "str | type[Stage]") -> None:
    """Register ``name`` as a Stage class or a "module.path:ClassName" string."""
    if not name or not isinstance(name, str):
        raise ValueError("a stage name must be a non-empty string")
    _registry[name] = target


def stage_names() -> list[str]:
    """Registered stage names, sorted."""
    return sorted(_registry)


def get_stage_class(name: str) -> "type[Stage]":
    """The Stage class registered as ``name``; ConfigError lists the registered names."""
    target = _registry.get(name)
    if target is None:
        later = f" ({name} arrives with {_PLANNED[name]})" if name in _PLANNED else ""
        raise ConfigError(f"unknown stage {name!r}{later}; registered stages: {', '.join(stage_names())}")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"stage {name!r} is registered as {target!r} but cannot be loaded ({exc}); "
                              "check the installation (`pip install -e .`) or the registry entry") from exc
        _registry[name] = target
    return target  # type: ignore[return-value]
