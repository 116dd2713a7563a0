"""Weight-free per-volume fidelity measures: correlation, brain-mask Dice, contrast identity and
tissue-contrast ordering (``bsynth eval fidelity``, issue 14 Deliver 3).

Everything here is plain numpy/scipy on volumes in the preprocessed [0, 1] space of one store grid:

* :func:`pearson` - Pearson correlation over all voxels (the shape of the whole head counts).
* :func:`brain_mask` - Otsu's threshold of the volume's own histogram (256 bins on [0, 1]), holes
  filled. Otsu is used rather than a fixed cut because it adapts to each volume's intensity scale
  (a generated volume's background level is not known in advance); filling holes keeps dark
  interior structures (ventricles in T1w, CSF in FLAIR) inside the mask.
* :func:`dice` - 2|A and B| / (|A| + |B|).
* :func:`tissue_masks` - CSF / GM / WM masks on the store grid from the real training mean of the
  reference contrast (T1w, else T1Gd): three-class 1D k-means of that mean inside its brain mask,
  CSF = darkest, WM = brightest. The demo cohort's subjects are deformed, resampled copies of one
  template and the store does not record the deformations, so the template's own maps would not
  line up with the store grid; the training mean does, by construction. To keep partial-volume
  voxels at the brain/background edge (dark in every contrast) out of the CSF class, tissue masks
  are taken inside the brain mask eroded by :data:`EDGE_MM` millimetres.
* :func:`tissue_order_check` - the textbook contrast order inside those masks: WM > GM > CSF in
  T1w/T1Gd, CSF brightest in T2w, CSF darker than GM and WM in FLAIR (suppressed fluid).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

OTSU_BINS = 256
EDGE_MM = 8.0
"""Erosion of the brain mask before tissue clustering: two voxels at the demo's 4 mm spacing, enough
to drop the brain/background partial-volume rim that would otherwise join the darkest (CSF) class."""
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
FAMILY: dict[str, str] = {"T1w": "T1", "T1Gd": "T1", "T2w": "T2w", "FLAIR": "FLAIR"}
"""Contrast families: T1w and T1Gd (T1w after gadolinium) count as one for contrast identification."""
REFERENCE_CONTRASTS: tuple[str, ...] = ("T1w", "T1Gd")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two volumes over all voxels (NaN when either is constant)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"cannot correlate volumes of {np.shape(a)} and {np.shape(b)} voxels")
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


BOOTSTRAP_RESAMPLES = 2000


def median_ci(values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (seeded, so a report is reproducible).

    Fidelity medians are taken over 16-200 samples; two models' medians that differ by less than this
    interval's width are not told apart by the measure."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise InputError("no values to bootstrap a median from")
    draws = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    medians = np.median(v[draws], axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(medians, tail)), float(np.quantile(medians, 1.0 - tail))


def otsu_threshold(volume: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of the intensities in [0, 1]: the cut maximising between-class variance."""
    hist, edges = np.histogram(np.clip(np.asarray(volume, dtype=np.float64), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Foreground above Otsu's threshold with interior holes filled (see the module docstring)."""
    return ndimage.binary_fill_holes(np.asarray(volume) > otsu_threshold(volume))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Sorted cluster centres of 1D k-means (Lloyd's, started at evenly spaced quantiles: deterministic)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    centres = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        labels = np.argmin(np.abs(v[:, None] - centres[None, :]), axis=1)
        new = np.array([v[labels == j].mean() if np.any(labels == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def tissue_masks(reference_mean: np.ndarray, spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """CSF/GM/WM masks from a T1-family real mean (see the module docstring)."""
    mask = brain_mask(reference_mean)
    radius = [max(0, int(round(EDGE_MM / float(s)))) for s in spacing]
    inner = mask
    if max(radius) > 0:
        structure = np.ones([2 * r + 1 for r in radius], dtype=bool)
        inner = ndimage.binary_erosion(mask, structure=structure)
    if inner.sum() < 3:
        raise InputError(f"the brain mask of the reference mean has {int(inner.sum())} interior voxels: "
                         "too few to derive tissue masks")
    values = np.asarray(reference_mean)[inner]
    centres = kmeans_1d(values, 3)
    labels = np.argmin(np.abs(np.asarray(reference_mean)[..., None] - centres), axis=-1)
    return {name: inner & (labels == j) for j, name in enumerate(TISSUES)}


def tissue_means(volume: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean intensity of ``volume`` inside each tissue mask."""
    v = np.asarray(volume)
    return {name: float(v[m].mean()) if m.any() else float("nan") for name, m in masks.items()}


def tissue_order_check(modality: str, means: Mapping[str, float]) -> tuple[str, bool]:
    """(rule, passed) of the expected tissue-contrast order of ``modality`` (module docstring)."""
    csf, gm, wm = means["CSF"], means["GM"], means["WM"]
    if FAMILY.get(modality) == "T1":
        return "WM > GM > CSF", bool(wm > gm > csf)
    if modality == "T2w":
        return "CSF > GM and CSF > WM", bool(csf > gm and csf > wm)
    if modality == "FLAIR":
        return "CSF < GM and CSF < WM", bool(csf < gm and csf < wm)
    raise InputError(f"no tissue-contrast rule for modality {modality!r}")


def identify_contrast(volume: np.ndarray, means: Mapping[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    """The modality whose real mean ``volume`` correlates with most, and every correlation."""
    corrs = {m: pearson(volume, ref) for m, ref in means.items()}
    best = max(corrs, key=lambda m: -np.inf if np.isnan(corrs[m]) else corrs[m])
    return best, corrs


def same_family(a: str | None, b: str | None) -> bool:
    """Whether two modalities are one contrast family (T1w and T1Gd are)."""
    return a is not None and b is not None and FAMILY.get(a, a) == FAMILY.get(b, b)
