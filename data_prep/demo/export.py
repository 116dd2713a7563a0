"""Exporters of a built demo cohort: BraTS-style case folders and 2D class folders of PNG slices."""
from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage as ndi

from bsynth_hpc.errors import ConfigError, InputError, ManifestError

from .acquisition import finish_header
from .labels import BRATS_LABELS
from .manifest import LABEL_DIR, read_manifest, rel_path

if TYPE_CHECKING:  # pillow is only needed by the 2D slice exporter
    from PIL import Image


def _volume_path(root: Path, row: dict[str, str]) -> Path:
    rel = Path(row["path"])
    full = (root / rel).resolve()
    if rel.is_absolute() or root.resolve() not in full.parents:
        raise ManifestError(f"manifest path {row['path']!r} escapes the manifest folder {root}")
    if not full.is_file():
        raise ManifestError(f"manifest lists {row['path']!r} but {full} does not exist")
    return full


def resample_like(img: nib.Nifti1Image, ref: nib.Nifti1Image, order: int) -> np.ndarray:
    """``img`` resampled onto ``ref``'s voxel grid through both affines (world mm preserved)."""
    m = np.linalg.inv(img.affine) @ ref.affine
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ndi.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=ref.shape[:3],
                                order=order, cval=0.0, prefilter=False)


_BRATS_SUFFIX = {"T1w": "t1", "T1Gd": "t1ce", "T2w": "t2", "FLAIR": "flair"}


def _digits(text: str) -> str:
    found = re.sub(r"\D", "", text)
    return found or re.sub(r"[^A-Za-z0-9]", "", text)


def export_brats_layout(manifest: str | Path, out_dir: str | Path,
                        dataset: str = "demo-glioma") -> Path:
    """BraTS-style case folders ``OUT/<case>/<case>_{t1,t1ce,t2,flair}[_seg].nii.gz``.

    Only subject-sessions with all four sequences are exported.  As in BraTS, the four share one
    grid: T1Gd/T2w/FLAIR are resampled onto the T1w grid through their affines; ``_seg`` (BraTS
    labels 1 necrosis, 2 oedema, 4 enhancing) comes from the ground-truth label map when present.
    """
    root, rows = read_manifest(manifest)
    cases: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        if row["dataset"] == dataset:
            cases[(row["subject"], row["session"])][row["modality"]] = row
    complete = {k: v for k, v in cases.items() if set(_BRATS_SUFFIX) <= set(v)}
    if not complete:
        raise ManifestError(f"no subject-session of dataset {dataset!r} in {manifest} has all of "
                            f"{sorted(_BRATS_SUFFIX)}; pick another dataset")
    out = Path(out_dir)
    for (subject, session), mods in sorted(complete.items()):
        case = f"BraTS-DEMO-{_digits(subject)}-{_digits(session)}"
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        ref = nib.load(_volume_path(root, mods["T1w"]))
        for m, suffix in _BRATS_SUFFIX.items():
            src = _volume_path(root, mods[m])
            target = folder / f"{case}_{suffix}.nii.gz"
            if m == "T1w":
                shutil.copyfile(src, target)
                continue
            img = nib.load(src)
            data = resample_like(img, ref, order=1)
            new = nib.Nifti1Image(data, ref.affine)
            new.header.set_data_dtype(img.get_data_dtype())
            nib.save(finish_header(new, ref.affine), target)
        dseg_path = root / LABEL_DIR / rel_path(subject, session, "dseg")
        if dseg_path.is_file():
            dseg = nib.load(dseg_path)
            labels = np.asarray(dseg.dataobj, dtype=np.uint8)
            brats = np.zeros_like(labels)
            for ours, theirs in BRATS_LABELS.items():
                brats[labels == ours] = theirs
            seg = resample_like(nib.Nifti1Image(brats, dseg.affine), ref, order=0).astype(np.uint8)
            nib.save(finish_header(nib.Nifti1Image(seg, ref.affine), ref.affine),
                     folder / f"{case}_seg.nii.gz")
    return out


