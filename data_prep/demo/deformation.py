"""Backward warps of the demo anatomy: subject-space point -> where to read the MNI template.

A subject-session's :class:`Warp` chains a tumour's mass effect, a global affine plus a smooth
random displacement (:func:`smooth_field`) and local ROI zooms (:class:`LocalScaling`: atrophy).
Every map is one-to-one, so the warped anatomy never folds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bsynth_hpc.errors import ConfigError


def as_column(v: np.ndarray) -> np.ndarray:
    """A 3-vector as a float32 (3, 1) column for broadcasting against (3, N) points."""
    return np.asarray(v, dtype=np.float32).reshape(3, 1)


@dataclass(frozen=True)
class LocalScaling:
    """Smooth local zoom about an ROI: ``volume_factor`` < 1 shrinks it (atrophy), > 1 enlarges.

    Backward map x -> c + (x - c) (1 + a w(r)), r the ROI-frame distance, w = exp(-(r/reach)^4)
    (flat-topped, so the whole ROI is scaled by nearly the same factor), a =
    volume_factor^(-1/3) - 1.  Radially it is r -> r (1 + a w(r)), whose derivative
    1 + a w (1 - 4 t^2), t = (r/reach)^2, stays positive for -1 < a < 0.87: the map is one-to-one
    for every volume factor in [0.2, 6] (checked on construction).
    """

    centre: np.ndarray
    axes: np.ndarray
    volume_factor: float
    reach: float = 1.3

    def __post_init__(self) -> None:
        if not 0.2 <= self.volume_factor <= 6.0:
            raise ConfigError(f"local volume factor {self.volume_factor} outside [0.2, 6]")

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map (3, N) points."""
        # cheap bounding-box cull first: w < 1e-7 beyond t = 4, i.e. r > 2 reach
        half = 2.0 * self.reach * np.abs(self.axes).sum(1)
        near = np.ones(pts.shape[1], dtype=bool)
        for d in range(3):
            near &= np.abs(pts[d] - np.float32(self.centre[d])) < np.float32(half[d])
        idx = np.flatnonzero(near)
        if idx.size == 0:
            return pts
        rel = pts[:, idx] - as_column(self.centre)
        u = np.linalg.inv(self.axes).astype(np.float32) @ rel
        t = (u * u).sum(0) / np.float32(self.reach**2)
        w = np.exp(-t * t)
        a = np.float32(self.volume_factor ** (-1.0 / 3.0) - 1.0)
        out = pts.copy()
        out[:, idx] = as_column(self.centre) + rel * (1.0 + a * w)
        return out


@dataclass(frozen=True)
class MassEffect:
    """Space-occupying lesion: inserts ``volume_mm3`` at ``centre``, pushing tissue outward.

    Backward radius r_src = cbrt(max(r^3 - b^3 exp(-(r/reach)^2), 0)) with 4/3 pi b^3 = volume:
    monotone in r, so the displaced anatomy never folds.
    """

    centre: np.ndarray
    volume_mm3: float
    reach_mm: float

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map (3, N) points."""
        rel = pts - as_column(self.centre)
        r = np.sqrt((rel * rel).sum(0))
        b3 = np.float32(3.0 * self.volume_mm3 / (4.0 * math.pi))
        r_src = np.cbrt(np.maximum(r**3 - b3 * np.exp(-((r / np.float32(self.reach_mm)) ** 2)), 0))
        scale = np.divide(r_src, r, out=np.zeros_like(r), where=r > 1e-6)
        return as_column(self.centre) + rel * scale


@dataclass(frozen=True)
class Warp:
    """Backward map of one subject-session: mass effect, global affine + smooth field, ROI zooms."""

    centre: np.ndarray                 # fixed point of the global affine (brain centre, mm)
    linear: np.ndarray                 # 3x3 subject-from-MNI linear part (head size/shape)
    field_seed: int                    # seed of the smooth random displacement
    field_rms_mm: float = 1.5
    field_spacing_mm: float = 26.0
    mass: MassEffect | None = None
    scalings: tuple[LocalScaling, ...] = ()

    def backward(self, pts: np.ndarray, field: np.ndarray) -> np.ndarray:
        """Subject mm -> MNI mm for (3, N) points; ``field`` is the displacement at them."""
        if self.mass is not None:
            pts = self.mass.apply(pts)
        inv = np.linalg.inv(self.linear).astype(np.float32)
        src = inv @ (pts - as_column(self.centre)) + as_column(self.centre) + field
        for scaling in self.scalings:
            src = scaling.apply(src)
        return src


def smooth_field(shape: tuple[int, int, int], affine: np.ndarray, seed: int, rms_mm: float,
                 spacing_mm: float) -> np.ndarray:
    """Smooth random displacement (3, X, Y, Z) in mm: Gaussian RBFs on a coarse lattice, evaluated
    separably (three small tensor contractions instead of a 3D spline upsampling)."""
    rng = np.random.default_rng(seed)
    bases = []
    for d, n in enumerate(shape):
        x = affine[d, d] * np.arange(n) + affine[d, 3]
        knots = np.arange(x[0] - spacing_mm, x[-1] + 2 * spacing_mm, spacing_mm)
        bases.append(np.exp(-0.5 * ((x[:, None] - knots[None, :]) / spacing_mm) ** 2))
    coef = rng.standard_normal((3, *(b.shape[1] for b in bases)))
    field = np.einsum("cijk,zk->cijz", coef, bases[2])
    field = np.einsum("cijz,yj->ciyz", field, bases[1])
    field = np.einsum("ciyz,xi->cxyz", field, bases[0])
    rms = float(np.sqrt((field**2).sum(0).mean()))
    return (field * (rms_mm / max(rms, 1e-12))).astype(np.float32)
