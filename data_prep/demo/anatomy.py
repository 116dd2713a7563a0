"""One subject-session's anatomy: the template warped onto a subject-space grid (tissue fractions,
texture, ROI labels), with its lesions and enlarged ventricles, and the label map made from it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from bsynth_hpc.errors import ConfigError

from .deformation import Warp, smooth_field
from .pathology import Tumour, grow_ventricles
from .template import VENT_REACH_MM, Template


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
    if len(growth) != 2 or not all(0.0 <= g <= VENT_REACH_MM - 2.0 for g in growth):
        raise ConfigError(f"ventricle growth {ventricle_growth_mm!r} must be two values in "
                          f"[0, {VENT_REACH_MM - 2.0}] mm (left, right)")
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
                                                        cval=VENT_REACH_MM, prefilter=False)
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
        grow_ventricles(roi, nearest_vent.reshape(shape), gm, wm, out["vent_dist"], growth,
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
