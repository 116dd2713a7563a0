"""Writing generated volumes and slices: NIfTI with the store's affine + PNG previews + a CSV.

Shared by every sampler (``bsynth sample wfdm``, ``bsynth sample dit3d``, the 2D slice recipes)::

    paths = write_samples(volumes, affine, out_dir, names)          # out_dir/<name>.nii.gz + previews/<name>.png
    paths = write_samples(slices, None, out_dir, names, spatial_dims=2)   # out_dir/<name>.png
    write_samples_csv(out_dir, rows)                                # out_dir/samples.csv (bsynth eval synth reads it)

3D: ``volumes`` is (N, X, Y, Z) or (N, 1, X, Y, Z), array or tensor, in the preprocessed [0, 1] space
(values are clipped to it); the voxel order is the store's (RAS after preprocessing), so the
store's affine places the sample exactly where a real volume of that store lies. 2D
(``spatial_dims=2``): (N, H, W) or (N, 1, H, W) slices in the image order of a slice store (row =
first axis, as ``bsynth prep --slices`` read them), written as 8-bit PNG (the sample itself) and,
when an affine is given (a 3x3 in-plane one or a 4x4), also as a 2D NIfTI.

Previews (out_dir/previews/<name>.png) are for a person: tri-planar for a volume, the slice for 2D,
every view at least 160 px wide at the physical aspect ratio of the voxel spacing, under a title
line (name, modality / class / metadata: ``titles``, :func:`sample_title`); out_dir/previews/overview.png
tiles every preview of the folder into one labelled grid (:mod:`bsynth_hpc.eval.figures`).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...data.intensity import denormalize
from ...data.store import VolumeStore
from ...errors import ConfigError
from ...eval.figures import slice_figure, triplanar_figure, write_overview

__all__ = ["write_samples", "write_nifti", "write_preview", "write_png", "triplanar", "preview_image",
           "sample_title", "voxel_spacing", "write_overview", "nifti_affine", "write_samples_csv", "store_affine",
           "read_samples_csv", "continue_numbering", "resample_to_grid", "OutputSpace",
           "output_space",
           "decode_latents", "decode_tile_from_env"]

SAMPLES_CSV = "samples.csv"


def decode_tile_from_env() -> int | None:
    """$BSYNTH_DECODE_TILE (latent voxels per tile edge) or None: the default of ``--tile``."""
    raw = os.environ.get("BSYNTH_DECODE_TILE", "").strip()
    if not raw:
        return None
    try:
        tile = int(raw)
    except ValueError:
        raise ConfigError(f"BSYNTH_DECODE_TILE={raw!r}: expected an integer number of latent voxels, e.g. 16") from None
    if tile < 2:
        raise ConfigError(f"BSYNTH_DECODE_TILE={raw!r}: a tile needs at least 2 latent voxels per axis")
    return tile


def decode_latents(vae: Any, z: Any, volume_shape: Sequence[int] | None, tile: int | None = None,
                   overlap: int | None = None) -> Any:
    """Decode unscaled latents with a compressor: whole (``tile`` None) or by overlapping latent tiles
    of ``tile`` voxels (``overlap`` default tile // 4), which bounds decoder activation memory by the
    tile size instead of the volume size (a 192x224x160 volume on a small card)."""
    if not tile:
        return vae.decode(z, volume_shape)
    if int(tile) < 2:
        raise ConfigError(f"--tile {tile}: a tile needs at least 2 latent voxels per axis")
    ov = max(1, int(tile) // 4) if overlap is None else int(overlap)
    return vae.decode_tiled(z, tile=int(tile), overlap=ov, output_shape=volume_shape)


def _as_numpy(volume: Any, spatial_dims: int = 3) -> np.ndarray:
    try:
        import torch

        if isinstance(volume, torch.Tensor):
            volume = volume.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    arr = np.asarray(volume, dtype=np.float32)
    while arr.ndim > spatial_dims and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != spatial_dims:
        layout = "(X, Y, Z)" if spatial_dims == 3 else "(H, W)"
        raise ValueError(f"a sample {'volume' if spatial_dims == 3 else 'slice'} must be {layout} (or with a "
                         f"leading channel of 1), got {arr.shape}")
    return arr


def nifti_affine(affine: Any) -> np.ndarray:
    """A 4x4 NIfTI affine from a 4x4 one, a 3x3 in-plane (2D homogeneous) one, or None (unit spacing)."""
    if affine is None:
        return np.eye(4)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (4, 4):
        return a
    if a.shape == (3, 3):
        out = np.eye(4)
        out[np.ix_([0, 1], [0, 1])] = a[:2, :2]
        out[:2, 3] = a[:2, 2]
        return out
    raise ValueError(f"an affine must be 4x4 (or 3x3 for a 2D slice), got shape {a.shape}")


def store_affine(store: str | os.PathLike[str]) -> np.ndarray:
    """The RAS affine of a preprocessed store (every volume of a store shares the output grid)."""
    s = VolumeStore(store)
    for vid in s.volume_ids():
        affine = s.record(vid).get("affine")
        if affine is not None:
            return np.asarray(affine, dtype=np.float64).reshape(4, 4)
    spacing = s.info.get("spacing") or (1.0, 1.0, 1.0)
    return np.diag([*map(float, spacing), 1.0])


def write_nifti(volume: Any, affine: Any, path: str | os.PathLike[str], clip01: bool = True,
                spatial_dims: int = 3) -> Path:
    """One float32 NIfTI with ``affine`` (clipped to [0, 1] unless ``clip01`` is false), written atomically;
    a 2D slice (``spatial_dims=2``) takes a 4x4 or 3x3 affine (:func:`nifti_affine`)."""
    import nibabel as nib

    arr = _as_numpy(volume, spatial_dims)
    arr = np.clip(arr, 0.0, 1.0) if clip01 else arr
    aff = nifti_affine(affine) if spatial_dims == 2 else np.asarray(affine, dtype=np.float64).reshape(4, 4)
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{''.join(path.suffixes)}")
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    return path


def _uint8(arr: np.ndarray) -> np.ndarray:
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def voxel_spacing(affine: Any, spatial_dims: int = 3) -> tuple[float, ...]:
    """Voxel sizes (mm) along each array axis: the column norms of the affine's linear part (4x4, or 3x3
    for a 2D slice; None: 1 mm). A degenerate column counts as 1 mm."""
    a = nifti_affine(affine)
    norms = np.linalg.norm(a[:3, :spatial_dims], axis=0)
    return tuple(float(n) if np.isfinite(n) and n > 0 else 1.0 for n in norms)


def triplanar(volume: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "") -> np.ndarray:
    """Mid sagittal | coronal | axial slices side by side under ``title`` (uint8, display orientation:
    superior / anterior up), each view at least 160 px wide at the physical aspect of ``spacing``
    (:func:`bsynth_hpc.eval.figures.triplanar_figure`)."""
    return np.asarray(triplanar_figure(np.clip(_as_numpy(volume), 0.0, 1.0), spacing, title))


def preview_image(volume: Any, spatial_dims: int = 3, spacing: Sequence[float] | None = None,
                  title: str = "") -> np.ndarray:
    """uint8 preview a person reads: :func:`triplanar` of a volume, or a 2D slice (image order) enlarged
    to a legible size, under ``title``; ``spacing`` (mm per axis, default 1) sets the aspect ratio."""
    if spatial_dims == 3:
        return triplanar(volume, spacing or (1.0, 1.0, 1.0), title)
    arr = np.clip(_as_numpy(volume, 2), 0.0, 1.0)
    return np.asarray(slice_figure(arr, spacing or (1.0, 1.0), title))


def write_png(image: np.ndarray, path: str | os.PathLike[str], scale: int = 1) -> Path:
    """A uint8 grayscale array as PNG (``scale``x nearest-neighbour enlarged), parent folders created."""
    from PIL import Image

    img = Image.fromarray(image, mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_preview(volume: Any, path: str | os.PathLike[str], scale: int = 1, spatial_dims: int = 3,
                  spacing: Sequence[float] | None = None, title: str = "") -> Path:
    """A PNG preview of one volume (tri-planar) or slice (:func:`preview_image`)."""
    return write_png(preview_image(volume, spatial_dims, spacing, title), path, scale)


def sample_title(name: str, fields: Mapping[str, Any] | None = None) -> str:
    """A preview title: the sample name, then ``key: value`` for each field that has a value (modality,
    label, metadata such as age or sex), e.g. ``sample-0003_T2w  modality: T2w  age: 71``."""
    parts = [str(name)] + [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                           for k, v in (fields or {}).items() if v not in (None, "")]
    return "  ".join(parts)


def resample_to_grid(volume: Any, affine: Any, shape: Sequence[int], target_affine: Any) -> np.ndarray:
    """``volume`` (on the grid ``affine``) sampled trilinearly on the grid (``shape``, ``target_affine``):
    every output voxel takes the value at its own world position, so the result overlays any scan of
    that grid in world coordinates (0 outside the volume)."""
    from scipy import ndimage

    src = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    dst = np.asarray(target_affine, dtype=np.float64).reshape(4, 4)
    vox = np.linalg.inv(src) @ dst  # target voxel -> source voxel
    return ndimage.affine_transform(_as_numpy(volume), vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(shape),
                                    order=1, mode="constant", cval=0.0).astype(np.float32)


@dataclass(frozen=True)
class OutputSpace:
    """Where written volumes live: the store grid and [0, 1] (the default, ``None``), or a scanner grid
    (``shape``/``affine``) and optionally the scanner intensities of ``record`` (``bsynth prep``'s
    recorded normalisation, inverted by :func:`bsynth_hpc.data.intensity.denormalize`)."""

    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    record: Mapping[str, Any] | None = None
    what: str = ""

    def apply(self, volume: np.ndarray, affine: Any) -> tuple[np.ndarray, Any]:
        """(volume, affine) in this space."""
        if self.shape is not None:
            volume, affine = resample_to_grid(volume, affine, self.shape, self.affine), self.affine
        if self.record is not None:
            volume = denormalize(volume, self.record)
        return volume, affine


def output_space(space: str, intensity: str, reference: str | None,
                 store: str | os.PathLike[str] | None) -> OutputSpace | None:
    """The space of ``--space store|native`` and ``--intensity unit|scanner`` (None: store grid, [0, 1]).

    ``reference`` is a NIfTI path (its grid) or a volume id of ``store`` (the source scan's grid that
    prep recorded as ``source_shape``/``source_affine``, and its intensity normalisation); None takes
    the store's first volume."""
    if space not in ("store", "native") or intensity not in ("unit", "scanner"):
        raise ConfigError(f"space={space!r}, intensity={intensity!r}: use store|native and unit|scanner")
    if space == "store" and intensity == "unit":
        return None
    if reference and Path(reference).is_file():
        if intensity == "scanner":
            raise ConfigError("--intensity scanner needs --reference VOLUME_ID (a volume of the training store, "
                              "whose recorded normalisation is inverted), not a NIfTI file")
        import nibabel as nib

        img = nib.load(str(reference))
        return OutputSpace(tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64),
                           None, str(reference))
    if store is None or not Path(store).exists():
        raise ConfigError(f"--space native / --intensity scanner need --reference (a NIfTI file or a volume id "
                          f"of the training store); the training store {store} is not available")
    s = VolumeStore(store)
    ids = s.volume_ids()
    vid = reference or (ids[0] if ids else None)
    if vid not in ids:
        raise ConfigError(f"--reference {reference!r} is neither a NIfTI file nor a volume id of {store} "
                          f"(e.g. {', '.join(ids[:3])})")
    rec = {**s.record(vid), "volume_id": vid}
    shape = affine = None
    if space == "native":
        if not rec.get("source_affine") or not rec.get("source_shape"):
            raise ConfigError(f"{store}: volume {vid} records no source grid (source_affine/source_shape): give "
                              "--reference SCAN.nii.gz")
        shape = tuple(int(v) for v in rec["source_shape"][:3])
        affine = np.asarray(rec["source_affine"], dtype=np.float64).reshape(4, 4)
    return OutputSpace(shape, affine, rec if intensity == "scanner" else None, f"{vid} of {store}")


