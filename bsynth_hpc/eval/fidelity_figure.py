"""The memorization PNG grid of ``bsynth eval fidelity``: each sample next to its nearest training volume.

One row per sample: its axial, coronal and sagittal middle slices, then the same slices of the training
volume it correlates with most, with the correlation/SSIM and the copy flag in the row title. Panels are
:data:`PANEL` px square (legible without zooming); rendered with Pillow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..slicing import middle_slice

PANEL = 200
PAD = 8
TITLE = 30
ROW_TITLE = 22
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _panel(volume: np.ndarray, plane: str) -> Image.Image:
    """A middle slice in display orientation (RAS: second axis up), or a 2D slice as stored (slice stores are
    in display orientation), scaled to fit PANEL x PANEL."""
    img = np.asarray(volume if np.ndim(volume) == 2 else middle_slice(volume, plane).T[::-1], dtype=np.float32)
    im = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mode="L")
    s = PANEL / max(im.size)
    im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (PANEL, PANEL), 0)
    canvas.paste(im, ((PANEL - im.size[0]) // 2, (PANEL - im.size[1]) // 2))
    return canvas.convert("RGB")


def neighbour_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Write the grid of (row title, sample, nearest training volume) rows to ``path`` (one panel per side for
    2D slices, three planes for volumes)."""
    planes = PLANES if not rows or np.ndim(rows[0][1]) == 3 else ("slice",)
    cols = 2 * len(planes)
    gap = 3 * PAD
    width = PAD + cols * (PANEL + PAD) + gap
    row_h = ROW_TITLE + PANEL + PAD
    im = Image.new("RGB", (width, TITLE + max(1, len(rows)) * row_h + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((PAD, 6), title, fill=(0, 0, 0), font=_font(16))
    for r, (label, sample, neighbour) in enumerate(rows):
        y = TITLE + r * row_h
        draw.text((PAD, y + 3), label, fill=(160, 0, 0) if "COPY" in label else (0, 0, 0), font=_font(14))
        for c, (volume, plane) in enumerate([(sample, p) for p in planes] + [(neighbour, p) for p in planes]):
            x = PAD + c * (PANEL + PAD) + (gap if c >= len(planes) else 0)
            im.paste(_panel(volume, plane), (x, y + ROW_TITLE))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
