"""Vocabulary of the demo manifest (datasets, labels, columns, file layout) and its reader.

The 25 metadata columns and their categories are the schema of :mod:`bsynth_hpc.data.metadata`
(seed 003 §2.2.2; see docs/references.md), not a copy of it.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from bsynth_hpc.data.metadata import BINARY_FIELDS, CONTINUOUS_FIELDS, FIELD_NAMES, FIELDS
from bsynth_hpc.errors import ConfigError, ManifestError

from .labels import ROI_NAMES

DATASETS: tuple[str, ...] = ("demo-epilepsy", "demo-glioma", "demo-dementia")
DATASET_LABELS: dict[str, tuple[str, str]] = {
    "demo-epilepsy": ("healthy", "TLE"),
    "demo-glioma": ("normal", "tumour"),
    "demo-dementia": ("CN", "AD"),
}
ROI_COLUMNS: tuple[str, ...] = tuple(f"roi_{name}" for name in ROI_NAMES)
CATEGORIES: dict[str, tuple[str, ...]] = {f.name: f.categories for f in FIELDS if f.categories is not None}
META_FIELDS: tuple[str, ...] = FIELD_NAMES
MANIFEST_COLUMNS: tuple[str, ...] = (
    ("subject", "session", "dataset", "modality", "path", "label") + ROI_COLUMNS + META_FIELDS)
LABEL_DIR = Path("derivatives") / "demo-labels"
GENERATOR = "bsynth demo-cohort"

__all__ = ["BINARY_FIELDS", "CATEGORIES", "CONTINUOUS_FIELDS", "DATASETS", "DATASET_LABELS", "GENERATOR",
           "LABEL_DIR", "MANIFEST_COLUMNS", "META_FIELDS", "ROI_COLUMNS", "check_datasets", "read_manifest",
           "rel_path"]


def rel_path(subject: str, session: str, suffix: str) -> str:
    """BIDS-style relative path of one file (forward slashes)."""
    return f"{subject}/{session}/anat/{subject}_{session}_{suffix}.nii.gz"


def check_datasets(datasets: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """None (all datasets) or a non-empty tuple of known dataset names, in ``DATASETS`` order."""
    if datasets is None:
        return None
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in names if d not in DATASETS]
    if not names or unknown:
        raise ConfigError(f"datasets must name one or more of {', '.join(DATASETS)}, got {names!r}")
    return tuple(d for d in DATASETS if d in names)


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
