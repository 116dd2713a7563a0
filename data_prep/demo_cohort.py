"""The embedded demo cohort (`bsynth demo-cohort`): three small labelled datasets, built offline.

Every subject is a smooth random deformation of the real MNI152 2009 template (see
:mod:`bsynth_hpc.prep.demo_anatomy`), rendered as T1w/T2w/FLAIR/T1Gd with bias field and Rician noise,
written as a pooled multi-site collection would arrive:

* ``demo-epilepsy``: ``healthy`` / ``TLE`` (unilateral hippocampal volume loss, most with
  hippocampal sclerosis: T2/FLAIR hyperintense hippocampus; metadata epilepsy=yes, hs=yes);
* ``demo-glioma``: ``normal`` / ``tumour`` (necrotic core, enhancing rim visible on T1Gd only,
  FLAIR/T2-bright oedema, mass effect; metadata tumor=yes; tumour cases are curated BraTS-like
  with all four sequences, the normal ones are not);
* ``demo-dementia``: ``CN`` / ``AD`` (ex-vacuo ventricle enlargement, hippocampal/amygdala
  atrophy, older; half the subjects have a second session ``ses-02`` one to two years later,
  with progression, so subject-aware splits matter).

Layout: ``OUT/sub-XXXX/ses-YY/anat/sub-XXXX_ses-YY_<mod>.nii.gz`` (stored RAS, LPS, LAS or PIR,
isotropic or anisotropic, int16 / scaled int16 / float32, qform and sform set), ``OUT/manifest.csv``
(one row per file: subject, session, dataset, modality, path, label, six measured ROI ratios, the
25 metadata fields) and the ground-truth label maps in ``OUT/derivatives/demo-labels`` (BIDS
``_dseg``; the ROI ratios in the manifest are measured on them).  Same seed -> identical bytes.

Dataset and label follow the subject index (round robin, balanced) and acquisition protocols
cycle over subjects (``PROTOCOLS``), so any cohort of six or more subjects holds every dataset,
label, stored orientation, spacing and dtype; everything else is drawn from the subject's own
seed, which is why a subject never depends on the cohort size or on ``workers``.  A cohort
restricted to some datasets (``datasets=``, ``bsynth demo-cohort --datasets demo-epilepsy``) keeps
the first subjects of those datasets with their indices, ids and bytes from the full cohort; five
or more subjects of one dataset hold both its labels and every protocol.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import re
import shutil
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage as ndi

from bsynth_hpc.constants import DEFAULT_SHAPE, DEFAULT_SPACING, MODALITIES
from bsynth_hpc.errors import ConfigError, InputError, ManifestError
from bsynth_hpc.prep import demo_anatomy as anat

if TYPE_CHECKING:  # pillow is only needed by the 2D slice exporter
    from PIL import Image

__all__ = [
    "DATASETS", "DATASET_LABELS", "MANIFEST_COLUMNS", "META_FIELDS", "CATEGORIES", "BINARY_FIELDS",
    "ROI_COLUMNS", "PROTOCOLS", "build_demo_cohort", "export_brats_layout", "export_slice_folders",
    "plan_cohort", "read_manifest", "age_group", "subject_indices",
]

# --------------------------------------------------------------------------------------------
# Vocabulary (shared with the manifest/metadata readers; spellings are part of the contract)
# --------------------------------------------------------------------------------------------
DATASETS: tuple[str, ...] = ("demo-epilepsy", "demo-glioma", "demo-dementia")
DATASET_LABELS: dict[str, tuple[str, str]] = {
    "demo-epilepsy": ("healthy", "TLE"),
    "demo-glioma": ("normal", "tumour"),
    "demo-dementia": ("CN", "AD"),
}
ROI_COLUMNS: tuple[str, ...] = tuple(f"roi_{name}" for name in anat.ROI_NAMES)
CONTINUOUS_FIELDS: tuple[str, ...] = ("age", "height", "weight", "bmi")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "age_group": ("child", "adolescent", "young_adult", "middle_aged", "older_adult"),
    "sex": ("female", "male"),
    "race": ("white", "black", "asian", "hispanic", "native", "multiracial", "other"),
    "handedness": ("right", "left", "ambidextrous"),
    "education": ("less_than_high_school", "high_school", "some_college", "bachelor", "graduate"),
    "socioeconomic_status": ("low", "middle", "high"),
}
BINARY_FIELDS: tuple[str, ...] = (
    "stroke", "schizophrenia", "depression", "adhd", "bipolar_disorder", "prosopagnosia",
    "epilepsy", "fcd", "hs", "tumor", "acute_ischaemic_stroke", "dnt", "gliosis", "aneurysm", "asd",
)
META_FIELDS: tuple[str, ...] = CONTINUOUS_FIELDS + tuple(CATEGORIES) + BINARY_FIELDS
MANIFEST_COLUMNS: tuple[str, ...] = (
    ("subject", "session", "dataset", "modality", "path", "label") + ROI_COLUMNS + META_FIELDS)
LABEL_DIR = Path("derivatives") / "demo-labels"
GENERATOR = "bsynth demo-cohort"

# --------------------------------------------------------------------------------------------
# Cohort design (probabilities are per subject; (control, case) pairs where they differ)
# --------------------------------------------------------------------------------------------
_MODALITY_P: dict[tuple[str, str], dict[str, float]] = {
    ("demo-epilepsy", "healthy"): {"T1w": 0.97, "T2w": 0.6, "T1Gd": 0.05, "FLAIR": 0.5},
    ("demo-epilepsy", "TLE"): {"T1w": 0.97, "T2w": 0.7, "T1Gd": 0.05, "FLAIR": 0.7},
    ("demo-glioma", "normal"): {"T1w": 0.95, "T2w": 0.6, "T1Gd": 0.3, "FLAIR": 0.6},
    ("demo-glioma", "tumour"): {"T1w": 1.0, "T2w": 1.0, "T1Gd": 1.0, "FLAIR": 1.0},  # curated
    ("demo-dementia", "CN"): {"T1w": 1.0, "T2w": 0.3, "T1Gd": 0.0, "FLAIR": 0.5},
    ("demo-dementia", "AD"): {"T1w": 1.0, "T2w": 0.3, "T1Gd": 0.0, "FLAIR": 0.5},
}
_AGE: dict[tuple[str, str], tuple[float, float, float, float]] = {  # mean, sd, min, max
    ("demo-epilepsy", "healthy"): (30, 13, 6, 70), ("demo-epilepsy", "TLE"): (34, 12, 8, 68),
    ("demo-glioma", "normal"): (50, 14, 20, 85), ("demo-glioma", "tumour"): (57, 12, 22, 85),
    ("demo-dementia", "CN"): (72, 6, 58, 90), ("demo-dementia", "AD"): (76, 7, 58, 92),
}
_ABSENT: dict[str, tuple[str, ...]] = {   # fields a dataset never recorded
    "demo-epilepsy": ("socioeconomic_status",),
    "demo-glioma": ("height", "weight", "bmi"),
    "demo-dementia": ("handedness", "race"),
}
_BINARY_P: dict[str, dict[str, tuple[float, float]]] = {  # recorded flags: P(yes) control/case
    "demo-epilepsy": {"depression": (0.05, 0.3), "adhd": (0.04, 0.08), "asd": (0.01, 0.03),
                      "schizophrenia": (0.01, 0.02), "bipolar_disorder": (0.01, 0.03),
                      "prosopagnosia": (0.01, 0.02), "fcd": (0.0, 0.05)},
    "demo-glioma": {"epilepsy": (0.02, 0.35), "stroke": (0.03, 0.03), "aneurysm": (0.02, 0.02),
                    "acute_ischaemic_stroke": (0.01, 0.01), "dnt": (0.0, 0.0),
                    "gliosis": (0.0, 0.1)},
    "demo-dementia": {"depression": (0.1, 0.3), "stroke": (0.05, 0.08), "epilepsy": (0.01, 0.03),
                      "acute_ischaemic_stroke": (0.0, 0.01)},
}
_P_MISSING = 0.1            # random missingness of a recorded field
_TUMOUR_SITES_MNI = ((28.0, 18.0, 22.0), (30.0, -18.0, 28.0), (36.0, -10.0, -2.0),
                     (24.0, -50.0, 22.0), (22.0, 30.0, 8.0))   # deep WM, |x| mirrored per side


@dataclass(frozen=True)
class Protocol:
    """A site's scanner conventions: stored orientation, T1w voxel shape, on-disk dtype."""

    axcodes: str
    t1_spacing: tuple[float, float, float]   # multiples of the cohort spacing
    storage: anat.Storage


