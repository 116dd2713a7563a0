"""MR contrast synthesis: tissue-fraction weighted signal per sequence (T1w, T2w, FLAIR, T1Gd)."""
from __future__ import annotations

import numpy as np

from bsynth_hpc.errors import ConfigError

from .anatomy import Anatomy

# Relative signal of each compartment per sequence (arbitrary units before scanner gain).
# Orderings follow textbook 3 T appearances: T1w WM>GM>CSF; T2w CSF>GM>WM; FLAIR nulls free
# water (CSF dark) while oedema is the brightest; gadolinium enhances only the tumour rim.
SIGNALS: dict[str, dict[str, float]] = {
    "T1w": dict(csf=0.22, gm=0.58, wm=1.00, necrosis=0.25, enhancing=0.55, oedema=0.45),
    "T2w": dict(csf=1.00, gm=0.52, wm=0.38, necrosis=0.95, enhancing=0.62, oedema=0.82),
    "FLAIR": dict(csf=0.08, gm=0.62, wm=0.47, necrosis=0.40, enhancing=0.75, oedema=1.00),
    "T1Gd": dict(csf=0.24, gm=0.60, wm=1.00, necrosis=0.25, enhancing=1.80, oedema=0.45),
}
TEXTURE_GAIN: dict[str, float] = {"T1w": 1.0, "T2w": -0.6, "FLAIR": -0.3, "T1Gd": 0.9}
"""Weight of the template's own fine anatomy (residual beyond the 3-tissue model) per sequence."""
SCLEROSIS_GAIN: dict[str, float] = {"T1w": 0.93, "T2w": 1.30, "FLAIR": 1.35, "T1Gd": 0.93}
"""Signal change inside a sclerotic hippocampus (T2/FLAIR hyperintensity)."""


def render_contrast(anat: Anatomy, modality: str, gains: dict[str, float] | None = None,
                    sclerosis_label: int | None = None) -> np.ndarray:
    """Noise-free signal of one sequence on the subject grid (float32, WM-ish ~ 1).

    ``gains`` multiplies individual compartment signals (per-subject relaxation variability);
    ``sclerosis_label`` marks the ROI label of a sclerotic hippocampus.
    """
    if modality not in SIGNALS:
        raise ConfigError(f"unknown modality {modality!r}; expected one of {sorted(SIGNALS)}")
    s = dict(SIGNALS[modality])
    for key, g in (gains or {}).items():
        s[key] *= g
    if anat.oedema is not None:
        oed_wm, oed_gm = anat.oedema, 0.35 * anat.oedema
        wm_sig = (1 - oed_wm) * s["wm"] + oed_wm * s["oedema"]
        gm_sig = (1 - oed_gm) * s["gm"] + oed_gm * s["oedema"]
    else:
        wm_sig, gm_sig = s["wm"], s["gm"]
    img = anat.csf * s["csf"] + anat.gm * gm_sig + anat.wm * wm_sig
    img = img + TEXTURE_GAIN[modality] * anat.texture * (anat.gm + anat.wm)
    if anat.tumour is not None and anat.core is not None:
        img = img + anat.core * s["necrosis"] + (anat.tumour - anat.core) * s["enhancing"]
    if sclerosis_label is not None:
        img = np.where(anat.roi == sclerosis_label, img * SCLEROSIS_GAIN[modality], img)
    return np.maximum(img, 0.0).astype(np.float32)
