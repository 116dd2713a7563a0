"""The 25 metadata fields of a demo subject as manifest cells: demographics, recorded flags, gaps."""
from __future__ import annotations

import numpy as np

from .manifest import CATEGORIES, DATASET_LABELS, META_FIELDS

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


def draw_metadata(dataset: str, label: str, age: float, sex: str, truth: dict[str, bool],
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
