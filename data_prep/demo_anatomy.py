"""Synthetic subject anatomy and MR acquisition for the embedded demo cohort.

Everything here starts from the real MNI152 2009 (sym, 09a) T1 template and its GM/WM probability
maps shipped inside nilearn (1 mm, 197x233x189; the ``resolution=2`` variants are only resampled
copies, so we load 1 mm once and filter to the working spacing ourselves).

One image is made in three steps:

1. **Anatomy** (:func:`sample_anatomy`): a backward warp (tumour mass effect -> global affine +
   smooth random displacement -> local ROI zooms for hippocampal/amygdala atrophy) maps each voxel
   of an isotropic subject-space grid to MNI mm, where tissue fractions, template texture, the ROI
   label map and the distance to the ventricles are sampled; ventricles then enlarge ex vacuo
   (nearby parenchyma becomes CSF).  A tumour (necrotic core, enhancing rim, WM-borne oedema) is
   painted in subject space.  The result carries its own label map (:meth:`Anatomy.dseg`) from
   which the clinical ROI ratios are *measured* (:meth:`Anatomy.roi_ratios`).
2. **Contrast** (:func:`render_contrast`): tissue-fraction weighted signal model per sequence with
   physically ordered intensities (T1w WM>GM>CSF, T2w CSF>GM>WM, FLAIR CSF nulled, T1Gd rim
   enhancement).
3. **Acquisition** (:func:`acquire`): head pose + per-sequence motion, scanner grid (spacing,
   slice thickness blur, stored orientation), smooth bias field, Rician magnitude noise, scanner
   gain and on-disk dtype, with qform/sform both set so world coordinates stay exact.

The ROIs (hippocampus, amygdala, lateral ventricles) are not downloaded atlases: they are defined
in MNI mm from literature centroids intersected with the template's own tissue maps.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from nibabel.affines import apply_affine
from scipy import ndimage as ndi

from bsynth_hpc.errors import ConfigError, InputError

ROI_NAMES: tuple[str, ...] = (
    "hippocampus_l", "hippocampus_r", "amygdala_l", "amygdala_r", "ventricle_l", "ventricle_r",
)
"""The six clinical ROIs, in the order of the clinical vector (seed 002)."""

ROI_LABELS: dict[str, int] = {name: 11 + i for i, name in enumerate(ROI_NAMES)}

DSEG_LABELS: dict[int, str] = {
    0: "background", 1: "csf", 2: "gm", 3: "wm",
    **{v: k for k, v in ROI_LABELS.items()},
    21: "tumour_necrosis", 22: "tumour_oedema", 24: "tumour_enhancing",
}
"""Label map vocabulary written next to every label map (BIDS ``dseg.tsv``)."""

BRATS_LABELS: dict[int, int] = {21: 1, 22: 2, 24: 4}
"""dseg lesion label -> BraTS label (1 necrotic core, 2 oedema, 4 enhancing tumour)."""

Storage = Literal["int16", "int16-scaled", "float32"]
STORAGES: tuple[str, ...] = ("int16", "int16-scaled", "float32")

# Relative signal of each compartment per sequence (arbitrary units before scanner gain).
# Orderings follow textbook 3 T appearances: T1w WM>GM>CSF; T2w CSF>GM>WM; FLAIR nulls free
# water (CSF dark) while oedema is the brightest; gadolinium enhances only the tumour rim.
SIGNALS: dict[str, dict[str, float]] = {
    "T1w": dict(csf=0.22, gm=0.58, wm=1.00, necrosis=0.25, enhancing=0.55, oedema=0.45),
    "T2w": dict(csf=1.00, gm=0.52, wm=0.38, necrosis=0.95, enhancing=0.62, oedema=0.82),
    "FLAIR": dict(csf=0.08, gm=0.62, wm=0.47, necrosis=0.40, enhancing=0.75, oedema=1.00),
    "T1Gd": dict(csf=0.24, gm=0.60, wm=1.00, necrosis=0.25, enhancing=1.80, oedema=0.45),
}
TEXTURE_GAIN: dict[str, float] = {"T1w": 1.0, "T2w": -0.6, "FLAIR": -0.3, "T1Gd": 0.9}
"""Weight of the template's own fine anatomy (residual beyond the 3-tissue model) per sequence."""
SCLEROSIS_GAIN: dict[str, float] = {"T1w": 0.93, "T2w": 1.30, "FLAIR": 1.35, "T1Gd": 0.93}
"""Signal change inside a sclerotic hippocampus (T2/FLAIR hyperintensity)."""