def _axial_slices(data: np.ndarray, n: int, lesion_z: tuple[float, float] | None) -> list[int]:
    """``n`` axial indices: spread over the lesion when given, else over the central brain."""
    fg = data > 0.2 * np.percentile(data, 99.0)
    area = fg.sum(axis=(0, 1))
    rows = np.flatnonzero(area >= 0.05 * area.max())
    if len(rows) == 0:
        raise InputError("T1w volume has no foreground; cannot choose slices")
    lo, hi = float(rows[0]), float(rows[-1])
    if lesion_z is not None:
        a, b = lesion_z
    else:
        a, b = lo + 0.35 * (hi - lo), lo + 0.75 * (hi - lo)
    mid, half = (a + b) / 2.0, max((b - a) / 2.0, (n + 1) / 2.0)   # room for n distinct slices
    picks = np.linspace(mid - half, mid + half, n + 2)[1:-1]
    return [int(np.clip(round(p), 0, data.shape[2] - 1)) for p in picks]


def _lesion_z(dseg_path: Path, canonical: nib.Nifti1Image) -> tuple[float, float] | None:
    """Axial index range (in ``canonical``'s grid) covered by tumour labels, if any."""
    if not dseg_path.is_file():
        return None
    dseg = nib.load(dseg_path)
    vox = np.argwhere(np.isin(np.asarray(dseg.dataobj), list(BRATS_LABELS)))
    if len(vox) == 0:
        return None
    world = apply_affine(dseg.affine, vox)
    k = apply_affine(np.linalg.inv(canonical.affine), world)[:, 2]
    return float(np.percentile(k, 10)), float(np.percentile(k, 90))


def _to_png(slice2d: np.ndarray, zooms: tuple[float, float], top: float,
            size: int) -> Image.Image:
    """Axial slice (RAS, i x j) -> size x size 8-bit image: anterior up, right on the right
    (neurological), true physical aspect, zero-padded to a square."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow ships with the dev/eval installs
        raise ConfigError("exporting PNG slices needs pillow: `pip install pillow`") from exc
    disp = np.clip(slice2d.T[::-1, :] / max(top, 1e-6), 0.0, 1.0)
    width_mm, height_mm = disp.shape[1] * zooms[0], disp.shape[0] * zooms[1]
    scale = size / max(width_mm, height_mm)
    w, h = max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale)))
    img = Image.fromarray((disp * 255.0 + 0.5).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(img, ((size - w) // 2, (size - h) // 2))
    return canvas


def export_slice_folders(manifest: str | Path, out_dir: str | Path, dataset: str | None = None,
                         slices_per_volume: int = 4, size: int = 128) -> Path:
    """2D class folders ``OUT/<label>/<subject>_<modality>_<k>.png`` of axial T1w slices.

    Slices are taken in RAS space from the central brain (through the lesion for tumour cases);
    ``k`` runs over all of a subject's sessions, so file names stay unique and subject-prefixed.
    """
    if not isinstance(slices_per_volume, int) or slices_per_volume < 1:
        raise ConfigError("slices_per_volume must be a positive integer, "
                          f"got {slices_per_volume!r}")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ConfigError(f"size must be an integer in [16, 4096], got {size!r}")
    root, rows = read_manifest(manifest)
    rows = [r for r in rows
            if r["modality"] == "T1w" and (dataset is None or r["dataset"] == dataset)]
    if not rows:
        raise ManifestError(f"manifest {manifest} has no T1w rows"
                            + (f" for dataset {dataset!r}" if dataset else ""))
    out = Path(out_dir)
    counters: dict[str, int] = defaultdict(int)
    for row in sorted(rows, key=lambda r: (r["subject"], r["session"])):
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", row["label"]) or "unlabelled"
        img = nib.as_closest_canonical(nib.load(_volume_path(root, row)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        top = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0
        lesion = _lesion_z(root / LABEL_DIR / rel_path(row["subject"], row["session"], "dseg"), img)
        zooms = img.header.get_zooms()[:2]
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for z in _axial_slices(data, slices_per_volume, lesion):
            k = counters[row["subject"]]
            counters[row["subject"]] += 1
            _to_png(data[:, :, z], (float(zooms[0]), float(zooms[1])), top, size).save(
                folder / f"{row['subject']}_{row['modality']}_{k}.png")
    return out