PROTOCOLS: tuple[Protocol, ...] = (   # 5 entries: coprime with the 3 datasets, so they mix
    Protocol("RAS", (1.0, 1.0, 1.0), "int16"),
    Protocol("LPS", (1.0, 1.0, 1.0), "int16"),           # DICOM patient coordinates
    Protocol("LAS", (1.0, 1.0, 1.5), "float32"),         # radiological, thick slices
    Protocol("RAS", (1.25, 1.25, 1.0), "int16-scaled"),  # coarser in-plane, scl_slope set
    Protocol("PIR", (1.0, 1.0, 1.0), "float32"),         # sagittal acquisition
)
_THICK_SLICE = (0.9, 0.9, 1.6)   # 2D multi-slice T2w/FLAIR: fine in-plane, thick axial slices


@dataclass
class SessionPlan:
    """One visit: age, modalities, disease state (ROI volume factors) and acquisition draws."""

    session: str
    age: float
    modalities: tuple[str, ...]
    volume_factors: dict[str, float]        # hippocampus/amygdala local volume factors
    ventricle_growth_mm: tuple[float, float]
    seed: int


@dataclass
class SubjectPlan:
    """Everything random about one subject, drawn up front so workers are deterministic."""

    index: int
    subject: str
    dataset: str
    label: str
    metadata: dict[str, str]
    protocol: Protocol
    linear: np.ndarray
    field_seed: int
    sessions: list[SessionPlan] = field(default_factory=list)
    tumour_site_mni: np.ndarray | None = None
    tumour_radius_mm: float = 0.0
    tumour_seed: int = 0
    sclerosis: str | None = None          # "l"/"r": sclerotic hippocampus (T2/FLAIR bright)
    gains_seed: int = 0


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
def age_group(age: float) -> str:
    """Age bin of the schema: <12, 12-17, 18-39, 40-64, >=65."""
    if age < 12:
        return "child"
    if age < 18:
        return "adolescent"
    if age < 40:
        return "young_adult"
    if age < 65:
        return "middle_aged"
    return "older_adult"


