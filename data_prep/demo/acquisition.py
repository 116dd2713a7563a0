"""The scanner: head pose and motion, scanner grid and slice profile, bias field, Rician noise, gain,
stored orientation and on-disk dtype, written as NIfTI with qform and sform set."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage as ndi

from bsynth_hpc.errors import ConfigError

Storage = Literal["int16", "int16-scaled", "float32"]
STORAGES: tuple[str, ...] = ("int16", "int16-scaled", "float32")


def rigid(angles_deg: np.ndarray, translation_mm: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 rigid transform rotating by xyz Euler angles about ``centre`` then translating."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + translation_mm
    return out


@dataclass(frozen=True)
class Acquisition:
    """One scanner series: grid in RAS axis order, stored orientation, physics and storage."""

    shape: tuple[int, int, int]        # RAS axis order (before reorientation)
    spacing: tuple[float, float, float]
    centre_mm: np.ndarray              # world point at the grid centre
    pose: np.ndarray                   # 4x4 subject mm -> world (scanner) mm
    axcodes: str = "RAS"
    storage: Storage = "int16"
    gain: float = 1000.0
    noise: float = 0.03                # Rician sigma relative to the brightest tissue
    bias: float = 0.15                 # peak relative amplitude of the smooth bias field
    seed: int = 0

    def grid_affine(self) -> np.ndarray:
        """Voxel -> world affine of the RAS-ordered grid (axis aligned, centred)."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.centre_mm - np.asarray(self.spacing) * (np.asarray(self.shape) - 1) / 2.0
        return aff


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-store an array in the orientation ``axcodes`` (e.g. 'LPS'): flip/permute the axes and
    fix the affine so every voxel keeps its world (mm) position."""
    pairs = [set("LR"), set("AP"), set("SI")]
    used = sorted(i for c in axcodes.upper() for i, p in enumerate(pairs) if c in p)
    if len(axcodes) != 3 or used != [0, 1, 2]:
        raise ConfigError(f"orientation {axcodes!r} must name each of L/R, A/P, S/I once, "
                          "e.g. 'LPS'")
    current = nio.io_orientation(affine)
    target = nio.axcodes2ornt(tuple(axcodes.upper()))
    xform = nio.ornt_transform(current, target)
    out = nio.apply_orientation(data, xform)
    return np.ascontiguousarray(out), affine @ nio.inv_ornt_aff(xform, data.shape)


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator,
                amplitude: float) -> np.ndarray:
    """Smooth multiplicative receive-coil field: exp of a random quadratic polynomial."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.ix_(*axes)
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    c = rng.normal(0.0, 1.0, len(terms))
    log = sum(np.float32(ci) * t for ci, t in zip(c, terms))
    log = log - log.mean()
    peak = float(np.abs(log).max())
    return np.exp(log * np.float32(math.log1p(amplitude) / max(peak, 1e-6))).astype(np.float32)


def acquire(image: np.ndarray, subject_affine: np.ndarray, acq: Acquisition,
            reference_level: float) -> nib.Nifti1Image:
    """Scan a subject-space image: resample through pose onto the scanner grid with slice-profile
    blur, add bias field and Rician noise, scale to scanner units, reorient and wrap as NIfTI."""
    rng = np.random.default_rng(acq.seed)
    sub_sp = float(subject_affine[0, 0])
    sigma = [math.sqrt(max(s**2 - sub_sp**2, 0.0) / 12.0) / sub_sp for s in acq.spacing]
    src = ndi.gaussian_filter(image, sigma, truncate=3.0) if max(sigma) > 0.05 else image
    grid = acq.grid_affine()
    m = np.linalg.inv(subject_affine) @ np.linalg.inv(acq.pose) @ grid
    data = ndi.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=acq.shape,
                                order=1, cval=0.0, prefilter=False)
    data *= _bias_field(acq.shape, rng, acq.bias)
    sigma_n = np.float32(acq.noise * reference_level)
    real = data + sigma_n * rng.standard_normal(acq.shape, dtype=np.float32)
    imag = sigma_n * rng.standard_normal(acq.shape, dtype=np.float32)
    data = np.sqrt(real * real + imag * imag) * np.float32(acq.gain)
    data, affine = reorient(data, grid, acq.axcodes)
    if acq.storage == "int16":
        arr: np.ndarray = np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16)
    elif acq.storage in ("int16-scaled", "float32"):
        arr = data.astype(np.float32)
    else:
        raise ConfigError(f"unknown storage {acq.storage!r}; expected one of {STORAGES}")
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(np.int16 if acq.storage.startswith("int16") else np.float32)
    return finish_header(img, affine)


def finish_header(img: nib.Nifti1Image, affine: np.ndarray, code: int = 1) -> nib.Nifti1Image:
    """Set qform and sform (scanner-anatomical, code 1) and mm/s units as scanners do."""
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"bsynth demo-cohort synthetic MRI"
    return img
