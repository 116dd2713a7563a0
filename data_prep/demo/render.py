"""Rendering one planned subject (runs in worker processes): anatomy per visit, its label map, one
scanner series per available sequence, and the subject's manifest rows."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bsynth_hpc.constants import MODALITIES

from .acquisition import Acquisition, acquire, finish_header, rigid
from .anatomy import sample_anatomy
from .contrast import SIGNALS, render_contrast
from .deformation import LocalScaling, MassEffect, Warp
from .demographics import age_group
from .labels import ROI_LABELS, roi_ratios
from .manifest import LABEL_DIR, rel_path
from .pathology import Tumour
from .plan import SessionPlan, SubjectPlan
from .template import Template, load_template, subject_grid

_THICK_SLICE = (0.9, 0.9, 1.6)   # 2D multi-slice T2w/FLAIR: fine in-plane, thick axial slices


@dataclass(frozen=True)
class Geometry:
    """Cohort-wide grid settings: scanner FOV/spacing and the subject-space working spacing."""

    shape: tuple[int, int, int]
    spacing_mm: float

    @property
    def subject_spacing(self) -> float:
        """Anatomy is sampled at the scan spacing clipped to [1, 2] mm (template is 1 mm)."""
        return float(min(max(self.spacing_mm, 1.0), 2.0))


def subject_tumour(plan: SubjectPlan, tpl: Template) -> tuple[Tumour, MassEffect] | None:
    """The subject's tumour in subject space (site mapped through the head's linear part)."""
    if plan.tumour_site_mni is None:
        return None
    rng = np.random.default_rng(plan.tumour_seed)
    c0 = tpl.brain_centre_mm
    centre = c0 + plan.linear @ (plan.tumour_site_mni - c0)

    def lobes(k: int) -> np.ndarray:
        dirs = rng.normal(size=(k, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return np.column_stack([dirs, rng.uniform(2.0, 5.0, k), rng.uniform(0, 2 * math.pi, k)])

    radius = plan.tumour_radius_mm
    tumour = Tumour(centre=centre, radius_mm=radius, core_fraction=float(rng.uniform(0.4, 0.6)),
                    oedema_mm=float(rng.uniform(8.0, 16.0)), lobes=lobes(5), oedema_lobes=lobes(6))
    mass = MassEffect(centre=centre, volume_mm3=0.6 * 4.0 / 3.0 * math.pi * radius**3,
                      reach_mm=2.5 * radius)
    return tumour, mass


def _acquisitions(plan: SubjectPlan, sess: SessionPlan, geom: Geometry,
                  tpl: Template) -> tuple[np.ndarray, dict[str, Acquisition]]:
    """Head pose of the visit and one scanner series per available modality."""
    rng = np.random.default_rng(sess.seed)
    c0 = tpl.brain_centre_mm
    pose = rigid(np.clip(rng.normal(0, 3.0, 3), -7, 7),       # degrees
                 np.clip(rng.normal(0, 4.0, 3), -10, 10), c0)   # mm
    fov = np.asarray(geom.shape) * geom.spacing_mm
    proto = plan.protocol
    acqs = {}
    for m in MODALITIES:   # draw for all four so a modality's draws do not depend on the others
        thick = m in ("T2w", "FLAIR") and rng.random() < 0.5
        mult = np.asarray(_THICK_SLICE if thick else proto.t1_spacing)
        spacing = tuple(float(v) for v in mult * geom.spacing_mm)
        shape = tuple(int(max(round(f / s), 1)) for f, s in zip(fov, spacing))
        jitter = (np.eye(4) if m == "T1w" else
                  rigid(rng.normal(0, 0.7, 3), rng.normal(0, 0.8, 3), c0))
        storage = proto.storage
        gain = float(math.exp(rng.uniform(math.log(300), math.log(3000)))) if storage == "int16" \
            else float(rng.uniform(50.0, 800.0))
        acq = Acquisition(shape=shape, spacing=spacing, centre_mm=(pose @ np.r_[c0, 1.0])[:3],
                          pose=pose @ jitter, axcodes=proto.axcodes, storage=storage,
                          gain=gain, noise=float(rng.uniform(0.02, 0.04)),
                          bias=float(rng.uniform(0.08, 0.2)), seed=int(rng.integers(2**62)))
        if m in sess.modalities:
            acqs[m] = acq
    return pose, acqs


def _gains(seed: int) -> dict[str, dict[str, float]]:
    """Per-subject relaxation variability: each compartment's signal x N(1, 0.03)."""
    rng = np.random.default_rng(seed)
    return {m: {k: float(rng.normal(1.0, 0.03)) for k in ("csf", "gm", "wm")} for m in MODALITIES}


def render_subject(plan: SubjectPlan, out_dir: Path, geom: Geometry) -> list[dict[str, str]]:
    """Render and write every session/modality of a subject; return its manifest rows."""
    sp = geom.subject_spacing
    tpl = load_template(sp)
    grid = subject_grid(tpl, sp)
    rows = []
    for sess in plan.sessions:
        rows.extend(_render_session(plan, sess, tpl, grid, geom, out_dir))
    return rows


def _render_session(plan: SubjectPlan, sess: SessionPlan, tpl: Template,
                    grid: tuple[tuple[int, int, int], np.ndarray], geom: Geometry,
                    out_dir: Path) -> list[dict[str, str]]:
    """One visit: warp the anatomy, save its label map, scan and save each sequence."""
    lesion = subject_tumour(plan, tpl)
    scalings = tuple(LocalScaling(tpl.frames[n].centre, tpl.frames[n].axes, f)
                     for n, f in sorted(sess.volume_factors.items()))
    warp = Warp(centre=tpl.brain_centre_mm, linear=plan.linear, field_seed=plan.field_seed,
                mass=lesion[1] if lesion else None, scalings=scalings)
    subject = sample_anatomy(tpl, grid, warp, lesion[0] if lesion else None,
                             sess.ventricle_growth_mm)
    pose, acqs = _acquisitions(plan, sess, geom, tpl)
    dseg = subject.dseg()
    ratios = roi_ratios(dseg)
    world = pose @ subject.affine        # the label map sits where the T1w head sits
    dseg_path = out_dir / LABEL_DIR / rel_path(plan.subject, sess.session, "dseg")
    dseg_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(finish_header(nib.Nifti1Image(dseg, world), world), dseg_path)
    meta = dict(plan.metadata)
    if sess.session != "ses-01":
        meta["age"] = f"{sess.age:.1f}" if meta["age"] else ""
        meta["age_group"] = age_group(sess.age) if meta["age_group"] else ""
    gains = _gains(plan.gains_seed)
    sclerosis = ROI_LABELS[f"hippocampus_{plan.sclerosis}"] if plan.sclerosis else None
    rows = []
    for m, acq in acqs.items():
        signal = render_contrast(subject, m, gains[m], sclerosis)
        level = max(SIGNALS[m][k] for k in ("csf", "gm", "wm"))
        rel = rel_path(plan.subject, sess.session, m)
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(acquire(signal, subject.affine, acq, level), out_dir / rel)
        row = {"subject": plan.subject, "session": sess.session, "dataset": plan.dataset,
               "modality": m, "path": rel, "label": plan.label}
        row.update({f"roi_{k}": format(v, ".12g") for k, v in ratios.items()})
        row.update(meta)
        rows.append(row)
    return rows
