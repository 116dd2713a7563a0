"""Prior fidelity of ``bsynth eval clinical`` (seed 002 §3.4, Fig. 5): real vs prior-sampled clinical vectors.

* per feature: the overlap coefficient of the two Gaussian kernel density estimates (∫ min(p, q), 1 = the same
  distribution, 0 = disjoint) on a common grid, and the two KDE curves drawn as ``prior_kde.png``;
* PCA of the z-scored 7-D vectors (the real vectors' components) with both sets projected, drawn as
  ``prior_pca.png``, and the label rate of each set.
Figures are drawn with Pillow (no plotting library is a dependency).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy.stats import gaussian_kde

from ..prep.demo.labels import ROI_NAMES

__all__ = ["kde_overlap", "prior_fidelity", "FEATURES"]

FEATURES: tuple[str, ...] = (*ROI_NAMES, "label")
REAL, PRIOR = (40, 90, 200), (220, 90, 30)


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    if len(values) < 2 or np.std(values) == 0:  # a point mass: one grid bin
        out = np.zeros_like(grid)
        out[int(np.argmin(np.abs(grid - (values[0] if len(values) else 0.0))))] = 1.0 / (grid[1] - grid[0])
        return out
    return gaussian_kde(values)(grid)


def kde_overlap(a: np.ndarray, b: np.ndarray, points: int = 512) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(overlap coefficient, grid, density of a, density of b)."""
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    pad = 0.25 * (hi - lo) if hi > lo else 1.0
    grid = np.linspace(lo - pad, hi + pad, points)
    pa, pb = _kde(a, grid), _kde(b, grid)
    return float(np.trapezoid(np.minimum(pa, pb), grid)), grid, pa, pb


def _plot(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
          series: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]], points: bool = False) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 + 2), title, fill=(0, 0, 0))
    xs = np.concatenate([s[0] for s in series])
    ys = np.concatenate([s[1] for s in series])
    xl, xh = float(xs.min()), float(xs.max()) or 1.0
    yl, yh = float(ys.min()), float(ys.max())
    xh, yh = (xh if xh > xl else xl + 1.0), (yh if yh > yl else yl + 1.0)

    def px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        u = x0 + 6 + (x - xl) / (xh - xl) * (x1 - x0 - 12)
        v = y1 - 6 - (y - yl) / (yh - yl) * (y1 - y0 - 26)
        return list(zip(u.tolist(), v.tolist()))

    for x, y, colour in series:
        if points:
            for u, v in px(x, y):
                draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)
        else:
            draw.line(px(x, y), fill=colour, width=2)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.text((x, y), "real", fill=REAL)
    draw.text((x + 50, y), "prior samples", fill=PRIOR)


def prior_fidelity(real: np.ndarray, prior: np.ndarray, out: Path) -> dict[str, Any]:
    """Overlaps, PCA and the two PNGs for raw vectors real (N, 7) and prior (M, 7)."""
    real, prior = np.asarray(real, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    out.mkdir(parents=True, exist_ok=True)
    w, h = 260, 180
    im = Image.new("RGB", (4 * w, 2 * h + 20), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    overlaps: dict[str, float] = {}
    for j, name in enumerate(FEATURES):
        ov, grid, pa, pb = kde_overlap(real[:, j], prior[:, j])
        overlaps[name] = ov
        r, c = divmod(j, 4)
        _plot(draw, (c * w + 2, r * h + 2, (c + 1) * w - 2, (r + 1) * h - 2), f"{name}  overlap {ov:.2f}",
              [(grid, pa, REAL), (grid, pb, PRIOR)])
    _legend(draw, 3 * w + 10, h + 10)
    im.save(out / "prior_kde.png")

    mean, std = real.mean(0), real.std(0)
    std[std == 0] = 1.0
    zr, zp = (real - mean) / std, (prior - mean) / std
    _, s, vt = np.linalg.svd(zr - zr.mean(0), full_matrices=False)
    pr, pp = (zr - zr.mean(0)) @ vt[:2].T, (zp - zr.mean(0)) @ vt[:2].T
    explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-12)).tolist()
    im = Image.new("RGB", (420, 400), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    _plot(draw, (2, 2, 418, 378), f"PCA of clinical vectors (PC1 {explained[0]:.0%}, PC2 "
                                  f"{explained[1] if len(explained) > 1 else 0:.0%})",
          [(pr[:, 0], pr[:, 1], REAL), (pp[:, 0], pp[:, 1], PRIOR)], points=True)
    _legend(draw, 10, 382)
    im.save(out / "prior_pca.png")
    return {"n_real": int(len(real)), "n_prior": int(len(prior)), "kde_overlap": overlaps,
            "kde_overlap_mean_roi": float(np.mean([overlaps[n] for n in ROI_NAMES])),
            "ad_rate": {"real": float((real[:, 6] > 0.5).mean()), "prior": float((prior[:, 6] > 0.5).mean())},
            "pca_explained": explained, "figures": ["prior_kde.png", "prior_pca.png"]}
