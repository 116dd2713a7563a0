"""The MNI152 2009 template (shipped in nilearn) as the tissue model every demo subject warps from.

Loads the 1 mm T1/GM/WM maps once, defines the six clinical ROIs in MNI mm (literature centroids
intersected with the template's own tissue maps, no downloaded atlas), the ventricle distance map
used for ex-vacuo growth, and smooths everything for the working spacing (see docs/demo_cohort.md).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage as ndi

from bsynth_hpc.errors import ConfigError, InputError

from .labels import ROI_LABELS

_HIPPO_CENTRE = (27.0, -24.0, -12.0)     # |x|, y, z of the hippocampal body (MNI mm)
_HIPPO_SEMI = (20.0, 6.5, 6.5)           # along long axis, across, vertical (mm)
_AMYG_CENTRE = (23.0, -5.0, -19.0)
_AMYG_SEMI = (7.5, 8.0, 7.0)
_VENT_SEED = (9.0, -5.0, 18.0)           # a point inside each lateral ventricle body
_SUBJECT_MARGIN_MM = 16.0                # subject grid reaches this far past the MNI brain box
VENT_REACH_MM = 12.0   # ventricles may grow at most this far (distance map is capped there)


@dataclass(frozen=True)
class RoiFrame:
    """Centroid (mm) and semi-axis matrix (columns, mm) of an ROI: its local-scaling frame."""

    centre: np.ndarray
    axes: np.ndarray


@dataclass(frozen=True)
class Template:
    """MNI152 maps on their cropped 1 mm grid, smoothed for a target spacing."""

    affine: np.ndarray          # voxel -> MNI mm
    brain: np.ndarray           # brain fraction (float32)
    gm: np.ndarray
    wm: np.ndarray
    texture: np.ndarray         # T1 residual beyond the 3-tissue model, in WM units
    roi: np.ndarray             # uint8 ROI labels (ROI_LABELS), unsmoothed
    envelope: np.ndarray        # uint8: brain dilated by ~12 mm (where warped voxels can land)
    vent_dist: np.ndarray       # float32 mm to the nearest lateral-ventricle voxel (0 inside)
    vent_side: np.ndarray       # uint8 ROI label of that nearest ventricle
    frames: dict[str, RoiFrame]
    brain_box_mm: tuple[np.ndarray, np.ndarray]

    @property
    def brain_centre_mm(self) -> np.ndarray:
        """Centre of the MNI brain's bounding box (where scanner grids are centred)."""
        lo, hi = self.brain_box_mm
        return (lo + hi) / 2.0


_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _read_mni152() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The 1 mm MNI152 2009 T1/GM/WM images packaged with nilearn, each rescaled to max 1.

    Reads the files nilearn's ``load_mni152_*`` loaders read, without importing
    ``nilearn.datasets`` (whose import pulls in scikit-learn: ~10 s per worker process); falls
    back to those loaders when a future nilearn moves the files.
    """
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency of the demo
        raise ConfigError("the demo cohort needs nilearn (it ships the MNI152 template); "
                          "install it with `pip install nilearn`") from exc
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    if all((folder / name).is_file() for name in _MNI_FILES.values()):
        imgs = {k: nib.load(folder / name) for k, name in _MNI_FILES.items()}
    else:  # pragma: no cover - depends on the installed nilearn layout
        from nilearn import datasets
        imgs = {"t1": datasets.load_mni152_template(resolution=1),
                "gm": datasets.load_mni152_gm_template(resolution=1),
                "wm": datasets.load_mni152_wm_template(resolution=1)}
    affine = imgs["t1"].affine
    maps = {}
    for key, img in imgs.items():
        if img.shape != imgs["t1"].shape or not np.allclose(img.affine, affine):
            raise InputError(f"nilearn's MNI152 {key} map is not on the T1 template's grid")
        data = np.asarray(img.dataobj, dtype=np.float32)
        peak = float(data.max())
        if peak <= 0:
            raise InputError(f"nilearn's MNI152 {key} map is empty; reinstall nilearn")
        maps[key] = data / peak
    return affine, maps


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask with enclosed background filled (background = components touching the border)."""
    comps, _ = ndi.label(~mask)
    border = np.unique(np.concatenate([comps[[0, -1]].ravel(), comps[:, [0, -1]].ravel(),
                                       comps[:, :, [0, -1]].ravel()]))
    return ~np.isin(comps, border[border > 0])