def _choice(rng: np.random.Generator, options: tuple[str, ...], p: tuple[float, ...]) -> str:
    return options[int(rng.choice(len(options), p=np.asarray(p) / sum(p)))]


def _metadata(dataset: str, label: str, age: float, sex: str, truth: dict[str, bool],
              rng: np.random.Generator) -> dict[str, str]:
    """25 schema fields as manifest cells ('' = missing), with per-dataset and random gaps."""
    case = label == DATASET_LABELS[dataset][1]
    child = age < 18
    if child:
        height = 90.0 + 5.2 * age + rng.normal(0, 6)
        bmi_true = rng.normal(18.5, 2.5)
    else:
        height = rng.normal(176.0, 7.0) if sex == "male" else rng.normal(163.0, 6.5)
        height -= 0.1 * max(age - 60.0, 0.0)
        bmi_true = rng.normal(26.0, 4.0)
    height = round(float(height), 1)
    weight = round(float(np.clip(bmi_true, 15, 45) * (height / 100.0) ** 2), 1)
    meta: dict[str, str] = {
        "age": f"{age:.1f}", "height": f"{height:.1f}", "weight": f"{weight:.1f}",
        "bmi": f"{weight / (height / 100.0) ** 2:.1f}", "age_group": age_group(age), "sex": sex,
        "race": _choice(rng, CATEGORIES["race"], (60, 13, 8, 12, 1, 3, 3)),
        "handedness": _choice(rng, CATEGORIES["handedness"],
                              (80, 16, 4) if dataset == "demo-epilepsy" and case else (88, 9, 3)),
        "education": ("less_than_high_school" if child else
                      _choice(rng, CATEGORIES["education"], (8, 27, 25, 25, 15))),
        "socioeconomic_status": _choice(rng, CATEGORIES["socioeconomic_status"], (25, 50, 25)),
    }
    for name, (p_ctrl, p_case) in _BINARY_P[dataset].items():
        meta[name] = "yes" if rng.random() < (p_case if case else p_ctrl) else "no"
    defining: set[str] = set()
    if dataset == "demo-epilepsy":
        meta["epilepsy"] = "yes" if case else "no"
        meta["hs"] = "yes" if truth.get("hs") else "no"
        defining.add("epilepsy")
    elif dataset == "demo-glioma":
        meta["tumor"] = "yes" if case else "no"
        defining.add("tumor")
    for name in META_FIELDS:
        meta.setdefault(name, "")
    for name in _ABSENT[dataset]:
        meta[name] = ""
    for name in META_FIELDS:
        if name not in defining and name not in ("age_group", "sex") and rng.random() < _P_MISSING:
            meta[name] = ""
    if meta["age"] == "" and rng.random() < 0.5:
        meta["age_group"] = ""
    if rng.random() < 0.03:
        meta["sex"] = ""
    if meta["bmi"] and (meta["height"] == "" or meta["weight"] == "") and rng.random() < 0.5:
        meta["bmi"] = ""
    return meta


def _volume_factors(label: str, age: float, sclerosis: str | None,
                    rng: np.random.Generator) -> dict[str, float]:
    """Nominal hippocampus/amygdala volume factors (<1 atrophy) for ageing plus disease."""
    hippo = 1.0 - 0.005 * max(age - 40.0, 0.0)
    amyg = 1.0 - 0.004 * max(age - 40.0, 0.0)
    if label == "AD":
        hippo *= rng.uniform(0.58, 0.68)   # nominal; measured loss vs CN is ~20-25 %
        amyg *= rng.uniform(0.62, 0.72)
    factors = {}
    for side in ("l", "r"):
        factors[f"hippocampus_{side}"] = hippo * rng.normal(1.0, 0.03)
        factors[f"amygdala_{side}"] = amyg * rng.normal(1.0, 0.03)
    if sclerosis is not None:
        factors[f"hippocampus_{sclerosis}"] *= rng.uniform(0.55, 0.65)   # measured ~25-35 % loss
    return {k: float(np.clip(v, 0.25, 1.5)) for k, v in factors.items()}


