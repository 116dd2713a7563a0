"""The 25-field BrainScape metadata schema (seed 003 §2.2.2): parsing, statistics, encoding.

Three steps, each with one job:

1. ``parse_metadata(raw)`` turns whatever a manifest/participants table holds (strings in
   many spellings, numbers, NaN) into *canonical typed values*: ``float`` for continuous
   fields (rounded to the field's recorded precision), the canonical category name (``str``)
   for categorical fields, ``bool`` for binary fields, ``None`` when missing. Values outside
   the schema raise :class:`MetadataError` naming the field, the value, the source and the
   allowed values. Parsing is idempotent: parsing canonical values returns them unchanged.
2. ``compute_metadata_stats(metas)`` gives mean/std/count of the continuous fields over the
   training split (the z-score statistics).
3. ``encode_metadata(meta, stats)`` gives the model's conditioning input: ``values`` float32[25]
   and the availability mask ``r`` uint8[25] (1 = the field was recorded), in schema order:

   * continuous: z-score ``(x - mean) / std`` (missing -> 0, mask 0). A field whose statistics
     are degenerate (``count < 2``, ``std`` 0 or not finite) uses ``std = 1`` so the encoding
     stays finite and invertible.
   * categorical: the integer index of the category in ``FieldSpec.categories``
     (missing -> 0, mask 0; only the mask tells a missing value from category 0).
   * binary: the seed's *three-state* label, ``0 = missing, 1 = no, 2 = yes``. Unlike the
     categorical code, an unrecorded value stays distinguishable from an explicit negative
     even without the mask (the mask is still set: 1 iff the value is 1 or 2).

   ``decode_metadata`` inverts this. Categorical and binary values come back exactly; a
   continuous value is decoded in float64 as ``z * std + mean`` and rounded to the field's
   ``decimals``. Because parsing already rounds to those decimals and float32 keeps a
   relative error of 6e-8 on ``z`` (an absolute error of at most ``|x - mean| * 6e-8``,
   i.e. < 3e-5 over the valid ranges, far below half a unit of the last decimal), the round
   trip ``decode(encode(parse(raw)))`` returns the parsed values exactly.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import MetadataError
from ..vocabulary import (BINARY, BINARY_FIELDS, BINARY_MISSING, BINARY_NO, BINARY_YES, CATEGORICAL,  # noqa: F401
                          CATEGORICAL_FIELDS, CLINICAL_DIM, CLINICAL_ROI_FIELDS, CONTINUOUS, CONTINUOUS_FIELDS,
                          CONTROL_LABELS, FIELD_INDEX, FIELD_NAMES, FIELDS, NUM_FIELDS, FieldSpec)

Value = float | str | bool | None
Stats = Mapping[str, Mapping[str, float]]

_SPEC: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

# ---------------------------------------------------------------------------- parsing helpers
_MISSING_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "missing", "?", "-", "not available"})
_TRUE = frozenset({"yes", "y", "true", "t", "1", "1.0", "positive", "present"})
_FALSE = frozenset({"no", "n", "false", "f", "0", "0.0", "negative", "absent"})

_CATEGORY_ALIASES: dict[str, dict[str, str]] = {
    "age_group": {
        "children": "child", "paediatric": "child", "pediatric": "child",
        "teen": "adolescent", "teenager": "adolescent", "adolescents": "adolescent",
        "youngadult": "young_adult", "young": "young_adult",
        "middle_age": "middle_aged", "middleaged": "middle_aged", "middle": "middle_aged",
        "older": "older_adult", "old": "older_adult", "elderly": "older_adult", "senior": "older_adult",
        "old_adult": "older_adult", "olderadult": "older_adult",
    },
    "sex": {"f": "female", "m": "male", "woman": "female", "man": "male", "w": "female"},
    "race": {
        "caucasian": "white", "european": "white",
        "african_american": "black", "black_or_african_american": "black", "african": "black",
        "asian_american": "asian",
        "latino": "hispanic", "latina": "hispanic", "latinx": "hispanic", "hispanic_or_latino": "hispanic",
        "american_indian": "native", "native_american": "native", "alaska_native": "native",
        "american_indian_or_alaska_native": "native", "indigenous": "native",
        "mixed": "multiracial", "multiple": "multiracial", "more_than_one_race": "multiracial",
        "two_or_more_races": "multiracial", "multi_racial": "multiracial",
    },
    "handedness": {
        "r": "right", "rh": "right", "right_handed": "right", "righthanded": "right",
        "l": "left", "lh": "left", "left_handed": "left", "lefthanded": "left",
        "a": "ambidextrous", "ambi": "ambidextrous", "mixed": "ambidextrous", "both": "ambidextrous",
    },
    "education": {
        "less_than_highschool": "less_than_high_school", "below_high_school": "less_than_high_school",
        "primary": "less_than_high_school", "none_completed": "less_than_high_school",
        "highschool": "high_school", "secondary": "high_school", "ged": "high_school", "hs": "high_school",
        "college": "some_college", "associate": "some_college", "associates": "some_college",
        "bachelors": "bachelor", "bachelor_s": "bachelor", "ba": "bachelor", "bs": "bachelor",
        "bsc": "bachelor", "undergraduate": "bachelor",
        "postgraduate": "graduate", "masters": "graduate", "master": "graduate", "master_s": "graduate",
        "msc": "graduate", "phd": "graduate", "doctorate": "graduate", "graduate_degree": "graduate",
    },
    "socioeconomic_status": {"medium": "middle", "mid": "middle", "average": "middle", "moderate": "middle"},
}

_KEY_ALIASES: dict[str, str] = {"gender": "sex", "ses": "socioeconomic_status", "handed": "handedness"}
"""Column names some datasets use instead of the schema's (used only when the schema name is absent)."""

