"""Load and validate one input file: NIfTI volumes (nibabel) and 2D slice images (Pillow).

Every check raises :class:`InputError` whose message names the file, what is wrong and how to
fix it; the pipeline turns that into a report entry and carries on with the other inputs.

Checks on a NIfTI volume, in order:

* readable: the file exists, is a NIfTI-1/2 image (``.nii`` or ``.nii.gz``), and its gzip
  stream and voxel data are complete (a truncated download fails here, not later);
* bounded: before any voxel is read, the header's shape x data type must fit the per-volume
  memory limit (:func:`max_volume_bytes`: ``--max-volume-mb``, ``$BSYNTH_MAX_VOLUME_MB``, default
  512 MiB = a 512^3 float32 volume, 8x a 1 mm whole-head scan) and the header plus extensions must
  end within 32 MiB. The file is then read through a capped stream (:class:`CappedReader`) that
  refuses to decompress more than the header declares plus 64 KiB, so a header that lies about
  the shape or a gzip bomb costs at most the limit, never the machine's memory;
* 3D: a 4D image whose extra dimensions are all 1 (``X, Y, Z, 1``, common after some
  converters) is squeezed to 3D because it holds exactly one volume; a real time series or
  multi-echo stack (``T > 1``) is rejected — pick one volume explicitly; 2D images are rejected;
* voxel size: when the geometry comes from ``pixdim`` (``sform_code`` 0, i.e. the qform or the
  no-orientation fallback), ``pixdim[1..3]`` must be finite and > 0 — nibabel would otherwise
  silently read 0 as 1 mm. With an sform the pixdim field is unused, so it is not policed;
* affine: finite, bottom row ``0 0 0 1``, no zero-length voxel axis and not singular (axes
  collinear) — without a valid affine, neither orientation nor spacing can be trusted;
* voxels: all finite (no NaN/inf) and not constant (an empty or failed export).

Orientation codes are not policed: nibabel's ``img.affine`` (sform, else qform, else the
pixdim fallback) is the one geometry every tool agrees on.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from bsynth_hpc.errors import ConfigError, InputError
from bsynth_hpc.hashing import sha256_file

from .report import fixable

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

DEFAULT_MAX_VOLUME_MB = 512
"""Per-volume memory limit: a 512^3 float32 volume. A 1 mm whole-head scan (256^3) is 64 MiB, a
0.7 mm one (260x311x260) 80 MiB, so real inputs pass with room to spare, while a corrupt or
hostile header cannot make a worker allocate gigabytes."""
MAX_VOLUME_ENV = "BSYNTH_MAX_VOLUME_MB"
MAX_HEADER_BYTES = 32 << 20
"""Header plus extensions (vox_offset): DICOM/AFNI/CIFTI extensions are kilobytes to a few MiB."""
READ_SLACK_BYTES = 64 << 10
"""Bytes a file may hold past its declared data before it counts as header/data disagreement."""
_NIFTI_CLASSES: dict[int, type] = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
"""sizeof_hdr -> image class."""
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


def max_volume_bytes(limit_mb: float | None = None) -> int:
    """The per-volume memory limit in bytes: ``limit_mb``, else ``$BSYNTH_MAX_VOLUME_MB``, else 512 MiB."""
    source = "max_volume_mb"
    if limit_mb is None:
        raw = os.environ.get(MAX_VOLUME_ENV, "").strip()
        source = MAX_VOLUME_ENV
        try:
            limit_mb = float(raw) if raw else float(DEFAULT_MAX_VOLUME_MB)
        except ValueError:
            raise ConfigError(f"{MAX_VOLUME_ENV}={raw!r} is not a number: give the limit in MiB, e.g. 2048") from None
    if not math.isfinite(limit_mb) or limit_mb <= 0:
        raise ConfigError(f"{source}={limit_mb!r}: give a positive per-volume limit in MiB, e.g. 2048")
    return int(limit_mb * 2**20)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**20:.2f} MiB"


class CappedReader(io.RawIOBase):
    """A binary stream that raises InputError instead of reading or seeking past ``cap`` bytes.

    Wraps the decompressed stream of a ``.nii.gz`` (or a plain file), so however much the gzip
    data would expand to, at most ``cap`` bytes are ever produced; ``read(n)`` is refused before
    its buffer is allocated. ``cap`` may be raised between the header and the data phase.
    """

    def __init__(self, inner: BinaryIO, cap: int, path: Path, what: str):
        super().__init__()
        self._inner, self.cap, self._path, self.what = inner, int(cap), path, what

    def _exceeded(self) -> InputError:
        return fixable(InputError, f"{self._path}: holds more data than {self.what} (over {_mib(self.cap)}); "
                                   "its header and data disagree (corrupt file or a decompression bomb)",
                       "re-export the volume from the source data, or drop the file")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            raise io.UnsupportedOperation("a capped stream cannot seek from its end")
        target = offset if whence == io.SEEK_SET else self.tell() + offset
        if target > self.cap:
            raise self._exceeded()
        return self._inner.seek(target)

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        room = self.cap - self.tell()
        if len(view) and room <= 0:
            raise self._exceeded()
        return self._inner.readinto(view[:room])

    def read(self, size: int | None = -1) -> bytes:
        room = self.cap - self.tell()
        if size is None or size < 0:  # "everything": at most the cap, and refuse if more is there
            data = self._inner.read(room + 1) if room >= 0 else b"x"
            if len(data) > room:
                raise self._exceeded()
            return data
        if size > room:
            raise self._exceeded()
        return self._inner.read(size)

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_capped(path: Path, cap: int, what: str) -> CappedReader:
    """The file's (decompressed, for .gz) bytes behind a cap."""
    raw: BinaryIO = gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return CappedReader(raw, cap, path, what)


