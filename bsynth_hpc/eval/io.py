"""The volumes an evaluation reads: a bsynth Zarr store or a folder of NIfTI files.

A :class:`VolumeSet` is an ordered list of volume references (id, modality, class label, source)
that loads one volume at a time as float32 (X, Y, Z), so large sets never sit in memory whole.

* Zarr store (``bsynth prep`` output): read through :class:`bsynth_hpc.data.VolumeDataset`
  (optionally one split); modality and label come from the store's records.
* NIfTI folder (what ``bsynth sample`` writes, or another generator's output): ``*.nii`` /
  ``*.nii.gz`` directly in the folder, reoriented to RAS voxel order (``nib.as_closest_canonical``).
  Modality and class come from a sidecar CSV (``samples.csv``, ``volumes.csv`` or ``manifest.csv``
  with a ``path``/``file``/``filename`` column and optional ``modality`` and ``label``/``class``
  columns) when present, else from the file name: a ``_``-separated token naming a modality
  (``sub-01_T1w.nii.gz``, ``sample-0003_FLAIR.nii.gz``; aliases such as t1ce accepted) and an
  optional ``class-<name>`` / ``label-<name>`` token.

Intensities must already lie in [0, 1] (the preprocessed space every metric assumes); other
ranges are refused unless ``rescale="minmax"`` maps each volume to [0, 1]. Volumes of another
shape than the set's target are refused unless ``fit="crop-pad"``, which center-crops or
zero-pads each axis (no resampling: voxel spacing is kept).
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..constants import MODALITIES, canonical_modality
from ..data.dataset import VolumeDataset
from ..errors import InputError, StoreError

SIDECAR_NAMES: tuple[str, ...] = ("samples.csv", "volumes.csv", "manifest.csv")
RANGE_TOLERANCE = 0.02
FIT_CHOICES: tuple[str, ...] = ("refuse", "crop-pad")
RESCALE_CHOICES: tuple[str, ...] = ("none", "minmax")


@dataclass(frozen=True)
class VolumeRef:
    """One volume of a set: identity, modality, class label and where it comes from."""

    volume_id: str
    modality: str | None
    label: str | None
    source: str
    subject: str | None = None
    level: int | None = None
    """Slice stores: the slice's index along its axis in the source volume (``slice_index``); None otherwise."""


