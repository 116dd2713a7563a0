"""PNG figures a person reads next to the tables (rendered with Pillow; matplotlib is not needed).

* :func:`recon_figure` - tri-planar real vs reconstruction vs absolute-error map (seed 003
  Figure 2; seed 001 §III.C "reconstruction quality with per-pixel error heatmaps").
* :func:`sample_grid_figure` - generated samples per modality or class next to real ones (seed 003
  Figures 3-6; seed 001 "sample comparison grids").
* :func:`trajectory_figure` - a denoising trajectory strip (seed 001: "DDIM denoising trajectories
  ... across timesteps t in {1000, 800, ..., 0}") when the sampler saved intermediates.
* :func:`triplanar_figure` / :func:`slice_figure` - the preview of one generated volume (mid
  sagittal | coronal | axial) or slice, under a title line (modality / class / metadata), every view
  at least :data:`VIEW_MIN` px wide and drawn at the physical aspect ratio of the voxel spacing.
* :func:`overview_figure` / :func:`write_overview` - one labelled grid of every preview of a folder
  (a sampling run's OUT/previews/, a training run's RUN/logs/previews/), so a run is seen at once.

Slices are shown in the neurological convention for RAS volumes: anterior (axial) or superior
(coronal, sagittal) at the top, subject right on the image right. A red banner marks every
figure made with random-initialised feature networks. 2D samples (slices of a slice store, image
order) are shown as they are: one "slice" row in :func:`recon_figure`, the slice itself elsewhere.
"""
from __future__ import annotations

import math
import os
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



# ---------------------------------------------------------------------------------------- previews
VIEW_MIN = 160
"""Pixels: the narrowest view of a preview (small volumes are upsampled to it)."""
VIEW_GAP = 4
TITLE_SIZE = 15
CAPTION_SIZE = 12
OVERVIEW_NAME = "overview.png"
OVERVIEW_MAX = 256
"""Tiles of an overview at most (a larger folder shows this many, evenly spaced, first and last kept)."""


def _text_lines(text: str, width: int, font: ImageFont.ImageFont) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a longer word stays whole)."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines: list[str] = []
    for paragraph in str(text).splitlines():
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and probe.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        if line:
            lines.append(line)
    return lines