def write_samples(volumes: Any, affine: Any, out_dir: str | os.PathLike[str], names: Sequence[str],
                  previews: bool = True, space: OutputSpace | None = None, spatial_dims: int = 3,
                  titles: Sequence[str] | None = None, overview: bool = True) -> list[Path]:
    """Write out_dir/<name>.nii.gz (+ out_dir/previews/<name>.png) for each volume; returns the NIfTI paths.

    ``space`` moves each volume onto a scanner grid and/or into scanner intensities first (previews
    stay on the store grid, in [0, 1]). ``spatial_dims=2``: out_dir/<name>.png per slice (the 8-bit
    sample itself, returned), plus out_dir/<name>.nii.gz when ``affine`` is not None; ``space`` may only
    change intensities.

    Previews are legible: each view at least 160 px wide at the aspect ratio of the affine's voxel
    spacing, under a title line (``titles``, one per sample, e.g. from :func:`sample_title`; default the
    name). ``overview`` refreshes out_dir/previews/overview.png, one labelled grid of every preview in
    the folder (a caller writing many chunks may pass False and call :func:`write_overview` once)."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"write_samples: spatial_dims={spatial_dims!r} must be 2 or 3")
    if spatial_dims == 2 and space is not None and space.shape is not None:
        raise ConfigError("--space native resamples volumes onto a scanner grid; 2D slices have none (use --space store)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vols = list(volumes) if not isinstance(volumes, np.ndarray) else [volumes[i] for i in range(volumes.shape[0])]
    if len(vols) != len(names):
        raise ValueError(f"write_samples: {len(vols)} volumes but {len(names)} names")
    if titles is not None and len(titles) != len(names):
        raise ValueError(f"write_samples: {len(titles)} titles but {len(names)} names")
    spacing = voxel_spacing(affine, spatial_dims)
    paths = []
    for i, (vol, name) in enumerate(zip(vols, names)):
        arr = _as_numpy(vol, spatial_dims)
        if spatial_dims == 2:
            png = write_png(_uint8(arr), out / f"{name}.png")
            if affine is not None:
                written = space.apply(arr, affine)[0] if space is not None else arr
                write_nifti(written, affine, out / f"{name}.nii.gz", clip01=space is None or space.record is None,
                            spatial_dims=2)
            paths.append(png)
        else:
            written, affine_out = space.apply(arr, affine) if space is not None else (arr, affine)
            paths.append(write_nifti(written, affine_out, out / f"{name}.nii.gz",
                                     clip01=space is None or space.record is None))
        if previews:
            write_preview(arr, out / "previews" / f"{name}.png", spatial_dims=spatial_dims, spacing=spacing,
                          title=titles[i] if titles is not None else str(name))
    if previews and overview and vols:
        write_overview(out / "previews", f"{out.name or out}: samples")
    return paths


def read_samples_csv(out_dir: str | os.PathLike[str], name: str = SAMPLES_CSV) -> list[dict[str, str]]:
    """The rows of out_dir/samples.csv ([] when there is none)."""
    path = Path(out_dir) / name
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def continue_numbering(out_dir: str | os.PathLike[str], start: int, overwrite: bool, prefix: str,
                       log: Any = print) -> int:
    """The first sample number of a sampling call into ``out_dir``.

    Samples are numbered (and seeded) from ``start``; when the folder already holds samples whose
    file names begin with ``prefix`` (from samples.csv or on disk) and ``overwrite`` is false, the
    numbering continues after the highest one, so "more samples" are new samples with new seeds,
    never the same seeds written over the earlier files."""
    if overwrite:
        return start
    out = Path(out_dir)
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)")
    names = [r.get("path", "") for r in read_samples_csv(out)]
    names += [p.name for p in out.glob(f"{prefix}*.nii.gz")] if out.is_dir() else []
    numbers = [int(m.group(1)) for m in map(pattern.match, names) if m]
    if not numbers or max(numbers) < start:
        return start
    nxt = max(numbers) + 1
    log(f"{out} already holds samples {prefix}{min(numbers):04d}..{max(numbers):04d}: new samples continue at "
        f"{nxt} (new seeds); pass --overwrite to write over them from --seed {start}")
    return nxt


def write_samples_csv(out_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]],
                      name: str = SAMPLES_CSV) -> Path:
    """out_dir/samples.csv with a ``path`` column (relative to out_dir) + modality/label/... columns.

    Rows already in an existing file (other paths) are kept, so several sampling calls into one folder
    build one cohort table; a row for the same path is replaced."""
    out = Path(out_dir)
    path = out / name
    existing: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            existing = list(csv.DictReader(fh))
    new_paths = {str(r["path"]) for r in rows}
    merged = [r for r in existing if r.get("path") not in new_paths] + [dict(r) for r in rows]
    fields: list[str] = []
    for r in merged:
        for k in r:
            if k not in fields:
                fields.append(k)
    tmp = path.with_name(f".{name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(merged)
    os.replace(tmp, path)
    return path