@dataclass
class VolumeSet:
    """Volumes read lazily from one source; see the module docstring."""

    path: Path
    kind: str
    refs: list[VolumeRef]
    shape: tuple[int, int, int]
    split: str | None = None
    loader: Callable[[VolumeRef], np.ndarray] | None = None
    rescale: str = "none"

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> np.ndarray:
        """Volume ``index`` as float32 (X, Y, Z) with intensities checked to lie in [0, 1]."""
        ref = self.refs[index]
        assert self.loader is not None
        data = np.asarray(self.loader(ref), dtype=np.float32)
        return _check_intensities(data, ref.source, self.rescale)

    def iter_volumes(self, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        for i in (range(len(self)) if indices is None else indices):
            yield self.load(i)

    def subset(self, indices: Sequence[int]) -> "VolumeSet":
        return replace(self, refs=[self.refs[i] for i in indices])

    def groups(self, by: str) -> dict[str, list[int]]:
        """Indices per modality (``by="modality"``) or per class label (``by="label"``); volumes
        without the attribute are left out."""
        out: dict[str, list[int]] = defaultdict(list)
        for i, ref in enumerate(self.refs):
            value = getattr(ref, by)
            if value is not None:
                out[value].append(i)
        order = list(MODALITIES) if by == "modality" else sorted(out)
        return {k: out[k] for k in order if k in out}

    def describe(self) -> dict:
        """Provenance for reports: source, kind, split, counts."""
        return {"path": str(self.path), "kind": self.kind, "split": self.split, "n": len(self),
                "shape": list(self.shape), "rescale": self.rescale,
                "modalities": dict(Counter(r.modality for r in self.refs if r.modality)),
                "labels": dict(Counter(r.label for r in self.refs if r.label))}


def _check_intensities(data: np.ndarray, source: str, rescale: str) -> np.ndarray:
    """Refuse non-finite values and (unless rescaling) intensities outside [0, 1] +- 0.02."""
    if not np.isfinite(data).all():
        raise InputError(f"{source} contains NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    if rescale == "minmax":
        return (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise InputError(f"{source} has intensities in [{lo:.4g}, {hi:.4g}], but the metrics compare volumes in the "
                         "preprocessed [0, 1] space: pass --rescale minmax to map each volume to [0, 1]")
    return data


def fit_shape(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Center-crop or zero-pad each axis of ``data`` to ``shape`` (no resampling)."""
    out = data
    for axis, (have, want) in enumerate(zip(data.shape, shape)):
        if have > want:
            start = (have - want) // 2
            out = np.take(out, np.arange(start, start + want), axis=axis)
        elif have < want:
            before = (want - have) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, want - have - before)
            out = np.pad(out, pad)
    return out


# ---------------------------------------------------------------------------------------- Zarr
def is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def open_store_set(path: Path, split: str | None = None, modalities: Sequence[str] | None = None) -> VolumeSet:
    """The volumes of a finalized bsynth store (one split, or all with ``split=None``)."""
    ds = VolumeDataset(path, split=split, modalities=modalities)
    if ds.kind != "volume3d" or len(ds.shape) != 3:
        raise StoreError(f"{path} holds {ds.kind} data of shape {ds.shape}: bsynth eval compares 3D volumes")
    refs = [VolumeRef(volume_id=e.volume_id, modality=e.modality, label=e.label,
                      source=f"{path}/volumes/{e.volume_id}", subject=e.subject) for e in ds.entries]
    index = {e.volume_id: i for i, e in enumerate(ds.entries)}

    def load(ref: VolumeRef) -> np.ndarray:
        return ds.read_image(index[ref.volume_id])

    return VolumeSet(path=path, kind="zarr", refs=refs, shape=tuple(ds.shape), split=split,  # type: ignore[arg-type]
                     loader=load)


# ---------------------------------------------------------------------------------------- NIfTI
def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.name.endswith(".nii.gz") or p.suffix == ".nii"))


def _stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else path.stem


def modality_from_name(name: str) -> str | None:
    """The modality a file name carries as a ``_``-separated token (last token preferred)."""
    tokens = re.split(r"[_.]", name)
    for token in reversed(tokens):
        try:
            return canonical_modality(token)
        except KeyError:
            continue
    return None


def label_from_name(name: str) -> str | None:
    """``class-<name>`` or ``label-<name>`` token of a file name, if any."""
    match = re.search(r"(?:^|_)(?:class|label)-([^_.]+)", name)
    return match.group(1) if match else None


def _canonical_or_error(value: str, where: str) -> str | None:
    if not value.strip():
        return None
    try:
        return canonical_modality(value)
    except KeyError:
        raise InputError(f"{where}: unknown modality {value!r}: use one of {', '.join(MODALITIES)}") from None


def _sidecar_refs(folder: Path, sidecar: Path) -> list[VolumeRef]:
    with open(sidecar, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError(f"sidecar {sidecar} has no rows")
    col = next((c for c in ("path", "file", "filename") if c in rows[0]), None)
    if col is None:
        raise InputError(f"sidecar {sidecar} needs a path (or file/filename) column; it has {list(rows[0])}")
    refs = []
    for i, row in enumerate(rows):
        where = f"{sidecar} row {i + 2}"
        p = (folder / row[col]).resolve()
        if not p.is_file():
            raise InputError(f"{where}: {p} does not exist")
        label = (row.get("label") or row.get("class") or "").strip() or None
        modality = _canonical_or_error(row.get("modality") or "", where) or modality_from_name(p.name)
        refs.append(VolumeRef(volume_id=_stem(p), modality=modality, label=label, source=str(p),
                              subject=(row.get("subject") or None)))
    return refs


def read_nifti(path: str) -> np.ndarray:
    """A 3D NIfTI volume as float32 in RAS voxel order (a trailing singleton 4th axis is dropped)."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"cannot read NIfTI {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path} has shape {data.shape}: bsynth eval compares 3D volumes")
    return data


def _nifti_shape(path: str) -> tuple[int, ...]:
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(path))
    except Exception as exc:
        raise InputError(f"cannot read NIfTI {path}: {exc}") from exc
    shape = tuple(int(s) for s in img.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def open_nifti_set(folder: Path, target_shape: Sequence[int] | None = None, fit: str = "refuse",
                   modalities: Sequence[str] | None = None) -> VolumeSet:
    """The NIfTI volumes of a folder (see the module docstring for names, sidecars and shapes)."""
    if fit not in FIT_CHOICES:
        raise InputError(f"unknown shape policy {fit!r}: use one of {', '.join(FIT_CHOICES)}")
    sidecar = next((folder / n for n in SIDECAR_NAMES if (folder / n).is_file()), None)
    if sidecar is not None:
        refs = _sidecar_refs(folder, sidecar)
    else:
        files = _nifti_files(folder)
        refs = [VolumeRef(volume_id=_stem(p), modality=modality_from_name(_stem(p)), label=label_from_name(_stem(p)),
                          source=str(p)) for p in files]
    if modalities:
        wanted = {canonical_modality(m) for m in modalities}
        refs = [r for r in refs if r.modality in wanted]
    if not refs:
        raise InputError(f"no NIfTI volumes (*.nii, *.nii.gz) found in {folder}"
                         + (f" for modalities {list(modalities)}" if modalities else ""))
    shapes = {r.source: _nifti_shape(r.source) for r in refs}
    bad_dims = [s for s, sh in shapes.items() if len(sh) != 3]
    if bad_dims:
        raise InputError(f"{bad_dims[0]} has shape {shapes[bad_dims[0]]}: bsynth eval compares 3D volumes")
    common = Counter(shapes.values()).most_common(1)[0][0]
    target = tuple(int(s) for s in (target_shape or common))
    odd = {s: sh for s, sh in shapes.items() if sh != target}
    if odd and fit == "refuse":
        example = next(iter(odd.items()))
        raise InputError(
            f"{len(odd)} of {len(refs)} volumes in {folder} are not of shape {target} (e.g. {example[0]}: "
            f"{example[1]}): pass --fit-shape crop-pad to center-crop/zero-pad them (no resampling), or resample "
            "them to the store's grid first (`bsynth prep`)"
        )

    def load(ref: VolumeRef) -> np.ndarray:
        data = read_nifti(ref.source)
        return data if data.shape == target else fit_shape(data, target)

    return VolumeSet(path=folder, kind="nifti", refs=refs, shape=target, loader=load)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- entry
def open_volume_set(path: str | os.PathLike[str], *, split: str | None = None,
                    modalities: Sequence[str] | None = None, target_shape: Sequence[int] | None = None,
                    fit: str = "refuse", rescale: str = "none", max_volumes: int | None = None,
                    seed: int = 0) -> VolumeSet:
    """A Zarr store or a NIfTI folder as a :class:`VolumeSet`; ``max_volumes`` keeps a seeded random
    subset (order preserved) for quick runs."""
    p = Path(path)
    if rescale not in RESCALE_CHOICES:
        raise InputError(f"unknown rescale mode {rescale!r}: use one of {', '.join(RESCALE_CHOICES)}")
    if not p.exists():
        raise InputError(f"{p} does not exist: give a bsynth Zarr store or a folder of NIfTI files")
    if is_store(p):
        vs = open_store_set(p, split=split, modalities=modalities)
        if target_shape is not None and tuple(target_shape) != vs.shape:
            if fit == "refuse":
                raise InputError(f"{p} holds volumes of shape {vs.shape}, the reference set {tuple(target_shape)}: "
                                 "pass --fit-shape crop-pad to center-crop/zero-pad them")
            inner, target = vs.loader, tuple(int(s) for s in target_shape)
            assert inner is not None
            vs = replace(vs, shape=target, loader=lambda ref: fit_shape(inner(ref), target))
    elif p.is_dir():
        vs = open_nifti_set(p, target_shape=target_shape, fit=fit, modalities=modalities)
    else:
        raise InputError(f"{p} is neither a bsynth Zarr store (no zarr.json) nor a folder of NIfTI files")
    vs.rescale = rescale
    if max_volumes is not None and len(vs) > max_volumes:
        keep = np.sort(np.random.default_rng(seed).choice(len(vs), size=max_volumes, replace=False))
        vs = vs.subset([int(i) for i in keep])
    return vs
