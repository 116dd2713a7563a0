"""A Zarr cache of encoded latents and their conditions, for the diffusion stages (seed 003 §2.5.3).

Convention: the cache stores **unscaled** latents ``z`` (what the frozen encoder emits) and
the scale factor ``s`` in its attributes; :class:`LatentDataset` returns ``s * z``, the
*scaled* latents the diffusion model trains on. Storing ``z`` lets ``s`` be estimated after
encoding (``estimate_scale_factor``: ``1 / std(z)``) or changed without rewriting any latent.

Layout (format version 1)::

    LATENTS.zarr/       attrs["bsynth_latents"] = {format_version, n, latent_shape, dtype,
                        scale_factor, stored: "unscaled", source_store, conditions_layout, ...extra}
      latents           (n, *latent_shape) float16|float32, one chunk per sample
      conditions        (n, 67) float32, one chunk per sample; columns per conditions_layout
      volume_id         (n,) str, one chunk per sample
      written           (n,) uint8, one chunk per sample, uncompressed; 1 = sample complete

Concurrency and resume: every array has one chunk per sample, so ranks writing disjoint
indices write disjoint chunk files and never read-modify-write a chunk another rank is
writing (one shared flag chunk would lose updates). Zarr's local store writes each chunk to
a temporary file and renames it into place, so a chunk is either absent or complete. A
sample is written as latent -> conditions -> volume id -> flag; the flag comes last, so an
interrupted encode leaves the sample unflagged and ``pending()`` lists it for the rerun.
Creation is atomic too: the cache is built in a sibling staging directory and renamed into
place; when several ranks call ``create`` at once, one wins and the others open its cache.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset
from zarr.codecs import BloscCodec

from ..errors import BsynthError, ConfigError, StoreError
from ..models.autoencoder.latent_scale import estimate_latent_scale
from .metadata import CLINICAL_DIM, NUM_FIELDS
from .splits import SPLITS, check_split

LATENT_FORMAT_VERSION = 1
ATTR_KEY = "bsynth_latents"
LATENT_DTYPES: tuple[str, ...] = ("float16", "float32")

_LAYOUT_PARTS: tuple[tuple[str, int], ...] = (
    ("modality_id", 1), ("label", 1), ("split", 1),
    ("metadata", NUM_FIELDS), ("metadata_mask", NUM_FIELDS),
    ("clinical", CLINICAL_DIM), ("clinical_mask", CLINICAL_DIM),
)


def _layout() -> dict[str, list[int]]:
    out, start = {}, 0
    for name, width in _LAYOUT_PARTS:
        out[name] = [start, start + width]
        start += width
    return out


CONDITIONS_LAYOUT: dict[str, list[int]] = _layout()
"""Column range [start, stop) of each condition in the ``conditions`` array."""
CONDITIONS_DIM: int = max(stop for _, stop in CONDITIONS_LAYOUT.values())
SPLIT_CODES: dict[str, int] = {name: i for i, name in enumerate(SPLITS)}
"""Split stored as a code in the conditions; -1 = not recorded."""


def _numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=dtype)


class LatentCache:
    """Read/write access to a latent cache (see the module docstring for layout and concurrency)."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "r+"):
        """Open an existing cache; ``mode="r"`` for read-only use (datasets, read-only file systems)."""
        if mode not in ("r", "r+"):
            raise ConfigError(f"latent cache mode {mode!r} is invalid: use 'r' (read) or 'r+' (read/write)")
        self.path = Path(path)
        self.mode = mode
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path} is not a latent cache (no zarr.json): create it with `bsynth encode --out {self.path}`")
        root = zarr.open_group(str(self.path), mode="r")
        info = root.attrs.get(ATTR_KEY)
        if not isinstance(info, dict) or "format_version" not in info:
            raise StoreError(f"{self.path} is a Zarr group but not a latent cache (attrs[{ATTR_KEY!r}] missing)")
        if int(info["format_version"]) != LATENT_FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has latent-cache format {info['format_version']}, this version reads "
                f"{LATENT_FORMAT_VERSION}: re-encode with `bsynth encode` into a new path"
            )
        self._info: dict[str, Any] = dict(info)
        self._arrays: dict[str, zarr.Array] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | os.PathLike[str], n: int, latent_shape: Sequence[int], scale_factor: float | None,
               source_store: str | os.PathLike[str] | None = None, dtype: str = "float16",
               **extra_attrs: Any) -> "LatentCache":
        """Create an empty cache of ``n`` samples, or reopen an existing one with the same geometry (resume)."""
        path = Path(path)
        shape = tuple(int(s) for s in latent_shape)
        if int(n) < 1 or not shape or any(s < 1 for s in shape):
            raise ConfigError(f"latent cache needs n >= 1 and a positive latent_shape, got n={n}, shape={latent_shape}")
        if dtype not in LATENT_DTYPES:
            raise ConfigError(f"latent cache dtype {dtype!r} is not supported: use one of {', '.join(LATENT_DTYPES)}")
        if scale_factor is not None and not (np.isfinite(scale_factor) and scale_factor > 0):
            raise ConfigError(f"scale_factor={scale_factor} must be a positive finite number (or None to set later)")
        if (path / "zarr.json").exists():
            return cls._reopen(path, int(n), shape, dtype)
        info = {
            "format_version": LATENT_FORMAT_VERSION, "n": int(n), "latent_shape": list(shape), "dtype": dtype,
            "scale_factor": None if scale_factor is None else float(scale_factor), "stored": "unscaled",
            "source_store": None if source_store is None else str(source_store),
            "conditions_layout": CONDITIONS_LAYOUT, **extra_attrs,
        }
        staging = path.parent / f".{path.name}.staging-{uuid.uuid4().hex}"
        try:
            root = zarr.open_group(str(staging), mode="w")
            root.attrs[ATTR_KEY] = info
            blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
            root.create_array("latents", shape=(int(n), *shape), chunks=(1, *shape), dtype=dtype,
                              compressors=[blosc], fill_value=0)
            root.create_array("conditions", shape=(int(n), CONDITIONS_DIM), chunks=(1, CONDITIONS_DIM),
                              dtype="float32", compressors=None, fill_value=0)
            root.create_array("volume_id", shape=(int(n),), chunks=(1,), dtype=str, fill_value="")
            root.create_array("written", shape=(int(n),), chunks=(1,), dtype="uint8", compressors=None, fill_value=0)
            os.rename(staging, path)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (path / "zarr.json").exists():
                raise
            return cls._reopen(path, int(n), shape, dtype)  # another rank created it first
        return cls(path)

    @classmethod
    def _reopen(cls, path: Path, n: int, shape: tuple[int, ...], dtype: str) -> "LatentCache":
        cache = cls(path)
        if (cache.n, cache.latent_shape, cache.dtype) != (n, shape, dtype):
            raise StoreError(
                f"{path} already holds {cache.n} latents of shape {cache.latent_shape} ({cache.dtype}), this run asks "
                f"for {n} of {shape} ({dtype}): use a new --out path, or delete the old cache"
            )
        return cache

    # ------------------------------------------------------------------ properties
    @property
    def info(self) -> dict[str, Any]:
        """Cache attributes (a copy)."""
        return dict(self._info)

    @property
    def n(self) -> int:
        return int(self._info["n"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._info["latent_shape"])

    @property
    def dtype(self) -> str:
        return str(self._info["dtype"])

    @property
    def scale_factor(self) -> float | None:
        value = self._info.get("scale_factor")
        return None if value is None else float(value)

    def set_scale_factor(self, value: float) -> None:
        """Record the scale factor (one process, after encoding; latents stay unscaled)."""
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"scale_factor={value} must be a positive finite number")
        self._info["scale_factor"] = float(value)
        zarr.open_group(str(self.path), mode="r+").attrs[ATTR_KEY] = self._info

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(str(self.path / name), mode=self.mode)
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}  # reopen lazily in each process

    # ------------------------------------------------------------------ writing
    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.n:
            raise IndexError(f"latent index {index} out of range 0..{self.n - 1} of {self.path}")
        return index

    def write(self, index: int, latent: Any, *, volume_id: str, modality_id: int, metadata: Any,
              metadata_mask: Any, label: int = -1, clinical: Any = None, clinical_mask: Any = None,
              split: str | None = None) -> None:
        """Write one sample (unscaled latent + conditions) and flag it written (see module docstring)."""
        index = self._check_index(index)
        z = _numpy(latent)
        if z.shape != self.latent_shape:
            raise StoreError(f"latent {index} has shape {z.shape}, cache {self.path} expects {self.latent_shape}")
        with np.errstate(over="ignore"):  # overflow to inf is reported below with the fix
            stored = z.astype(self.dtype)
        if not np.isfinite(stored).all():
            hint = " or exceeds float16 range (create the cache with dtype='float32')" if np.isfinite(z).all() else ""
            raise StoreError(f"latent {index} ({volume_id}) has non-finite values{hint}: check the encoder output")
        cond = np.zeros(CONDITIONS_DIM, dtype=np.float32)
        parts = {
            "modality_id": [modality_id], "label": [label],
            "split": [SPLIT_CODES[check_split(split)] if split else -1],
            "metadata": metadata, "metadata_mask": metadata_mask,
            "clinical": np.zeros(CLINICAL_DIM) if clinical is None else clinical,
            "clinical_mask": np.zeros(CLINICAL_DIM) if clinical_mask is None else clinical_mask,
        }
        for name, (start, stop) in CONDITIONS_LAYOUT.items():
            value = _numpy(parts[name]).reshape(-1)
            if value.size != stop - start:
                raise StoreError(f"condition {name!r} of latent {index} has {value.size} values, expected {stop - start}")
            cond[start:stop] = value
        self._array("latents")[index] = stored
        self._array("conditions")[index] = cond
        self._array("volume_id")[index] = str(volume_id)
        self._array("written")[index] = 1

    def write_item(self, index: int, latent: Any, item: Mapping[str, Any]) -> None:
        """Write one sample whose conditions come from a VolumeDataset item."""
        self.write(index, latent, volume_id=item["volume_id"], modality_id=int(item["modality_id"]),
                   metadata=item["metadata"], metadata_mask=item["metadata_mask"], label=int(item["label"]),
                   clinical=item.get("clinical"), clinical_mask=item.get("clinical_mask"),
                   split=item.get("split") or None)

    def write_batch(self, latents: Any, batch: Mapping[str, Any], indices: Sequence[int] | None = None) -> None:
        """Write a collated VolumeDataset batch; cache indices default to ``batch["index"]``."""
        idx = [int(i) for i in (batch["index"] if indices is None else indices)]
        for b, index in enumerate(idx):
            item = {k: (v[b] if isinstance(v, (torch.Tensor, np.ndarray, list, tuple)) else v) for k, v in batch.items()}
            self.write_item(index, latents[b], item)

    # ------------------------------------------------------------------ reading
    def written_mask(self) -> np.ndarray:
        """Boolean (n,) array: which samples are complete."""
        return np.asarray(self._array("written")[:]) == 1

    def is_written(self, index: int) -> bool:
        return bool(self._array("written")[self._check_index(index)] == 1)

    def pending(self) -> list[int]:
        """Indices still to encode (resume: skip everything else)."""
        return np.flatnonzero(~self.written_mask()).tolist()

    def read_latent(self, index: int, scaled: bool = True) -> np.ndarray:
        """One latent as float32; multiplied by the scale factor when ``scaled``."""
        z = np.asarray(self._array("latents")[self._check_index(index)], dtype=np.float32)
        return z * np.float32(self._require_scale()) if scaled else z

    def read_conditions(self) -> tuple[np.ndarray, list[str]]:
        """All conditions (n, CONDITIONS_DIM) float32 and volume ids, in one read each."""
        return np.asarray(self._array("conditions")[:], dtype=np.float32), [str(v) for v in self._array("volume_id")[:]]

    def estimate_scale_factor(self, max_samples: int | None = None) -> float:
        """``1 / std`` of the written unscaled latents, the usual LDM scale: the same streaming float64
        estimate as the compressor exports (:func:`bsynth_hpc.models.autoencoder.estimate_latent_scale`)."""
        indices = np.flatnonzero(self.written_mask())[:max_samples]
        if indices.size == 0:
            raise StoreError(f"{self.path} has no written latents yet: run `bsynth encode` first")
        try:
            return float(estimate_latent_scale(self.read_latent(int(i), scaled=False) for i in indices))
        except BsynthError as exc:
            raise StoreError(f"latents in {self.path}: {exc}") from exc

    def _require_scale(self) -> float:
        scale = self.scale_factor
        if scale is None:
            raise StoreError(
                f"{self.path} has no scale factor: call LatentCache(path).set_scale_factor("
                "cache.estimate_scale_factor()) after encoding"
            )
        return scale


