"""The task a Dask worker runs for one input: load, validate, preprocess, publish to the store.

Workers write straight into the store (``VolumeStore.write_volume`` publishes each volume with
one atomic rename); only a small :class:`Outcome` travels back to the scheduler. Every error is
caught here and returned as a failure, so one bad file never takes a worker or the run down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bsynth_hpc.constants import MODALITY_IDS
from bsynth_hpc.data.store import VolumeStore

from .ingest import WorkItem
from .loading import LoadedVolume, load_nifti, load_slice_image
from .preprocess import PreprocessParams, Preprocessed, mask_on_image_grid, preprocess_slice_mapped, preprocess_volume
from .report import Failure, failure_from_exception

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass(frozen=True)
class Outcome:
    """What one task reports back: the volume id, done/skipped/failed, and the failure if any."""

    volume_id: str
    status: str
    failure: Failure | None = None


def base_record(item: WorkItem, params: PreprocessParams, sha256: str) -> dict[str, Any]:
    """The record fields shared by 3D volumes and 2D slices."""
    return {
        "volume_id": item.volume_id, "subject": item.subject, "session": item.session, "dataset": item.dataset,
        "modality": item.modality, "modality_id": MODALITY_IDS[item.modality], "label": item.label,
        "clinical": item.clinical, "metadata": dict(item.metadata), "source_path": item.source_path,
        "source_sha256": sha256, "mask_path": item.mask_path, "shape": [int(s) for s in params.shape],
        "preprocessing": params.as_dict(),
    }


def _intensity(out: Preprocessed) -> dict[str, Any] | None:
    """The record's ``intensity``: clip bounds, offset and scale (see :class:`~bsynth_hpc.prep.preprocess.IntensityMap`)."""
    return out.intensity.as_dict() if out.intensity is not None else None


def volume_record(item: WorkItem, params: PreprocessParams, vol: LoadedVolume, out: Preprocessed) -> dict[str, Any]:
    """Record of a 3D volume: the base fields plus input and output geometry and the intensity mapping."""
    record = base_record(item, params, vol.sha256)
    record.update(affine=np.asarray(out.affine).tolist(), source_affine=vol.affine.tolist(),
                  source_shape=list(vol.shape), source_spacing=list(vol.spacing), intensity=_intensity(out))
    return record


def slice_record(item: WorkItem, params: PreprocessParams, sha256: str,
                 source_shape: tuple[int, ...], out: Preprocessed) -> dict[str, Any]:
    """Record of a 2D slice (no affine: image files carry no world geometry)."""
    record = base_record(item, params, sha256)
    record.update(affine=None, source_affine=None, source_shape=list(source_shape), source_spacing=None,
                  intensity=_intensity(out))
    return record


def _brain_mask(item: WorkItem, vol: LoadedVolume, max_bytes: int | None) -> np.ndarray | None:
    if not item.mask_path:
        return None
    mask = load_nifti(item.mask_path, check_data=False, max_bytes=max_bytes)
    return mask_on_image_grid(mask.data, mask.affine, vol.shape, vol.affine)


def process_item(item: WorkItem, params: PreprocessParams, store_path: str,
                 max_bytes: int | None = None) -> Outcome:
    """Preprocess one input and publish it; never raises (errors come back as a failed Outcome).

    ``max_bytes``: the per-volume memory limit checked before any voxel is read (None: the
    default or ``$BSYNTH_MAX_VOLUME_MB``, see :func:`bsynth_hpc.prep.loading.max_volume_bytes`). It is
    passed explicitly because environment variables do not reach SLURM workers reliably.
    """
    stage = "write"
    try:
        store = VolumeStore(store_path)
        if store.has_volume(item.volume_id):  # published meanwhile (e.g. a retried task): keep it
            return Outcome(item.volume_id, SKIPPED)
        stage = "load"
        if store.kind == "slice2d":
            image, sha = load_slice_image(item.source_path, max_bytes=max_bytes)
            stage = "preprocess"
            out = preprocess_slice_mapped(image, params, source=item.source_path)
            data, record = out.data, slice_record(item, params, sha, image.shape, out)
        else:
            vol = load_nifti(item.source_path, max_bytes=max_bytes)
            mask = _brain_mask(item, vol, max_bytes)
            stage = "preprocess"
            out = preprocess_volume(vol.data, vol.affine, params, brain_mask=mask, source=item.source_path)
            data, record = out.data, volume_record(item, params, vol, out)
        stage = "write"
        store.write_volume(item.volume_id, data, record)
    except Exception as exc:  # noqa: BLE001 - one input's failure must not stop the run
        return Outcome(item.volume_id, FAILED, failure_from_exception(exc, item.ref, stage))
    return Outcome(item.volume_id, DONE)
