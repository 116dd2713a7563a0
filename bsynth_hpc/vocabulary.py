"""The 25-field BrainScape metadata vocabulary (seed 003 §2.2.2) and seed 002's clinical vector layout.

Bottom-layer data: the field specs, their order and kinds, shared by the models (embedding tables,
condition widths) and by `bsynth_hpc.data.metadata` (parsing, statistics, encoding), so the models
need not import the data layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CONTINUOUS = "continuous"
CATEGORICAL = "categorical"
BINARY = "binary"

BINARY_MISSING, BINARY_NO, BINARY_YES = 0, 1, 2
"""The three-state codes of binary fields."""


@dataclass(frozen=True)
class FieldSpec:
    """One metadata field: its name (= manifest column), kind, and what values it allows.

    ``categories`` is set for categorical fields (the order defines the integer codes);
    ``valid_range`` (inclusive) and ``decimals`` (recorded precision) for continuous fields.
    """

    name: str
    kind: str
    categories: tuple[str, ...] | None = None
    valid_range: tuple[float, float] | None = None
    unit: str = ""
    decimals: int | None = None
    description: str = ""

    @property
    def num_codes(self) -> int:
        """Distinct integer codes of the encoding (embedding table size); 0 for continuous."""
        if self.kind == CATEGORICAL:
            return len(self.categories or ())
        if self.kind == BINARY:
            return 3
        return 0

    def allowed(self) -> str:
        """Human-readable description of the allowed values (used in error messages)."""
        if self.kind == CONTINUOUS:
            lo, hi = self.valid_range or (-math.inf, math.inf)
            return f"a number in [{lo:g}, {hi:g}] {self.unit}".rstrip()
        if self.kind == CATEGORICAL:
            return "one of " + ", ".join(self.categories or ())
        return "yes/no (also y/n, true/false, 1/0)"


def _binary(name: str, description: str) -> FieldSpec:
    return FieldSpec(name, BINARY, description=description)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("age", CONTINUOUS, valid_range=(0.0, 120.0), unit="years", decimals=2, description="age at scan"),
    FieldSpec("height", CONTINUOUS, valid_range=(40.0, 250.0), unit="cm", decimals=1, description="body height"),
    FieldSpec("weight", CONTINUOUS, valid_range=(2.0, 350.0), unit="kg", decimals=1, description="body weight"),
    FieldSpec("bmi", CONTINUOUS, valid_range=(8.0, 90.0), unit="kg/m^2", decimals=2, description="body-mass index"),
    FieldSpec("age_group", CATEGORICAL,
              categories=("child", "adolescent", "young_adult", "middle_aged", "older_adult")),
    FieldSpec("sex", CATEGORICAL, categories=("female", "male")),
    FieldSpec("race", CATEGORICAL,
              categories=("white", "black", "asian", "hispanic", "native", "multiracial", "other")),
    FieldSpec("handedness", CATEGORICAL, categories=("right", "left", "ambidextrous")),
    FieldSpec("education", CATEGORICAL,
              categories=("less_than_high_school", "high_school", "some_college", "bachelor", "graduate")),
    FieldSpec("socioeconomic_status", CATEGORICAL, categories=("low", "middle", "high")),
    _binary("stroke", "stroke"),
    _binary("schizophrenia", "schizophrenia"),
    _binary("depression", "depression"),
    _binary("adhd", "attention-deficit/hyperactivity disorder"),
    _binary("bipolar_disorder", "bipolar disorder"),
    _binary("prosopagnosia", "prosopagnosia"),
    _binary("epilepsy", "epilepsy"),
    _binary("fcd", "focal cortical dysplasia"),
    _binary("hs", "hippocampal sclerosis"),
    _binary("tumor", "tumor"),
    _binary("acute_ischaemic_stroke", "acute ischaemic stroke"),
    _binary("dnt", "dysembryoplastic neuroepithelial tumor"),
    _binary("gliosis", "gliosis"),
    _binary("aneurysm", "aneurysm"),
    _binary("asd", "autism spectrum disorder"),
)
"""The schema in the paper's fixed order; index j of an encoded vector is FIELDS[j]."""

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(FIELD_NAMES)}
NUM_FIELDS: int = len(FIELDS)
CONTINUOUS_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind == CONTINUOUS)
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind == CATEGORICAL)
BINARY_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind == BINARY)

CLINICAL_ROI_FIELDS: tuple[str, ...] = (
    "roi_hippocampus_left", "roi_hippocampus_right",
    "roi_amygdala_left", "roi_amygdala_right",
    "roi_lateral_ventricle_left", "roi_lateral_ventricle_right",
)
"""Seed 002's six regional volume ratios (region volume / whole-brain volume), in vector order.
A record's ``clinical`` dict uses these keys; the 7-D clinical vector appends the label bit."""

CONTROL_LABELS: frozenset[str] = frozenset({"cn", "hc", "nc", "control", "controls", "healthy", "normal"})
"""Labels whose clinical label bit is 0 (seed 002: 0 = CN, 1 = AD); every other label is 1."""

CLINICAL_DIM: int = len(CLINICAL_ROI_FIELDS) + 1
"""Width of seed 002's clinical vector: the six ROI ratios and the label bit."""
