"""The per-volume transform: RAS grid at the target spacing, crop/pad, mask, intensity normalisation.

How the geometry is done, and why
---------------------------------
Reorienting to RAS, resampling to the target spacing and cropping/padding to the fixed shape
are all "choose an output grid, then sample the input on it". We build that grid directly —
an axis-aligned RAS affine ``diag(spacing)`` plus an origin — and sample the input once with
``scipy.ndimage.affine_transform`` through the composed voxel->voxel map
``inv(A_in) @ A_out`` (trilinear, ``order=1``). Compared with chaining
``nibabel.as_closest_canonical`` / MONAI ``Orientation`` + ``Spacing`` + ``ResizeWithPadOrCrop``:

* one interpolation for every input, oblique ones included (those chains keep the obliquity
  in the affine, so their output is not an axis-aligned RAS grid, or interpolate twice);
* the output affine is known by construction, so ``nib.Nifti1Image(out, affine)`` puts every
  voxel where it was in the scanner/atlas world (tests check this with a round trip);
* crop/pad is free (it is just the grid origin), and centring on the brain instead of on the
  array centre is a one-line change of that origin;
* workers need no torch/MONAI import (2 s and ~300 MB per worker process).

When the output is coarser than the input along an axis, the input is first smoothed with a
Gaussian (:func:`antialias_sigma`), as image-resizing libraries do; plain trilinear sampling
would alias fine structure (MONAI's ``Spacing`` does not filter either). Same-resolution and
upsampled axes are not filtered.

The grid is centred on the centre of the foreground's bounding box (the brain mask when one is
given, else voxels above a threshold, see :func:`foreground_mask`), so an off-centre head is
not cut by the fixed field of view; if the brain is larger than the field of view it is cut
symmetrically around that centre. The origin is then snapped to the input's voxel lattice
(multiples of the target spacing from the input's first voxel centre), so an input that is
already RAS at the target spacing is shifted by whole voxels and its values pass through
unchanged instead of being blurred by a sub-voxel shift. Outside the input, the output holds
the background value (the normalised lower clip value; 0 for min-max); ``mode="grid-constant"``
blends the input's edge voxel into that background over the outer half voxel.

Intensities
-----------
Normalisation runs on the input voxels (before resampling) so interpolation cannot push values
out of range: clip at the ``clip_percentiles`` (computed over the brain mask when masking,
else over the whole volume), then min-max to [0, 1] (seed 003 §2.3) or z-score (mean/std
over the mask, else over the foreground). Masked-out voxels are set to the background value.
The clip bounds and the offset/scale used are returned (:class:`IntensityMap`) and recorded with
each volume, so model outputs can be mapped back to scanner units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from bsynth_hpc.errors import ConfigError, InputError

from .report import fixable

NORMALIZE_CHOICES: tuple[str, ...] = ("minmax", "zscore")
MASK_CHOICES: tuple[str, ...] = ("none", "foreground", "file")
FIT_CHOICES: tuple[str, ...] = ("pad", "stretch")
DEFAULT_FOREGROUND_FRACTION = 0.1
PREPROCESSING_VERSION = 1
"""Bumped whenever the transform changes what it writes (stored with every volume)."""


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that determines the output of the transform (stored with the store and each volume).

    mask: "none"; "foreground" (threshold, see :func:`foreground_mask`); "file" (a brain-mask
    NIfTI per input, named in the manifest column ``mask_column``).
    slice_fit (2D only): "pad" scales the image to fit inside ``shape`` keeping its aspect ratio
    and pads; "stretch" resizes to exactly ``shape`` (what seeds 001/004 do).
    antialias (3D): low-pass the input before downsampling (see :func:`antialias_sigma`).
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    normalize: str = "minmax"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    mask: str = "none"
    mask_column: str | None = None
    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION
    antialias: bool = True
    slice_fit: str = "pad"

    def __post_init__(self) -> None:
        if len(self.shape) not in (2, 3) or any(int(s) < 1 for s in self.shape):
            raise ConfigError(f"shape {self.shape} must be 3 positive ints (volumes) or 2 (slices)")
        if len(self.spacing) != len(self.shape) or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ConfigError(f"spacing {self.spacing} must be {len(self.shape)} positive numbers (mm)")
        if self.normalize not in NORMALIZE_CHOICES:
            raise ConfigError(f"normalize={self.normalize!r}: use one of {', '.join(NORMALIZE_CHOICES)}")
        lo, hi = self.clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"clip_percentiles {self.clip_percentiles}: need 0 <= low < high <= 100")
        if self.mask not in MASK_CHOICES:
            raise ConfigError(f"mask={self.mask!r}: use one of {', '.join(MASK_CHOICES)}")
        if (self.mask == "file") != (self.mask_column is not None):
            raise ConfigError("mask='file' needs mask_column (the manifest column of mask paths); "
                              "other modes take none")
        if not 0.0 < self.foreground_fraction < 1.0:
            raise ConfigError(f"foreground_fraction {self.foreground_fraction} must lie in (0, 1)")
        if self.slice_fit not in FIT_CHOICES:
            raise ConfigError(f"slice_fit={self.slice_fit!r}: use one of {', '.join(FIT_CHOICES)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, including how the transform interpolates and centres."""
        d = asdict(self)
        d["shape"], d["spacing"] = [int(s) for s in self.shape], [float(s) for s in self.spacing]
        d["clip_percentiles"] = [float(p) for p in self.clip_percentiles]
        d.update(interpolation="linear", centering="foreground_bbox", orientation="RAS",
                 version=PREPROCESSING_VERSION)
        d.pop("slice_fit" if len(self.shape) == 3 else "antialias")
        return d


