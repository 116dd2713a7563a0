"""`bsynth prep --slices-from STORE.zarr --out SLICES.zarr`: a 2D slice store cut from a 3D volume store.

Seeds 001 and 004 train on 2D slices; 001 cuts axial BraTS FLAIR / T1ce slices from the volumes and
drops "empty or non-brain" ones, resized to 128^2 (004: 256^2) with intensities in [-1, 1]. Here
the volumes come from a finalized 3D store (``bsynth prep --brats/--bids/--manifest``), so the
slices inherit its preprocessing (RAS grid, spacing, percentile clip + min-max) and its subjects.

Per source volume (optionally only some modalities):

1. read it; a volume that cannot be read, has the wrong shape or non-finite values is reported as
   a failure and skipped (the run goes on);
2. brain pixels: the volume's foreground (:func:`~bsynth_hpc.prep.preprocess.foreground_mask`,
   computed once per volume, so an empty slice is judged against the head's intensities, not its
   own); a slice is kept when its brain fraction is at least ``min_brain_fraction``;
3. each kept slice, in display orientation (rows anterior->posterior for axial, superior->inferior
   for coronal/sagittal; columns left->right in RAS voxel order), is resized to ``size`` (``fit``
   "pad": keep the aspect ratio and pad with background; "stretch": exact size) with bicubic (001)
   or bilinear (004) interpolation, clipped to [0, 1] and mapped linearly to ``value_range``
   (default [-1, 1]: the volume's own min-max, so slices of one volume share one intensity scale);
4. published as one array ``<source volume id>__<axis><index>`` whose record carries the
   volume's subject, session, dataset, modality, label, metadata and clinical fields plus
   ``source_volume_id``, ``slice_axis``, ``slice_index``, ``brain_fraction`` and the composed
   intensity mapping (``bsynth_hpc.data.intensity.denormalize`` still maps back to scanner units).

Then the store is finalized and its splits are replaced by the source store's assignment: a
slice's split is its volume's subject's split (the source's metadata statistics and label
vocabulary are kept too, so label ids and metadata encodings match the 3D store).

Like ``bsynth prep`` the run is resumable and idempotent: the store is created exclusively, locked,
marked incomplete while running, slices already published are not rewritten (a rerun re-reads
each volume, which is cheap next to writing), and it is finalized only when no write failed;
``prep_report.json`` lists every skipped volume with its reason.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bsynth_hpc.constants import MODALITIES, canonical_modality
from bsynth_hpc.data.finalize import entry_from_record, finalize_store, load_index, split_counts
from bsynth_hpc.data.store import REPORT_NAME, StoreLayout, StoreWriteError, VolumeStore, store_error
from bsynth_hpc.errors import ConfigError, InputError, StoreError

from .pipeline import _finish as finish_run  # the report + completion marker step of bsynth prep
from .pipeline import check_out_is_folder, store_lock
from .preprocess import DEFAULT_FOREGROUND_FRACTION, FIT_CHOICES, foreground_mask
from .report import Failure, InputRef, PrepResult, failure_from_exception, format_summary, needs_rerun

__all__ = ["SliceConfig", "AXES", "INTERPOLATIONS", "slices_from_store", "slice_config_from_args", "extract_slices",
           "resize_slice", "slice_volume_id", "SLICES_VERSION"]

AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Store axis fixed by each slice orientation (stores are RAS: X left->right, Y post->ant, Z inf->sup)."""
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")
SLICES_VERSION = 1
"""Bumped whenever the extraction changes what it writes."""
_MUST_MATCH = ("source_store", "axis", "shape", "fit", "interpolation", "min_brain_fraction",
               "foreground_fraction", "value_range", "modalities", "version")


