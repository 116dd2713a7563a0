"""One exception type per failure family; messages name the file/field and the fix."""
from __future__ import annotations


class BsynthError(Exception):
    """Base of every error this package raises on purpose."""


class InputError(BsynthError):
    """An input volume or image cannot be used (corrupt, wrong dimensionality, NaN, bad affine)."""


class ManifestError(BsynthError):
    """A manifest CSV / input folder is malformed (missing column, unknown modality, path escape)."""


class MetadataError(BsynthError):
    """A metadata value lies outside the 25-field schema (unknown field, category or range)."""


class StoreError(BsynthError):
    """A Zarr store is missing, of another format version, or inconsistent."""


class ConfigError(BsynthError):
    """A configuration value is missing or invalid."""


class NotYetAvailableError(BsynthError):
    """A command whose capability a later issue brings."""