def _unreadable(path: Path, detail: str) -> InputError:
    return fixable(InputError, f"{path}: not a readable NIfTI image ({detail})",
                   "replace it with a valid NIfTI file (re-download or re-convert)")


def read_nifti_header(path: Path):
    """(image class, header) from the first bytes of a NIfTI-1/2 file, extensions not read.

    The header is parsed without nibabel's fix-ups (``check=False``) so the raw fields can be
    validated (:func:`check_header`) before nibabel turns e.g. pixdim 0 into 1.
    """
    try:
        with _open_capped(path, 540, "a NIfTI header") as stream:
            block = stream.read(540)
    except gzip.BadGzipFile as exc:
        raise _unreadable(path, f"not gzip data: {exc}") from None
    except (EOFError, zlib.error) as exc:
        raise fixable(InputError, f"{path}: truncated or corrupt compressed data in the header ({exc})",
                      "re-download or re-copy the file") from None
    except OSError as exc:
        raise fixable(InputError, f"{path}: cannot be read ({exc.strerror or exc})",
                      "check the file's permissions and the file system") from None
    klass = next((c for size, c in _NIFTI_CLASSES.items() for order in ("little", "big")
                  if len(block) >= 4 and int.from_bytes(block[:4], order) == size), None)
    if klass is None:
        raise _unreadable(path, "no NIfTI-1/2 header: sizeof_hdr is neither 348 nor 540")
    size = klass.header_class.template_dtype.itemsize
    if len(block) < size:
        raise _unreadable(path, f"the file ends inside its {size}-byte header")
    try:
        header = klass.header_class(binaryblock=block[:size], check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for garbage headers
        raise _unreadable(path, f"{type(exc).__name__}: {exc}") from None
    magic = bytes(header["magic"].item())
    if not magic.startswith(klass.header_class.single_magic):
        detail = ("a NIfTI pair (.hdr/.img) header in a .nii file" if magic.startswith(b"ni")
                  else f"bad magic {magic!r}")
        raise _unreadable(path, detail)
    return klass, header


def declared_shape(header, path: Path) -> tuple[int, ...]:
    """The shape the header declares, with dim[0] and every axis checked (Python ints: no overflow)."""
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise fixable(InputError, f"{path}: corrupt header: dim[0] = {dim[0]} (number of axes must be 1..7)",
                      "re-download or re-convert the file")
    shape = tuple(dim[1:dim[0] + 1])
    if any(s < 1 for s in shape):
        raise fixable(InputError, f"{path}: corrupt header: declared shape {shape} has an axis < 1",
                      "re-download or re-convert the file")
    return shape


def check_header(header, path: Path, max_bytes: int) -> tuple[int, int]:
    """(data offset, data bytes) of a header that passes the size and voxel-size checks.

    Raises InputError naming the field: a declared volume above ``max_bytes`` in memory (as
    float32, or its stored type if wider), header extensions past :data:`MAX_HEADER_BYTES`, or a
    non-positive/NaN ``pixdim`` where the geometry depends on it.
    """
    shape = declared_shape(header, path)
    try:
        dtype = header.get_data_dtype()
    except Exception as exc:  # noqa: BLE001 - unknown datatype code
        raise fixable(InputError, f"{path}: corrupt header: {exc}", "re-download or re-convert the file") from None
    voxels = math.prod(shape)
    in_memory = voxels * max(int(dtype.itemsize), 4)
    if in_memory > max_bytes:
        raise fixable(InputError, f"{path}: header declares shape {shape} ({dtype}), {_mib(in_memory)} in memory, "
                                  f"above the per-volume limit of {_mib(max_bytes)}",
                      "if the scan really is that large, raise the limit (bsynth prep --max-volume-mb N or "
                      f"{MAX_VOLUME_ENV}=N) and give each worker about 4x that memory; otherwise the header is "
                      "corrupt: re-export the file")
    raw_offset = float(header["vox_offset"])
    offset = int(raw_offset) if math.isfinite(raw_offset) else -1
    first = int(header.template_dtype.itemsize) + 4
    if not first <= offset <= MAX_HEADER_BYTES:
        raise fixable(InputError, f"{path}: header field vox_offset = {offset} is outside {first}..{MAX_HEADER_BYTES} "
                                  "(header extensions that large are not plausible)",
                      "re-export the file (e.g. with nibabel or dcm2niix), or drop it")
    _check_pixdim(header, path)
    return offset, voxels * int(dtype.itemsize)


def _check_pixdim(header, path: Path) -> None:
    """InputError if pixdim[1..3] defines the geometry (sform_code 0) and is not finite and > 0."""
    if int(header["sform_code"]) > 0:
        return  # the affine comes from the sform; check_affine validates it
    zooms = [float(z) for z in header["pixdim"][1:4]]
    bad = [f"pixdim[{i}] = {z:g}" for i, z in enumerate(zooms, 1) if not (math.isfinite(z) and z > 0)]
    if bad:
        codes = f"qform_code {int(header['qform_code'])}, sform_code 0"
        raise fixable(InputError, f"{path}: voxel size {', '.join(bad)} is not a positive number ({codes}: "
                                  "the geometry comes from pixdim)",
                      "write the real voxel size into the header (e.g. nibabel header.set_zooms, or "
                      "`fslchpixdim`) or a valid sform, or drop the file")


def _check_plain_size(path: Path, end: int) -> None:
    """InputError for an uncompressed .nii shorter than its header says (for .gz the stream tells)."""
    if str(path).lower().endswith(".gz"):
        return
    size = os.path.getsize(path)
    if size < end:
        raise fixable(InputError, f"{path}: truncated: the file has {size} bytes, its header declares {end}",
                      "re-download or re-copy the file (it ends before its data does)")


def _read_voxels(img, stream: CappedReader, offset: int, n_bytes: int, shape3: tuple[int, int, int],
                 path: Path) -> np.ndarray:
    """The voxels as float32 (X, Y, Z), reading at most the declared bytes plus the slack."""
    end = offset + n_bytes
    stream.cap, stream.what = end + READ_SLACK_BYTES, "its header declares"
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape3)
        stream.seek(end)
        stream.read()  # trailing bytes up to the slack are tolerated; more raise (header lie / gzip bomb)
    except (MemoryError, InputError):
        raise
    except (EOFError, zlib.error) as exc:
        raise fixable(InputError, f"{path}: truncated or corrupt compressed data ({exc})",
                      "re-download or re-copy the file (it ends before its data does)") from None
    except Exception as exc:  # noqa: BLE001 - any other read failure is a property of this file
        raise fixable(InputError, f"{path}: voxel data cannot be read ({type(exc).__name__}: {exc})",
                      "re-download or re-convert the file") from None
    return data


