"""``spatial_dims``: one network class builds its 2D (slice) or 3D (volume) variant, MONAI style.

Models take ``spatial_dims`` (2 or 3, default 3) and pick their layers from here, so a 2D recipe
(seeds 001/004: 128^2 slices) reuses the classes of the 3D recipes. The 3D layers are the
``torch.nn`` ``*3d`` classes, so a 3D model's parameter names and shapes do not depend on this
module (existing exports load unchanged).
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..errors import ConfigError

__all__ = ["SpatialDims", "SPATIAL_DIMS", "check_spatial_dims", "conv_nd", "instance_norm_nd", "batch_norm_nd"]

SpatialDims = Literal[2, 3]
SPATIAL_DIMS: tuple[int, ...] = (2, 3)

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def check_spatial_dims(spatial_dims: int, where: str = "model") -> int:
    """``spatial_dims`` as an int in (2, 3); ConfigError naming ``where`` otherwise."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ConfigError(f"{where}: spatial_dims={spatial_dims!r} must be 2 (slices) or 3 (volumes)")
    return int(spatial_dims)


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """nn.Conv2d or nn.Conv3d."""
    return _CONV[check_spatial_dims(spatial_dims)]  # type: ignore[return-value]


def instance_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.InstanceNorm2d or nn.InstanceNorm3d."""
    return _INSTANCE[check_spatial_dims(spatial_dims)]


def batch_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.BatchNorm2d or nn.BatchNorm3d."""
    return _BATCH[check_spatial_dims(spatial_dims)]