def _scaled(view: np.ndarray, mm: tuple[float, float], px_per_mm: float) -> Image.Image:
    """A [0, 1] 2D view as an 'L' image of (rows * row_mm, cols * col_mm) * px_per_mm pixels, enlarged with
    nearest-neighbour interpolation (each voxel stays a visible block: no smoothing hides artefacts)."""
    rows, cols = view.shape
    size = (max(1, round(cols * mm[1] * px_per_mm)), max(1, round(rows * mm[0] * px_per_mm)))
    img = Image.fromarray((np.clip(view, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="L")
    return img.resize(size, Image.Resampling.NEAREST) if size != img.size else img


def views_figure(views: Sequence[tuple[str, np.ndarray, tuple[float, float]]], title: str = "",
                 min_view: int = VIEW_MIN) -> Image.Image:
    """(caption, 2D view in display order, (row mm, column mm)) side by side under ``title``, as 'L'.

    One scale (pixels per mm) for all views, so they keep their physical sizes and aspect ratios: the
    narrowest view is ``min_view`` px wide, and no axis gets fewer pixels than voxels."""
    if not views:
        raise ValueError("views_figure: no views")
    widths_mm = [v.shape[1] * mm[1] for _, v, mm in views]
    finest = min(min(mm) for _, _, mm in views)
    if min(widths_mm) <= 0 or finest <= 0:
        raise ValueError(f"views_figure: the views need a positive size and spacing, got {widths_mm}")
    px_per_mm = max(min_view / min(widths_mm), 1.0 / finest)
    images = [_scaled(np.asarray(v, dtype=np.float32), mm, px_per_mm) for _, v, mm in views]
    width = sum(im.width for im in images) + VIEW_GAP * (len(images) + 1)
    title_font, caption_font = _font(TITLE_SIZE), _font(CAPTION_SIZE)
    lines = _text_lines(title, width - 2 * VIEW_GAP, title_font) if title else []
    title_h = (len(lines) * (TITLE_SIZE + 4) + 6) if lines else 0
    captions = any(c for c, _, _ in views)
    caption_h = CAPTION_SIZE + 6 if captions else 0
    top = title_h + caption_h + (0 if title_h or caption_h else VIEW_GAP)
    canvas = Image.new("L", (width, top + max(im.height for im in images) + VIEW_GAP), 0)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((VIEW_GAP, 4 + i * (TITLE_SIZE + 4)), line, fill=255, font=title_font)
    x = VIEW_GAP
    for (caption, _, _), im in zip(views, images):
        if caption:
            draw.text((x, title_h + 2), caption, fill=170, font=caption_font)
        canvas.paste(im, (x, top))
        x += im.width + VIEW_GAP
    return canvas


def triplanar_figure(volume: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "",
                     min_view: int = VIEW_MIN) -> Image.Image:
    """Mid sagittal | coronal | axial slices of a RAS volume (X, Y, Z) with voxel ``spacing`` (mm) under
    ``title`` (display orientation of :func:`display`; physical aspect ratio, see :func:`views_figure`)."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"triplanar_figure: a volume (X, Y, Z), got {vol.shape}")
    sx, sy, sz = (float(s) for s in spacing)
    mm = {"sagittal": (sz, sy), "coronal": (sz, sx), "axial": (sy, sx)}  # display rows, columns
    return views_figure([(plane, panel(vol, plane), mm[plane]) for plane in ("sagittal", "coronal", "axial")],
                        title, min_view)


def slice_figure(slice2d: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), title: str = "",
                 min_view: int = VIEW_MIN) -> Image.Image:
    """A 2D slice in image order (row = first axis) with pixel ``spacing`` (mm) under ``title``."""
    s = np.asarray(slice2d, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"slice_figure: a slice (H, W), got {s.shape}")
    return views_figure([("", s, (float(spacing[0]), float(spacing[1])))], title, min_view)


def _evenly(n: int, k: int) -> list[int]:
    """``k`` indices evenly spaced over range(n), first and last included (all when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


def overview_layout(n: int, tile_w: int, tile_h: int, max_width: int = 3200) -> tuple[int, int]:
    """(rows, columns) of an overview of ``n`` tiles: about 3:2 landscape (a screen), at most ``max_width``
    px wide."""
    if n <= 0:
        return 0, 0
    cols = max(1, min(n, math.ceil(math.sqrt(1.5 * n * tile_h / max(tile_w, 1))), max_width // max(tile_w, 1)))
    return math.ceil(n / cols), cols


def _tile_width(n: int, native: int) -> int:
    """Tile width of an overview of ``n`` previews: native up to 8, smaller for more (still legible)."""
    return min(native, 720 if n <= 8 else 400 if n <= 32 else 280)


def overview_figure(tiles: Sequence[tuple[str, Image.Image]], title: str) -> Image.Image:
    """One grid of labelled tiles (label, image) under ``title``: every tile scaled to one width (aspect
    kept), its label above it; 'L' when every tile is grayscale, else RGB."""
    if not tiles:
        raise ValueError("overview_figure: no tiles")
    mode = "L" if all(im.mode == "L" for _, im in tiles) else "RGB"
    tw = _tile_width(len(tiles), max(im.width for _, im in tiles))
    scaled = []
    for label, im in tiles:
        h = max(1, round(im.height * tw / im.width))
        scaled.append((label, im.convert(mode).resize((tw, h), Image.Resampling.LANCZOS) if im.width != tw
                       else im.convert(mode)))
    label_h = 13 + 6
    cell_w, cell_h = tw + PAD, max(im.height for _, im in scaled) + label_h + PAD
    rows, cols = overview_layout(len(scaled), cell_w, cell_h)
    width = max(cols * cell_w + PAD, 480)
    head_font, label_font = _font(15), _font(13)
    head = _text_lines(title, width - 2 * PAD, head_font)
    top = len(head) * 19 + 2 * PAD
    white = 255 if mode == "L" else (255, 255, 255)
    black = 0 if mode == "L" else (0, 0, 0)
    canvas = Image.new(mode, (width, top + rows * cell_h + PAD), white)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(head):
        draw.text((PAD, PAD + i * 19), line, fill=black, font=head_font)
    for i, (label, im) in enumerate(scaled):
        x, y = PAD + (i % cols) * cell_w, top + (i // cols) * cell_h
        text = label
        while text and draw.textlength(text, font=label_font) > tw:
            text = text[:-2] + "\u2026" if len(text) > 2 else ""
        draw.text((x, y + 2), text, fill=black, font=label_font)
        canvas.paste(im, (x, y + label_h))
    return canvas


def write_overview(folder: str | os.PathLike[str], title: str | None = None, pattern: str = "*.png",
                   max_tiles: int = OVERVIEW_MAX) -> Path | None:
    """folder/overview.png: every PNG of ``folder`` matching ``pattern`` (sorted by name, at most
    ``max_tiles`` evenly spaced), each labelled with its file name; None when there is none. Written
    atomically, so a reader never sees half a grid while a run refreshes it."""
    root = Path(folder)
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.name != OVERVIEW_NAME
                   and not p.name.startswith("."))
    if not files:
        return None
    picked = [files[i] for i in _evenly(len(files), max_tiles)]
    tiles = []
    for p in picked:
        with Image.open(p) as im:
            tiles.append((p.stem, im.copy()))
    shown = f"{len(files)}" if len(picked) == len(files) else f"{len(picked)} of {len(files)} (evenly spaced)"
    head = title if title is not None else f"{root}"
    out = root / OVERVIEW_NAME
    tmp = root / f".{OVERVIEW_NAME}.tmp{os.getpid()}"
    overview_figure(tiles, f"{head}: {shown} preview(s)").save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