class LatentDataset(Dataset[dict[str, Any]]):
    """Scaled latents (``scale_factor * z``) plus conditions from a latent cache.

    Item: latent (float tensor, latent_shape), modality_id, label (int, -1 unlabelled),
    metadata/metadata_mask (float32[25]), clinical/clinical_mask (float32[7]), volume_id,
    split ("" when not recorded), index (position in the cache). ``modality_ids`` keeps only
    those modalities. Raises StoreError when samples are unwritten, unless ``allow_partial=True``
    (then only written samples appear).
    """

    def __init__(self, path: str | os.PathLike[str], split: str | None = None, allow_partial: bool = False,
                 dtype: torch.dtype = torch.float32, modality_ids: Sequence[int] | None = None):
        check_split(split)
        if not Path(path).exists():
            raise StoreError(f"latent cache {path} does not exist: create it with `bsynth encode --out {path}`")
        self.cache = LatentCache(path, mode="r")
        self.split = split
        self.dtype = dtype
        self.scale_factor = self.cache._require_scale()
        written = self.cache.written_mask()
        if not written.all() and not allow_partial:
            missing = np.flatnonzero(~written)
            raise StoreError(
                f"{missing.size} of {self.cache.n} samples in latent cache {path} are unwritten (first: "
                f"{missing[:5].tolist()}): re-run `bsynth encode` with the same --out to finish them"
            )
        conditions, volume_ids = self.cache.read_conditions()
        keep = written.copy()
        if split is not None:
            s0, _ = CONDITIONS_LAYOUT["split"]
            keep &= conditions[:, s0] == SPLIT_CODES[split]
        if modality_ids is not None:
            m0, _ = CONDITIONS_LAYOUT["modality_id"]
            keep &= np.isin(conditions[:, m0].astype(np.int64), np.asarray(list(modality_ids), dtype=np.int64))
        self.indices: np.ndarray = np.flatnonzero(keep)
        self._conditions = conditions[self.indices]
        self._volume_ids = [volume_ids[i] for i in self.indices]

    def _part(self, row: int, name: str) -> np.ndarray:
        start, stop = CONDITIONS_LAYOUT[name]
        return self._conditions[row, start:stop]

    @property
    def modality_ids(self) -> list[int]:
        """Modality id of every item (for the modality-balanced sampler)."""
        return [int(v) for v in self._conditions[:, CONDITIONS_LAYOUT["modality_id"][0]]]

    @property
    def label_ids(self) -> list[int]:
        """Label id of every item (for the class-balanced sampler)."""
        return [int(v) for v in self._conditions[:, CONDITIONS_LAYOUT["label"][0]]]

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, row: int) -> dict[str, Any]:
        if not 0 <= row < len(self):
            raise IndexError(f"index {row} out of range for {len(self)} latents")
        index = int(self.indices[row])
        split_code = int(self._part(row, "split")[0])
        return {
            "latent": torch.from_numpy(self.cache.read_latent(index, scaled=True)).to(self.dtype),
            "modality_id": int(self._part(row, "modality_id")[0]),
            "label": int(self._part(row, "label")[0]),
            "metadata": torch.from_numpy(self._part(row, "metadata").copy()),
            "metadata_mask": torch.from_numpy(self._part(row, "metadata_mask").copy()),
            "clinical": torch.from_numpy(self._part(row, "clinical").copy()),
            "clinical_mask": torch.from_numpy(self._part(row, "clinical_mask").copy()),
            "volume_id": self._volume_ids[row],
            "split": SPLITS[split_code] if split_code >= 0 else "",
            "index": index,
        }