@dataclass
class SliceConfig:
    """Options of one slices-from run (defaults: seed 001 -- axial, 128^2, bicubic, [-1, 1]).

    ``size``: one int (square) or (H, W). ``modalities``: canonical names or any accepted spelling
    (None: all). ``min_brain_fraction``: the fraction of a slice's pixels that must be brain for it
    to be kept; ``foreground_fraction``: the volume foreground threshold (see
    :func:`~bsynth_hpc.prep.preprocess.foreground_mask`).
    """

    axis: str = "axial"
    size: int | tuple[int, int] = 128
    modalities: tuple[str, ...] | None = None
    min_brain_fraction: float = 0.05
    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION
    fit: str = "pad"
    interpolation: str = "bicubic"
    value_range: tuple[float, float] = (-1.0, 1.0)
    dtype: str = "float16"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, (list, tuple)):
            self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        if self.modalities is not None:
            try:
                self.modalities = tuple(sorted({canonical_modality(str(m)) for m in self.modalities},
                                               key=MODALITIES.index))
            except KeyError as exc:
                raise ConfigError(f"--modalities: unknown modality {exc.args[0]!r}; use one of "
                                  f"{', '.join(MODALITIES)}") from None
        self.value_range = tuple(float(v) for v in self.value_range)  # type: ignore[assignment]
        self.validate()

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the stored slices."""
        size = self.size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def validate(self) -> None:
        """ConfigError naming the flag for a bad option."""
        if self.axis not in AXES:
            raise ConfigError(f"--axis {self.axis!r}: use one of {', '.join(AXES)}")
        size = self.size
        if not (isinstance(size, int) or (isinstance(size, tuple) and len(size) == 2)) or min(self.shape) < 1:
            raise ConfigError(f"--size {size!r}: give one positive int (square slices) or two (H W)")
        if not 0.0 <= self.min_brain_fraction < 1.0:
            raise ConfigError(f"--min-brain-fraction {self.min_brain_fraction} must lie in [0, 1)")
        if not 0.0 < self.foreground_fraction < 1.0:
            raise ConfigError(f"foreground_fraction {self.foreground_fraction} must lie in (0, 1)")
        if self.fit not in FIT_CHOICES:
            raise ConfigError(f"--slice-fit {self.fit!r}: use one of {', '.join(FIT_CHOICES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"--interpolation {self.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
        lo, hi = self.value_range
        if len(self.value_range) != 2 or not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ConfigError(f"--value-range {self.value_range}: give LO HI with LO < HI, e.g. -1 1")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype {self.dtype!r}: use float16 or float32")


# ---------------------------------------------------------------------------- one volume
def slice_volume_id(volume_id: str, axis: str, index: int) -> str:
    """``<volume id>__<axis><index, 3 digits>``, e.g. ``BraTS__case1__FLAIR__axial077``."""
    return f"{volume_id}__{axis}{index:03d}"


def _display(plane: np.ndarray) -> np.ndarray:
    """A plane (first remaining RAS axis, second) -> rows along the second axis reversed, columns along the first."""
    return np.ascontiguousarray(np.flipud(plane.T))


def resize_slice(image: np.ndarray, shape: tuple[int, int], fit: str = "pad", interpolation: str = "bicubic",
                 background: float = 0.0) -> np.ndarray:
    """``image`` (float) resized to ``shape``: "stretch" to exactly it, or "pad" (aspect kept, centred)."""
    from PIL import Image  # lazy: Pillow is only needed when slices are resized

    out_h, out_w = shape
    h, w = image.shape
    if fit == "stretch":
        new_h, new_w = out_h, out_w
    else:
        scale = min(out_h / h, out_w / w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    data = np.asarray(image, dtype=np.float32)
    if (new_h, new_w) != (h, w):
        data = np.asarray(Image.fromarray(data).resize((new_w, new_h), resample), dtype=np.float32)
    out = np.full((out_h, out_w), background, dtype=np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out[top:top + new_h, left:left + new_w] = data
    return out


def extract_slices(volume: np.ndarray, config: SliceConfig) -> list[tuple[int, float, np.ndarray]]:
    """(index, brain fraction, slice in [0, 1]) of every kept slice of a [0, 1] volume (module steps 2-3)."""
    if volume.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {volume.shape}")
    axis = AXES[config.axis]
    brain = foreground_mask(volume, config.foreground_fraction)
    fractions = brain.mean(axis=tuple(a for a in range(3) if a != axis))
    kept = []
    for index in np.flatnonzero(fractions >= max(config.min_brain_fraction, 1e-12)):
        plane = _display(np.take(volume, int(index), axis=axis))
        image = resize_slice(plane, config.shape, config.fit, config.interpolation)
        kept.append((int(index), float(fractions[index]), np.clip(image, 0.0, 1.0)))
    return kept


def _intensity(record: dict[str, Any], lo: float, hi: float) -> dict[str, Any] | None:
    """The source mapping v = (clip(x) - c) s composed with lo + (hi - lo) v, as (clip(x) - c') s'."""
    src = record.get("intensity")
    if not isinstance(src, dict) or not isinstance(src.get("scale"), (int, float)):
        return None
    scale = (hi - lo) * float(src["scale"])
    return {**src, "offset": float(src["offset"]) - lo / scale, "scale": scale, "value_range": [lo, hi]}


_CARRIED = ("subject", "session", "dataset", "modality", "modality_id", "label", "clinical", "metadata",
            "source_path", "source_sha256")


def _slice_record(record: dict[str, Any], volume_id: str, index: int, fraction: float, config: SliceConfig,
                  params: dict[str, Any]) -> dict[str, Any]:
    lo, hi = config.value_range
    return {**{k: record.get(k) for k in _CARRIED}, "source_volume_id": volume_id, "slice_axis": config.axis,
            "slice_index": index, "brain_fraction": round(fraction, 6), "shape": list(config.shape),
            "affine": None, "preprocessing": params, "intensity": _intensity(record, lo, hi)}


@dataclass
class _VolumeOutcome:
    written: int = 0
    present: int = 0
    failure: Failure | None = None


def _process_volume(src: VolumeStore, out: VolumeStore, volume_id: str, config: SliceConfig,
                    params: dict[str, Any]) -> _VolumeOutcome:
    """Slice one source volume into ``out``; never raises (failures come back in the outcome)."""
    stage, record = "load", {}
    result = _VolumeOutcome()
    try:
        record = src.record(volume_id)
        volume = src.read_volume(volume_id)
        if volume.shape != src.shape:
            raise InputError(f"volume {volume_id} has shape {volume.shape}, its store declares {src.shape}")
        if not np.isfinite(volume).all():
            raise InputError(f"volume {volume_id} holds non-finite values (NaN/inf)")
        stage = "preprocess"
        lo, hi = config.value_range
        for index, fraction, image in extract_slices(volume, config):
            sid = slice_volume_id(volume_id, config.axis, index)
            if out.has_volume(sid):
                result.present += 1
                continue
            stage = "write"
            out.write_volume(sid, lo + (hi - lo) * image, _slice_record(record, volume_id, index, fraction,
                                                                         config, params))
            result.written += 1
            stage = "preprocess"
    except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the run
        ref = InputRef(source_path=record.get("source_path"), subject=record.get("subject"),
                       session=record.get("session"), dataset=record.get("dataset"),
                       modality=record.get("modality"), volume_id=volume_id, origin=f"volume {volume_id}")
        result.failure = failure_from_exception(exc, ref, stage)
    return result


# ---------------------------------------------------------------------------- the run
def _check_paths(source: Path, out: Path) -> None:
    check_out_is_folder(out)
    s, o = source.resolve(), out.resolve()
    if o == s or o.is_relative_to(s) or s.is_relative_to(o):
        raise store_error(f"--out {out} overlaps the source store {source}; slices-from never writes into its "
                          "input", f"pass an --out outside it, e.g. {s.parent / (s.stem + '_slices.zarr')}")


def _params(config: SliceConfig, source: Path, src_info: dict[str, Any]) -> dict[str, Any]:
    return {"source_store": str(source.resolve()), "axis": config.axis, "shape": list(config.shape),
            "fit": config.fit, "interpolation": config.interpolation,
            "min_brain_fraction": config.min_brain_fraction, "foreground_fraction": config.foreground_fraction,
            "value_range": list(config.value_range),
            "modalities": list(config.modalities) if config.modalities else None, "version": SLICES_VERSION,
            "normalize": "minmax", "source_preprocessing": src_info.get("preprocessing")}


def _check_params(store: VolumeStore, params: dict[str, Any]) -> None:
    have = store.info.get("preprocessing") or {}
    want = json.loads(json.dumps(params))
    diff = [k for k in _MUST_MATCH if have.get(k) != want.get(k)]
    if diff:
        detail = ", ".join(f"{k}: store {have.get(k)!r} vs run {want.get(k)!r}" for k in diff)
        raise StoreError(f"{store.path} was cut with other options ({detail}): rerun with the store's options to "
                         "resume, or write to a new --out store")


def _spacing(src_info: dict[str, Any], src_shape: tuple[int, ...], config: SliceConfig) -> tuple[float, float]:
    """Pixel size (mm) of the stored slices: the in-plane voxel size scaled by the resize."""
    keep = [a for a in range(3) if a != AXES[config.axis]]
    spacing = [float(s) for s in src_info.get("spacing") or (1.0, 1.0, 1.0)]
    rows, cols = (src_shape[keep[1]], spacing[keep[1]]), (src_shape[keep[0]], spacing[keep[0]])
    (h, w), (out_h, out_w) = (rows[0], cols[0]), config.shape
    if config.fit == "stretch":
        return rows[1] * h / out_h, cols[1] * w / out_w
    scale = min(out_h / h, out_w / w)
    return rows[1] / scale, cols[1] / scale


def _keep_source_splits(out: VolumeStore, src_info: dict[str, Any]) -> dict[str, Any]:
    """Replace the finalized splits by the source's assignment (and keep its statistics and labels)."""
    src_splits = src_info["splits"]
    entries = [entry_from_record(r) for r in out.records()]
    assignment = {e.key: src_splits["assignment"][e.key] for e in entries}
    splits = {k: v for k, v in src_splits.items() if k not in ("assignment", "counts")}
    splits.update(inherited_from=str(out.info["preprocessing"]["source_store"]),
                  counts=split_counts(entries, assignment))
    labels = sorted(set(src_info.get("labels") or ()) | {e.label for e in entries if e.label is not None})
    out.update_info(splits={**splits, "assignment": assignment}, metadata_stats=src_info.get("metadata_stats"),
                    labels=labels)
    return {"splits": splits, "metadata_stats": src_info.get("metadata_stats"), "labels": labels,
            "table_csv": str(out.path / "table.csv")}


@dataclass
class _Counts:
    volumes: int = 0
    written: int = 0
    present: int = 0
    failures: list[Failure] = field(default_factory=list)


def slices_from_store(source: str | os.PathLike[str], out: str | os.PathLike[str],
                      config: SliceConfig | None = None) -> PrepResult:
    """Cut the 3D store ``source`` into the 2D slice store ``out`` (module docstring); returns the
    :class:`~bsynth_hpc.prep.report.PrepResult` (``done``/``skipped`` count volumes, ``published`` slices)."""
    c = config if config is not None else SliceConfig()
    c.validate()
    t0 = time.perf_counter()
    source_path, out_path = Path(source), Path(out).absolute()
    src_info, entries = load_index(source_path)  # a finalized, complete store (StoreError with the fix otherwise)
    if src_info.get("kind") != "volume3d":
        raise ConfigError(f"--slices-from {source}: the store holds {src_info.get('kind')} images; it must be a 3D "
                          "volume store (bsynth prep --brats/--bids/--manifest)")
    normalize = (src_info.get("preprocessing") or {}).get("normalize")
    if normalize != "minmax":
        raise ConfigError(f"--slices-from {source}: the store was normalised with {normalize!r}; slices need "
                          "intensities in [0, 1] (prep with --normalize minmax)")
    wanted = [e for e in entries if c.modalities is None or e.modality in c.modalities]
    if not wanted:
        raise ConfigError(f"--modalities {list(c.modalities or ())}: {source} has no such volumes (it holds "
                          f"{sorted({e.modality for e in entries})})")
    _check_paths(source_path, out_path)
    src = VolumeStore(source_path)
    params = _params(c, source_path, src_info)
    layout = StoreLayout(kind="slice2d", shape=c.shape, spacing=_spacing(src_info, src.shape, c), dtype=c.dtype)
    store = VolumeStore.create_or_open(out_path, layout, preprocessing=params)
    _check_params(store, params)

    with store_lock(store.path):
        started = time.time()
        store.mark_incomplete(run_started=started, inputs=len(wanted), expected=len(wanted), reason="running")
        store.remove_staging()
        counts = _Counts(volumes=len(wanted))
        done = skipped = 0
        step = max(1, len(wanted) // 20)
        for i, entry in enumerate(wanted, start=1):
            got = _process_volume(src, store, entry.volume_id, c, params)
            counts.written += got.written
            counts.present += got.present
            if got.failure is not None:
                counts.failures.append(got.failure)
            elif got.written:
                done += 1
            else:
                skipped += 1
            if c.progress and (i % step == 0 or i == len(wanted)):
                print(f"[slices] {i}/{len(wanted)} volumes, {counts.written} slices written, "
                      f"{len(counts.failures)} failed, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        store.remove_staging()
        result = PrepResult(store_path=store.path, kind=store.kind, total=len(wanted), done=done, skipped=skipped,
                            failures=counts.failures, report_path=store.path / REPORT_NAME, elapsed_s=0.0,
                            parameters={**params, "dtype": store.dtype, "spacing": list(layout.spacing)},
                            complete=False, expected=len(wanted), run_started=started)
        ready = not any(needs_rerun(f) for f in counts.failures)
        if not store.volume_ids():
            ready = False
            result.problems.append(f"no slice passed the brain-fraction filter (min_brain_fraction="
                                   f"{c.min_brain_fraction}); lower --min-brain-fraction")
        try:
            if ready:
                finalize_store(store)
                result.finalize = _keep_source_splits(store, src_info)
        except (StoreWriteError, OSError) as exc:
            ready = False
            result.problems.append(f"finalizing the store failed: {exc}")
        finally:
            result.elapsed_s = time.perf_counter() - t0
            finish_run(store, result, {"kind": "slices-from", "store": str(source_path.resolve()),
                                    "slices": {"written": counts.written, "already_present": counts.present},
                                    "config": {k: v for k, v in asdict(c).items() if k != "progress"}}, ready)
    if c.progress:
        print(format_summary(result), flush=True)
        print(f"slices: {counts.written} written, {counts.present} already present, {result.published} in the store",
              flush=True)
    return result


def slice_config_from_args(axis: str, size: Sequence[int] | None, modalities: Sequence[str] | None,
                           min_brain_fraction: float, fit: str, interpolation: str,
                           value_range: Sequence[float], dtype: str, quiet: bool) -> SliceConfig:
    """The :class:`SliceConfig` of the ``bsynth prep --slices-from`` flags."""
    shape: int | tuple[int, int] = 128
    if size:
        if len(size) not in (1, 2):
            raise ConfigError(f"--size {list(size)}: give one int (square) or two (H W)")
        shape = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
    return SliceConfig(axis=axis, size=shape, modalities=tuple(modalities) if modalities else None,
                       min_brain_fraction=min_brain_fraction, fit=fit, interpolation=interpolation,
                       value_range=(float(value_range[0]), float(value_range[1])), dtype=dtype, progress=not quiet)
