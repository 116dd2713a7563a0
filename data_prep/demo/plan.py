"""Cohort design: every random draw of a subject (dataset, label, age, head shape, disease state,
sequences, visits, tumour site), made up front from the subject's own seed so rendering is
deterministic and a subject never depends on the cohort size or on the number of workers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bsynth_hpc.constants import MODALITIES

from .acquisition import Storage
from .demographics import draw_metadata
from .manifest import DATASET_LABELS, DATASETS, check_datasets

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
_TUMOUR_SITES_MNI = ((28.0, 18.0, 22.0), (30.0, -18.0, 28.0), (36.0, -10.0, -2.0),
                     (24.0, -50.0, 22.0), (22.0, 30.0, 8.0))   # deep WM, |x| mirrored per side


@dataclass(frozen=True)
class Protocol:
    """A site's scanner conventions: stored orientation, T1w voxel shape, on-disk dtype."""

    axcodes: str
    t1_spacing: tuple[float, float, float]   # multiples of the cohort spacing
    storage: Storage


PROTOCOLS: tuple[Protocol, ...] = (   # 5 entries: coprime with the 3 datasets, so they mix
    Protocol("RAS", (1.0, 1.0, 1.0), "int16"),
    Protocol("LPS", (1.0, 1.0, 1.0), "int16"),           # DICOM patient coordinates
    Protocol("LAS", (1.0, 1.0, 1.5), "float32"),         # radiological, thick slices
    Protocol("RAS", (1.25, 1.25, 1.0), "int16-scaled"),  # coarser in-plane, scl_slope set
    Protocol("PIR", (1.0, 1.0, 1.0), "float32"),         # sagittal acquisition
)


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
    meta = draw_metadata(dataset, label, age, sex, {"hs": hs_visible}, rng)
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
    wanted = [DATASETS.index(d) for d in check_datasets(datasets) or ()]
    return [i for i in range(n_subjects * len(DATASETS)) if i % len(DATASETS) in wanted][:n_subjects]


def plan_cohort(n_subjects: int, seed: int, datasets: Sequence[str] | None = None) -> list[SubjectPlan]:
    """Plans for ``n_subjects`` subjects; subject i depends only on (seed, i).

    With ``datasets`` the cohort keeps the first ``n_subjects`` subjects of those datasets, under
    their indices (and ids) in the unfiltered cohort, so each of them is byte-identical to the same
    subject of an unfiltered build with the same seed."""
    indices = subject_indices(n_subjects, datasets)
    children = np.random.SeedSequence(seed).spawn(indices[-1] + 1)
    return [plan_subject(i, children[i]) for i in indices]
