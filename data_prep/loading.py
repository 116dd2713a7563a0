"""Load and validate one input file: NIfTI volumes (nibabel) and 2D slice images (Pillow).

Every check raises :class:`InputError` whose message names the file, what is wrong and how to
fix it; the pipeline turns that into a report entry and carries on with the other inputs.

Checks on a NIfTI volume, in order:

* readable: the file exists, is a NIfTI-1/2 image (``.nii`` or ``.nii.gz``), and its gzip
  stream and voxel data are complete (a truncated download fails here, not later);
* 3D: a 4D image whose extra dimensions are all 1 (``X, Y, Z, 1``, common after some
  converters) is squeezed to 3D because it holds exactly one volume; a real time series or
  multi-echo stack (``T > 1``) is rejected — pick one volume explicitly; 2D images are rejected;
* affine: finite, bottom row ``0 0 0 1``, no zero-length voxel axis and not singular (axes
  collinear) — without a valid affine, neither orientation nor spacing can be trusted;
* voxels: all finite (no NaN/inf) and not constant (an empty or failed export).

Orientation codes are not policed: nibabel's ``img.affine`` (sform, else qform, else the
pixdim fallback) is the one geometry every tool agrees on.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from bsynth_hpc.errors import InputError

from .report import fixable

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_MIN_VOXEL_SIZE_MM = 1e-6
_MIN_ORTHOGONALITY = 1e-6
"""|det(M)| / prod(column norms): 1 for orthogonal axes, 0 for collinear ones (singular)."""


@dataclass(frozen=True)
class LoadedVolume:
    """A validated 3D volume: float32 voxels, the voxel->world (RAS mm) affine, and the file's hash."""

    data: np.ndarray
    affine: np.ndarray
    path: Path
    sha256: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes in mm (column norms of the affine, also right for oblique images)."""
        return tuple(float(v) for v in voxel_sizes(self.affine))  # type: ignore[return-value]


def is_nifti_name(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_image_name(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def sha256_file(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks (volumes can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_affine(affine: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """Return the affine as float64 (4, 4), or raise InputError if it is degenerate."""
    fix = "write a valid qform/sform (e.g. from the scanner's DICOM with dcm2niix) or drop the file"
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise fixable(InputError, f"{path}: affine has shape {a.shape}, expected (4, 4)", fix)
    if not np.all(np.isfinite(a)):
        raise fixable(InputError, f"{path}: affine has non-finite entries (NaN/inf)", fix)
    if not np.allclose(a[3], (0.0, 0.0, 0.0, 1.0)):
        raise fixable(InputError, f"{path}: affine bottom row is {a[3].tolist()}, expected [0, 0, 0, 1]", fix)
    sizes = voxel_sizes(a)
    if np.any(sizes < _MIN_VOXEL_SIZE_MM):
        axes = ", ".join(str(i) for i in np.flatnonzero(sizes < _MIN_VOXEL_SIZE_MM))
        raise fixable(InputError, f"{path}: affine has zero voxel size along axis {axes} "
                                  f"(voxel sizes {np.round(sizes, 6).tolist()} mm)", fix)
    if abs(np.linalg.det(a[:3, :3])) / float(np.prod(sizes)) < _MIN_ORTHOGONALITY:
        raise fixable(InputError, f"{path}: affine is singular (voxel axes are collinear)", fix)
    return a


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise fixable(InputError, f"{path}: image is {len(shape)}D with shape {shape}, expected a 3D volume",
                      "use a 3D volume (2D slice images go through --slices)")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise fixable(InputError, f"{path}: image is {len(shape)}D with shape {shape} (a series of "
                                  f"{int(np.prod(extra))} volumes), expected one 3D volume",
                      "extract the volume you want (e.g. `fslroi in out 0 1`) and list that file")
    if any(s < 2 for s in shape[:3]):
        raise fixable(InputError, f"{path}: volume shape {shape[:3]} has an axis of length < 2",
                      "use a 3D volume (2D slice images go through --slices)")
    return tuple(int(s) for s in shape[:3])  # type: ignore[return-value]


def check_voxels(data: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Raise InputError for non-finite voxels or a constant image."""
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise fixable(InputError, f"{path}: {n_nan} NaN and {n_inf} inf voxels",
                      "re-export the image without NaN/inf (e.g. `fslmaths in -nan out`) or drop it")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise fixable(InputError, f"{path}: image is constant (every voxel = {lo:g}): empty or failed export",
                      "re-export the image from the source data or drop it")


def load_nifti(path: str | os.PathLike[str], *, check_data: bool = True) -> LoadedVolume:
    """Read and validate one NIfTI volume (see the module docstring for the checks).

    ``check_data=False`` skips the voxel checks (used for brain masks, which are binary and may
    legitimately be constant only when empty — the caller checks that).
    """
    path = Path(path)
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise fixable(InputError, f"{path}: file not found", "correct the path or restore the file") from None
    except OSError as exc:
        raise fixable(InputError, f"{path}: cannot be read ({exc.strerror or exc})",
                      "check the file's permissions and the file system") from None
    if not is_nifti_name(path):
        raise fixable(InputError, f"{path}: not a NIfTI file name (expected .nii or .nii.gz)",
                      "convert the image to NIfTI (e.g. dcm2niix, mri_convert) and list the .nii.gz")
    try:
        img = nib.load(str(path))
    except ImageFileError as exc:
        raise fixable(InputError, f"{path}: not a readable NIfTI image ({exc})",
                      "replace it with a valid NIfTI file (re-download or re-convert)") from None
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise fixable(InputError, f"{path}: corrupt header ({type(exc).__name__}: {exc})",
                      "re-download or re-convert the file") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise fixable(InputError, f"{path}: is a {type(img).__name__}, not a NIfTI image",
                      "convert it to NIfTI (.nii.gz)")
    shape3 = _squeeze_to_3d(tuple(int(s) for s in img.shape), path)
    affine = check_affine(img.affine, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape3)
    except MemoryError:
        raise
    except (EOFError, zlib.error) as exc:
        raise fixable(InputError, f"{path}: truncated or corrupt compressed data ({exc})",
                      "re-download or re-copy the file (it ends before its data does)") from None
    except Exception as exc:  # noqa: BLE001 - any other read failure is a property of this file
        raise fixable(InputError, f"{path}: voxel data cannot be read ({type(exc).__name__}: {exc})",
                      "re-download or re-convert the file") from None
    if check_data:
        check_voxels(data, path)
    return LoadedVolume(data=data, affine=affine, path=path, sha256=digest)


def load_slice_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read one 2D image as float32 grayscale (H, W) plus its SHA-256.

    Colour images (RGB, palette, with alpha) are converted to luminance with Pillow's ITU-R 601
    weights; 8/16-bit and float grayscale keep their values.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise fixable(InputError, f"{path}: file not found", "correct the path or restore the file") from None
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                data = np.asarray(img, dtype=np.float32)
            else:
                data = np.asarray(img.convert("L"), dtype=np.float32)
    except MemoryError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise fixable(InputError, f"{path}: not a readable image ({type(exc).__name__}: {exc})",
                      "replace it with a valid PNG/JPEG/TIFF or remove it from the class folder") from None
    if data.ndim != 2:
        raise fixable(InputError, f"{path}: image has shape {data.shape}, expected a 2D grayscale image",
                      "save it as a single-frame grayscale image")
    check_voxels(data, path)
    return data, digest