def _ventricle_growth(label: str, age: float, rng: np.random.Generator) -> tuple[float, float]:
    """Ex-vacuo ventricle growth (mm, left/right): ~0.05 mm per year past 35, +1.0-1.4 mm in AD."""
    base = 0.05 * max(age - 35.0, 0.0) + (rng.uniform(1.0, 1.4) if label == "AD" else 0.0)
    left, right = (float(np.clip(base + rng.normal(0.0, 0.2), 0.0, 8.0)) for _ in "lr")
    return left, right


def _progress(sess: SessionPlan, label: str, years: float, seed: int,
              modalities: tuple[str, ...]) -> SessionPlan:
    """A later visit: ventricles grow, hippocampi/amygdalae shrink (faster in AD)."""
    ad = label == "AD"
    factors = {name: float(np.clip(f * (1.0 - (0.045 if ad else 0.012) * years), 0.25, 1.5))
               for name, f in sess.volume_factors.items()}
    growth = tuple(float(min(g + (0.45 if ad else 0.12) * years, 8.0))
                   for g in sess.ventricle_growth_mm)
    return SessionPlan(f"ses-{int(sess.session[4:]) + 1:02d}", round(sess.age + years, 1),
                       modalities, factors, growth, seed)  # type: ignore[arg-type]