_AGE_TEXT = re.compile(r"^(\d+(?:\.\d+)?)\s*(d|w|m|y|days?|weeks?|months?|yrs?|years?)$")
_AGE_UNIT_YEARS = {"d": 1 / 365.25, "w": 7 / 365.25, "m": 1 / 12, "y": 1.0}
_NORMALISE = re.compile(r"[\s\-/.,']+")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas.NA / NaT without importing pandas
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING_STRINGS


def _norm_token(text: str) -> str:
    return _NORMALISE.sub("_", text.strip().lower()).strip("_")


def _error(spec: FieldSpec, value: Any, source: str, why: str = "") -> MetadataError:
    where = f" in {source}" if source else ""
    reason = f" ({why})" if why else ""
    return MetadataError(
        f"metadata field {spec.name!r} has value {value!r}{where}{reason}: allowed is {spec.allowed()}; "
        "fix the value in the source table, or leave it empty if it was not recorded"
    )


def _parse_continuous(spec: FieldSpec, value: Any, source: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise _error(spec, value, source, "a boolean is not a number")
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            number = float(text)
        except ValueError:
            match = _AGE_TEXT.match(text) if spec.name == "age" else None
            if match is None:
                raise _error(spec, value, source, "not a number") from None
            number = float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)[0]]
    else:
        raise _error(spec, value, source, f"unsupported type {type(value).__name__}")
    lo, hi = spec.valid_range or (-math.inf, math.inf)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise _error(spec, value, source, "outside the valid range")
    return round(number, spec.decimals) if spec.decimals is not None else number


