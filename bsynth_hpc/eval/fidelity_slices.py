"""2D inputs of ``bsynth eval fidelity``: a slice store (``bsynth prep --slices-from`` / ``--slices``) and a
folder of generated slices (``bsynth sample slice2d``: PNG, or 2D NIfTI, listed in samples.csv).

Slice stores hold images in their recorded value range ([-1, 1] by default); they are mapped linearly
to [0, 1], the space every fidelity measure assumes. PNG samples are 8-bit [0, 1] images
(value / 255); 2D NIfTI samples are read as stored. Slices keep the store's image order (display
orientation), so a sample and a real slice are compared pixel for pixel.

3D samples (a ``bsynth sample`` folder of NIfTI volumes) can be scored on the same slice measure: each volume
is cut exactly as ``--slices-from`` cut the store (the axis, size, fit, interpolation, brain-fraction and
foreground thresholds the store records), after the checks of the 3D fidelity on the store's source grid.
This is how a 3D model and a 2D slice model are compared side by side on one measure.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..constants import canonical_modality
from ..data.dataset import VolumeDataset
from ..data.store import VolumeStore
from ..errors import InputError
from .io import SIDECAR_NAMES, VolumeRef, VolumeSet

if TYPE_CHECKING:
    from ..prep.slices_from import SliceConfig

__all__ = ["is_slice_store", "open_slice_store_set", "open_slice_samples", "read_slice_image", "lists_volumes",
           "slice_cut_of_store", "cut_into_slices"]

SLICE_SUFFIXES: tuple[str, ...] = (".png", ".nii.gz", ".nii")


def is_slice_store(path: Path) -> bool:
    """Whether ``path`` is a bsynth store of 2D slices."""
    return (Path(path) / "zarr.json").is_file() and VolumeStore(path).info.get("kind") == "slice2d"


def _value_range(path: Path) -> tuple[float, float]:
    prep = VolumeStore(path).info.get("preprocessing") or {}
    lo, hi = prep.get("value_range") or (0.0, 1.0)
    return float(lo), float(hi)


def open_slice_store_set(path: Path, split: str | None = None) -> VolumeSet:
    """The slices of one split of a slice store, read lazily and mapped to [0, 1]."""
    ds = VolumeDataset(path, split=split)
    lo, hi = _value_range(path)
    store = VolumeStore(path)
    refs = [VolumeRef(volume_id=e.volume_id, modality=e.modality, label=e.label,
                      source=f"{path}/volumes/{e.volume_id}", subject=e.subject,
                      level=_slice_index(store.record(e.volume_id))) for e in ds.entries]
    index = {e.volume_id: i for i, e in enumerate(ds.entries)}

    def load(ref: VolumeRef) -> np.ndarray:
        return np.clip((ds.read_image(index[ref.volume_id]).astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)

    return VolumeSet(path=path, kind="zarr-slices", refs=refs, shape=tuple(ds.shape), split=split,  # type: ignore
                     loader=load)


def _slice_index(record: dict) -> int | None:
    index = record.get("slice_index")
    return None if index is None else int(index)


def read_slice_image(path: str) -> np.ndarray:
    """One generated slice as float32 (H, W): a PNG in [0, 255] -> [0, 1], or a 2D NIfTI as stored."""
    if path.endswith(".png"):
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    import nibabel as nib  # lazy: optional NIfTI reader

    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:2]) if data.ndim > 2 and int(np.prod(data.shape[2:])) == 1 else data
    if data.ndim != 2:
        raise InputError(f"{path} has shape {data.shape}: a generated slice must be 2D")
    return data


def open_slice_samples(folder: Path, shape: Sequence[int]) -> VolumeSet:
    """The generated slices listed in ``folder``/samples.csv (each needs a modality), refused unless each has
    the store's slice shape."""
    sidecar = next((folder / n for n in SIDECAR_NAMES if (folder / n).is_file()), None)
    if not folder.is_dir() or sidecar is None:
        raise InputError(f"--fake {folder} has no samples.csv: fidelity needs each sample's modality (and class), "
                         "which `bsynth sample slice2d` records there")
    with open(sidecar, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    refs = []
    for i, row in enumerate(rows):
        p = folder / (row.get("path") or row.get("file") or "")
        if not p.is_file() or not p.name.endswith(SLICE_SUFFIXES):
            raise InputError(f"{sidecar} row {i + 2}: {p} is not a slice image ({', '.join(SLICE_SUFFIXES)})")
        modality = (row.get("modality") or "").split("+")[0].strip()
        if not modality:
            raise InputError(f"{sidecar} row {i + 2}: {p.name} has no modality")
        refs.append(VolumeRef(volume_id=p.name.split(".")[0], modality=canonical_modality(modality),
                              label=(row.get("label") or row.get("class") or "").strip() or None, source=str(p)))
    if not refs:
        raise InputError(f"{sidecar} lists no samples")
    target = tuple(int(s) for s in shape)
    for ref in refs:
        got = read_slice_image(ref.source).shape
        if got != target:
            raise InputError(f"{ref.source} has shape {got}, the slice store {target}: samples must be on the store "
                             "grid")

    def load(ref: VolumeRef) -> np.ndarray:
        return read_slice_image(ref.source)

    return VolumeSet(path=folder, kind="slices", refs=refs, shape=target, loader=load)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- 3D samples as slices
def lists_volumes(folder: Path) -> bool:
    """Whether ``folder``/samples.csv lists 3D NIfTI volumes (``bsynth sample``), not slices."""
    sidecar = next((folder / n for n in SIDECAR_NAMES if (folder / n).is_file()), None)
    if sidecar is None:
        return False
    with open(sidecar, newline="", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh), None) or {}
    path = folder / (first.get("path") or first.get("file") or first.get("filename") or "")
    if not path.is_file() or not path.name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib  # lazy: optional NIfTI reader

    shape = nib.load(str(path)).shape
    return len(shape) >= 3 and shape[2] > 1