def _modalities(dataset: str, label: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Available sequences; T1w almost always, at least one always."""
    p = _MODALITY_P[(dataset, label)]
    chosen = tuple(m for m in MODALITIES if rng.random() < p[m])
    return chosen or ("T1w",)


def plan_subject(index: int, seed_seq: np.random.SeedSequence) -> SubjectPlan:
    """Draw one subject: dataset/label by position (balanced), everything else from its seed."""
    rng = np.random.default_rng(seed_seq)
    dataset = DATASETS[index % len(DATASETS)]
    within = index // len(DATASETS)
    label = DATASET_LABELS[dataset][within % 2]
    case = label == DATASET_LABELS[dataset][1]
    mean, sd, lo, hi = _AGE[(dataset, label)]
    age = round(float(np.clip(rng.normal(mean, sd), lo, hi)), 1)
    sex = "male" if rng.random() < (0.6 if dataset == "demo-glioma" and case else 0.5) else "female"
    sclerosis = str(rng.choice(["l", "r"])) if label == "TLE" else None
    hs_visible = sclerosis is not None and rng.random() < 0.8
    size = 1.0 + rng.normal(0.0, 0.03) + (0.025 if sex == "male" else -0.015)
    size *= 0.97 if age < 12 else 1.0
    linear = np.diag(size * (1.0 + rng.normal(0.0, 0.02, 3)))
    linear += np.triu(rng.normal(0.0, 0.015, (3, 3)), 1)
    meta = _metadata(dataset, label, age, sex, {"hs": hs_visible}, rng)
    plan = SubjectPlan(index=index, subject=f"sub-{index + 1:04d}", dataset=dataset, label=label,
                       metadata=meta, protocol=PROTOCOLS[index % len(PROTOCOLS)], linear=linear,
                       field_seed=int(rng.integers(2**62)),
                       sclerosis=sclerosis if hs_visible else None,
                       gains_seed=int(rng.integers(2**62)))
    first = SessionPlan("ses-01", age, _modalities(dataset, label, rng),
                        _volume_factors(label, age, sclerosis, rng),
                        _ventricle_growth(label, age, rng), int(rng.integers(2**62)))
    plan.sessions.append(first)
    if dataset == "demo-dementia" and within % 4 in (0, 1):   # half the dementia set: 2 visits
        years = round(float(rng.uniform(1.0, 2.0)), 1)
        mods = _modalities(dataset, label, rng)
        plan.sessions.append(_progress(first, label, years, int(rng.integers(2**62)),
                                       ("T1w",) + tuple(m for m in mods if m != "T1w")))
    if label == "tumour":
        site = np.array(_TUMOUR_SITES_MNI[int(rng.integers(len(_TUMOUR_SITES_MNI)))])
        site[0] *= rng.choice([-1.0, 1.0])
        plan.tumour_site_mni = site + rng.normal(0.0, 3.0, 3)
        plan.tumour_radius_mm = float(rng.uniform(9.0, 15.0))
        plan.tumour_seed = int(rng.integers(2**62))
    return plan


def subject_indices(n_subjects: int, datasets: Sequence[str] | None = None) -> list[int]:
    """Indices of the subjects of a cohort: ``0 .. n-1``, or, with ``datasets``, the first
    ``n_subjects`` indices whose dataset (``DATASETS[i % 3]``) is one of them."""
    if datasets is None:
        return list(range(n_subjects))
    wanted = [DATASETS.index(d) for d in _check_datasets(datasets) or ()]
    return [i for i in range(n_subjects * len(DATASETS)) if i % len(DATASETS) in wanted][:n_subjects]


def plan_cohort(n_subjects: int, seed: int, datasets: Sequence[str] | None = None) -> list[SubjectPlan]:
    """Plans for ``n_subjects`` subjects; subject i depends only on (seed, i).

    With ``datasets`` the cohort keeps the first ``n_subjects`` subjects of those datasets, under
    their indices (and ids) in the unfiltered cohort, so each of them is byte-identical to the same
    subject of an unfiltered build with the same seed."""
    indices = subject_indices(n_subjects, datasets)
    children = np.random.SeedSequence(seed).spawn(indices[-1] + 1)
    return [plan_subject(i, children[i]) for i in indices]


# --------------------------------------------------------------------------------------------
# Rendering (runs in worker processes)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Cohort-wide grid settings: scanner FOV/spacing and the subject-space working spacing."""

    shape: tuple[int, int, int]
    spacing_mm: float

    @property
    def subject_spacing(self) -> float:
        """Anatomy is sampled at the scan spacing clipped to [1, 2] mm (template is 1 mm)."""
        return float(min(max(self.spacing_mm, 1.0), 2.0))


def _tumour(plan: SubjectPlan, tpl: anat.Template) -> tuple[anat.Tumour, anat.MassEffect] | None:
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
    tumour = anat.Tumour(centre=centre, radius_mm=radius,
                         core_fraction=float(rng.uniform(0.4, 0.6)),
                         oedema_mm=float(rng.uniform(8.0, 16.0)), lobes=lobes(5),
                         oedema_lobes=lobes(6))
    mass = anat.MassEffect(centre=centre, volume_mm3=0.6 * 4.0 / 3.0 * math.pi * radius**3,
                           reach_mm=2.5 * radius)
    return tumour, mass


def _acquisitions(plan: SubjectPlan, sess: SessionPlan, geom: Geometry,
                  tpl: anat.Template) -> tuple[np.ndarray, dict[str, anat.Acquisition]]:
    """Head pose of the visit and one scanner series per available modality."""
    rng = np.random.default_rng(sess.seed)
    c0 = tpl.brain_centre_mm
    pose = anat.rigid(np.clip(rng.normal(0, 3.0, 3), -7, 7),       # degrees
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
                  anat.rigid(rng.normal(0, 0.7, 3), rng.normal(0, 0.8, 3), c0))
        storage = proto.storage
        gain = float(math.exp(rng.uniform(math.log(300), math.log(3000)))) if storage == "int16" \
            else float(rng.uniform(50.0, 800.0))
        acq = anat.Acquisition(shape=shape, spacing=spacing, centre_mm=(pose @ np.r_[c0, 1.0])[:3],
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


def rel_path(subject: str, session: str, suffix: str) -> str:
    """BIDS-style relative path of one file (forward slashes)."""
    return f"{subject}/{session}/anat/{subject}_{session}_{suffix}.nii.gz"


def render_subject(plan: SubjectPlan, out_dir: Path, geom: Geometry) -> list[dict[str, str]]:
    """Render and write every session/modality of a subject; return its manifest rows."""
    sp = geom.subject_spacing
    tpl = anat.load_template(sp)
    grid = anat.subject_grid(tpl, sp)
    rows = []
    for sess in plan.sessions:
        rows.extend(_render_session(plan, sess, tpl, grid, geom, out_dir))
    return rows


def _render_session(plan: SubjectPlan, sess: SessionPlan, tpl: anat.Template,
                    grid: tuple[tuple[int, int, int], np.ndarray], geom: Geometry,
                    out_dir: Path) -> list[dict[str, str]]:
    """One visit: warp the anatomy, save its label map, scan and save each sequence."""
    lesion = _tumour(plan, tpl)
    scalings = tuple(anat.LocalScaling(tpl.frames[n].centre, tpl.frames[n].axes, f)
                     for n, f in sorted(sess.volume_factors.items()))
    warp = anat.Warp(centre=tpl.brain_centre_mm, linear=plan.linear, field_seed=plan.field_seed,
                     mass=lesion[1] if lesion else None, scalings=scalings)
    subject = anat.sample_anatomy(tpl, grid, warp, lesion[0] if lesion else None,
                                  sess.ventricle_growth_mm)
    pose, acqs = _acquisitions(plan, sess, geom, tpl)
    dseg = subject.dseg()
    ratios = anat.roi_ratios(dseg)
    world = pose @ subject.affine        # the label map sits where the T1w head sits
    dseg_path = out_dir / LABEL_DIR / rel_path(plan.subject, sess.session, "dseg")
    dseg_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(anat.finish_header(nib.Nifti1Image(dseg, world), world), dseg_path)
    meta = dict(plan.metadata)
    if sess.session != "ses-01":
        meta["age"] = f"{sess.age:.1f}" if meta["age"] else ""
        meta["age_group"] = age_group(sess.age) if meta["age_group"] else ""
    gains = _gains(plan.gains_seed)
    sclerosis = anat.ROI_LABELS[f"hippocampus_{plan.sclerosis}"] if plan.sclerosis else None
    rows = []
    for m, acq in acqs.items():
        signal = anat.render_contrast(subject, m, gains[m], sclerosis)
        level = max(anat.SIGNALS[m][k] for k in ("csf", "gm", "wm"))
        rel = rel_path(plan.subject, sess.session, m)
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(anat.acquire(signal, subject.affine, acq, level), out_dir / rel)
        row = {"subject": plan.subject, "session": sess.session, "dataset": plan.dataset,
               "modality": m, "path": rel, "label": plan.label}
        row.update({f"roi_{k}": format(v, ".12g") for k, v in ratios.items()})
        row.update(meta)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _check_datasets(datasets: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """None (all datasets) or a non-empty tuple of known dataset names, in ``DATASETS`` order."""
    if datasets is None:
        return None
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in names if d not in DATASETS]
    if not names or unknown:
        raise ConfigError(f"datasets must name one or more of {', '.join(DATASETS)}, got {names!r}")
    return tuple(d for d in DATASETS if d in names)


def _check_args(n_subjects: int, shape: tuple[int, int, int] | None, spacing_mm: float,
                workers: int) -> Geometry:
    if not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise ConfigError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if not (isinstance(spacing_mm, (int, float)) and 0.5 <= float(spacing_mm) <= 8.0):
        raise ConfigError(f"spacing_mm must be a number in [0.5, 8] mm, got {spacing_mm!r}")
    if shape is None:
        fov = np.asarray(DEFAULT_SHAPE) * np.asarray(DEFAULT_SPACING)
        shape = tuple(int(round(f / spacing_mm)) for f in fov)   # type: ignore[assignment]
    else:
        shape = tuple(shape)   # type: ignore[assignment]
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and 8 <= s <= 1024
                                      for s in shape):
            raise ConfigError(f"shape must be three integers in [8, 1024] (X Y Z), got {shape!r}")
    x, y, z = (int(s) for s in shape)
    return Geometry(shape=(x, y, z), spacing_mm=float(spacing_mm))


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``; clear a previous demo cohort there; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        desc = out / "dataset_description.json"
        try:
            ours = any(g.get("Name") == GENERATOR
                       for g in json.loads(desc.read_text()).get("GeneratedBy", []))
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ConfigError(f"{out} is not empty and holds no previous demo cohort; "
                              "choose an empty or new folder")
        for child in out.iterdir():
            if child.name.startswith("sub-") or child.name == "derivatives":
                shutil.rmtree(child)
            elif child.name in ("manifest.csv", "dataset_description.json"):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_sidecars(out: Path, n_subjects: int, geom: Geometry, seed: int,
                    datasets: tuple[str, ...] | None = None) -> None:
    """BIDS dataset descriptions and the label-map lookup table."""
    params: dict[str, object] = {"n_subjects": n_subjects, "seed": seed,
                                 "shape": list(geom.shape), "spacing_mm": geom.spacing_mm}
    if datasets is not None:
        params["datasets"] = list(datasets)
    desc = {"Name": "bsynth demo cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
            "GeneratedBy": [{"Name": GENERATOR, "Description":
                             "synthetic subjects warped from MNI152 2009 (nilearn)"}],
            "BsynthDemoCohort": params}
    (out / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    labels = out / LABEL_DIR
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "dataset_description.json").write_text(json.dumps(
        {"Name": "bsynth demo cohort ground-truth labels", "BIDSVersion": "1.9.0",
         "DatasetType": "derivative", "GeneratedBy": [{"Name": GENERATOR}]}, indent=2) + "\n")
    lines = ["index\tname"] + [f"{k}\t{v}" for k, v in anat.DSEG_LABELS.items()]
    (labels / "dseg.tsv").write_text("\n".join(lines) + "\n")


def build_demo_cohort(out_dir: str | Path, n_subjects: int = 16,
                      shape: tuple[int, int, int] | None = None, spacing_mm: float = 2.0,
                      seed: int = 0, workers: int = 1,
                      datasets: Sequence[str] | None = None) -> Path:
    """Build the demo cohort under ``out_dir`` and return the path of its ``manifest.csv``.

    ``shape`` is the scanner grid in RAS axis order at ``spacing_mm`` (default: the project's
    192x224x160 mm field of view at that spacing), centred on the brain; series stored in another
    orientation or with anisotropic voxels cover the same field of view.  Subject ``i`` depends
    only on ``(seed, i)``, so ``workers`` (a process pool) never changes the output.
    ``datasets`` (e.g. ``["demo-epilepsy"]``) keeps ``n_subjects`` subjects of those datasets
    only (labels still alternate, so the classes stay balanced); they keep their ids from the
    unfiltered cohort (``sub-0001, sub-0004, ...`` for demo-epilepsy) and their bytes.
    """
    geom = _check_args(n_subjects, shape, spacing_mm, workers)
    chosen = _check_datasets(datasets)
    out = Path(out_dir)
    _prepare_out_dir(out)
    plans = plan_cohort(int(n_subjects), int(seed), chosen)
    if workers > 1 and n_subjects > 1:
        ctx = multiprocessing.get_context("spawn")   # safe even if the caller holds threads
        sp = geom.subject_spacing
        with ProcessPoolExecutor(max_workers=min(int(workers), int(n_subjects)), mp_context=ctx,
                                 initializer=anat.prime_template,
                                 initargs=(sp, anat.load_template(sp))) as pool:
            per_subject = list(pool.map(render_subject, plans, [out] * len(plans),
                                        [geom] * len(plans)))
    else:
        per_subject = [render_subject(p, out, geom) for p in plans]
    _write_sidecars(out, int(n_subjects), geom, int(seed), chosen)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    return manifest


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------
def read_manifest(manifest: str | Path) -> tuple[Path, list[dict[str, str]]]:
    """Rows of a demo manifest and its folder; checks the columns the exporters need."""
    path = Path(manifest)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; build one with `bsynth demo-cohort`")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        missing = [c for c in ("subject", "session", "dataset", "modality", "path", "label")
                   if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}")
    return path.parent, rows


