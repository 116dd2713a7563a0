"""Named model configurations: a preset is a dict of config-dataclass fields, overridable per run."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

from ..errors import ConfigError

__all__ = ["preset_config"]

C = TypeVar("C")


def preset_config(cls: type[C], presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any],
                  what: str) -> C:
    """``cls(**presets[preset], **overrides)`` validated; ConfigError names unknown presets/fields.

    ``what`` names the model family in messages (e.g. "DiT-3D").
    """
    if preset not in presets:
        raise ConfigError(f"unknown {what} preset {preset!r}; presets: {', '.join(sorted(presets))}")
    valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown {what} config field(s) {unknown} for preset {preset!r}; valid fields: "
                          f"{', '.join(sorted(valid))}")
    config = cls(**{**presets[preset], **overrides})
    config.validate(preset)  # type: ignore[attr-defined]
    return config
