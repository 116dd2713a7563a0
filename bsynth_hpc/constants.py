"""Project-wide constants: modality names/ids and the default volume geometry (seed 003 §2.3-2.4)."""
from __future__ import annotations

MODALITIES: tuple[str, ...] = ("T1w", "T2w", "T1Gd", "FLAIR")
"""Modality names in id order (ids 0..3)."""

MODALITY_IDS: dict[str, int] = {name: i for i, name in enumerate(MODALITIES)}

MODALITY_ALIASES: dict[str, str] = {
    "t1": "T1w", "t1w": "T1w", "t1-weighted": "T1w",
    "t2": "T2w", "t2w": "T2w", "t2-weighted": "T2w",
    "t1gd": "T1Gd", "t1ce": "T1Gd", "t1c": "T1Gd", "t1-gd": "T1Gd", "t1_gd": "T1Gd",
    "flair": "FLAIR", "t2flair": "FLAIR", "t2-flair": "FLAIR",
}
"""Case-insensitive spellings found in real datasets (BraTS uses t1/t1ce/t2/flair)."""

DEFAULT_SHAPE: tuple[int, int, int] = (192, 224, 160)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)


def canonical_modality(name: str) -> str:
    """Map a modality spelling to its canonical name; raise KeyError when unknown."""
    if name in MODALITY_IDS:
        return name
    key = name.strip().lower()
    if key in MODALITY_ALIASES:
        return MODALITY_ALIASES[key]
    raise KeyError(name)