def _volume_path(root: Path, row: dict[str, str]) -> Path:
    rel = Path(row["path"])
    full = (root / rel).resolve()
    if rel.is_absolute() or root.resolve() not in full.parents:
        raise ManifestError(f"manifest path {row['path']!r} escapes the manifest folder {root}")
    if not full.is_file():
        raise ManifestError(f"manifest lists {row['path']!r} but {full} does not exist")
    return full


def resample_like(img: nib.Nifti1Image, ref: nib.Nifti1Image, order: int) -> np.ndarray:
    """``img`` resampled onto ``ref``'s voxel grid through both affines (world mm preserved)."""
    m = np.linalg.inv(img.affine) @ ref.affine
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ndi.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=ref.shape[:3],
                                order=order, cval=0.0, prefilter=False)


_BRATS_SUFFIX = {"T1w": "t1", "T1Gd": "t1ce", "T2w": "t2", "FLAIR": "flair"}


def _digits(text: str) -> str:
    found = re.sub(r"\D", "", text)
    return found or re.sub(r"[^A-Za-z0-9]", "", text)


def export_brats_layout(manifest: str | Path, out_dir: str | Path,
                        dataset: str = "demo-glioma") -> Path:
    """BraTS-style case folders ``OUT/<case>/<case>_{t1,t1ce,t2,flair}[_seg].nii.gz``.

    Only subject-sessions with all four sequences are exported.  As in BraTS, the four share one
    grid: T1Gd/T2w/FLAIR are resampled onto the T1w grid through their affines; ``_seg`` (BraTS
    labels 1 necrosis, 2 oedema, 4 enhancing) comes from the ground-truth label map when present.
    """
    root, rows = read_manifest(manifest)
    cases: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        if row["dataset"] == dataset:
            cases[(row["subject"], row["session"])][row["modality"]] = row
    complete = {k: v for k, v in cases.items() if set(_BRATS_SUFFIX) <= set(v)}
    if not complete:
        raise ManifestError(f"no subject-session of dataset {dataset!r} in {manifest} has all of "
                            f"{sorted(_BRATS_SUFFIX)}; pick another dataset")
    out = Path(out_dir)
    for (subject, session), mods in sorted(complete.items()):
        case = f"BraTS-DEMO-{_digits(subject)}-{_digits(session)}"
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        ref = nib.load(_volume_path(root, mods["T1w"]))
        for m, suffix in _BRATS_SUFFIX.items():
            src = _volume_path(root, mods[m])
            target = folder / f"{case}_{suffix}.nii.gz"
            if m == "T1w":
                shutil.copyfile(src, target)
                continue
            img = nib.load(src)
            data = resample_like(img, ref, order=1)
            new = nib.Nifti1Image(data, ref.affine)
            new.header.set_data_dtype(img.get_data_dtype())
            nib.save(anat.finish_header(new, ref.affine), target)
        dseg_path = root / LABEL_DIR / rel_path(subject, session, "dseg")
        if dseg_path.is_file():
            dseg = nib.load(dseg_path)
            labels = np.asarray(dseg.dataobj, dtype=np.uint8)
            brats = np.zeros_like(labels)
            for ours, theirs in anat.BRATS_LABELS.items():
                brats[labels == ours] = theirs
            seg = resample_like(nib.Nifti1Image(brats, dseg.affine), ref, order=0).astype(np.uint8)
            nib.save(anat.finish_header(nib.Nifti1Image(seg, ref.affine), ref.affine),
                     folder / f"{case}_seg.nii.gz")
    return out


