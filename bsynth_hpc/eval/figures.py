"""PNG figures a person reads next to the tables (rendered with Pillow; matplotlib is not needed).

* :func:`recon_figure` - tri-planar real vs reconstruction vs absolute-error map (seed 003
  Figure 2; seed 001 §III.C "reconstruction quality with per-pixel error heatmaps").
* :func:`sample_grid_figure` - generated samples per modality or class next to real ones (seed 003
  Figures 3-6; seed 001 "sample comparison grids").
* :func:`trajectory_figure` - a denoising trajectory strip (seed 001: "DDIM denoising trajectories
  ... across timesteps t in {1000, 800, ..., 0}") when the sampler saved intermediates.

Slices are shown in the neurological convention for RAS volumes: anterior (axial) or superior
(coronal, sagittal) at the top, subject right on the image right. A red banner marks every
figure made with random-initialised feature networks. 2D samples (slices of a slice store, image
order) are shown as they are: one "slice" row in :func:`recon_figure`, the slice itself elsewhere.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..slicing import middle_slice

PANEL = 176
PAD = 6
HEADER = 26
LABEL_W = 86
BANNER = 24
RANDOM_BANNER = "RANDOM-INIT FEATURE NETWORKS (--allow-random-features): smoke test, not an evaluation"


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def display(slice2d: np.ndarray) -> np.ndarray:
    """A 2D slice of a RAS volume in display orientation (second axis up, first axis to the right)."""
    return np.asarray(slice2d).T[::-1]


def panel(image: np.ndarray, plane: str = "axial") -> np.ndarray:
    """The 2D panel of a volume (its middle ``plane`` slice in display orientation) or of a 2D slice (itself)."""
    return display(middle_slice(image, plane)) if np.ndim(image) == 3 else np.asarray(image)


def _gray(img: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> Image.Image:
    x = np.clip((np.asarray(img, dtype=np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return Image.fromarray((x * 255 + 0.5).astype(np.uint8), mode="L").convert("RGB")


def _hot(img: np.ndarray, hi: float) -> Image.Image:
    """Black -> red -> yellow -> white colour map of values in [0, hi]."""
    x = np.clip(np.asarray(img, dtype=np.float32) / max(hi, 1e-12), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), mode="RGB")


def _fit(im: Image.Image, size: int = PANEL) -> Image.Image:
    """Scale the longer side to ``size`` (aspect kept) and center on a black square."""
    w, h = im.size
    s = size / max(w, h)
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(im, ((size - im.size[0]) // 2, (size - im.size[1]) // 2))
    return canvas


class _Grid:
    """A titled grid of square panels with column headers and row labels."""

    def __init__(self, title: str, n_rows: int, n_cols: int, col_headers: Sequence[str], random_features: bool,
                 gap_after: int | None = None):
        self.gap = 3 * PAD if gap_after is not None else 0
        self.gap_after = gap_after
        self.top = BANNER + (BANNER if random_features else 0) + HEADER
        width = LABEL_W + n_cols * (PANEL + PAD) + PAD + self.gap
        height = self.top + n_rows * (PANEL + PAD) + PAD
        self.im = Image.new("RGB", (width, height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.im)
        self.draw.text((PAD, 4), title, fill=(0, 0, 0), font=_font(15))
        if random_features:
            self.draw.rectangle([0, BANNER, width, 2 * BANNER - 2], fill=(200, 0, 0))
            self.draw.text((PAD, BANNER + 4), RANDOM_BANNER, fill=(255, 255, 255), font=_font(13))
        for c, text in enumerate(col_headers):
            self.draw.text((self._x(c) + 4, self.top - HEADER + 6), text, fill=(0, 0, 0), font=_font(13))

    def _x(self, col: int) -> int:
        extra = self.gap if self.gap_after is not None and col > self.gap_after else 0
        return LABEL_W + PAD + col * (PANEL + PAD) + extra

    def row_label(self, row: int, text: str) -> None:
        y = self.top + row * (PANEL + PAD) + PANEL // 2 - 8
        self.draw.text((PAD, y), text, fill=(0, 0, 0), font=_font(13))

    def put(self, row: int, col: int, panel: Image.Image) -> None:
        self.im.paste(_fit(panel), (self._x(col), self.top + row * (PANEL + PAD)))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.im.save(path, format="PNG")
        return path


def recon_figure(real: np.ndarray, recon: np.ndarray, path: str | Path, title: str,
                 random_features: bool = False) -> Path:
    """Rows axial/coronal/sagittal (middle slices; one row for 2D slices); columns real, reconstruction,
    |real - recon|."""
    err = np.abs(np.asarray(real, dtype=np.float32) - np.asarray(recon, dtype=np.float32))
    hi = float(err.max()) if err.max() > 0 else 1.0
    planes = ("axial", "coronal", "sagittal") if err.ndim == 3 else ("slice",)
    grid = _Grid(title, len(planes), 3, ["real", "reconstruction", f"|error| (0 to {hi:.3g})"], random_features)
    for r, plane in enumerate(planes):
        grid.row_label(r, plane)
        grid.put(r, 0, _gray(panel(real, plane)))
        grid.put(r, 1, _gray(panel(recon, plane)))
        grid.put(r, 2, _hot(panel(err, plane), hi))
    return grid.save(Path(path))


def sample_grid_figure(rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]], path: str | Path,
                       title: str, plane: str = "axial", random_features: bool = False) -> Path:
    """One row per modality/class: up to n real volumes, then up to n generated ones (middle slices)."""
    n_real = max((len(r[1]) for r in rows), default=0)
    n_fake = max((len(r[2]) for r in rows), default=0)
    headers = [f"real {i + 1}" for i in range(n_real)] + [f"generated {i + 1}" for i in range(n_fake)]
    grid = _Grid(title, len(rows), n_real + n_fake, headers, random_features,
                 gap_after=n_real - 1 if n_real and n_fake else None)
    for r, (label, reals, fakes) in enumerate(rows):
        grid.row_label(r, label)
        for c, v in enumerate(reals):
            grid.put(r, c, _gray(panel(v, plane)))
        for c, v in enumerate(fakes):
            grid.put(r, n_real + c, _gray(panel(v, plane)))
    return grid.save(Path(path))


def trajectory_figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: str | Path, title: str,
                      plane: str = "axial", random_features: bool = False) -> Path:
    """One row per sample: its intermediates (label, volume) left to right, noisy to clean.
    Intermediates are min-max scaled per panel (noisy states leave [0, 1])."""
    n_cols = max((len(frames) for _, frames in rows), default=0)
    headers = [lab for lab, _ in rows[0][1]] if rows else []
    grid = _Grid(title, len(rows), n_cols, headers, random_features)
    for r, (label, frames) in enumerate(rows):
        grid.row_label(r, label[:12])
        for c, (_, v) in enumerate(frames):
            s = display(middle_slice(v, plane) if np.ndim(v) == 3 else v)
            grid.put(r, c, _gray(s, float(np.min(s)), float(np.max(s))))
    return grid.save(Path(path))


_STEP = re.compile(r"^(?P<sample>.+?)_(?:t|step)-(?P<t>\d+)(?:\.nii(?:\.gz)?)$")


def find_trajectories(folder: str | Path) -> dict[str, list[tuple[int, Path]]]:
    """Intermediates saved by a sampler as ``<sample>_t-<step>.nii.gz`` (or ``_step-<step>``) in
    ``folder``: sample -> [(step, path)] sorted from the noisiest (largest step) to the cleanest."""
    out: dict[str, list[tuple[int, Path]]] = {}
    root = Path(folder)
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        m = _STEP.match(p.name)
        if m:
            out.setdefault(m.group("sample"), []).append((int(m.group("t")), p))
    return {k: sorted(v, key=lambda tp: -tp[0]) for k, v in out.items()}

