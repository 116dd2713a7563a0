"""Memorization audit: is a generated volume closer to a training volume than real unseen volumes are?

For every query volume (a generated sample, or a real held-out volume for the reference) the nearest
TRAINING volume of the same modality is found twice: by Pearson correlation (over all training
volumes) and by 3D SSIM (MONAI, :mod:`bsynth_hpc.eval.ssim` settings: Gaussian window sigma 1.5,
K1 0.01, K2 0.03, data range 1). 3D SSIM costs ~0.1-0.5 s per pair on 2 CPU cores at the demo's
48x56x40 grid, so by default it is computed against the ``ssim_candidates`` training volumes that
correlate best (0 = all); the setting is recorded with the results.

Rule (:func:`flag_copies`): the reference is the most similar held-out real volume, i.e. the largest
nearest-training similarity over the held-out set (pooled over modalities, each compared within its
modality). A sample is flagged as a likely copy when its nearest-training correlation OR its
nearest-training SSIM exceeds that reference: no real subject the model never saw comes that close
to the training set, so such a sample is closer to one training volume than independent anatomy is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from monai.metrics import SSIMMetric

from .fidelity_metrics import pearson
from .ssim import SsimSettings, ssim_settings

DEFAULT_SSIM_CANDIDATES = 8
SSIM_BATCH = 8


@dataclass(frozen=True)
class Neighbour:
    """The nearest training volume of one query, by correlation and by SSIM."""

    corr: float
    corr_index: int
    ssim: float
    ssim_index: int

    def as_dict(self, ids: Sequence[str]) -> dict:
        return {"nearest_train_corr": self.corr, "nearest_train_by_corr": ids[self.corr_index],
                "nearest_train_ssim": self.ssim, "nearest_train_by_ssim": ids[self.ssim_index]}


def ssim_many(query: np.ndarray, refs: Sequence[np.ndarray], settings: SsimSettings | None = None,
              batch: int = SSIM_BATCH) -> np.ndarray:
    """3D SSIM of ``query`` against each of ``refs`` (batched MONAI ``SSIMMetric``; same settings as
    :func:`bsynth_hpc.eval.ssim.ssim`)."""
    s = settings or ssim_settings(query.shape)
    metric = SSIMMetric(spatial_dims=3, data_range=s.data_range, win_size=s.kernel_size,
                        kernel_sigma=s.kernel_sigma, reduction="none")
    q = torch.as_tensor(np.asarray(query, dtype=np.float32))[None, None]
    out = []
    for start in range(0, len(refs), batch):
        chunk = torch.as_tensor(np.stack([np.asarray(r, dtype=np.float32) for r in refs[start:start + batch]]))[:, None]
        with torch.no_grad():
            out.append(metric(q.expand_as(chunk), chunk).reshape(-1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def nearest_training(query: np.ndarray, train: Sequence[np.ndarray], ssim_candidates: int = DEFAULT_SSIM_CANDIDATES,
                     settings: SsimSettings | None = None) -> Neighbour:
    """Nearest of ``train`` to ``query`` by correlation (all) and by SSIM (top candidates; module docstring)."""
    if not train:
        raise ValueError("no training volumes to compare with")
    corrs = np.array([pearson(query, t) for t in train])
    order = np.argsort(-np.nan_to_num(corrs, nan=-np.inf))
    pick = order if ssim_candidates <= 0 else order[:ssim_candidates]
    ssims = ssim_many(query, [train[i] for i in pick], settings)
    j = int(np.argmax(ssims))
    return Neighbour(corr=float(corrs[order[0]]), corr_index=int(order[0]), ssim=float(ssims[j]),
                     ssim_index=int(pick[j]))


@dataclass(frozen=True)
class CopyRule:
    """Thresholds of :func:`flag_copies` (the most similar held-out real volume)."""

    corr: float
    ssim: float
    n_reference: int

    def as_dict(self) -> dict:
        return {"rule": "flag a sample when its nearest-training correlation > max_corr OR its nearest-training "
                        "SSIM > max_ssim, the largest values reached by real held-out volumes",
                "max_corr": self.corr, "max_ssim": self.ssim, "n_reference": self.n_reference}


def copy_rule(reference: Sequence[Neighbour]) -> CopyRule | None:
    """The rule from the held-out volumes' nearest-training similarities (None without any)."""
    if not reference:
        return None
    return CopyRule(corr=max(n.corr for n in reference), ssim=max(n.ssim for n in reference),
                    n_reference=len(reference))


def flag_copies(samples: Sequence[Neighbour], rule: CopyRule | None) -> list[bool | None]:
    """Per sample: True = likely copy, False = not, None = no held-out reference to judge by."""
    if rule is None:
        return [None] * len(samples)
    return [bool(n.corr > rule.corr or n.ssim > rule.ssim) for n in samples]


def percentile_within(value: float, reference: Sequence[float]) -> float:
    """Fraction of ``reference`` values strictly below ``value`` (where a sample sits among held-out reals)."""
    ref = np.asarray(reference, dtype=np.float64)
    return float((ref < value).mean()) if ref.size else float("nan")


def audit(queries: Sequence[np.ndarray], train: Sequence[np.ndarray], ssim_candidates: int,
          log: Callable[[str], None] | None = None, what: str = "volumes") -> list[Neighbour]:
    """:func:`nearest_training` of every query (one SSIM setting for the whole grid)."""
    if not queries:
        return []
    settings = ssim_settings(queries[0].shape)
    out = []
    for i, q in enumerate(queries):
        out.append(nearest_training(q, train, ssim_candidates, settings))
        if log is not None and (i + 1) % 8 == 0:
            log(f"memorization audit: {i + 1}/{len(queries)} {what}")
    return out