@functools.lru_cache(maxsize=1)
def _template_1mm() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """MNI152 maps at 1 mm cropped to the brain; brain mask = T1 > 0.2 (nilearn's
    ``load_mni152_brain_mask`` rule) with holes filled; GM/WM confined to the mask."""
    affine, maps = _read_mni152()
    maps["brain"] = _fill_holes(maps["t1"] > 0.2).astype(np.float32)
    idx = np.argwhere(maps["brain"] > 0)
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = np.minimum(idx.max(0) + 5, maps["brain"].shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    maps = {k: np.ascontiguousarray(v[crop]) for k, v in maps.items()}
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    gm = maps["gm"] * maps["brain"]
    wm = np.minimum(maps["wm"] * maps["brain"], maps["brain"] - gm)
    maps["gm"], maps["wm"] = gm, wm
    return affine, maps


def _ellipsoid_distance(affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray,
                        axes: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """Normalised distance |A^-1 (x - c)| to an oriented ellipsoid, on the grid box around it.

    Returns the box (slices into the grid) and the distances inside it; outside the box the
    distance exceeds 1.
    """
    reach = np.abs(axes).sum(1) + 2.0
    lo = np.floor((centre - reach - affine[:3, 3]) / np.diag(affine)[:3]).astype(int)
    hi = np.ceil((centre + reach - affine[:3, 3]) / np.diag(affine)[:3]).astype(int) + 1
    box = tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape))
    mesh = np.meshgrid(*[affine[d, d] * np.arange(sl.start, sl.stop) + affine[d, 3] - centre[d]
                         for d, sl in enumerate(box)], indexing="ij")
    u = np.tensordot(np.linalg.inv(axes), np.stack(mesh), axes=1)
    return box, np.sqrt((u * u).sum(0))


def _hippocampus_axes(side: float) -> np.ndarray:
    """Oriented semi-axes of a hippocampus: long axis rises posteriorly and runs medially."""
    long_axis = np.array([-side * 8.0, -30.0, 18.0])
    long_axis /= np.linalg.norm(long_axis)
    lateral = np.cross(long_axis, [0.0, 0.0, 1.0])
    lateral /= np.linalg.norm(lateral)
    vertical = np.cross(lateral, long_axis)
    return np.stack([long_axis * _HIPPO_SEMI[0], lateral * _HIPPO_SEMI[1],
                     vertical * _HIPPO_SEMI[2]], axis=1)


def _roi_map(affine: np.ndarray,
             maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, RoiFrame]]:
    """Build the six ROIs in MNI mm: literature ellipsoids within GM, ventricles = deep central CSF.

    Hippocampus/amygdala: ellipsoids at literature MNI centroids, kept where GM >= 0.5, a voxel in
    both going to the nearer one.  Lateral ventricle: the connected CSF component (CSF = brain -
    GM - WM >= 0.5, at least ~6 mm deep, 1.5-40 mm off the midline) through a seed in the body.
    """
    shape = maps["brain"].shape
    gm, brain = maps["gm"], maps["brain"]
    csf = brain - gm - maps["wm"]
    roi = np.zeros(shape, dtype=np.uint8)
    for side, suffix in ((-1.0, "l"), (1.0, "r")):
        h_c = np.array([side * _HIPPO_CENTRE[0], *_HIPPO_CENTRE[1:]])
        a_c = np.array([side * _AMYG_CENTRE[0], *_AMYG_CENTRE[1:]])
        for name, centre, axes, other in (
                ("hippocampus", h_c, _hippocampus_axes(side), (a_c, np.diag(_AMYG_SEMI))),
                ("amygdala", a_c, np.diag(_AMYG_SEMI), (h_c, _hippocampus_axes(side)))):
            box, dist = _ellipsoid_distance(affine, shape, centre, axes)
            rival = _ellipsoid_distance(affine, shape, *other)
            other_dist = np.full(dist.shape, np.inf)
            sub = tuple(slice(max(r.start, b.start) - b.start, min(r.stop, b.stop) - b.start)
                        for r, b in zip(rival[0], box))
            rsub = tuple(slice(max(r.start, b.start) - r.start, min(r.stop, b.stop) - r.start)
                         for r, b in zip(rival[0], box))
            other_dist[sub] = rival[1][rsub]
            win = (dist <= 1.0) & ((dist < other_dist) if name == "hippocampus"
                                   else (dist <= other_dist)) & (gm[box] >= 0.5)
            roi[box][win] = ROI_LABELS[f"{name}_{suffix}"]
    deep = ndi.gaussian_filter(brain, 3.0) >= 0.97     # ~ >= 6 mm from the brain surface
    x = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]
    off_mid = ((np.abs(x) >= 1.5) & (np.abs(x) <= 40.0))[:, None, None]
    cand = (csf >= 0.5) & deep & off_mid
    inv = np.linalg.inv(affine)
    for side, suffix in ((-1.0, "l"), (1.0, "r")):
        hemi = cand & ((x < 0) if side < 0 else (x > 0))[:, None, None]
        comps, _ = ndi.label(hemi)
        pts = np.argwhere(hemi)
        seed_vox = (inv @ np.array([side * _VENT_SEED[0], *_VENT_SEED[1:], 1.0]))[:3]
        nearest = pts[np.argmin(((pts - seed_vox) ** 2).sum(1))]
        roi[comps == comps[tuple(nearest)]] = ROI_LABELS[f"ventricle_{suffix}"]
    frames = {}
    for name, label in ROI_LABELS.items():
        vox = np.argwhere(roi == label)
        if len(vox) < 50:
            raise InputError(f"ROI {name} came out with {len(vox)} voxels from nilearn's MNI152 "
                             "maps; the packaged template looks different from MNI152 2009")
        mm = vox @ affine[:3, :3].T + affine[:3, 3]
        centre = mm.mean(0)
        evals, evecs = np.linalg.eigh(np.cov((mm - centre).T))
        frames[name] = RoiFrame(centre, evecs * np.sqrt(5.0 * np.maximum(evals, 1.0)))
    return roi, frames


