"""Spread of the samples against real anatomy: are the samples as varied as real scans, or mean-like?

Correlation and Dice with the real mean (:mod:`.fidelity`) reward closeness to the average brain. A model that
returns the average brain every time scores r = 1 and passes. The copy audit catches the opposite failure, a
sample too close to one training scan. Neither catches a model whose samples sit nearer the mean than real
anatomy does. The spread measures do, with no network:

* ``deviation_rms`` (per volume): RMS of (volume - the real mean it is scored against) inside that mean's
  brain mask. For slices this is the per-level mean of :meth:`RealReference.own_mean`.
* ``pairwise_rms``: RMS difference of two volumes of the same modality (and, for slices, the same level)
  inside that reference mask. It is taken over all such pairs among the samples, the held-out real volumes and
  the training volumes. The pairwise ratio is taken against the training pairs: they are real anatomy with no
  bias (a pair distance does not involve the mean), and there are many more of them (a demo holds 8 held-out
  volumes, 28 pairs, or a few held-out slices per level), so the reference median is far less noisy. The
  deviation ratio is taken against the held-out volumes, since the training volumes helped make the mean.

For i.i.d. draws with covariance S inside the mask, E|x - mu|^2 = tr S and E|x_i - x_j|^2 = 2 tr S. So samples
from the real distribution give both ratios (median over the samples / median over the held-out real volumes)
near 1. Under 1, the samples vary less than real anatomy. A mean-collapsed model gives a deviation ratio under 1
and a pairwise ratio under 1. A model that always draws the same atypical scan gives a deviation ratio near 1
and a pairwise ratio near 0. Over 1, the samples vary more than real scans (noise, artefacts), which the
correlation with the mean then shows too.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["deviation_rms", "pairwise_rms", "spread_by_modality", "spread_markdown", "spread_headline"]

MAX_GROUP_VOLUMES = 64
"""Pairs are taken among at most this many volumes of a group (the first ones: 2016 pairs), so a large store's
training split is not stacked whole in float64 (1000 volumes at 1 mm would be 16 GB)."""

MaskFor = Callable[[str, "int | None"], np.ndarray]
"""(modality, matched level or None) -> the boolean reference mask the spread is measured inside."""


def deviation_rms(volume: np.ndarray, mean: np.ndarray, mask: np.ndarray) -> float:
    """RMS of ``volume - mean`` over the voxels of ``mask`` (NaN for an empty mask)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float("nan")
    d = np.asarray(volume, dtype=np.float64)[m] - np.asarray(mean, dtype=np.float64)[m]
    return float(np.sqrt(np.mean(d * d)))