def _axial_slices(data: np.ndarray, n: int, lesion_z: tuple[float, float] | None) -> list[int]:
    """``n`` axial indices: spread over the lesion when given, else over the central brain."""
    fg = data > 0.2 * np.percentile(data, 99.0)
    area = fg.sum(axis=(0, 1))
    rows = np.flatnonzero(area >= 0.05 * area.max())
    if len(rows) == 0:
        raise InputError("T1w volume has no foreground; cannot choose slices")
    lo, hi = float(rows[0]), float(rows[-1])
    if lesion_z is not None:
        a, b = lesion_z
    else:
        a, b = lo + 0.35 * (hi - lo), lo + 0.75 * (hi - lo)
    mid, half = (a + b) / 2.0, max((b - a) / 2.0, (n + 1) / 2.0)   # room for n distinct slices
    picks = np.linspace(mid - half, mid + half, n + 2)[1:-1]
    return [int(np.clip(round(p), 0, data.shape[2] - 1)) for p in picks]


def _lesion_z(dseg_path: Path, canonical: nib.Nifti1Image) -> tuple[float, float] | None:
    """Axial index range (in ``canonical``'s grid) covered by tumour labels, if any."""
    if not dseg_path.is_file():
        return None
    dseg = nib.load(dseg_path)
    vox = np.argwhere(np.isin(np.asarray(dseg.dataobj), list(anat.BRATS_LABELS)))
    if len(vox) == 0:
        return None
    world = apply_affine(dseg.affine, vox)
    k = apply_affine(np.linalg.inv(canonical.affine), world)[:, 2]
    return float(np.percentile(k, 10)), float(np.percentile(k, 90))


