"""2D slices of 3D volumes for the slice-based metrics.

* Tri-planar slices (seed 002 §3: "SSIM and LPIPS were evaluated on tri-planar 2-D slices (32 per
  plane, 96 per volume) and averaged to obtain per-volume scores"): ``per_plane`` indices evenly
  spaced along each axis, end slices excluded (they are background after preprocessing), the
  same indices for both volumes of a pair. An axis shorter than ``per_plane`` gives every slice.
* All slices of one plane (seed 000 §4 and Table 2: "we extract all 2D slices from the 3D volumes")
  for the InceptionV3 slice FID.

Volumes are (X, Y, Z) in RAS voxel order (docs/design.md), so the sagittal plane fixes X, the
coronal plane fixes Y and the axial plane fixes Z.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Plane name -> the axis a slice of that plane fixes."""

DEFAULT_PER_PLANE = 32


def plane_axis(plane: str) -> int:
    try:
        return PLANES[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}: use one of {', '.join(PLANES)}") from None


def slice_indices(length: int, count: int) -> np.ndarray:
    """``count`` distinct indices evenly spaced over (0, length - 1), ends excluded; all when short."""
    if length <= 0:
        raise ValueError(f"cannot slice an axis of length {length}")
    if count >= length - 2:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, count + 2)[1:-1]).astype(int))


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One 2D slice (the two remaining axes in their order) of a volume (X, Y, Z)."""
    return np.take(volume, index, axis=plane_axis(plane))


def triplanar_slices(volume: np.ndarray, per_plane: int = DEFAULT_PER_PLANE) -> dict[str, np.ndarray]:
    """Plane -> stack (k, H, W) of ``per_plane`` evenly spaced slices (seed 002 §3)."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"tri-planar slicing needs a 3D volume, got shape {vol.shape}")
    out = {}
    for plane, axis in PLANES.items():
        idx = slice_indices(vol.shape[axis], per_plane)
        out[plane] = np.moveaxis(np.take(vol, idx, axis=axis), axis, 0)
    return out


def plane_slices(volume: np.ndarray, plane: str = "axial", skip_empty: bool = False,
                 empty_below: float = 1e-6) -> Iterator[np.ndarray]:
    """Every slice of one plane (seed 000 §4), optionally skipping slices whose maximum is below
    ``empty_below`` (all background)."""
    vol = np.asarray(volume)
    axis = plane_axis(plane)
    for i in range(vol.shape[axis]):
        s = np.take(vol, i, axis=axis)
        if skip_empty and float(np.max(s)) < empty_below:
            continue
        yield s


def middle_slice(volume: np.ndarray, plane: str = "axial") -> np.ndarray:
    """The central slice of one plane (figures)."""
    vol = np.asarray(volume)
    axis = plane_axis(plane)
    return np.take(vol, vol.shape[axis] // 2, axis=axis)