_HIPPO_CENTRE = (27.0, -24.0, -12.0)     # |x|, y, z of the hippocampal body (MNI mm)
_HIPPO_SEMI = (20.0, 6.5, 6.5)           # along long axis, across, vertical (mm)
_AMYG_CENTRE = (23.0, -5.0, -19.0)
_AMYG_SEMI = (7.5, 8.0, 7.0)
_VENT_SEED = (9.0, -5.0, 18.0)           # a point inside each lateral ventricle body
_SUBJECT_MARGIN_MM = 16.0                # subject grid reaches this far past the MNI brain box


# --------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------
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


_VENT_REACH_MM = 12.0   # ventricles may grow at most this far (distance map is capped there)


def _ventricle_distance(roi: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to, and label of, the nearest lateral-ventricle voxel, within a box around
    the ventricles (``_VENT_REACH_MM`` beyond it everywhere else)."""
    vent = np.isin(roi, (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"]))
    pad = int(math.ceil(_VENT_REACH_MM / voxel_mm)) + 1
    idx = np.argwhere(vent)
    box = tuple(slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n))
                for a, b, n in zip(idx.min(0), idx.max(0), roi.shape))
    dist = np.full(roi.shape, _VENT_REACH_MM, dtype=np.float32)
    side = np.zeros(roi.shape, dtype=np.uint8)
    d, nearest = ndi.distance_transform_edt(~vent[box], sampling=voxel_mm, return_indices=True)
    dist[box] = np.minimum(d, _VENT_REACH_MM)
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


# --------------------------------------------------------------------------------------------
# Warps (all backward: subject-space point -> where to read the template)
# --------------------------------------------------------------------------------------------
def _col(v: np.ndarray) -> np.ndarray:
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
        rel = pts[:, idx] - _col(self.centre)
        u = np.linalg.inv(self.axes).astype(np.float32) @ rel
        t = (u * u).sum(0) / np.float32(self.reach**2)
        w = np.exp(-t * t)
        a = np.float32(self.volume_factor ** (-1.0 / 3.0) - 1.0)
        out = pts.copy()
        out[:, idx] = _col(self.centre) + rel * (1.0 + a * w)
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
        rel = pts - _col(self.centre)
        r = np.sqrt((rel * rel).sum(0))
        b3 = np.float32(3.0 * self.volume_mm3 / (4.0 * math.pi))
        r_src = np.cbrt(np.maximum(r**3 - b3 * np.exp(-((r / np.float32(self.reach_mm)) ** 2)), 0))
        scale = np.divide(r_src, r, out=np.zeros_like(r), where=r > 1e-6)
        return _col(self.centre) + rel * scale


def _lobulation(lobes: np.ndarray, amplitude: float, directions: np.ndarray) -> np.ndarray:
    """Radial modulation 1 + g(n) >= 0.3 for (3, N) unit directions: ``amplitude`` times a sum of
    random cosine lobes (rows: unit direction xyz, angular frequency, phase) over sqrt(#lobes)."""
    g = np.zeros(directions.shape[1], dtype=np.float32)
    for row in np.asarray(lobes, dtype=np.float32):
        g += np.cos(row[3] * (row[:3] @ directions) + row[4])
    return np.maximum(1.0 + np.float32(amplitude / math.sqrt(max(len(lobes), 1))) * g, 0.3)


@dataclass(frozen=True)
class Tumour:
    """A glioma in subject space: lobulated enhancing rim around a necrotic core, with vasogenic
    oedema (its own, more irregular outline) spreading mostly through white matter."""

    centre: np.ndarray
    radius_mm: float          # mean outer radius of the enhancing rim
    core_fraction: float      # necrotic core radius / rim radius
    oedema_mm: float          # mean reach of the oedema beyond the rim
    lobes: np.ndarray         # (k, 5) tumour outline lobes, see _lobulation
    oedema_lobes: np.ndarray  # (k, 5) oedema outline lobes
    lobe_amplitude: float = 0.25
    oedema_amplitude: float = 0.45

    def fractions(self, pts: np.ndarray,
                  voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(core, tumour, oedema-zone) fractions at (3, N) points, edges ramped over a voxel."""
        rel = pts - _col(self.centre)
        r = np.sqrt((rel * rel).sum(0))
        n = np.divide(rel, r, out=np.zeros_like(rel), where=r > 1e-6)
        rho = r / _lobulation(self.lobes, self.lobe_amplitude, n)
        rho_oed = r / _lobulation(self.oedema_lobes, self.oedema_amplitude, n)

        def ramp(radius: float, dist: np.ndarray) -> np.ndarray:
            return np.clip((np.float32(radius) - dist) / np.float32(voxel_mm) + 0.5, 0.0, 1.0)

        tumour = ramp(self.radius_mm, rho)
        core = ramp(self.radius_mm * self.core_fraction, rho)
        oedema = np.clip(ramp(self.radius_mm + self.oedema_mm, rho_oed) - tumour, 0.0, 1.0)
        return core, tumour, oedema


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
        src = inv @ (pts - _col(self.centre)) + _col(self.centre) + field
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


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """Tissue fractions and labels of one subject-session on its subject-space grid."""

    affine: np.ndarray           # subject voxel -> subject mm
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    texture: np.ndarray
    roi: np.ndarray              # uint8 ROI_LABELS
    core: np.ndarray | None = None
    tumour: np.ndarray | None = None
    oedema: np.ndarray | None = None   # fraction of parenchyma that is oedematous

    @property
    def brain(self) -> np.ndarray:
        """Brain fraction (tissue + lesion)."""
        total = self.csf + self.gm + self.wm
        return total + self.tumour if self.tumour is not None else total

    def dseg(self) -> np.ndarray:
        """Final label map: tissue argmax, ROI labels over it, lesion labels over everything."""
        brain = self.brain
        tissue = np.argmax(np.stack([self.csf, self.gm, self.wm]), axis=0).astype(np.uint8) + 1
        labels = np.where(brain >= 0.5, tissue, 0).astype(np.uint8)
        roi_ok = (self.roi > 0) & (brain >= 0.5)
        labels[roi_ok] = self.roi[roi_ok]
        if self.tumour is not None and self.core is not None and self.oedema is not None:
            oedematous = self.oedema * (self.gm + self.wm) >= 0.5 * np.maximum(brain, 1e-6)
            labels[oedematous & (brain >= 0.5)] = 22
            labels[self.tumour >= 0.5] = 24
            labels[self.core >= 0.5] = 21
        return labels


def roi_ratios(dseg: np.ndarray) -> dict[str, float]:
    """Six ROI volume / whole-brain volume ratios measured on a label map.

    Whole brain = every labelled voxel (parenchyma, CSF spaces inside the mask, lesions), i.e.
    the brain-mask volume; the grid is isotropic so voxel volumes cancel.
    """
    brain = int(np.count_nonzero(dseg))
    if brain == 0:
        raise InputError("label map has no brain voxels; cannot measure ROI ratios")
    counts = np.bincount(dseg.ravel(), minlength=256)
    return {name: float(counts[label]) / brain for name, label in ROI_LABELS.items()}


def _candidates(template: Template, shape: tuple[int, int, int], affine: np.ndarray,
                warp: Warp) -> np.ndarray:
    """Flat indices of subject voxels that can hold brain: the template's dilated brain envelope
    pulled back through the warp's global affine (the smooth field, ROI zooms and mass effect move
    brain voxels by far less than the envelope's ~12 mm margin)."""
    lin = np.eye(4)
    lin[:3, :3] = np.linalg.inv(warp.linear)
    lin[:3, 3] = warp.centre - lin[:3, :3] @ warp.centre
    m = np.linalg.inv(template.affine) @ lin @ affine
    mask = ndi.affine_transform(template.envelope, m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                order=0, cval=0)
    return np.flatnonzero(mask)


def sample_anatomy(template: Template, grid: tuple[tuple[int, int, int], np.ndarray], warp: Warp,
                   tumour: Tumour | None = None,
                   ventricle_growth_mm: tuple[float, float] = (0.0, 0.0),
                   chunk: int = 1 << 20) -> Anatomy:
    """Warp the template onto a subject-space grid (trilinear maps, nearest ROI labels).

    ``ventricle_growth_mm`` (left, right) enlarges the lateral ventricles ex vacuo: parenchyma
    (outside hippocampus/amygdala) within that many MNI mm of a ventricle turns into ventricular
    CSF, as in ageing and Alzheimer's disease.  Only voxels inside the pulled-back brain envelope
    are warped, in chunks of ``chunk`` points so a 1 mm grid stays within a few 100 MB.
    """
    growth = tuple(float(g) for g in ventricle_growth_mm)
    if len(growth) != 2 or not all(0.0 <= g <= _VENT_REACH_MM - 2.0 for g in growth):
        raise ConfigError(f"ventricle growth {ventricle_growth_mm!r} must be two values in "
                          f"[0, {_VENT_REACH_MM - 2.0}] mm (left, right)")
    shape, affine = grid
    field = smooth_field(shape, affine, warp.field_seed, warp.field_rms_mm,
                         warp.field_spacing_mm).reshape(3, -1)
    to_vox = np.linalg.inv(template.affine).astype(np.float32)
    keys = ("brain", "gm", "wm", "texture", "vent_dist") + (
        ("core", "tumour", "oedema") if tumour else ())
    n = int(np.prod(shape))
    out = {k: np.zeros(n, np.float32) for k in keys}
    roi = np.zeros(n, np.uint8)
    nearest_vent = np.zeros(n, np.uint8)
    cand = _candidates(template, shape, affine, warp)
    for start in range(0, cand.size, chunk):
        flat = cand[start:start + chunk]
        ijk = np.stack(np.unravel_index(flat, shape)).astype(np.float32)
        pts = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
        src = warp.backward(pts, field[:, flat])
        vox = to_vox[:3, :3] @ src + to_vox[:3, 3:4]
        brain = ndi.map_coordinates(template.brain, vox, order=1, cval=0.0, prefilter=False)
        inside = brain > 1e-3
        idx = flat[inside]
        sub = vox[:, inside]
        out["brain"][idx] = brain[inside]
        for key in ("gm", "wm", "texture"):
            out[key][idx] = ndi.map_coordinates(getattr(template, key), sub, order=1, cval=0.0,
                                                prefilter=False)
        roi[idx] = ndi.map_coordinates(template.roi, sub, order=0, cval=0)
        if max(growth) > 0:
            out["vent_dist"][idx] = ndi.map_coordinates(template.vent_dist, sub, order=1,
                                                        cval=_VENT_REACH_MM, prefilter=False)
            nearest_vent[idx] = ndi.map_coordinates(template.vent_side, sub, order=0, cval=0)
        if tumour is not None:
            for key, val in zip(("core", "tumour", "oedema"),
                                tumour.fractions(pts[:, inside], float(affine[0, 0]))):
                out[key][idx] = val
    out = {k: v.reshape(shape) for k, v in out.items()}
    roi = roi.reshape(shape)
    brain = np.clip(out["brain"], 0.0, 1.0)
    gm = np.clip(out["gm"], 0.0, brain)
    wm = np.clip(out["wm"], 0.0, brain - gm)
    if max(growth) > 0:
        _grow_ventricles(roi, nearest_vent.reshape(shape), gm, wm, out["vent_dist"], growth,
                         float(affine[0, 0]))
    anat = Anatomy(affine=affine, csf=brain - gm - wm, gm=gm, wm=wm, texture=out["texture"],
                   roi=roi)
    if tumour is not None:
        keep = 1.0 - out["tumour"]
        anat.csf, anat.gm, anat.wm = anat.csf * keep, anat.gm * keep, anat.wm * keep
        anat.tumour = out["tumour"] * brain
        anat.core = np.minimum(out["core"] * brain, anat.tumour)
        anat.oedema = out["oedema"]
    return anat


def _grow_ventricles(roi: np.ndarray, nearest: np.ndarray, gm: np.ndarray, wm: np.ndarray,
                     dist: np.ndarray, growth: tuple[float, ...], voxel_mm: float) -> None:
    """Turn parenchyma within ``growth`` mm of each ventricle into ventricle CSF (in place).

    ``nearest`` is the label of the closest ventricle, ``dist`` the MNI-mm distance to it; the
    CSF fraction ramps over one voxel so volume grows continuously with the growth distance.
    """
    for g, label in zip(growth, (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"])):
        if g <= 0:
            continue
        zone = (nearest == label) & ((roi == 0) | (roi == label))
        conv = np.clip((g - dist[zone]) / voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)
        gm[zone] *= 1.0 - conv
        wm[zone] *= 1.0 - conv
        labels = roi[zone]
        labels[conv >= 0.5] = label
        roi[zone] = labels


def render_contrast(anat: Anatomy, modality: str, gains: dict[str, float] | None = None,
                    sclerosis_label: int | None = None) -> np.ndarray:
    """Noise-free signal of one sequence on the subject grid (float32, WM-ish ~ 1).

    ``gains`` multiplies individual compartment signals (per-subject relaxation variability);
    ``sclerosis_label`` marks the ROI label of a sclerotic hippocampus.
    """
    if modality not in SIGNALS:
        raise ConfigError(f"unknown modality {modality!r}; expected one of {sorted(SIGNALS)}")
    s = dict(SIGNALS[modality])
    for key, g in (gains or {}).items():
        s[key] *= g
    if anat.oedema is not None:
        oed_wm, oed_gm = anat.oedema, 0.35 * anat.oedema
        wm_sig = (1 - oed_wm) * s["wm"] + oed_wm * s["oedema"]
        gm_sig = (1 - oed_gm) * s["gm"] + oed_gm * s["oedema"]
    else:
        wm_sig, gm_sig = s["wm"], s["gm"]
    img = anat.csf * s["csf"] + anat.gm * gm_sig + anat.wm * wm_sig
    img = img + TEXTURE_GAIN[modality] * anat.texture * (anat.gm + anat.wm)
    if anat.tumour is not None and anat.core is not None:
        img = img + anat.core * s["necrosis"] + (anat.tumour - anat.core) * s["enhancing"]
    if sclerosis_label is not None:
        img = np.where(anat.roi == sclerosis_label, img * SCLEROSIS_GAIN[modality], img)
    return np.maximum(img, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Acquisition
# --------------------------------------------------------------------------------------------
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
