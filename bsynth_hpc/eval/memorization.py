"""Memorization audit: is a generated volume closer to a training volume than real unseen volumes are?

For every query volume (a generated sample, or a real held-out volume for the reference) the nearest
TRAINING volume of the same modality is found twice: by Pearson correlation (over all training
volumes) and by 3D SSIM (MONAI, :mod:`bsynth_hpc.eval.ssim` settings: Gaussian window sigma 1.5,
K1 0.01, K2 0.03, data range 1). 3D SSIM costs ~0.1-0.5 s per pair on 2 CPU cores at the demo's
48x56x40 grid, so by default it is computed against the ``ssim_candidates`` training volumes that
correlate best (0 = all); the setting is recorded with the results.

Closeness alone confounds copying with averaging: a sample near the population mean (what a small model
trained briefly tends to draw) is close to every training volume, most of all to the most typical one,
without reproducing anybody. So each query also gets its **subject-specific** similarity: the largest
correlation of its deviation from the training mean of its modality with a training volume's deviation,
``max_j r(q - mean, t_j - mean)``: ~1 for a copy of t_j, ~0 for an average brain.

Rule (:func:`flag_copies`): the reference is the most similar held-out real volume, i.e. the largest
value of each measure over the held-out set (pooled over modalities, each compared within its
modality). A sample is flagged as a likely copy when it is closer to the training set than any real
unseen subject (its nearest-training correlation OR SSIM exceeds that reference) AND that closeness is
subject-specific (its residual similarity exceeds the held-out reference too). Samples meeting only the
first part are counted separately (``closer_than_heldout``) and reported, not flagged.
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
    residual_corr: float | None = None
    residual_index: int | None = None

    def as_dict(self, ids: Sequence[str]) -> dict:
        out = {"nearest_train_corr": self.corr, "nearest_train_by_corr": ids[self.corr_index],
               "nearest_train_ssim": self.ssim, "nearest_train_by_ssim": ids[self.ssim_index]}
        if self.residual_corr is not None and self.residual_index is not None:
            out.update({"nearest_train_residual_corr": self.residual_corr,
                        "nearest_train_by_residual": ids[self.residual_index]})
        return out


def ssim_many(query: np.ndarray, refs: Sequence[np.ndarray], settings: SsimSettings | None = None,
              batch: int = SSIM_BATCH) -> np.ndarray:
    """SSIM (2D or 3D) of ``query`` against each of ``refs`` (batched MONAI ``SSIMMetric``; same settings as
    :func:`bsynth_hpc.eval.ssim.ssim`)."""
    s = settings or ssim_settings(query.shape)
    metric = SSIMMetric(spatial_dims=np.ndim(query), data_range=s.data_range, win_size=s.kernel_size,
                        kernel_sigma=s.kernel_sigma, reduction="none")
    q = torch.as_tensor(np.asarray(query, dtype=np.float32))[None, None]
    out = []
    for start in range(0, len(refs), batch):
        chunk = torch.as_tensor(np.stack([np.asarray(r, dtype=np.float32) for r in refs[start:start + batch]]))[:, None]
        with torch.no_grad():
            out.append(metric(q.expand_as(chunk), chunk).reshape(-1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def nearest_training(query: np.ndarray, train: Sequence[np.ndarray], ssim_candidates: int = DEFAULT_SSIM_CANDIDATES,
                     settings: SsimSettings | None = None, mean: np.ndarray | None = None) -> Neighbour:
    """Nearest of ``train`` to ``query`` by correlation (all), by SSIM (top candidates) and, given the training
    ``mean``, by subject-specific (residual) correlation (module docstring)."""
    if not train:
        raise ValueError("no training volumes to compare with")
    corrs = np.array([pearson(query, t) for t in train])
    order = np.argsort(-np.nan_to_num(corrs, nan=-np.inf))
    pick = order if ssim_candidates <= 0 else order[:ssim_candidates]
    ssims = ssim_many(query, [train[i] for i in pick], settings)
    j = int(np.argmax(ssims))
    residual, r_index = None, None
    if mean is not None:
        dq = np.asarray(query, dtype=np.float64) - mean
        res = np.nan_to_num(np.array([pearson(dq, np.asarray(t, dtype=np.float64) - mean) for t in train]), nan=-1.0)
        r_index = int(np.argmax(res))
        residual = float(res[r_index])
    return Neighbour(corr=float(corrs[order[0]]), corr_index=int(order[0]), ssim=float(ssims[j]),
                     ssim_index=int(pick[j]), residual_corr=residual, residual_index=r_index)


@dataclass(frozen=True)
class CopyRule:
    """Thresholds of :func:`flag_copies` (the most similar held-out real volume)."""

    corr: float
    ssim: float
    n_reference: int
    residual: float | None = None

    def as_dict(self) -> dict:
        text = ("flag a sample when its nearest-training correlation > max_corr OR its nearest-training SSIM > "
                "max_ssim")
        if self.residual is not None:
            text += (", AND its subject-specific similarity (correlation of deviations from the training mean) "
                     "> max_residual")
        return {"rule": text + ", the largest values reached by real held-out volumes",
                "max_corr": self.corr, "max_ssim": self.ssim, "max_residual": self.residual,
                "n_reference": self.n_reference}


def copy_rule(reference: Sequence[Neighbour]) -> CopyRule | None:
    """The rule from the held-out volumes' nearest-training similarities (None without any)."""
    if not reference:
        return None
    residuals = [n.residual_corr for n in reference if n.residual_corr is not None]
    return CopyRule(corr=max(n.corr for n in reference), ssim=max(n.ssim for n in reference),
                    n_reference=len(reference), residual=max(residuals) if residuals else None)


def closer_than_heldout(samples: Sequence[Neighbour], rule: CopyRule | None) -> list[bool | None]:
    """Per sample: nearer to a training volume (correlation or SSIM) than any held-out real volume is."""
    if rule is None:
        return [None] * len(samples)
    return [bool(n.corr > rule.corr or n.ssim > rule.ssim) for n in samples]


def flag_copies(samples: Sequence[Neighbour], rule: CopyRule | None) -> list[bool | None]:
    """Per sample: True = likely copy, False = not, None = no held-out reference to judge by."""
    close = closer_than_heldout(samples, rule)
    if rule is None or rule.residual is None:
        return close
    return [bool(c and n.residual_corr is not None and n.residual_corr > rule.residual)
            for c, n in zip(close, samples)]


def percentile_within(value: float, reference: Sequence[float]) -> float:
    """Fraction of ``reference`` values strictly below ``value`` (where a sample sits among held-out reals)."""
    ref = np.asarray(reference, dtype=np.float64)
    return float((ref < value).mean()) if ref.size else float("nan")


def audit(queries: Sequence[np.ndarray], train: Sequence[np.ndarray], ssim_candidates: int,
          log: Callable[[str], None] | None = None, what: str = "volumes",
          mean: np.ndarray | None = None) -> list[Neighbour]:
    """:func:`nearest_training` of every query (one SSIM setting for the whole grid)."""
    if not queries:
        return []
    settings = ssim_settings(queries[0].shape)
    out = []
    for i, q in enumerate(queries):
        out.append(nearest_training(q, train, ssim_candidates, settings, mean))
        if log is not None and (i + 1) % 8 == 0:
            log(f"memorization audit: {i + 1}/{len(queries)} {what}")
    return out
