"""The embedded demo cohort (`bsynth demo-cohort`): three small labelled datasets built offline from
the MNI152 2009 template, one module per job (the design is in docs/demo_cohort.md):

* :mod:`.template` (tissue model and ROIs), :mod:`.deformation` (warps), :mod:`.pathology`
  (tumour, ventricle growth), :mod:`.anatomy` (one subject-session's tissue and labels),
  :mod:`.contrast` (MR signal), :mod:`.acquisition` (the scanner);
* :mod:`.manifest` (vocabulary and file layout), :mod:`.demographics` (metadata cells),
  :mod:`.plan` (every random draw, per subject), :mod:`.render` (one subject),
  :mod:`.cohort` (:func:`build_demo_cohort`), :mod:`.export` (BraTS and 2D slice folders).
"""
from .cohort import build_demo_cohort
from .demographics import age_group
from .export import export_brats_layout, export_slice_folders, resample_like
from .manifest import (BINARY_FIELDS, CATEGORIES, DATASET_LABELS, DATASETS, LABEL_DIR, MANIFEST_COLUMNS,
                       META_FIELDS, ROI_COLUMNS, read_manifest, rel_path)
from .plan import PROTOCOLS, plan_cohort, subject_indices

__all__ = [
    "BINARY_FIELDS", "CATEGORIES", "DATASETS", "DATASET_LABELS", "LABEL_DIR", "MANIFEST_COLUMNS", "META_FIELDS",
    "PROTOCOLS", "ROI_COLUMNS", "age_group", "build_demo_cohort", "export_brats_layout", "export_slice_folders",
    "plan_cohort", "read_manifest", "rel_path", "resample_like", "subject_indices",
]