_TEMPLATES: dict[float, Template] = {}


def load_template(spacing_mm: float) -> Template:
    """MNI152 maps smoothed for ``spacing_mm`` voxels (built once per process, then cached)."""
    key = round(float(spacing_mm), 6)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) >= 2:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        _TEMPLATES[key] = _build_template(key)
    return _TEMPLATES[key]


def prime_template(spacing_mm: float, template: Template) -> None:
    """Seed this process's cache (process-pool initializer: ship the template, don't rebuild)."""
    _TEMPLATES[round(float(spacing_mm), 6)] = template


def _build_template(spacing_mm: float) -> Template:
    """MNI152 maps smoothed to the partial-volume blur of a ``spacing_mm`` isotropic voxel."""
    affine, maps = _template_1mm()
    roi, frames = _roi_map(affine, maps)
    csf = maps["brain"] - maps["gm"] - maps["wm"]
    inside = maps["brain"] > 0.5
    design = np.stack([csf[inside], maps["gm"][inside], maps["wm"][inside]], axis=1)
    beta, *_ = np.linalg.lstsq(design[::7], maps["t1"][inside][::7], rcond=None)
    texture = np.zeros_like(maps["t1"])
    texture[inside] = (maps["t1"][inside] - design @ beta) / float(beta[2])
    sigma = math.sqrt(max(spacing_mm**2 - 1.0, 0.0) / 12.0)

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(a, sigma, truncate=3.0) if sigma > 0 else a

    idx = np.argwhere(inside)
    box = (apply_affine(affine, idx.min(0)), apply_affine(affine, idx.max(0)))
    vent_dist, vent_side = _ventricle_distance(roi, float(affine[0, 0]))
    return Template(affine=affine, brain=smooth(maps["brain"]), gm=smooth(maps["gm"]),
                    wm=smooth(maps["wm"]), texture=smooth(texture).astype(np.float32), roi=roi,
                    envelope=(ndi.gaussian_filter(maps["brain"], 4.0) > 1e-3).astype(np.uint8),
                    vent_dist=vent_dist, vent_side=vent_side, frames=frames, brain_box_mm=box)


def _ventricle_distance(roi: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to, and label of, the nearest lateral-ventricle voxel, within a box around
    the ventricles (``VENT_REACH_MM`` beyond it everywhere else)."""
    vent = np.isin(roi, (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"]))
    pad = int(math.ceil(VENT_REACH_MM / voxel_mm)) + 1
    idx = np.argwhere(vent)
    box = tuple(slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n))
                for a, b, n in zip(idx.min(0), idx.max(0), roi.shape))
    dist = np.full(roi.shape, VENT_REACH_MM, dtype=np.float32)
    side = np.zeros(roi.shape, dtype=np.uint8)
    d, nearest = ndi.distance_transform_edt(~vent[box], sampling=voxel_mm, return_indices=True)
    dist[box] = np.minimum(d, VENT_REACH_MM)
    side[box] = roi[box][tuple(nearest)]
    return dist, side


def subject_grid(template: Template, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Isotropic subject-space grid (shape, voxel->mm affine) covering the brain with margin."""
    lo, hi = template.brain_box_mm
    lo = lo - _SUBJECT_MARGIN_MM
    hi = hi + _SUBJECT_MARGIN_MM
    shape = tuple(int(math.ceil((h - l) / spacing_mm)) + 1 for l, h in zip(lo, hi))
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lo
    return shape, affine  # type: ignore[return-value]