@dataclass(frozen=True)
class Preprocessed:
    """Output (float32, ``params.shape``), its RAS voxel->world affine (None for 2D slices) and the
    intensity mapping that produced it."""

    data: np.ndarray
    affine: np.ndarray | None
    intensity: IntensityMap | None = None


# ---------------------------------------------------------------------------- building blocks
def foreground_mask(data: np.ndarray, fraction: float = DEFAULT_FOREGROUND_FRACTION) -> np.ndarray:
    """Voxels above ``min + fraction * (p99 - min)``: the head/brain against air background.

    The 99th percentile (not the maximum) keeps a few hot voxels from raising the threshold.
    Good enough to centre the field of view and to mask skull-stripped data; not a brain
    extraction (use a mask file from HD-BET/SynthStrip for that).
    """
    lo = float(data.min())
    hi = float(np.percentile(data, 99.0))
    if hi <= lo:
        hi = float(data.max())
    return data > lo + fraction * (hi - lo)


def bbox_center(mask: np.ndarray) -> np.ndarray:
    """Centre (voxel coordinates) of the bounding box of a non-empty boolean mask."""
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([(int(i.min()) + int(i.max())) / 2.0 for i in idx])


def output_affine(src_affine: np.ndarray, center_vox: np.ndarray, shape: tuple[int, ...],
                  spacing: tuple[float, ...]) -> np.ndarray:
    """RAS affine of a ``shape`` grid with ``spacing`` centred on input voxel ``center_vox``.

    The origin is snapped to multiples of ``spacing`` from the input's first voxel centre so
    that a grid-aligned input resamples by whole voxels (see the module docstring).
    """
    src = np.asarray(src_affine, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    n = np.asarray(shape, dtype=np.float64)
    center_world = src[:3, :3] @ np.asarray(center_vox, dtype=np.float64) + src[:3, 3]
    origin = center_world - sp * (n - 1) / 2.0
    ref = src[:3, 3]
    origin = ref + sp * np.round((origin - ref) / sp)
    out = np.diag([*sp, 1.0])
    out[:3, 3] = origin
    return out


def antialias_sigma(src_affine: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Gaussian sigma (input voxels) per input axis that suppresses aliasing when downsampling.

    scikit-image's rule ``sigma = max(0, (factor - 1) / 2)`` with ``factor`` = output spacing
    along that input axis / input voxel size; 0 where the input is not finer than the output,
    so same-resolution and upsampling inputs are untouched.
    """
    m = np.asarray(src_affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(m, axis=0)
    directions = m / sizes  # unit world direction of each input axis
    out_step = np.sqrt(((directions * np.asarray(spacing, dtype=np.float64)[:, None]) ** 2).sum(axis=0))
    return np.maximum(0.0, (out_step / sizes - 1.0) / 2.0)


def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, shape: tuple[int, ...],
                     out_affine: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (voxel grid ``src_affine``) on the grid (``shape``, ``out_affine``), float32.

    Output voxel ``i`` takes the input value at world point ``out_affine @ i``; ``order=1`` is
    trilinear, ``order=0`` nearest (for masks). Outside the input: ``cval``.
    """
    vox2vox = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(out_affine, dtype=np.float64)
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), vox2vox[:3, :3], offset=vox2vox[:3, 3], output_shape=tuple(shape),
        order=order, mode="grid-constant", cval=float(cval), prefilter=False, output=np.float32,
    )


