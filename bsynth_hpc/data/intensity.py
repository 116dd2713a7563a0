"""Map stored (normalised) intensities back to an input's scanner units.

`bsynth prep` clips every input at two percentiles and scales it (min-max to [0, 1] or
z-score), and records how in the volume's record under ``intensity``::

    {"method": "minmax", "clip_low": lo, "clip_high": hi, "offset": c, "scale": s}
    stored = (clip(x, lo, hi) - c) * s

:func:`denormalize` inverts that, ``x = stored / s + c``, for a stored volume, a reconstruction
or a sample conditioned on that volume, so results can be compared with or written as the
scanner's intensities. What clipping removed (values outside [lo, hi]) cannot come back: the
result is clipped to [lo, hi]. The geometry is not touched (resampling is a separate step).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import StoreError

INTENSITY_KEY = "intensity"
_FIELDS: tuple[str, ...] = ("clip_low", "clip_high", "offset", "scale")


def intensity_params(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's clip bounds, offset and scale; StoreError naming the fix when they are absent."""
    params = record.get(INTENSITY_KEY)
    vid = record.get("volume_id", "?")
    if not isinstance(params, Mapping) or any(not isinstance(params.get(k), (int, float)) for k in _FIELDS):
        raise StoreError(f"volume {vid!r} has no intensity parameters in its record (prepared by an older "
                         "bsynth prep): rerun `bsynth prep` into a new store to record them")
    if not params["scale"] > 0 or not params["clip_high"] >= params["clip_low"]:
        raise StoreError(f"volume {vid!r} has invalid intensity parameters {dict(params)}: rerun `bsynth prep`")
    return {k: float(params[k]) for k in _FIELDS}


def denormalize(volume: Any, record: Mapping[str, Any], clip: bool = True) -> np.ndarray:
    """``volume`` (stored units, e.g. [0, 1]) in the record's scanner units, float32.

    ``clip``: limit the result to the recorded [clip_low, clip_high] (what the model was trained
    on; a sample's overshoot beyond [0, 1] would otherwise map outside the input's range).
    """
    p = intensity_params(record)
    out = np.asarray(volume, dtype=np.float64) / p["scale"] + p["offset"]
    if clip:
        np.clip(out, p["clip_low"], p["clip_high"], out=out)
    return out.astype(np.float32)