def load_nifti(path: str | os.PathLike[str], *, check_data: bool = True,
               max_bytes: int | None = None) -> LoadedVolume:
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
    klass, raw_header = read_nifti_header(path)
    offset, n_bytes = check_header(raw_header, path, max_volume_bytes() if max_bytes is None else max_bytes)
    with _open_capped(path, offset + READ_SLACK_BYTES, "its header and extensions declare") as stream:
        try:
            img = klass.from_file_map(klass.make_file_map({"image": stream}), mmap=False)
        except InputError:
            raise
        except (EOFError, zlib.error, OSError, ValueError) as exc:  # also nibabel's HeaderDataError
            raise fixable(InputError, f"{path}: corrupt header ({type(exc).__name__}: {exc})",
                          "re-download or re-convert the file") from None
        shape3 = _squeeze_to_3d(tuple(int(s) for s in img.shape), path)
        affine = check_affine(img.affine, path)
        _check_plain_size(path, offset + n_bytes)
        data = _read_voxels(img, stream, offset, n_bytes, shape3, path)
    if check_data:
        check_voxels(data, path)
    return LoadedVolume(data=data, affine=affine, path=path, sha256=digest)


def load_slice_image(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> tuple[np.ndarray, str]:
    """Read one 2D image as float32 grayscale (H, W) plus its SHA-256.

    Colour images (RGB, palette, with alpha) are converted to luminance with Pillow's ITU-R 601
    weights; 8/16-bit and float grayscale keep their values. The size the image declares is
    checked against the per-volume limit before its pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise fixable(InputError, f"{path}: file not found", "correct the path or restore the file") from None
    limit = max_volume_bytes() if max_bytes is None else max_bytes
    try:
        with Image.open(path) as img:
            _check_image_size(img.size, path, limit)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                data = np.asarray(img, dtype=np.float32)
            else:
                data = np.asarray(img.convert("L"), dtype=np.float32)
    except (MemoryError, InputError):
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise fixable(InputError, f"{path}: not a readable image ({type(exc).__name__}: {exc})",
                      "replace it with a valid PNG/JPEG/TIFF or remove it from the class folder") from None
    if data.ndim != 2:
        raise fixable(InputError, f"{path}: image has shape {data.shape}, expected a 2D grayscale image",
                      "save it as a single-frame grayscale image")
    check_voxels(data, path)
    return data, digest


def _check_image_size(size: tuple[int, int], path: Path, max_bytes: int) -> None:
    """InputError if a (W, H) image would need more than ``max_bytes`` as float32."""
    need = int(size[0]) * int(size[1]) * 4
    if need > max_bytes:
        raise fixable(InputError, f"{path}: image declares {size[0]}x{size[1]} pixels, {_mib(need)} as float32, "
                                  f"above the per-volume limit of {_mib(max_bytes)}",
                      f"downscale the image, or raise the limit (bsynth prep --max-volume-mb N or {MAX_VOLUME_ENV}=N)")