@dataclass(frozen=True)
class IntensityMap:
    """How one input's intensities were mapped: ``out = (clip(x, clip_low, clip_high) - offset) * scale``.

    Recorded with every volume (record key ``intensity``) so generated or reconstructed volumes
    can be mapped back to the input's scanner units (:func:`bsynth_hpc.data.intensity.denormalize`).
    """

    method: str
    clip_low: float
    clip_high: float
    offset: float
    scale: float

    @property
    def background(self) -> float:
        """The value the lower clip bound maps to (0 for min-max): outside the input and masked voxels."""
        return float((np.float32(self.clip_low) - np.float32(self.offset)) * np.float32(self.scale))

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "clip_low": self.clip_low, "clip_high": self.clip_high,
                "offset": self.offset, "scale": self.scale}


def fit_intensity_map(data: np.ndarray, region: np.ndarray | None, method: str,
                      clip_percentiles: tuple[float, float], stats_region: np.ndarray | None = None,
                      source: str = "") -> IntensityMap:
    """The clip bounds (percentiles over ``region``, None = all) and the min-max / z-score scaling.

    ``stats_region``: voxels for the z-score mean/std (defaults to ``region``, else all voxels).
    """
    values = data[region] if region is not None else data.ravel()
    lo, hi = (float(v) for v in np.percentile(values, clip_percentiles))
    if hi <= lo:  # a mostly constant image: fall back to the full range before giving up
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise fixable(InputError, f"{source}: intensities inside the mask are constant ({lo:g})",
                      "check the image and its brain mask (an empty or misaligned mask?)")
    if method == "minmax":
        return IntensityMap(method, lo, hi, offset=lo, scale=1.0 / (hi - lo))
    ref = stats_region if stats_region is not None else region
    clipped = np.clip(data, lo, hi).astype(np.float32, copy=False)
    sample = clipped[ref] if ref is not None else clipped
    center, std = float(sample.mean(dtype=np.float64)), float(sample.std(dtype=np.float64))
    if not std > 0:
        raise fixable(InputError, f"{source}: zero intensity spread in the foreground",
                      "check the image, or use normalize='minmax'")
    return IntensityMap(method, lo, hi, offset=center, scale=1.0 / std)


def apply_intensity_map(data: np.ndarray, imap: IntensityMap) -> np.ndarray:
    """``(clip(data) - offset) * scale`` as float32 (the clip floor maps to exactly 0 for min-max)."""
    clipped = np.clip(data, imap.clip_low, imap.clip_high).astype(np.float32, copy=False)
    return (clipped - np.float32(imap.offset)) * np.float32(imap.scale)


def normalize_intensities(data: np.ndarray, region: np.ndarray | None, method: str,
                          clip_percentiles: tuple[float, float], stats_region: np.ndarray | None = None,
                          source: str = "") -> tuple[np.ndarray, float]:
    """Clip at percentiles and scale; return (float32 image, the value the background maps to).

    ``region``: voxels that define the percentiles (None = all); ``stats_region``: voxels for the
    z-score mean/std (defaults to ``region``, else all voxels).
    """
    imap = fit_intensity_map(data, region, method, clip_percentiles, stats_region=stats_region, source=source)
    return apply_intensity_map(data, imap), imap.background


