"""The slice recipe's figures (PIL, no plotting library): a sample grid, the DDIM trajectory (001 Fig. 5),
reconstruction error heatmaps (001 Fig. 4), radially averaged power spectra real vs generated (001 Fig. 7)
and latent channel statistics (001 Fig. 6). Slices are (H, W) in display orientation and [0, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["grid_figure", "trajectory_grid", "heatmap_figure", "spectrum_chart", "bar_chart", "TILE"]

TILE = 128
PAD = 6
TITLE_H = 24
LABEL_H = 16
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _font(size: int = 13) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _tile(img: np.ndarray, lo: float | None = 0.0, hi: float | None = 1.0, hot: bool = False) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    x = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if hot:  # black -> red -> yellow -> white
        rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)
        im = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), mode="RGB")
    else:
        im = Image.fromarray((x * 255 + 0.5).astype(np.uint8), mode="L").convert("RGB")
    s = TILE / max(im.size)
    return im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.NEAREST)


def _save(im: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG")
    return path


def _table(rows: Sequence[tuple[str, Sequence[Image.Image]]], headers: Sequence[str], title: str,
           path: str | Path) -> Path:
    label_w = max([70] + [8 * len(r[0]) for r in rows])
    n_cols = max((len(t) for _, t in rows), default=1)
    width = label_w + n_cols * (TILE + PAD) + PAD
    height = TITLE_H + LABEL_H + len(rows) * (TILE + PAD) + PAD
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((PAD, 4), title, fill=(0, 0, 0), font=_font(14))
    for c, text in enumerate(headers):
        draw.text((label_w + c * (TILE + PAD) + 2, TITLE_H), text, fill=(0, 0, 0), font=_font(12))
    for r, (label, tiles) in enumerate(rows):
        y = TITLE_H + LABEL_H + r * (TILE + PAD)
        draw.text((PAD, y + TILE // 2 - 7), label, fill=(0, 0, 0), font=_font(12))
        for c, tile in enumerate(tiles):
            im.paste(tile, (label_w + c * (TILE + PAD), y))
    return _save(im, path)


def grid_figure(slices: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, title: str,
                columns: int = 8) -> Path:
    """All ``slices`` tiled ``columns`` per row, each under its label."""
    n = len(slices)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cell_h = LABEL_H + TILE + PAD
    im = Image.new("RGB", (PAD + cols * (TILE + PAD), TITLE_H + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((PAD, 4), title, fill=(0, 0, 0), font=_font(14))
    for i, (s, lab) in enumerate(zip(slices, labels)):
        x, y = PAD + (i % cols) * (TILE + PAD), TITLE_H + (i // cols) * cell_h
        draw.text((x, y), lab[:20], fill=(0, 0, 0), font=_font(11))
        im.paste(_tile(s), (x, y + LABEL_H))
    return _save(im, path)


def trajectory_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: str | Path,
                    title: str) -> Path:
    """One row per sample: the decoded state at each recorded t (noisy to clean), each panel min-max scaled
    (decoded noisy latents leave [0, 1])."""
    headers = [lab for lab, _ in rows[0][1]] if rows else []
    return _table([(name, [_tile(v, None, None) for _, v in frames]) for name, frames in rows], headers, title, path)


def heatmap_figure(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """001 Fig. 4: per row real | reconstruction | |error| heatmap (one colour scale for all rows)."""
    hi = max([float(np.abs(r - f).max()) for _, r, f in rows] + [1e-6])
    tiles = [(name, [_tile(r), _tile(f), _tile(np.abs(r - f), 0.0, hi, hot=True)]) for name, r, f in rows]
    return _table(tiles, ["real", "reconstruction", f"|error| 0..{hi:.2f}"], title, path)


def _axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xlabel: str, ylabel: str) -> None:
    x0, y0, x1, y1 = box
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=1)
    draw.text((x0 + (x1 - x0) // 2 - 4 * len(xlabel), y1 + 18), xlabel, fill=(0, 0, 0), font=_font(12))
    draw.text((4, y0 - 18), ylabel, fill=(0, 0, 0), font=_font(12))


def spectrum_chart(curves: Mapping[str, np.ndarray], path: str | Path, title: str,
                   size: tuple[int, int] = (560, 360)) -> Path:
    """001 Fig. 7: log10 radially averaged power against spatial frequency, one line per curve."""
    w, h = size
    im = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((8, 4), title, fill=(0, 0, 0), font=_font(14))
    box = (60, 44, w - 20, h - 44)
    _axes(draw, box, "radial frequency (cycles / slice)", "log10 power")
    logs = {k: np.log10(np.maximum(np.asarray(v, dtype=np.float64), 1e-12)) for k, v in curves.items()}
    lo = min(float(v.min()) for v in logs.values())
    hi = max(float(v.max()) for v in logs.values())
    x0, y0, x1, y1 = box
    for k, (name, v) in enumerate(logs.items()):
        xs = np.linspace(x0, x1, len(v))
        ys = y1 - (v - lo) / max(hi - lo, 1e-12) * (y1 - y0)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=COLOURS[k % len(COLOURS)], width=2)
        draw.text((x1 - 150, y0 + 4 + 16 * k), name, fill=COLOURS[k % len(COLOURS)], font=_font(12))
    draw.text((x0 - 50, y0), f"{hi:.1f}", fill=(0, 0, 0), font=_font(11))
    draw.text((x0 - 50, y1 - 12), f"{lo:.1f}", fill=(0, 0, 0), font=_font(11))
    return _save(im, path)


def bar_chart(values: Mapping[str, Sequence[float]], errors: Mapping[str, Sequence[float]], path: str | Path,
              title: str, size: tuple[int, int] = (560, 320)) -> Path:
    """001 Fig. 6: per latent channel a bar (mean) with a ±std whisker, one colour per series."""
    w, h = size
    im = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((8, 4), title, fill=(0, 0, 0), font=_font(14))
    box = (60, 44, w - 20, h - 44)
    _axes(draw, box, "latent channel", "value")
    series = list(values)
    n = max(len(v) for v in values.values())
    lo = min(min(np.asarray(values[s]) - np.asarray(errors[s])) for s in series)
    hi = max(max(np.asarray(values[s]) + np.asarray(errors[s])) for s in series)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    x0, y0, x1, y1 = box

    def y(v: float) -> float:
        return y1 - (v - lo) / max(hi - lo, 1e-12) * (y1 - y0)

    slot = (x1 - x0) / n
    bar = slot / (len(series) + 1)
    draw.line([(x0, y(0.0)), (x1, y(0.0))], fill=(150, 150, 150))
    for k, s in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        draw.text((x1 - 150, y0 + 4 + 16 * k), s, fill=colour, font=_font(12))
        for c, (m, e) in enumerate(zip(values[s], errors[s])):
            left = x0 + c * slot + (k + 0.5) * bar
            draw.rectangle([left, min(y(m), y(0.0)), left + bar * 0.9, max(y(m), y(0.0))], fill=colour)
            mid = left + bar * 0.45
            draw.line([(mid, y(m - e)), (mid, y(m + e))], fill=(0, 0, 0))
    for c in range(n):
        draw.text((x0 + c * slot + slot / 2 - 3, y1 + 2), str(c), fill=(0, 0, 0), font=_font(11))
    return _save(im, path)
