"""Data access: the Zarr volume store, metadata schema, splits, datasets, samplers, latent cache.

The torch-based parts (datasets, samplers, latent cache) load on first use, so preprocessing
workers that only need the store and the metadata schema do not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .finalize import VolumeEntry, finalize_store, load_index
from .metadata import (
    BINARY_FIELDS,
    CATEGORICAL_FIELDS,
    CLINICAL_ROI_FIELDS,
    CONTINUOUS_FIELDS,
    FIELD_NAMES,
    FIELDS,
    NUM_FIELDS,
    FieldSpec,
    compute_metadata_stats,
    decode_metadata,
    encode_clinical,
    encode_metadata,
    encode_metadata_batch,
    parse_metadata,
)
from .splits import SPLITS, assign_split, split_subjects, subject_key
from .store import StoreLayout, VolumeStore

_LAZY: dict[str, str] = {
    "VolumeDataset": ".dataset", "resolve_modalities": ".dataset",
    "LatentCache": ".latent_cache", "LatentDataset": ".latent_cache",
    "GroupBalancedSampler": ".samplers", "ModalityBalancedSampler": ".samplers", "ClassBalancedSampler": ".samplers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BINARY_FIELDS", "CATEGORICAL_FIELDS", "CLINICAL_ROI_FIELDS", "CONTINUOUS_FIELDS", "FIELD_NAMES", "FIELDS",
    "NUM_FIELDS", "SPLITS", "ClassBalancedSampler", "FieldSpec", "GroupBalancedSampler", "LatentCache",
    "LatentDataset", "ModalityBalancedSampler", "StoreLayout", "VolumeDataset", "VolumeEntry", "VolumeStore",
    "assign_split", "compute_metadata_stats", "decode_metadata", "encode_clinical", "encode_metadata",
    "encode_metadata_batch", "finalize_store", "load_index", "parse_metadata", "resolve_modalities",
    "split_subjects", "subject_key",
]