# ---------------------------------------------------------------------------- 3D volumes
def preprocess_volume(data: np.ndarray, affine: np.ndarray, params: PreprocessParams,
                      brain_mask: np.ndarray | None = None, source: str = "") -> Preprocessed:
    """Transform one validated 3D volume (see the module docstring); ``brain_mask`` on the input grid."""
    if len(params.shape) != 3:
        raise ConfigError(f"preprocess_volume needs a 3D shape, got {params.shape}")
    data = np.asarray(data, dtype=np.float32)
    if brain_mask is not None:
        mask = np.asarray(brain_mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"brain mask shape {mask.shape} != image shape {data.shape}")
        if not mask.any():
            raise fixable(InputError, f"{source}: the brain mask is empty", "check the mask file for this image")
        region, foreground = mask, mask
    else:
        foreground = foreground_mask(data, params.foreground_fraction)
        region = foreground if params.mask == "foreground" else None
    imap = fit_intensity_map(data, region, params.normalize, params.clip_percentiles, stats_region=foreground,
                             source=source)
    normalized, background = apply_intensity_map(data, imap), imap.background
    if region is not None:
        normalized[~region] = background
    out_aff = output_affine(affine, bbox_center(foreground), params.shape, params.spacing)
    sigma = antialias_sigma(affine, params.spacing) if params.antialias else np.zeros(3)
    if np.any(sigma > 0.05):  # below this the kernel is a no-op at float32 precision
        normalized = ndimage.gaussian_filter(normalized, sigma, mode="constant", cval=background, truncate=3.0)
    out = resample_to_grid(normalized, affine, params.shape, out_aff, order=1, cval=background)
    if params.normalize == "minmax":
        np.clip(out, 0.0, 1.0, out=out)
    return Preprocessed(data=out, affine=out_aff, intensity=imap)


def mask_on_image_grid(mask: np.ndarray, mask_affine: np.ndarray, image_shape: tuple[int, ...],
                       image_affine: np.ndarray) -> np.ndarray:
    """A brain mask (any grid) as a boolean array on the image's voxel grid (nearest neighbour)."""
    binary = np.asarray(mask) > 0
    if binary.shape == tuple(image_shape) and np.allclose(mask_affine, image_affine, atol=1e-4):
        return binary
    return resample_to_grid(binary.astype(np.float32), mask_affine, tuple(image_shape), image_affine,
                            order=0, cval=0.0) > 0.5


# ---------------------------------------------------------------------------- 2D slices
def preprocess_slice(image: np.ndarray, params: PreprocessParams, source: str = "") -> np.ndarray:
    """Normalise one 2D image and fit it into ``params.shape`` (H, W), float32.

    Resizing uses Pillow's bilinear filter on float data, which widens its support when
    shrinking (antialiased), unlike plain bilinear sampling.
    """
    return preprocess_slice_mapped(image, params, source).data


def preprocess_slice_mapped(image: np.ndarray, params: PreprocessParams, source: str = "") -> Preprocessed:
    """:func:`preprocess_slice` with its intensity mapping (``affine`` is None: images carry no geometry)."""
    from PIL import Image

    if len(params.shape) != 2:
        raise ConfigError(f"preprocess_slice needs a 2D shape (H, W), got {params.shape}")
    image = np.asarray(image, dtype=np.float32)
    foreground = foreground_mask(image, params.foreground_fraction)
    region = foreground if params.mask == "foreground" else None
    imap = fit_intensity_map(image, region, params.normalize, params.clip_percentiles, stats_region=foreground,
                             source=source)
    normalized, background = apply_intensity_map(image, imap), imap.background
    if region is not None:
        normalized[~region] = background
    out_h, out_w = (int(s) for s in params.shape)
    h, w = normalized.shape
    if params.slice_fit == "stretch":
        new_h, new_w = out_h, out_w
    else:
        scale = min(out_h / h, out_w / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        resized = np.asarray(Image.fromarray(normalized).resize((new_w, new_h), Image.Resampling.BILINEAR),
                             dtype=np.float32)
    else:
        resized = normalized
    out = np.full((out_h, out_w), background, dtype=np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    if params.normalize == "minmax":
        np.clip(out, 0.0, 1.0, out=out)
    return Preprocessed(data=out, affine=None, intensity=imap)