def _parse_categorical(spec: FieldSpec, value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise _error(spec, value, source, "categories are given by name, not by code")
    token = _norm_token(value)
    categories = spec.categories or ()
    if token in categories:
        return token
    alias = _CATEGORY_ALIASES.get(spec.name, {}).get(token)
    if alias is None:
        raise _error(spec, value, source)
    return alias


def _parse_binary(spec: FieldSpec, value: Any, source: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if value in (0, 1):
            return bool(value)
        raise _error(spec, value, source)
    if isinstance(value, str):
        token = value.strip().lower()
        if token in _TRUE:
            return True
        if token in _FALSE:
            return False
    raise _error(spec, value, source)


_PARSERS = {CONTINUOUS: _parse_continuous, CATEGORICAL: _parse_categorical, BINARY: _parse_binary}


def _lookup(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map schema names to raw values: exact names first, then case/space-insensitive names, then aliases."""
    found: dict[str, Any] = {}
    loose: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            continue
        if key in _SPEC:
            found[key] = value
            continue
        token = _norm_token(key)
        token = _KEY_ALIASES.get(token, token)
        if token in _SPEC:
            loose.setdefault(token, value)
    for name, value in loose.items():
        found.setdefault(name, value)
    return found


# ---------------------------------------------------------------------------- public API
def parse_metadata(raw: Mapping[str, Any], source: str = "") -> dict[str, Value]:
    """Canonical typed values of all 25 fields (None = missing) from one raw row.

    ``source`` (e.g. ``"participants.tsv row 12"``) is quoted in errors. Keys outside the
    schema are ignored; column names match case-insensitively (``Age``, ``BMI``) and a few
    common synonyms are accepted (``gender`` -> sex, ``ses`` -> socioeconomic_status).
    """
    values = _lookup(raw)
    out: dict[str, Value] = {}
    for spec in FIELDS:
        value = values.get(spec.name)
        out[spec.name] = None if _is_missing(value) else _PARSERS[spec.kind](spec, value, source)
    return out


def compute_metadata_stats(metas: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample std (ddof=1) and count of each continuous field over parsed metadata.

    Feed the training split only (one entry per subject session), so validation/test values
    never shape the normalisation. A field with fewer than two values gets ``std = 0.0``
    (and ``mean = 0.0`` when it has none); the encoder then falls back to ``std = 1``.
    """
    columns: dict[str, list[float]] = {name: [] for name in CONTINUOUS_FIELDS}
    for meta in metas:
        parsed = parse_metadata(meta)
        for name in CONTINUOUS_FIELDS:
            if parsed[name] is not None:
                columns[name].append(float(parsed[name]))  # type: ignore[arg-type]
    stats: dict[str, dict[str, float]] = {}
    for name, xs in columns.items():
        arr = np.asarray(xs, dtype=np.float64)
        stats[name] = {
            "mean": float(arr.mean()) if arr.size else 0.0,
            "std": float(arr.std(ddof=1)) if arr.size >= 2 else 0.0,
            "count": float(arr.size),
        }
    return stats


def _norm_params(stats: Stats | None) -> dict[str, tuple[float, float]]:
    """(mean, effective std) per continuous field, validating the stats mapping."""
    if stats is None:
        raise MetadataError(
            "metadata statistics are missing: finalize the store (bsynth_hpc.data.finalize_store) or "
            "compute them with compute_metadata_stats over the training split"
        )
    params: dict[str, tuple[float, float]] = {}
    for name in CONTINUOUS_FIELDS:
        entry = stats.get(name)
        if not isinstance(entry, Mapping) or "mean" not in entry or "std" not in entry:
            raise MetadataError(
                f"metadata statistics lack field {name!r} (need mean/std/count): recompute them with "
                "compute_metadata_stats or re-run finalize_store"
            )
        mean = float(entry["mean"]) if entry["mean"] is not None else 0.0
        std = float(entry["std"]) if entry["std"] is not None else 0.0
        count = float(entry.get("count", 2.0) or 0.0)
        if not math.isfinite(mean):
            mean = 0.0
        if count < 2 or not math.isfinite(std) or std <= 0.0:
            std = 1.0
        params[name] = (mean, std)
    return params


def _encode_into(meta: Mapping[str, Any], params: Mapping[str, tuple[float, float]],
                 values: np.ndarray, mask: np.ndarray, source: str) -> None:
    parsed = parse_metadata(meta, source)
    for j, spec in enumerate(FIELDS):
        value = parsed[spec.name]
        if value is None:
            values[j], mask[j] = 0.0, 0
            continue
        mask[j] = 1
        if spec.kind == CONTINUOUS:
            mean, std = params[spec.name]
            values[j] = (float(value) - mean) / std  # type: ignore[arg-type]
        elif spec.kind == CATEGORICAL:
            values[j] = (spec.categories or ()).index(value)  # type: ignore[arg-type]
        else:
            values[j] = BINARY_YES if value else BINARY_NO


def encode_metadata(meta: Mapping[str, Any], stats: Stats | None, source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(values float32[25], availability mask uint8[25]) of one entry; see the module docstring.

    ``meta`` may be raw or already parsed (parsing is idempotent and validates it).
    """
    params = _norm_params(stats)
    values = np.zeros(NUM_FIELDS, dtype=np.float32)
    mask = np.zeros(NUM_FIELDS, dtype=np.uint8)
    _encode_into(meta, params, values, mask, source)
    return values, mask


def encode_metadata_batch(metas: Sequence[Mapping[str, Any] | None], stats: Stats | None,
                          sources: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode many entries at once: (values float32[N, 25], mask uint8[N, 25]); None rows are all-missing."""
    params = _norm_params(stats)
    values = np.zeros((len(metas), NUM_FIELDS), dtype=np.float32)
    mask = np.zeros((len(metas), NUM_FIELDS), dtype=np.uint8)
    for i, meta in enumerate(metas):
        if meta is not None:
            _encode_into(meta, params, values[i], mask[i], sources[i] if sources is not None else f"row {i}")
    return values, mask


def _as_float64(x: Any) -> np.ndarray:
    """A flat float64 copy of a numpy array, list or (possibly CUDA) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def decode_metadata(values: Any, mask: Any, stats: Stats | None) -> dict[str, Value]:
    """Invert :func:`encode_metadata` (numpy arrays or tensors of length 25).

    Continuous values are computed in float64 and rounded to ``FieldSpec.decimals``.
    Raises MetadataError for codes outside a field's categories or a mask that contradicts
    a binary code.
    """
    vals, msk = _as_float64(values), _as_float64(mask)
    if vals.shape != (NUM_FIELDS,) or msk.shape != (NUM_FIELDS,):
        raise MetadataError(
            f"decode_metadata needs {NUM_FIELDS} values and {NUM_FIELDS} mask entries, got {vals.size} and {msk.size}"
        )
    params = _norm_params(stats)
    out: dict[str, Value] = {}
    for j, spec in enumerate(FIELDS):
        available = msk[j] >= 0.5
        if spec.kind == BINARY:
            code = int(round(vals[j]))
            if code not in (BINARY_MISSING, BINARY_NO, BINARY_YES) or (code != BINARY_MISSING) != available:
                raise MetadataError(
                    f"metadata field {spec.name!r}: three-state code {vals[j]!r} with mask {msk[j]:g} is not a "
                    "valid encoding (codes 0 = missing, 1 = no, 2 = yes; mask 1 iff code > 0)"
                )
            out[spec.name] = None if code == BINARY_MISSING else code == BINARY_YES
        elif not available:
            out[spec.name] = None
        elif spec.kind == CATEGORICAL:
            code = int(round(vals[j]))
            categories = spec.categories or ()
            if not 0 <= code < len(categories):
                raise MetadataError(
                    f"metadata field {spec.name!r}: category code {vals[j]!r} is outside 0..{len(categories) - 1}"
                )
            out[spec.name] = categories[code]
        else:
            mean, std = params[spec.name]
            x = vals[j] * std + mean
            out[spec.name] = round(float(x), spec.decimals) if spec.decimals is not None else float(x)
    return out


def field_spec(name: str) -> FieldSpec:
    """The spec of one field; MetadataError naming the schema when unknown."""
    try:
        return _SPEC[name]
    except KeyError:
        raise MetadataError(f"unknown metadata field {name!r}: the schema has {', '.join(FIELD_NAMES)}") from None


# ---------------------------------------------------------------------------- clinical vector
def clinical_label_bit(label: str | None) -> float | None:
    """Seed 002's diagnosis bit: 0 for control labels (CN, HC, healthy, ...), 1 otherwise, None when unlabelled."""
    if label is None:
        return None
    return 0.0 if label.strip().lower() in CONTROL_LABELS else 1.0


def encode_clinical(clinical: Mapping[str, Any] | None, label: str | None,
                    source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Seed 002's 7-D clinical vector (six ROI ratios + label bit) and its availability mask (float32[7] each).

    Missing entries are 0 with mask 0. Keys other than CLINICAL_ROI_FIELDS raise MetadataError.
    """
    vec = np.zeros(CLINICAL_DIM, dtype=np.float32)
    mask = np.zeros(CLINICAL_DIM, dtype=np.float32)
    if clinical:
        unknown = sorted(set(clinical) - set(CLINICAL_ROI_FIELDS))
        if unknown:
            where = f" in {source}" if source else ""
            raise MetadataError(
                f"clinical keys {unknown}{where} are not ROI ratios: expected keys {', '.join(CLINICAL_ROI_FIELDS)}"
            )
        for j, name in enumerate(CLINICAL_ROI_FIELDS):
            value = clinical.get(name)
            if value is None or _is_missing(value):
                continue
            number = float(value)
            if not math.isfinite(number) or number < 0:
                where = f" in {source}" if source else ""
                raise MetadataError(f"clinical ratio {name!r} = {value!r}{where} must be a finite number >= 0")
            vec[j], mask[j] = number, 1.0
    bit = clinical_label_bit(label)
    if bit is not None:
        vec[-1], mask[-1] = bit, 1.0
    return vec, mask
