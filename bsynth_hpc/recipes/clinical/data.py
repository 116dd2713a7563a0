"""The data path of seed 002 (§2.3): T1w volumes that carry the 7-D clinical vector, fitted to the model's
cube, and the vector's normalisation.

* :class:`ClinicalNormalizer`: z-scores of the six ROI ratios (mean / std over the **training split**,
  002 "normalized regional-volume ratios"); the label bit (0 = CN, 1 = AD) passes unchanged. Every stage
  computes it from its own training split and records it in its export sidecar (``clinical_stats``), so
  sampling maps a requested raw vector, or a prior sample, into each network's own units.
* :func:`fit_to_cube`: a store volume (X, Y, Z) scaled isotropically (trilinear; nearest for label maps)
  so its longest side is ``side`` and zero-padded to ``side``^3, the 128^3 of 002 (32^3 for the tiny
  configs) without distorting the anatomy; :func:`cube_affine` is the matching world affine, so samples
  written with it overlay the store's volumes.
* :class:`ClinicalVolumeDataset`: the T1w volumes of one split whose clinical vector is complete
  (the demo-dementia cohort; other volumes are skipped), items as ``VolumeDataset``'s with ``image``
  fitted to the cube and raw ``clinical``; :class:`ClinicalVectorDataset`: the vectors alone (the
  diffusion prior never reads an image).
* :func:`parse_clinical`: ``hippocampus_l=0.0041,ventricle_r=0.012,label=AD`` -> a raw vector.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.dataset import Item, VolumeDataset
from ...errors import ConfigError, StoreError
from ...prep.demo.labels import ROI_NAMES
from ...vocabulary import CLINICAL_DIM, CLINICAL_ROI_FIELDS, CONTROL_LABELS

__all__ = ["ClinicalNormalizer", "ClinicalVolumeDataset", "ClinicalVectorDataset", "fit_to_cube", "cube_affine",
           "parse_clinical", "parse_label", "clinical_row", "CLINICAL_KEYS", "ROI_NAMES", "NUM_ROIS", "LABEL_INDEX", "CLINICAL_MODALITY"]

NUM_ROIS = len(CLINICAL_ROI_FIELDS)
LABEL_INDEX = NUM_ROIS
CLINICAL_MODALITY = "T1w"
"""002 trains on T1-weighted scans only."""


# ---------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class ClinicalNormalizer:
    """z-scores of the six ROI ratios (label bit unchanged); see the module docstring."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != NUM_ROIS or len(self.std) != NUM_ROIS:
            raise ConfigError(f"clinical_stats: mean and std need {NUM_ROIS} values each")
        if not all(np.isfinite(self.mean)) or not all(s > 0 and np.isfinite(s) for s in self.std):
            raise ConfigError(f"clinical_stats: mean must be finite and std > 0 (got {self.mean}, {self.std})")

    @classmethod
    def fit(cls, vectors: np.ndarray, min_std: float = 1e-6) -> "ClinicalNormalizer":
        """Statistics of (N, 7) raw vectors (the training split)."""
        v = np.asarray(vectors, dtype=np.float64)[:, :NUM_ROIS]
        if v.shape[0] < 1:
            raise StoreError("no clinical vectors to normalise: the training split holds no clinical volumes")
        std = v.std(axis=0) if v.shape[0] > 1 else np.zeros(NUM_ROIS)
        return cls(tuple(float(m) for m in v.mean(axis=0)), tuple(float(max(s, min_std)) for s in std))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClinicalNormalizer":
        try:
            return cls(tuple(float(x) for x in data["mean"]), tuple(float(x) for x in data["std"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"clinical_stats {data!r} must hold 'mean' and 'std' lists ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"fields": list(CLINICAL_ROI_FIELDS), "mean": list(self.mean), "std": list(self.std),
                "label": "bit unchanged (0 = CN, 1 = AD)"}

    def _coeffs(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        return mean, std

    def normalize(self, c: torch.Tensor) -> torch.Tensor:
        """Raw (B, 7) -> network units (B, 7)."""
        mean, std = self._coeffs(c)
        return torch.cat([(c[:, :NUM_ROIS] - mean) / std, c[:, NUM_ROIS:]], dim=1)

    def denormalize(self, c: torch.Tensor) -> torch.Tensor:
        """Network units (B, 7) -> raw ratios + label bit (B, 7)."""
        mean, std = self._coeffs(c)
        return torch.cat([c[:, :NUM_ROIS] * std + mean, c[:, NUM_ROIS:]], dim=1)

    def normalize_rois(self, rois: torch.Tensor) -> torch.Tensor:
        """Raw ROI ratios (B, 6) -> z-scores (the regression head's target)."""
        mean, std = self._coeffs(rois)
        return (rois - mean) / std

    def denormalize_rois(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._coeffs(z)
        return z * std + mean


# ---------------------------------------------------------------------------- geometry
def _cube_geometry(shape: Sequence[int], side: int) -> tuple[float, tuple[int, ...], tuple[int, ...]]:
    """(scale, scaled shape, left padding) of fitting ``shape`` into ``side``^3."""
    scale = float(side) / float(max(shape))
    scaled = tuple(max(1, min(side, int(round(s * scale)))) for s in shape)
    pad = tuple((side - s) // 2 for s in scaled)
    return scale, scaled, pad


def fit_to_cube(volume: torch.Tensor, side: int, labels: bool = False) -> torch.Tensor:
    """(C, X, Y, Z) or (B, C, X, Y, Z) -> the same with spatial size ``side``^3 (module docstring)."""
    batched = volume.dim() == 5
    x = volume if batched else volume.unsqueeze(0)
    if x.dim() != 5:
        raise ValueError(f"fit_to_cube: expected (C, X, Y, Z) or (B, C, X, Y, Z), got {tuple(volume.shape)}")
    _, scaled, pad = _cube_geometry(x.shape[2:], side)
    if tuple(x.shape[2:]) != scaled:
        if labels:
            x = F.interpolate(x.float(), size=scaled, mode="nearest").to(volume.dtype)
        else:
            x = F.interpolate(x.float(), size=scaled, mode="trilinear", align_corners=False).to(volume.dtype)
    rest = tuple(side - s - p for s, p in zip(scaled, pad))
    x = F.pad(x, (pad[2], rest[2], pad[1], rest[1], pad[0], rest[0]))
    return x if batched else x[0]


def cube_affine(affine: Any, shape: Sequence[int], side: int) -> np.ndarray:
    """World affine of the cube grid that :func:`fit_to_cube` makes from a volume of ``shape`` on ``affine``.

    Cube voxel i (after the padding p) is scaled voxel i - p, whose centre is input voxel
    (i - p + 0.5) * X / X' - 0.5 along each axis (trilinear, align_corners=False)."""
    _, scaled, pad = _cube_geometry(shape, side)
    a = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    m = np.eye(4)
    for k, (n, s, p) in enumerate(zip(shape, scaled, pad)):
        f = float(n) / float(s)
        m[k, k] = f
        m[k, 3] = (0.5 - p) * f - 0.5
    return a @ m


# ---------------------------------------------------------------------------- datasets
def _clinical_indices(base: VolumeDataset) -> list[int]:
    complete = base._clinical_mask.min(axis=1) > 0.5  # every ROI ratio and the label recorded
    return [i for i in range(len(base)) if complete[i]]


class ClinicalVolumeDataset(Dataset[Item]):
    """T1w volumes with a complete clinical vector, fitted to ``side``^3 (module docstring)."""

    def __init__(self, store: str | os.PathLike[str], split: str | None, side: int,
                 transform: Any = None) -> None:
        self.base = VolumeDataset(store, split=split, modalities=[CLINICAL_MODALITY])
        self.indices = _clinical_indices(self.base)
        if not self.indices:
            raise StoreError(f"{store}: no {CLINICAL_MODALITY} volume of split {split!r} carries a complete clinical "
                             "vector (six ROI ratios + an AD/CN label); seed 002 trains on such a cohort (e.g. "
                             "`bsynth demo-cohort --datasets demo-dementia`)")
        self.side = int(side)
        self.transform = transform

    @property
    def vectors(self) -> np.ndarray:
        """(N, 7) raw clinical vectors (no image is read)."""
        return self.base._clinical[self.indices].copy()

    @property
    def labels(self) -> np.ndarray:
        """(N,) AD/CN bits as ints."""
        return (self.vectors[:, LABEL_INDEX] > 0.5).astype(np.int64)

    @property
    def store_shape(self) -> tuple[int, ...]:
        return self.base.shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        item = self.base[self.indices[index]]
        item["image"] = fit_to_cube(item["image"], self.side)
        item["index"] = index
        return self.transform(item) if self.transform is not None else item


class ClinicalVectorDataset(Dataset[Item]):
    """The raw clinical vectors of one split's clinical T1w volumes: items ``{"clinical", "index"}``."""

    def __init__(self, store: str | os.PathLike[str], split: str | None) -> None:
        base = VolumeDataset(store, split=split, modalities=[CLINICAL_MODALITY])
        idx = _clinical_indices(base)
        if not idx:
            raise StoreError(f"{store}: no clinical vectors in split {split!r} (see ClinicalVolumeDataset)")
        self.vectors = base._clinical[idx].copy()

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, index: int) -> Item:
        return {"clinical": torch.from_numpy(self.vectors[index].copy()), "index": index}


# ---------------------------------------------------------------------------- manual conditions
_NAME_INDEX: dict[str, int] = {**{n: i for i, n in enumerate(ROI_NAMES)},
                               **{n: i for i, n in enumerate(CLINICAL_ROI_FIELDS)}}
CLINICAL_KEYS: frozenset[str] = frozenset({*_NAME_INDEX, "label", "diagnosis", "dx"})
"""The names :func:`parse_clinical` reads (a conditions CSV's other columns are ignored)."""


def parse_label(text: str) -> float:
    """AD/CN text (or 0/1) -> the label bit."""
    t = str(text).strip().lower()
    if t in ("0", "0.0") or t in CONTROL_LABELS:
        return 0.0
    if t in ("1", "1.0", "ad", "dementia", "alzheimer", "alzheimers"):
        return 1.0
    raise ConfigError(f"clinical label {text!r}: use CN (or 0) or AD (or 1)")


def parse_clinical(text: str | Mapping[str, Any], defaults: Sequence[float]) -> np.ndarray:
    """A raw 7-vector from ``name=value`` pairs (``hippocampus_l=0.0041,label=AD``; the long names
    ``roi_hippocampus_left`` work too); unnamed ratios take ``defaults`` (the training means), an unnamed
    label takes ``defaults[6]``."""
    pairs = text.items() if isinstance(text, Mapping) else [
        p.split("=", 1) if "=" in p else (p, None) for p in str(text).split(",") if p.strip()]
    vec = np.asarray(list(defaults), dtype=np.float64).copy()
    if vec.shape != (CLINICAL_DIM,):
        raise ValueError(f"parse_clinical: defaults must have {CLINICAL_DIM} values")
    for key, value in pairs:
        key = str(key).strip()
        if value is None or str(value).strip() == "":
            raise ConfigError(f"--clinical {key!r} has no value: write {key}=VALUE")
        if key.lower() in ("label", "diagnosis", "dx"):
            vec[LABEL_INDEX] = parse_label(str(value))
            continue
        if key not in _NAME_INDEX:
            raise ConfigError(f"--clinical key {key!r} is unknown: use label and {', '.join(ROI_NAMES)}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--clinical {key}={value!r} is not a number") from None
        if not np.isfinite(number) or number < 0:
            raise ConfigError(f"--clinical {key}={value!r} must be a finite ratio >= 0")
        vec[_NAME_INDEX[key]] = number
    return vec.astype(np.float32)


def clinical_row(vec: Sequence[float]) -> dict[str, Any]:
    """CSV columns of one raw vector: the six short ROI names and ``label`` (CN/AD)."""
    v = list(map(float, vec))
    row: dict[str, Any] = {name: f"{v[i]:.6g}" for i, name in enumerate(ROI_NAMES)}
    row["label"] = "AD" if v[LABEL_INDEX] > 0.5 else "CN"
    return row
