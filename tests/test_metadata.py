"""The 25-field metadata schema: parsing, statistics, encoding and its inverse."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsynth_hpc.data.metadata import (
    BINARY_FIELDS,
    CATEGORICAL_FIELDS,
    CLINICAL_ROI_FIELDS,
    CONTINUOUS_FIELDS,
    FIELD_NAMES,
    FIELDS,
    compute_metadata_stats,
    decode_metadata,
    encode_clinical,
    encode_metadata,
    encode_metadata_batch,
    field_spec,
    parse_metadata,
)
from bsynth_hpc.errors import MetadataError

PAPER_ORDER = [  # seed 003 §2.2.2, in the order the paper lists them
    "age", "height", "weight", "bmi", "age_group", "sex", "race", "handedness", "education",
    "socioeconomic_status", "stroke", "schizophrenia", "depression", "adhd", "bipolar_disorder",
    "prosopagnosia", "epilepsy", "fcd", "hs", "tumor", "acute_ischaemic_stroke", "dnt", "gliosis",
    "aneurysm", "asd",
]
STATS = {"age": {"mean": 40.0, "std": 10.0, "count": 100.0}, "height": {"mean": 170.0, "std": 8.0, "count": 50.0},
         "weight": {"mean": 70.0, "std": 12.5, "count": 50.0}, "bmi": {"mean": 24.0, "std": 4.0, "count": 50.0}}


def test_schema_has_the_papers_25_fields_in_order():
    assert list(FIELD_NAMES) == PAPER_ORDER
    assert [f.name for f in FIELDS] == PAPER_ORDER
    assert (len(CONTINUOUS_FIELDS), len(CATEGORICAL_FIELDS), len(BINARY_FIELDS)) == (4, 6, 15)
    assert field_spec("sex").categories == ("female", "male")
    assert field_spec("age").valid_range == (0.0, 120.0)
    assert field_spec("stroke").num_codes == 3 and field_spec("race").num_codes == 7
    with pytest.raises(MetadataError, match="unknown metadata field 'iq'"):
        field_spec("iq")


@pytest.mark.parametrize("field, raw, expected", [
    ("age", "34", 34.0), ("age", 34, 34.0), ("age", " 34.567 ", 34.57), ("age", "023Y", 23.0),
    ("age", "6M", 0.5), ("age", "12 years", 12.0), ("height", "172.34", 172.3), ("bmi", 22.0, 22.0),
    ("sex", "F", "female"), ("sex", "m", "male"), ("sex", "Female", "female"),
    ("age_group", "Young Adult", "young_adult"), ("age_group", "middle-aged", "middle_aged"),
    ("race", "Caucasian", "white"), ("race", "Black or African American", "black"),
    ("handedness", "R", "right"), ("handedness", "Ambidextrous", "ambidextrous"),
    ("education", "Bachelor's", "bachelor"), ("education", "less than high school", "less_than_high_school"),
    ("socioeconomic_status", "Medium", "middle"),
    ("stroke", "yes", True), ("stroke", "Y", True), ("stroke", "TRUE", True), ("stroke", 1, True),
    ("stroke", "no", False), ("stroke", "n", False), ("stroke", "False", False), ("stroke", 0, False),
    ("stroke", 0.0, False), ("stroke", True, True), ("epilepsy", np.bool_(False), False),
])
def test_parse_accepts_common_spellings(field, raw, expected):
    assert parse_metadata({field: raw})[field] == expected


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, "", "  ", "NA", "n/a", "N/A", "unknown", "NaN", "none"])
def test_parse_maps_missing_tokens_to_none(missing):
    parsed = parse_metadata({"age": missing, "sex": missing, "tumor": missing})
    assert parsed["age"] is None and parsed["sex"] is None and parsed["tumor"] is None


def test_parse_fills_all_fields_ignores_unknown_keys_and_matches_column_case():
    parsed = parse_metadata({"Age": "30", "BMI": "21.5", "Gender": "f", "scanner": "Prisma", "sex_x": "m"})
    assert list(parsed) == PAPER_ORDER
    assert parsed["age"] == 30.0 and parsed["bmi"] == 21.5 and parsed["sex"] == "female"
    assert sum(v is not None for v in parsed.values()) == 3
    # the schema's own column name wins over a synonym
    assert parse_metadata({"sex": "male", "gender": "female"})["sex"] == "male"


@pytest.mark.parametrize("field, raw, fragment", [
    ("age", 130, "[0, 120] years"), ("age", -1, "[0, 120]"), ("height", "tall", "[40, 250] cm"),
    ("weight", True, "[2, 350] kg"), ("bmi", float("inf"), "[8, 90]"),
    ("sex", "x", "female, male"), ("sex", 1, "female, male"), ("race", "martian", "white, black"),
    ("stroke", "maybe", "yes/no"), ("stroke", 2, "yes/no"),
])
def test_out_of_schema_value_names_field_value_source_and_allowed(field, raw, fragment):
    with pytest.raises(MetadataError) as info:
        parse_metadata({field: raw}, source="participants.tsv row 7")
    message = str(info.value)
    assert repr(field) in message and repr(raw) in message
    assert "participants.tsv row 7" in message and fragment in message


def test_parse_is_idempotent():
    raw = {"age": "41.236", "height": 180, "sex": "M", "race": "latino", "stroke": "y", "adhd": "0"}
    once = parse_metadata(raw)
    assert parse_metadata(once) == once


def test_stats_match_numpy_and_skip_missing():
    metas = [{"age": a, "height": h} for a, h in [(20, 160), (30, None), (40, 180), (None, 170), (55.5, "NA")]]
    stats = compute_metadata_stats(metas)
    ages = np.array([20, 30, 40, 55.5])
    assert stats["age"]["count"] == 4
    assert stats["age"]["mean"] == pytest.approx(ages.mean(), rel=1e-12)
    assert stats["age"]["std"] == pytest.approx(ages.std(ddof=1), rel=1e-12)
    assert stats["height"] == pytest.approx({"mean": 170.0, "std": 10.0, "count": 3.0})
    assert stats["weight"] == {"mean": 0.0, "std": 0.0, "count": 0.0}


def test_encoding_matches_the_closed_form():
    meta = parse_metadata({"age": 55, "bmi": 20, "sex": "male", "education": "graduate", "stroke": "no",
                           "asd": "yes", "tumor": None})
    values, mask = encode_metadata(meta, STATS)
    assert values.dtype == np.float32 and mask.dtype == np.uint8 and values.shape == mask.shape == (25,)
    idx = {name: i for i, name in enumerate(PAPER_ORDER)}
    assert values[idx["age"]] == pytest.approx((55 - 40) / 10)
    assert values[idx["bmi"]] == pytest.approx((20 - 24) / 4)
    assert values[idx["sex"]] == 1 and values[idx["education"]] == 4
    assert (values[idx["stroke"]], values[idx["asd"]], values[idx["tumor"]]) == (1, 2, 0)
    expected_mask = {"age", "bmi", "sex", "education", "stroke", "asd"}
    assert [bool(m) for m in mask] == [name in expected_mask for name in PAPER_ORDER]
    assert values[mask == 0].tolist() == [0.0] * (25 - len(expected_mask))


def test_binary_three_state_keeps_negative_apart_from_missing_without_mask():
    v_no, _ = encode_metadata({"epilepsy": "no"}, STATS)
    v_missing, _ = encode_metadata({}, STATS)
    j = PAPER_ORDER.index("epilepsy")
    assert v_no[j] == 1 and v_missing[j] == 0


def test_degenerate_stats_fall_back_to_unit_std():
    stats = compute_metadata_stats([{"age": 30, "height": 170}, {"age": 30}])  # age std 0, height count 1
    values, _ = encode_metadata({"age": 35, "height": 175}, stats)
    assert values[0] == pytest.approx(5.0) and values[1] == pytest.approx(5.0)
    assert np.isfinite(values).all()
    assert decode_metadata(values, _, stats)["age"] == 35.0


def _random_meta(rng: np.random.Generator) -> dict:
    meta: dict = {}
    for spec in FIELDS:
        if rng.random() < 0.3:
            meta[spec.name] = None
        elif spec.kind == "continuous":
            lo, hi = spec.valid_range
            meta[spec.name] = round(float(rng.uniform(lo, hi)), spec.decimals)
        elif spec.kind == "categorical":
            meta[spec.name] = spec.categories[rng.integers(len(spec.categories))]
        else:
            meta[spec.name] = bool(rng.integers(2))
    return meta


def test_round_trip_is_exact_for_observed_values():
    rng = np.random.default_rng(0)
    metas = [_random_meta(rng) for _ in range(300)]
    # the extremes of each range, far from the mean, are the hardest case for float32
    metas.append({"age": 0.0, "height": 250.0, "weight": 350.0, "bmi": 8.0})
    metas.append({"age": 120.0, "height": 40.0, "weight": 2.0, "bmi": 89.99})
    stats = compute_metadata_stats(metas[:200])
    for meta in metas:
        expected = parse_metadata(meta)
        values, mask = encode_metadata(meta, stats)
        assert decode_metadata(values, mask, stats) == expected
        # tensors decode the same way
        assert decode_metadata(torch.from_numpy(values), torch.from_numpy(mask), stats) == expected


def test_batch_encoding_equals_row_encoding():
    rng = np.random.default_rng(1)
    metas = [_random_meta(rng) for _ in range(20)] + [None]
    values, mask = encode_metadata_batch(metas, STATS)
    assert values.shape == (21, 25) and mask.shape == (21, 25)
    for i, meta in enumerate(metas[:-1]):
        v, m = encode_metadata(meta, STATS)
        np.testing.assert_array_equal(values[i], v)
        np.testing.assert_array_equal(mask[i], m)
    assert not values[-1].any() and not mask[-1].any()


def test_batch_errors_name_the_source_row():
    with pytest.raises(MetadataError, match="row 1"):
        encode_metadata_batch([{"age": 3}, {"age": 300}], STATS)


def test_missing_or_incomplete_stats_are_rejected():
    with pytest.raises(MetadataError, match="finalize_store"):
        encode_metadata({"age": 3}, None)
    with pytest.raises(MetadataError, match="'bmi'"):
        encode_metadata({"age": 3}, {k: v for k, v in STATS.items() if k != "bmi"})


def test_decode_rejects_invalid_codes():
    values, mask = encode_metadata({"sex": "male", "stroke": "yes"}, STATS)
    bad = values.copy()
    bad[PAPER_ORDER.index("sex")] = 5
    with pytest.raises(MetadataError, match="'sex'"):
        decode_metadata(bad, mask, STATS)
    contradicting = mask.copy()
    contradicting[PAPER_ORDER.index("stroke")] = 0
    with pytest.raises(MetadataError, match="'stroke'"):
        decode_metadata(values, contradicting, STATS)
    with pytest.raises(MetadataError, match="25 values"):
        decode_metadata(values[:24], mask[:24], STATS)


def test_clinical_vector_and_label_bit():
    ratios = {name: 0.001 * (i + 1) for i, name in enumerate(CLINICAL_ROI_FIELDS)}
    vec, mask = encode_clinical(ratios, "AD")
    np.testing.assert_allclose(vec, [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 1.0], rtol=1e-6)
    assert mask.tolist() == [1.0] * 7
    vec, mask = encode_clinical(ratios, "CN")
    assert vec[-1] == 0.0 and mask[-1] == 1.0
    vec, mask = encode_clinical(None, None)
    assert not vec.any() and not mask.any()
    vec, mask = encode_clinical({CLINICAL_ROI_FIELDS[2]: 0.01, CLINICAL_ROI_FIELDS[0]: None}, "healthy")
    assert mask.tolist() == [0, 0, 1, 0, 0, 0, 1] and math.isclose(vec[2], 0.01, rel_tol=1e-6)
    with pytest.raises(MetadataError, match="roi_hippocampus_left"):
        encode_clinical({"hippocampus": 0.1}, None, source="vol-1")
    with pytest.raises(MetadataError, match="finite number"):
        encode_clinical({CLINICAL_ROI_FIELDS[0]: -0.1}, None)
