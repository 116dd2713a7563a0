"""Label-map vocabulary of the demo cohort (BIDS ``dseg``) and the ROI ratios measured on it."""
from __future__ import annotations

import numpy as np

from bsynth_hpc.errors import InputError

ROI_NAMES: tuple[str, ...] = (
    "hippocampus_l", "hippocampus_r", "amygdala_l", "amygdala_r", "ventricle_l", "ventricle_r",
)
"""The six clinical ROIs, in the order of the clinical vector (seed 002)."""

ROI_LABELS: dict[str, int] = {name: 11 + i for i, name in enumerate(ROI_NAMES)}

DSEG_LABELS: dict[int, str] = {
    0: "background", 1: "csf", 2: "gm", 3: "wm",
    **{v: k for k, v in ROI_LABELS.items()},
    21: "tumour_necrosis", 22: "tumour_oedema", 24: "tumour_enhancing",
}
"""Label map vocabulary written next to every label map (BIDS ``dseg.tsv``)."""

BRATS_LABELS: dict[int, int] = {21: 1, 22: 2, 24: 4}
"""dseg lesion label -> BraTS label (1 necrotic core, 2 oedema, 4 enhancing tumour)."""


def roi_ratios(dseg: np.ndarray) -> dict[str, float]:
    """Six ROI volume / whole-brain volume ratios measured on a label map.

    Whole brain = every labelled voxel (parenchyma, CSF spaces inside the mask, lesions), i.e.
    the brain-mask volume; the grid is isotropic so voxel volumes cancel.
    """
    brain = int(np.count_nonzero(dseg))
    if brain == 0:
        raise InputError("label map has no brain voxels; cannot measure ROI ratios")
    counts = np.bincount(dseg.ravel(), minlength=256)
    return {name: float(counts[label]) / brain for name, label in ROI_LABELS.items()}
