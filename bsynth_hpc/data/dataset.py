"""Training-time access to a finalized volume store: one item per volume.

Design for many ranks x many DataLoader workers:

* The index (ids, modality, label, subject, ...) comes from ``table.csv`` in ``__init__``; the
  metadata/clinical conditioning of every indexed volume is encoded once into small arrays
  (N x 25 and N x 7 floats), so ``__getitem__`` only reads the one image it returns.
* No Zarr handle is held by the dataset: each ``__getitem__`` opens the volume's array,
  reads it and drops it. Pickling the dataset to workers therefore carries only plain
  Python/numpy state, and nothing is shared between processes. The store is never loaded
  whole into memory.

Item (a dict; default_collate batches it):

* ``image``: tensor (1, X, Y, Z) for "volume3d" stores, (1, H, W) for "slice2d" stores
* ``modality_id``: int, 0..3 (T1w, T2w, T1Gd, FLAIR)
* ``metadata``: float32[25] encoded metadata; ``metadata_mask``: float32[25], 1 where recorded
  (see :mod:`.metadata`)
* ``label``: int id into ``dataset.label_names``, the store-wide *sorted* label vocabulary saved
  by finalize_store (so ids agree across splits and ranks); -1 when the volume has no label.
  ``label_name``: the label text, "" when unlabelled
* ``clinical``: float32[7], six ROI ratios + label bit (0 = control label such as CN, 1 = any
  other label); ``clinical_mask``: float32[7], 1 where available
* ``subject``, ``session`` ("" when missing), ``dataset``, ``volume_id``, ``split``: str
* ``index``: int, the item's position in this dataset (the latent-cache index when encoding)

``transform`` receives and returns the whole item dict (MONAI dictionary transforms such as
``RandFlipd(keys="image")`` fit directly).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import zarr
import zarr.errors
from torch.utils.data import Dataset

from ..constants import MODALITIES, MODALITY_IDS, canonical_modality
from ..errors import ConfigError, StoreError
from .finalize import VolumeEntry, load_index
from .metadata import CLINICAL_DIM, encode_clinical, encode_metadata_batch
from .splits import check_split

Item = dict[str, Any]


def resolve_modalities(modalities: Sequence[str | int] | None) -> tuple[int, ...] | None:
    """Modality names (any accepted spelling) or ids -> sorted ids; None stays None (all)."""
    if modalities is None:
        return None
    ids = set()
    for m in modalities:
        if isinstance(m, (int, np.integer)) and not isinstance(m, bool):
            if not 0 <= int(m) < len(MODALITIES):
                raise ConfigError(f"modality id {m} is out of range: use 0..{len(MODALITIES) - 1} ({MODALITIES})")
            ids.add(int(m))
            continue
        try:
            ids.add(MODALITY_IDS[canonical_modality(str(m))])
        except KeyError:
            raise ConfigError(f"unknown modality {m!r}: use one of {', '.join(MODALITIES)}") from None
    return tuple(sorted(ids))


class VolumeDataset(Dataset[Item]):
    """Volumes of one split (or all, ``split=None``) of a finalized store; see the module docstring."""

    def __init__(self, store_path: str | os.PathLike[str], split: str | None = "train",
                 modalities: Sequence[str | int] | None = None,
                 transform: Callable[[Item], Item] | None = None, dtype: torch.dtype = torch.float32):
        self.split = check_split(split)
        self.path = Path(store_path)
        self.transform = transform
        self.dtype = dtype
        info, entries = load_index(self.path)
        self.kind: str = str(info["kind"])
        self.shape: tuple[int, ...] = tuple(int(s) for s in info["shape"])
        self.metadata_stats: Mapping[str, Mapping[str, float]] = info["metadata_stats"]
        assignment: Mapping[str, str] = info["splits"]["assignment"]
        self.label_names: tuple[str, ...] = tuple(info.get("labels") or ())
        self.label_to_id: dict[str, int] = {name: i for i, name in enumerate(self.label_names)}
        unknown = sorted({e.label for e in entries if e.label is not None} - set(self.label_to_id))
        if unknown:
            raise StoreError(f"labels {unknown} in {self.path} are not in the store's label vocabulary: "
                             "re-run finalize_store")

        wanted = resolve_modalities(modalities)
        self.entries: list[VolumeEntry] = [
            e for e in entries
            if (split is None or assignment[e.key] == split) and (wanted is None or e.modality_id in wanted)
        ]
        if not self.entries:
            counts = info["splits"].get("counts", {})
            raise StoreError(
                f"no volumes in {self.path} match split={split!r}, modalities={modalities!r} "
                f"(volumes per split and modality: {counts}); choose another split/modality or add data"
            )
        self.splits: list[str] = [assignment[e.key] for e in self.entries]
        sources = [f"{self.path}/volumes/{e.volume_id}" for e in self.entries]
        self._meta_values, self._meta_mask = encode_metadata_batch(
            [e.metadata for e in self.entries], self.metadata_stats, sources)
        self._clinical = np.zeros((len(self.entries), CLINICAL_DIM), dtype=np.float32)
        self._clinical_mask = np.zeros_like(self._clinical)
        for i, (e, src) in enumerate(zip(self.entries, sources)):
            self._clinical[i], self._clinical_mask[i] = encode_clinical(e.clinical, e.label, src)

    # ------------------------------------------------------------------ sampler views
    @property
    def modality_ids(self) -> list[int]:
        """Modality id of every item (for the modality-balanced sampler)."""
        return [e.modality_id for e in self.entries]

    @property
    def label_ids(self) -> list[int]:
        """Label id of every item, -1 when unlabelled (for the class-balanced sampler)."""
        return [self.label_to_id[e.label] if e.label is not None else -1 for e in self.entries]

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.entries)

    def read_image(self, index: int) -> np.ndarray:
        """The stored array of one item (opened, read and closed here, so safe in any worker)."""
        entry = self.entries[index]
        array_path = self.path / "volumes" / entry.volume_id
        try:
            array = zarr.open_array(str(array_path), mode="r")
        except (FileNotFoundError, zarr.errors.BaseZarrError) as exc:
            raise StoreError(f"cannot open volume {array_path} ({exc}): re-run finalize_store or `bsynth prep`") from exc
        data = np.asarray(array[...])
        if data.shape != self.shape:
            raise StoreError(f"volume {array_path} has shape {data.shape}, the store declares {self.shape}")
        return data

    def __getitem__(self, index: int) -> Item:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} volumes")
        index = index % len(self)
        e = self.entries[index]
        image = torch.from_numpy(np.ascontiguousarray(self.read_image(index))).to(self.dtype).unsqueeze(0)
        label_id = self.label_to_id[e.label] if e.label is not None else -1
        item: Item = {
            "image": image,
            "modality_id": e.modality_id,
            "metadata": torch.from_numpy(self._meta_values[index].copy()),
            "metadata_mask": torch.from_numpy(self._meta_mask[index].astype(np.float32)),
            "label": label_id,
            "label_name": e.label or "",
            "clinical": torch.from_numpy(self._clinical[index].copy()),
            "clinical_mask": torch.from_numpy(self._clinical_mask[index].copy()),
            "subject": e.subject,
            "session": e.session or "",
            "dataset": e.dataset,
            "volume_id": e.volume_id,
            "split": self.splits[index],
            "index": index,
        }
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return (f"VolumeDataset({str(self.path)!r}, split={self.split!r}, n={len(self)}, kind={self.kind!r}, "
                f"shape={self.shape}, labels={list(self.label_names)})")