def pairwise_rms(volumes: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """RMS difference inside ``mask`` of every unordered pair of ``volumes`` (n (n - 1) / 2 values, from the
    Gram matrix: |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in float64)."""
    m = np.asarray(mask, dtype=bool)
    if len(volumes) < 2 or not m.any():
        return np.zeros(0)
    x = np.stack([np.asarray(v, dtype=np.float64)[m] for v in volumes])
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    i, j = np.triu_indices(len(volumes), k=1)
    return np.sqrt(np.clip(d2[i, j], 0.0, None) / m.sum())


def _pairs(rows: Sequence[Mapping[str, Any]], volumes: Sequence[np.ndarray], modality: str,
           mask_for: MaskFor) -> np.ndarray:
    """All within-group pair distances of one modality's rows; groups are matched levels (slices), else one."""
    groups: dict[int | None, list[np.ndarray]] = defaultdict(list)
    for row, v in zip(rows, volumes):
        if row["modality"] == modality:
            groups[row.get("matched_level")].append(v)
    ordered = sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    found = [pairwise_rms(vs[:MAX_GROUP_VOLUMES], mask_for(modality, level)) for level, vs in ordered]
    return np.concatenate(found) if found else np.zeros(0)


def _side(deviations: Sequence[float], pairs: np.ndarray) -> dict[str, Any]:
    dev = np.array([d for d in deviations if np.isfinite(d)], dtype=np.float64)
    return {"n": int(dev.size), "deviation_rms_median": float(np.median(dev)) if dev.size else None,
            "n_pairs": int(pairs.size), "pairwise_rms_median": float(np.median(pairs)) if pairs.size else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a / b)


def spread_by_modality(sample_rows: Sequence[Mapping[str, Any]], sample_volumes: Sequence[np.ndarray],
                       held_rows: Sequence[Mapping[str, Any]], held_volumes: Sequence[np.ndarray],
                       train_rows: Sequence[Mapping[str, Any]], train_volumes: Sequence[np.ndarray],
                       mask_for: MaskFor) -> dict[str, Any]:
    """Per modality of the samples: the median deviation from the real mean (samples, held-out real volumes)
    and the median pairwise distance (samples, held-out, training volumes), and the ratios (module docstring).
    Sample and held-out rows carry ``deviation_rms`` (see :func:`bsynth_hpc.eval.fidelity.volume_row`);
    every row has ``modality`` and, for slices, ``matched_level`` (training slices: their own level)."""
    out: dict[str, Any] = {}
    for modality in sorted({r["modality"] for r in sample_rows}):
        fake = _side([r["deviation_rms"] for r in sample_rows if r["modality"] == modality],
                     _pairs(sample_rows, sample_volumes, modality, mask_for))
        real = _side([r["deviation_rms"] for r in held_rows if r["modality"] == modality],
                     _pairs(held_rows, held_volumes, modality, mask_for))
        train = _pairs(train_rows, train_volumes, modality, mask_for)
        train_side = {"n_pairs": int(train.size), "pairwise_rms_median": float(np.median(train)) if train.size
                      else None}
        out[modality] = {"samples": fake, "real_heldout": real, "real_train": train_side,
                         "deviation_ratio": _ratio(fake["deviation_rms_median"], real["deviation_rms_median"]),
                         "pairwise_ratio": _ratio(fake["pairwise_rms_median"], train_side["pairwise_rms_median"])}
    return out


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def spread_markdown(spread: Mapping[str, Any]) -> list[str]:
    """The fidelity.md section: one row per modality."""
    if not spread:
        return []
    lines = ["", "## Spread against real anatomy", "",
             "RMS distance from the real mean the sample is scored against, and between two samples of the same "
             "modality (and level), inside the mean's brain mask (medians). Ratios: deviation, samples / real "
             "held-out; between volumes, samples / real training pairs. Real variation gives about 1, mean-like "
             "or collapsed samples less, noisy ones more.", "",
             "| modality | deviation from mean: samples | held-out | ratio | between volumes: samples (pairs) | "
             "held-out (pairs) | training (pairs) | ratio |", "|---|---|---|---|---|---|---|---|"]
    for modality, s in spread.items():
        f, r, t = s["samples"], s["real_heldout"], s["real_train"]
        lines.append(f"| {modality} | {_f(f['deviation_rms_median'])} | {_f(r['deviation_rms_median'])} | "
                     f"{_f(s['deviation_ratio'], '.2f')} | {_f(f['pairwise_rms_median'])} ({f['n_pairs']}) | "
                     f"{_f(r['pairwise_rms_median'])} ({r['n_pairs']}) | {_f(t['pairwise_rms_median'])} "
                     f"({t['n_pairs']}) | {_f(s['pairwise_ratio'], '.2f')} |")
    return lines


def spread_headline(spread: Mapping[str, Any] | None) -> str:
    """`` | spread vs real deviation 0.42x / pairwise 0.40x`` per modality, for the one-line headline."""
    return "".join(f" | {m} spread vs real: deviation {_f(s['deviation_ratio'], '.2f')}x, pairwise "
                   f"{_f(s['pairwise_ratio'], '.2f')}x" for m, s in (spread or {}).items()
                   if s["deviation_ratio"] is not None or s["pairwise_ratio"] is not None)
