"""The independent ROI check of ``bsynth eval clinical`` (seed 002 §3.3, Fig. 4), without the frozen heads.

002 segments its samples with SynthSeg and correlates the measured hippocampus / amygdala / ventricle volumes
with the requested ones. No segmenter is shipped here; on a cohort whose label maps are known (the demo
cohort's ``derivatives/demo-labels``) the ROIs' *regions* are known instead:

* :func:`build_roi_atlas`: every training volume's label map, resampled onto its store grid (through the
  world affines) and fitted to the model's cube, is accumulated into a region per structure (the voxels where
  any training subject has it: where it can lie in generated volumes), and the real volumes give the CSF
  intensity threshold (midway between the median of ventricle voxels and of white matter);
* :func:`measure_rois`: on a volume, the CSF volume inside the ventricle region and the tissue volume inside
  the hippocampal region, each over the brain volume (the filled foreground) - the same kind of ratio as the
  requested one, left + right summed as 002 does;
* :func:`roi_agreement`: Pearson correlation (and slope) of measured vs requested, per structure.

Run on every real volume against its true ratios, the same measurement gives the reference correlation
that says how far the measurement itself can be trusted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.store import VolumeStore
from ..errors import InputError
from ..prep.demo.labels import ROI_LABELS
from ..prep.demo.manifest import rel_path
from ..recipes.clinical.data import ClinicalVolumeDataset, fit_to_cube

__all__ = ["RoiAtlas", "build_roi_atlas", "measure_rois", "roi_agreement", "STRUCTURES", "requested_totals"]

STRUCTURES: dict[str, tuple[int, int]] = {"ventricles": (4, 5), "hippocampus": (0, 1)}
"""Structure -> its (left, right) positions in the clinical vector."""
_LABELS = {"ventricles": (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"]),
           "hippocampus": (ROI_LABELS["hippocampus_l"], ROI_LABELS["hippocampus_r"])}
WM_LABEL = 3


@dataclass
class RoiAtlas:
    """Regions (bool, side^3) per structure and the intensity thresholds, from the training label maps."""

    regions: dict[str, np.ndarray]
    csf_threshold: float
    background_threshold: float
    subjects: int


def _label_map(labels_dir: Path, subject: str, session: str | None) -> Path:
    if session:
        path = labels_dir / rel_path(subject, session, "dseg")
        if path.is_file():
            return path
    found = sorted((labels_dir / subject).glob(f"*/anat/{subject}_*_dseg.nii.gz"))
    if not found:
        raise InputError(f"no label map for {subject} {session or ''} under {labels_dir} (expected "
                         f"{rel_path(subject, session or 'ses-01', 'dseg')})")
    return found[0]


def _labels_on_store_grid(path: Path, store_affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    m = np.linalg.inv(np.asarray(img.affine, dtype=np.float64)) @ store_affine
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape), order=0,
                                    cval=0.0, prefilter=False).astype(np.int16)


def build_roi_atlas(store: str | os.PathLike[str], labels_dir: str | os.PathLike[str], side: int,
                    split: str | None = "train") -> RoiAtlas:
    """The regions and thresholds of the module docstring from one split's clinical volumes."""
    ds = ClinicalVolumeDataset(store, split, side)
    vs = VolumeStore(store)
    counts = {name: np.zeros((side,) * 3, dtype=np.int32) for name in _LABELS}
    csf, wm = [], []
    for k, i in enumerate(ds.indices):
        entry = ds.base.entries[i]
        affine = np.asarray(vs.record(entry.volume_id)["affine"], dtype=np.float64).reshape(4, 4)
        lab = _labels_on_store_grid(_label_map(Path(labels_dir), entry.subject, entry.session), affine, ds.store_shape)
        lab = fit_to_cube(torch.from_numpy(lab)[None], side, labels=True)[0].numpy()
        image = ds[k]["image"][0].numpy()
        for name, ids in _LABELS.items():
            mask = np.isin(lab, ids)
            counts[name] += mask
            if name == "ventricles" and mask.any():
                csf.append(float(np.median(image[mask])))
        if (lab == WM_LABEL).any():
            wm.append(float(np.median(image[lab == WM_LABEL])))
    if not csf or not wm:
        raise InputError(f"{labels_dir}: the label maps hold no ventricle or white-matter voxels on the store grid")
    csf_i, wm_i = float(np.median(csf)), float(np.median(wm))
    regions = {name: ndimage.binary_dilation(c > 0, iterations=1) for name, c in counts.items()}
    return RoiAtlas(regions, 0.5 * (csf_i + wm_i), 0.5 * csf_i, len(ds))


def measure_rois(volume: np.ndarray, atlas: RoiAtlas) -> dict[str, float]:
    """CSF volume in the ventricle region and tissue volume in the hippocampal region, over the brain volume."""
    v = np.asarray(volume, dtype=np.float32)
    brain = ndimage.binary_fill_holes(v > atlas.background_threshold)
    n = max(int(brain.sum()), 1)
    csf = brain & (v < atlas.csf_threshold)
    return {"ventricles": float((csf & atlas.regions["ventricles"]).sum()) / n,
            "hippocampus": float((brain & ~csf & atlas.regions["hippocampus"]).sum()) / n}


def requested_totals(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Left + right requested ratios per structure of raw vectors (N, 7)."""
    r = np.asarray(raw, dtype=np.float64)
    return {name: r[:, i] + r[:, j] for name, (i, j) in STRUCTURES.items()}


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def roi_agreement(requested: np.ndarray, measured: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per structure: n, Pearson r, least-squares slope of measured on requested, and the pairs."""
    want = requested_totals(requested)
    out: dict[str, Any] = {}
    for name in STRUCTURES:
        got = np.asarray([m[name] for m in measured], dtype=np.float64)
        slope = float(np.polyfit(want[name], got, 1)[0]) if len(got) >= 2 and np.std(want[name]) > 0 else None
        out[name] = {"n": int(len(got)), "pearson_r": _pearson(want[name], got), "slope": slope,
                     "requested": want[name].tolist(), "measured": got.tolist()}
    return out