def slice_cut_of_store(path: Path) -> tuple["SliceConfig", Path]:
    """The :class:`~bsynth_hpc.prep.slices_from.SliceConfig` a slice store was cut with, and its source 3D store."""
    from ..prep.slices_from import SliceConfig  # lazy: prep-only imports

    prep = VolumeStore(path).info.get("preprocessing") or {}
    missing = [k for k in ("source_store", "axis", "shape", "fit", "interpolation", "min_brain_fraction",
                           "foreground_fraction") if prep.get(k) is None]
    if missing:
        raise InputError(f"{path} records no {', '.join(missing)}: 3D samples can be cut into slices only against a "
                         "store written by `bsynth prep --slices-from`")
    source = Path(prep["source_store"])
    if not (source / "zarr.json").is_file():
        raise InputError(f"{path} was cut from {source}, which is gone: 3D samples are checked on that store's grid "
                         "before they are cut; restore it, or cut the samples' own slices with `bsynth prep "
                         "--slices-from` and compare slice folders")
    config = SliceConfig(axis=str(prep["axis"]), size=tuple(int(s) for s in prep["shape"]), fit=str(prep["fit"]),
                         interpolation=str(prep["interpolation"]),
                         min_brain_fraction=float(prep["min_brain_fraction"]),
                         foreground_fraction=float(prep["foreground_fraction"]), progress=False)
    return config, source


def cut_into_slices(volumes: VolumeSet, config: "SliceConfig") -> VolumeSet:
    """Every slice of each [0, 1] volume that ``--slices-from`` with ``config`` would keep, in memory, named
    ``<volume>__<axis><index>`` with the volume's modality and class and the index as its level."""
    from ..prep.slices_from import extract_slices, slice_volume_id  # lazy: prep-only imports

    images: dict[str, np.ndarray] = {}
    refs: list[VolumeRef] = []
    for i, ref in enumerate(volumes.refs):
        for index, _fraction, image in extract_slices(volumes.load(i), config):
            sid = slice_volume_id(ref.volume_id, config.axis, index)
            images[sid] = image
            refs.append(VolumeRef(volume_id=sid, modality=ref.modality, label=ref.label,
                                  source=f"{ref.source}#{config.axis}{index:03d}", subject=ref.subject, level=index))
    if not refs:
        raise InputError(f"no slice of the volumes in {volumes.path} passes the brain-fraction filter "
                         f"(min_brain_fraction={config.min_brain_fraction}) the slice store was cut with")

    def load(ref: VolumeRef) -> np.ndarray:
        return images[ref.volume_id]

    return VolumeSet(path=volumes.path, kind="volume-slices", refs=refs, shape=config.shape,  # type: ignore[arg-type]
                     loader=load)