def _to_png(slice2d: np.ndarray, zooms: tuple[float, float], top: float,
            size: int) -> Image.Image:
    """Axial slice (RAS, i x j) -> size x size 8-bit image: anterior up, right on the right
    (neurological), true physical aspect, zero-padded to a square."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow ships with the dev/eval installs
        raise ConfigError("exporting PNG slices needs pillow: `pip install pillow`") from exc
    disp = np.clip(slice2d.T[::-1, :] / max(top, 1e-6), 0.0, 1.0)
    width_mm, height_mm = disp.shape[1] * zooms[0], disp.shape[0] * zooms[1]
    scale = size / max(width_mm, height_mm)
    w, h = max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale)))
    img = Image.fromarray((disp * 255.0 + 0.5).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(img, ((size - w) // 2, (size - h) // 2))
    return canvas


def export_slice_folders(manifest: str | Path, out_dir: str | Path, dataset: str | None = None,
                         slices_per_volume: int = 4, size: int = 128) -> Path:
    """2D class folders ``OUT/<label>/<subject>_<modality>_<k>.png`` of axial T1w slices.

    Slices are taken in RAS space from the central brain (through the lesion for tumour cases);
    ``k`` runs over all of a subject's sessions, so file names stay unique and subject-prefixed.
    """
    if not isinstance(slices_per_volume, int) or slices_per_volume < 1:
        raise ConfigError("slices_per_volume must be a positive integer, "
                          f"got {slices_per_volume!r}")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ConfigError(f"size must be an integer in [16, 4096], got {size!r}")
    root, rows = read_manifest(manifest)
    rows = [r for r in rows
            if r["modality"] == "T1w" and (dataset is None or r["dataset"] == dataset)]
    if not rows:
        raise ManifestError(f"manifest {manifest} has no T1w rows"
                            + (f" for dataset {dataset!r}" if dataset else ""))
    out = Path(out_dir)
    counters: dict[str, int] = defaultdict(int)
    for row in sorted(rows, key=lambda r: (r["subject"], r["session"])):
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", row["label"]) or "unlabelled"
        img = nib.as_closest_canonical(nib.load(_volume_path(root, row)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        top = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0
        lesion = _lesion_z(root / LABEL_DIR / rel_path(row["subject"], row["session"], "dseg"), img)
        zooms = img.header.get_zooms()[:2]
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for z in _axial_slices(data, slices_per_volume, lesion):
            k = counters[row["subject"]]
            counters[row["subject"]] += 1
            _to_png(data[:, :, z], (float(zooms[0]), float(zooms[1])), top, size).save(
                folder / f"{row['subject']}_{row['modality']}_{k}.png")
    return out
