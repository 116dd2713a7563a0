"""Neural-network building blocks for the recipes.

The fast-op modules live next to their kernels (one module per op) and call the
`bsynth_hpc.ops` facade; they are re-exported here so model code imports blocks from
`bsynth_hpc.nn` and never from `kernels`.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "GroupNormSiLU": "bsynth_hpc.kernels.group_norm_silu",
    "HaarDWT3d": "bsynth_hpc.kernels.haar_dwt3d",
    "HaarIDWT3d": "bsynth_hpc.kernels.haar_dwt3d",
    "WindowAttention3d": "bsynth_hpc.kernels.window_attention3d",
    "relative_position_index": "bsynth_hpc.kernels.window_attention3d",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the block lazily (keeps `import bsynth_hpc.nn` free of triton)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bsynth_hpc.nn' has no attribute {name!r}")
