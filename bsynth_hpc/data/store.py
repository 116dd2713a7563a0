"""The Zarr volume store: one array per preprocessed volume, published atomically.

Layout (format version 1)::

    STORE.zarr/                     zarr v3 group; attrs["bsynth"] = store-level facts (see below)
      volumes/                      group
        <volume_id>/                one array per volume, (X, Y, Z) or (H, W) for 2D slices;
                                    attrs["record"] = the volume's row of the subject/modality table
      table.csv                     the table, rewritten by `finalize()` (derivable from the records)
      prep_report.json              machine-readable preprocessing report (written by data_prep)
    STORE.zarr.staging/             sibling directory where arrays are written before publication

Why one array per volume: a volume becomes visible only by a single `os.rename` of a
finished array directory into `volumes/`, so a crash mid-write never leaves a half-written
volume in the store, and a rerun simply skips volume ids that already exist (resume). The
record lives in the array's own attributes, so data and metadata are published together.

Store-level attrs["bsynth"]: format_version, kind ("volume3d" | "slice2d"), shape, spacing,
dtype, chunks, compressor, preprocessing parameters, metadata_stats (z-score statistics of
the continuous metadata fields over the training split), splits (fractions and seed).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import StoreError

FORMAT_VERSION = 1
DEFAULT_DTYPE = "float16"
"""Intensities live in [0, 1]; float16 keeps 11 significant bits (max error 2.4e-4 near 1.0),
far below MRI noise, halves I/O against float32 and decodes without a scale step."""
DEFAULT_CHUNKS_2D: tuple[int, int] = (256, 256)
DEFAULT_COMPRESSOR: dict[str, Any] = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
"""Chosen by `benchmarks/data_throughput.py` (results in benchmarks/results/data_throughput_*.json):
on the 3D stores, LZ4+bitshuffle stores within a few percent of zstd's size on noisy (unmasked)
volumes while decoding 1.6-2x faster; the training loader reads every volume every epoch, so
decode speed wins. Pass `compressor={"cname": "zstd", "clevel": 3, ...}` for archival stores."""


def default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Octant chunks for 3D volumes: ceil(n/2) per axis, i.e. 8 chunks per volume.

    Why (see the layout sweep of `benchmarks/data_throughput.py`): training reads whole
    volumes, which favours few large chunks; 64^3 cubes waste 27% of the chunk grid on
    padding at 192x224x160 (3x4x3 cubes for 6.9M voxels) and decode 12-36 chunks per volume,
    while octants have no padding for even sizes and still let a slice or patch read touch
    only 2-4 of the 8. 2D slices use one chunk up to 256x256.
    """
    if len(shape) == 3:
        return tuple(max(1, (n + 1) // 2) for n in shape)
    return tuple(min(c, n) for c, n in zip(DEFAULT_CHUNKS_2D, shape))

TABLE_NAME = "table.csv"
REPORT_NAME = "prep_report.json"


@dataclass(frozen=True)
class StoreLayout:
    """Geometry and encoding shared by every volume of a store."""

    kind: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    dtype: str = DEFAULT_DTYPE
    chunks: tuple[int, ...] | None = None
    compressor: Mapping[str, Any] | None = None

    def resolved_chunks(self) -> tuple[int, ...]:
        """Chunk shape clipped to the volume shape."""
        base = self.chunks or default_chunks(tuple(self.shape))
        if len(base) != len(self.shape):
            raise StoreError(f"chunks {base} do not match volume shape {self.shape}: give one size per axis")
        return tuple(min(c, s) for c, s in zip(base, self.shape))

    def resolved_compressor(self) -> dict[str, Any]:
        """Blosc settings (cname, clevel, shuffle)."""
        return dict(self.compressor or DEFAULT_COMPRESSOR)


def _blosc(spec: Mapping[str, Any]) -> BloscCodec | None:
    if spec.get("cname") in (None, "none"):
        return None
    return BloscCodec(cname=spec["cname"], clevel=int(spec.get("clevel", 3)), shuffle=spec.get("shuffle", "bitshuffle"))


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so records survive JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class VolumeStore:
    """Read/write access to a bsynth Zarr volume store (see module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(
                f"{self.path} is not a bsynth store (no zarr.json): create it with `bsynth prep ... --out {self.path}`"
            )
        self._root = zarr.open_group(str(self.path), mode="r+")
        info = self._root.attrs.get("bsynth")
        if not isinstance(info, dict) or "format_version" not in info:
            raise StoreError(f"{self.path} is a Zarr group but not a bsynth store (attrs['bsynth'] missing)")
        if int(info["format_version"]) != FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format {info['format_version']}, this version reads {FORMAT_VERSION}: "
                "re-run `bsynth prep` into a new store"
            )
        self._info: dict[str, Any] = dict(info)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create_or_open(cls, path: str | os.PathLike[str], layout: StoreLayout,
                       preprocessing: Mapping[str, Any] | None = None) -> "VolumeStore":
        """Create a new store, or open an existing one after checking its layout matches."""
        path = Path(path)
        if (path / "zarr.json").exists():
            store = cls(path)
            have = (store.kind, tuple(store.shape), store.dtype)
            want = (layout.kind, tuple(layout.shape), layout.dtype)
            if have != want:
                raise StoreError(
                    f"{path} already holds {have[0]} volumes of shape {have[1]} ({have[2]}), but this run "
                    f"asks for {want[0]} {want[1]} ({want[2]}): use a new --out path or the same --shape"
                )
            return store
        root = zarr.open_group(str(path), mode="w")
        root.create_group("volumes")
        root.attrs["bsynth"] = _jsonable({
            "format_version": FORMAT_VERSION,
            "kind": layout.kind,
            "shape": list(layout.shape),
            "spacing": list(layout.spacing),
            "dtype": layout.dtype,
            "chunks": list(layout.resolved_chunks()),
            "compressor": layout.resolved_compressor(),
            "preprocessing": dict(preprocessing or {}),
            "metadata_stats": None,
        })
        return cls(path)

    # ------------------------------------------------------------------ properties
    @property
    def info(self) -> dict[str, Any]:
        """Store-level attributes (a copy)."""
        return dict(self._info)

    @property
    def kind(self) -> str:
        return str(self._info["kind"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._info["shape"])

    @property
    def dtype(self) -> str:
        return str(self._info["dtype"])

    @property
    def staging_dir(self) -> Path:
        return self.path.parent / (self.path.name + ".staging")

    def update_info(self, **fields: Any) -> None:
        """Merge fields into the store-level attributes (e.g. metadata_stats, splits)."""
        self._info.update(_jsonable(fields))
        self._root.attrs["bsynth"] = self._info

    # ------------------------------------------------------------------ volumes
    def volume_ids(self) -> list[str]:
        """Ids of every published volume, sorted."""
        vdir = self.path / "volumes"
        return sorted(p.name for p in vdir.iterdir() if (p / "zarr.json").exists())

    def has_volume(self, volume_id: str) -> bool:
        return (self.path / "volumes" / volume_id / "zarr.json").exists()

    def write_volume(self, volume_id: str, data: np.ndarray, record: Mapping[str, Any]) -> None:
        """Write one volume and its record, then publish both with one atomic rename.

        Safe to call from many processes at once for distinct ids. If the id is already
        published the call is a no-op (first writer wins), which makes reruns resumable.
        """
        _check_id(volume_id)
        if tuple(data.shape) != self.shape:
            raise StoreError(f"volume {volume_id} has shape {tuple(data.shape)}, store expects {self.shape}")
        final = self.path / "volumes" / volume_id
        if final.exists():
            return
        self.staging_dir.mkdir(exist_ok=True)
        tmp = self.staging_dir / f"{volume_id}.{uuid.uuid4().hex}"
        compressor = _blosc(self._info["compressor"])
        arr = zarr.create_array(
            store=str(tmp), shape=self.shape, chunks=tuple(self._info["chunks"]), dtype=self.dtype,
            compressors=[compressor] if compressor is not None else None, fill_value=0,
        )
        arr[...] = np.asarray(data, dtype=self.dtype)
        arr.attrs["record"] = _jsonable({**dict(record), "volume_id": volume_id})
        try:
            os.rename(tmp, final)
        except OSError:
            # Another writer published the same id first: keep theirs, drop ours.
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.exists():
                raise

    def open_volume(self, volume_id: str) -> zarr.Array:
        """The zarr array of one volume (lazy: nothing is read until indexed)."""
        path = self.path / "volumes" / volume_id
        if not (path / "zarr.json").exists():
            raise StoreError(f"volume {volume_id!r} is not in {self.path}")
        return zarr.open_array(str(path), mode="r")

    def read_volume(self, volume_id: str, dtype: str = "float32") -> np.ndarray:
        """One whole volume as a numpy array."""
        return np.asarray(self.open_volume(volume_id)[...], dtype=dtype)

    def record(self, volume_id: str) -> dict[str, Any]:
        """The table row stored with one volume."""
        with open(self.path / "volumes" / volume_id / "zarr.json", encoding="utf-8") as fh:
            return dict(json.load(fh)["attributes"]["record"])

    def records(self) -> Iterator[dict[str, Any]]:
        for vid in self.volume_ids():
            yield self.record(vid)

    def remove_staging(self) -> None:
        """Delete leftovers of interrupted writes (never visible in the store)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    # ------------------------------------------------------------------ table
    def table(self):
        """The subject/modality table as a pandas DataFrame, one row per published volume.

        Nested fields (metadata dicts, affines, preprocessing) are kept as Python objects.
        """
        import pandas as pd

        rows = list(self.records())
        return pd.DataFrame(rows)

    def write_table_csv(self, columns: Sequence[str] | None = None) -> Path:
        """Write table.csv (nested fields JSON-encoded) atomically and return its path."""
        df = self.table()
        if columns is not None:
            df = df[[c for c in columns if c in df.columns]]
        flat = df.copy()
        for col in flat.columns:
            if flat[col].map(lambda v: isinstance(v, (dict, list))).any():
                flat[col] = flat[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
        out = self.path / TABLE_NAME
        tmp = out.with_suffix(".csv.tmp")
        flat.to_csv(tmp, index=False)
        os.replace(tmp, out)
        return out


def _check_id(volume_id: str) -> None:
    if not volume_id or "/" in volume_id or volume_id.startswith(".") or volume_id != volume_id.strip():
        raise StoreError(f"invalid volume id {volume_id!r}: ids must be non-empty, without '/' or a leading '.'")
