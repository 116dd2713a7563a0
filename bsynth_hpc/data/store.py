"""The Zarr volume store: one array per preprocessed volume, published atomically.

Layout (format version 1)::

    STORE.zarr/                     zarr v3 group; attrs["bsynth"] = store-level facts (see below)
      volumes/                      group
        <volume_id>/                one array per volume, (X, Y, Z) or (H, W) for 2D slices;
                                    attrs["record"] = the volume's row of the subject/modality table
      table.csv                     the table, rewritten by `finalize()` (derivable from the records)
      prep_report.json              machine-readable preprocessing report (written by data_prep)
      prep_incomplete.json          present while a prep run has not finished cleanly (see below)
      .staging/                     where arrays are written before publication (inside the store:
                                    cleaning it can never touch a file prep did not create)

Why one array per volume: a volume becomes visible only by a single `os.rename` of a
finished array directory into `volumes/`, so a crash mid-write never leaves a half-written
volume in the store, and a rerun simply skips volume ids that already exist (resume). The
record lives in the array's own attributes, so data and metadata are published together.

Creation never deletes anything: a store is created only in a new or empty folder (zarr mode
"w-"); an existing file or non-empty folder that is not a bsynth store is refused with the fix.

Completeness: ``bsynth prep`` writes ``prep_incomplete.json`` before it publishes anything and
removes it only after the store is finalized and its report written. A run that is killed, runs
out of disk space or fails to write leaves the marker, so :meth:`VolumeStore.incomplete_state`
(and ``bsynth info``, ``load_index``) report the store as incomplete instead of finished.

Store-level attrs["bsynth"]: format_version, kind ("volume3d" | "slice2d"), shape, spacing,
dtype, chunks, compressor, preprocessing parameters, metadata_stats (z-score statistics of
the continuous metadata fields over the training split), splits (fractions and seed).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
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
INCOMPLETE_NAME = "prep_incomplete.json"
STAGING_NAME = ".staging"
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreWriteError(StoreError):
    """Writing to the store failed (disk full, quota, permissions, I/O): a rerun can fix it."""


def store_error(problem: str, fix: str, err: int | None = None,
                kind: type[StoreError] = StoreError) -> StoreError:
    """A StoreError whose message names the problem and the fix (kept apart for the prep report)."""
    exc = kind(f"{problem}; fix: {fix}")
    exc.problem, exc.fix, exc.errno = problem, fix, err  # type: ignore[attr-defined]
    return exc


def write_failure(exc: OSError, what: str) -> StoreWriteError:
    """The StoreError for an OSError while writing ``what``: disk full/quota named as such, errno kept."""
    code = exc.errno
    if code in _SPACE_ERRNOS:
        reason = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        fix = ("free disk space (or write the store to a larger file system) and rerun the same command: "
               "volumes already published are kept")
    else:
        reason = exc.strerror or str(exc)
        fix = "check the store's permissions and file system, then rerun the same command to resume"
    name = errno.errorcode.get(code, "") if code else ""
    return store_error(f"cannot write {what}: {reason}" + (f" ({name})" if name else ""), fix, code,
                       StoreWriteError)  # type: ignore[return-value]


def _remove_quietly(path: Path) -> None:
    """Delete a temporary file or folder of ours; deleting needs no space, so this works on a full disk."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def check_creatable(path: Path) -> None:
    """StoreError unless ``path`` is absent or an empty folder (a store is never created over files)."""
    if path.exists() and not path.is_dir():
        raise store_error(f"{path} is a file, not a folder (a store is a folder)",
                          "pass a folder path that does not exist yet, e.g. data/store.zarr")
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (f", ... ({len(entries)} entries)" if len(entries) > 3 else "")
            raise store_error(
                f"{path} exists, is not a bsynth store and is not empty (holds {shown}); prep only creates a "
                "store in a new or empty folder and never deletes files it did not create",
                f"pass a new --out path, e.g. {path.parent / (path.name + '.zarr')} or {path / 'store.zarr'}")


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
                f"{self.path} is not a bsynth store (no zarr.json): pass a store written by `bsynth prep --out STORE` "
                f"(for a raw input folder, `bsynth info {self.path}` prints the prep command that builds one)"
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
        if not (path / "zarr.json").exists():
            cls._create(path, layout, preprocessing)
        store = cls(path)
        have = (store.kind, tuple(store.shape), store.dtype)
        want = (layout.kind, tuple(layout.shape), layout.dtype)
        if have != want:
            raise StoreError(
                f"{path} already holds {have[0]} volumes of shape {have[1]} ({have[2]}), but this run "
                f"asks for {want[0]} {want[1]} ({want[2]}): use a new --out path or the same --shape"
            )
        store._root.require_group("volumes")  # a creation interrupted before this point
        return store

    @staticmethod
    def _create(path: Path, layout: StoreLayout, preprocessing: Mapping[str, Any] | None) -> None:
        """Create the store's root group exclusively (mode "w-"), attributes included in one write."""
        check_creatable(path)
        info = _jsonable({
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
        try:
            root = zarr.open_group(str(path), mode="w-", attributes={"bsynth": info})
        except FileExistsError:
            if (path / "zarr.json").exists():
                return  # another process created it meanwhile: open theirs
            raise store_error(f"{path} could not be created exclusively (something else is writing there)",
                              "pass a new --out path") from None
        except OSError as exc:
            raise write_failure(exc, f"the store {path}") from None
        root.require_group("volumes")

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
        """Where arrays are written before their atomic publication (inside the store)."""
        return self.path / STAGING_NAME

    def update_info(self, **fields: Any) -> None:
        """Merge fields into the store-level attributes (e.g. metadata_stats, splits)."""
        self._info.update(_jsonable(fields))
        self._root.attrs["bsynth"] = self._info

    # ------------------------------------------------------------------ volumes
    def volume_ids(self) -> list[str]:
        """Ids of every published volume, sorted."""
        vdir = self.path / "volumes"
        if not vdir.is_dir():
            return []
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
        tmp = self.staging_dir / f"{volume_id}.{uuid.uuid4().hex}"
        try:
            self.staging_dir.mkdir(exist_ok=True)
            self._write_staged(tmp, data, record, volume_id)
            os.rename(tmp, final)
        except OSError as exc:
            _remove_quietly(tmp)
            if final.exists():  # another writer published the same id first: keep theirs
                return
            raise write_failure(exc, f"volume {volume_id} to {self.path}") from None
        except BaseException:
            _remove_quietly(tmp)
            raise

    def _write_staged(self, tmp: Path, data: np.ndarray, record: Mapping[str, Any], volume_id: str) -> None:
        """Write the array and its record into the staging folder ``tmp`` (not yet visible)."""
        compressor = _blosc(self._info["compressor"])
        arr = zarr.create_array(
            store=str(tmp), shape=self.shape, chunks=tuple(self._info["chunks"]), dtype=self.dtype,
            compressors=[compressor] if compressor is not None else None, fill_value=0,
        )
        arr[...] = np.asarray(data, dtype=self.dtype)
        arr.attrs["record"] = _jsonable({**dict(record), "volume_id": volume_id})

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

    # ------------------------------------------------------------------ completeness
    def mark_incomplete(self, **facts: Any) -> None:
        """Write ``prep_incomplete.json`` (atomically) with ``facts``; StoreError if it cannot be written."""
        marker = self.path / INCOMPLETE_NAME
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(_jsonable({"updated": time.time(), **facts}), fh, indent=2)
                fh.write("\n")
            os.replace(tmp, marker)
        except OSError as exc:
            _remove_quietly(tmp)
            raise write_failure(exc, f"{marker}") from None

    def mark_complete(self) -> None:
        """Remove the incomplete marker (the last step of a successful prep run)."""
        (self.path / INCOMPLETE_NAME).unlink(missing_ok=True)

    def incomplete_state(self) -> dict[str, Any] | None:
        """None for a complete store, else the marker's facts ({} if unreadable: the run died writing it)."""
        marker = self.path / INCOMPLETE_NAME
        if not marker.exists():
            return None
        try:
            facts = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

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
        try:
            flat.to_csv(tmp, index=False)
            os.replace(tmp, out)
        except OSError as exc:
            _remove_quietly(tmp)
            raise write_failure(exc, f"{out}") from None
        return out


def _check_id(volume_id: str) -> None:
    if not volume_id or "/" in volume_id or volume_id.startswith(".") or volume_id != volume_id.strip():
        raise StoreError(f"invalid volume id {volume_id!r}: ids must be non-empty, without '/' or a leading '.'")
