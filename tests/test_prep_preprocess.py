"""bsynth_hpc.prep.loading + bsynth_hpc.prep.preprocess: validation of input files and the per-volume transform.

References are independent of the code under test: nibabel's own affine handling
(``apply_affine``, a NIfTI save/load round trip, ``nibabel.processing.resample_from_to``),
closed-form facts (trilinear interpolation reproduces linear functions exactly; a whole-voxel
shift moves values unchanged), numpy percentiles, and ITU-R 601 luminance.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from PIL import Image

from bsynth_hpc.errors import ConfigError, InputError
from bsynth_hpc.prep.loading import check_affine, load_nifti, load_slice_image
from bsynth_hpc.prep.preprocess import (
    PreprocessParams,
    antialias_sigma,
    mask_on_image_grid,
    normalize_intensities,
    output_affine,
    preprocess_slice,
    preprocess_volume,
    resample_to_grid,
)

RNG = np.random.default_rng(1234)
SHAPE = (12, 14, 10)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def save_with_sform(path: Path, data: np.ndarray, sform: np.ndarray) -> Path:
    """Write an image whose sform is stored verbatim (nibabel refuses to build a qform from a degenerate affine)."""
    img = nib.Nifti1Image(np.asarray(data), None)
    img.header.set_sform(sform, code="aligned")
    nib.save(img, path)
    return path


def brain(shape=SHAPE) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    data[3:-3, 3:-3, 2:-2] = 1.0 + RNG.random(tuple(s - 6 if i < 2 else s - 4 for i, s in enumerate(shape)))
    return data


def rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


# ---------------------------------------------------------------------------- loading: good files
def test_load_nifti_returns_data_affine_and_hash(tmp_path):
    data = brain()
    aff = np.diag([-1.5, 0.9, 2.0, 1.0])
    aff[:3, 3] = (10, -20, 30)
    p = save(tmp_path / "a.nii.gz", data, aff)
    vol = load_nifti(p)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, nib.load(p).affine)
    assert vol.spacing == pytest.approx((1.5, 0.9, 2.0)) and vol.shape == SHAPE
    import hashlib
    assert vol.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_singleton_4d_is_squeezed(tmp_path):
    data = brain()
    vol = load_nifti(save(tmp_path / "a.nii", data[..., None]))
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(vol.data, data)


# ---------------------------------------------------------------------------- loading: bad files
def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = save(tmp_path / "good.nii.gz", brain())
    raw = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (p, "truncated or corrupt")
    p = tmp_path / "text.nii.gz"
    p.write_text("this is not an image\n")
    cases["text"] = (p, "not a readable NIfTI")
    p = tmp_path / "gz_text.nii.gz"
    p.write_bytes(gzip.compress(b"hello" * 100))
    cases["gzipped text"] = (p, "not a readable NIfTI")
    cases["4d"] = (save(tmp_path / "4d.nii.gz", np.stack([brain()] * 3, axis=-1)), "series of 3 volumes")
    cases["2d"] = (save(tmp_path / "2d.nii.gz", np.ones((5, 6), np.float32)), "is 2D")
    cases["flat axis"] = (save(tmp_path / "flat.nii.gz", np.ones((5, 6, 1), np.float32)), "axis of length < 2")
    nan = brain()
    nan[5, 5, 5] = np.nan
    nan[6, 5, 5] = np.nan
    cases["nan"] = (save(tmp_path / "nan.nii.gz", nan), "2 NaN and 0 inf voxels")
    inf = brain()
    inf[4, 4, 4] = -np.inf
    cases["inf"] = (save(tmp_path / "inf.nii.gz", inf), "0 NaN and 1 inf voxels")
    cases["zero affine"] = (save_with_sform(tmp_path / "zero.nii.gz", brain(), np.zeros((4, 4))), "zero voxel size")
    singular = np.eye(4)
    singular[:3, 1] = singular[:3, 0]
    cases["singular affine"] = (save_with_sform(tmp_path / "sing.nii.gz", brain(), singular), "singular")
    cases["constant"] = (save(tmp_path / "const.nii.gz", np.full(SHAPE, 7, np.float32)), "constant")
    cases["missing"] = (tmp_path / "missing.nii.gz", "file not found")
    p = tmp_path / "volume.mgz"
    p.write_bytes(raw)
    cases["not a nifti name"] = (p, "not a NIfTI file name")
    return cases


def test_each_bad_file_raises_input_error_naming_file_and_fix(tmp_path):
    for name, (path, words) in _bad_files(tmp_path).items():
        with pytest.raises(InputError) as info:
            load_nifti(path)
        msg = str(info.value)
        assert words in msg and str(path) in msg and "fix:" in msg, (name, msg)
        assert info.value.fix and info.value.problem in msg


def test_non_finite_affine_is_rejected():
    aff = np.eye(4)
    aff[0, 3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        check_affine(aff, "x.nii")
    aff = np.eye(4)
    aff[3, 0] = 1.0
    with pytest.raises(InputError, match="bottom row"):
        check_affine(aff, "x.nii")


# ---------------------------------------------------------------------------- resampling geometry
def _linear(world: np.ndarray) -> np.ndarray:
    return 0.3 * world[..., 0] - 0.2 * world[..., 1] + 0.5 * world[..., 2] + 7.0


def _grid_world(shape, affine) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return apply_affine(affine, idx)


def _inside(shape_out, out_aff, shape_in, in_aff) -> np.ndarray:
    vox = apply_affine(np.linalg.inv(in_aff) @ out_aff, _grid_world(shape_out, np.eye(4)))
    return np.all((vox >= 0) & (vox <= np.array(shape_in) - 1), axis=-1)


def _oblique_lps_affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rotation_z(17.0) @ np.diag([-1.3, -0.8, 2.1])
    aff[:3, 3] = (12.0, 9.0, -7.0)
    return aff


def test_trilinear_resampling_reproduces_a_linear_function_exactly():
    in_shape, in_aff = (20, 26, 10), _oblique_lps_affine()
    data = _linear(_grid_world(in_shape, in_aff)).astype(np.float32)
    out_shape = (16, 18, 14)
    out_aff = output_affine(in_aff, (np.array(in_shape) - 1) / 2, out_shape, (1.0, 1.0, 1.0))
    out = resample_to_grid(data, in_aff, out_shape, out_aff)
    inside = _inside(out_shape, out_aff, in_shape, in_aff)
    assert inside.sum() > 1000
    expected = _linear(_grid_world(out_shape, out_aff))
    np.testing.assert_allclose(out[inside], expected[inside], atol=2e-4)


def test_resampling_matches_nibabel_resample_from_to():
    from nibabel.processing import resample_from_to

    in_shape, in_aff = (20, 26, 10), _oblique_lps_affine()
    data = RNG.random(in_shape).astype(np.float32)
    out_shape = (14, 15, 13)
    out_aff = output_affine(in_aff, (np.array(in_shape) - 1) / 2, out_shape, (1.2, 1.0, 1.5))
    ours = resample_to_grid(data, in_aff, out_shape, out_aff)
    ref = resample_from_to(nib.Nifti1Image(data, in_aff), (out_shape, out_aff), order=1).get_fdata()
    inside = _inside(out_shape, out_aff, in_shape, in_aff)
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-5)


def test_output_affine_is_ras_at_target_spacing_and_snapped_to_the_input_lattice():
    in_aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    in_aff[:3, 3] = (10.3, -4.7, 2.2)
    out = output_affine(in_aff, np.array([4.5, 3.0, 2.0]), (8, 8, 8), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(out[:3, :3], np.eye(3))
    frac = (out[:3, 3] - in_aff[:3, 3]) % 1.0
    np.testing.assert_allclose(np.minimum(frac, 1 - frac), 0.0, atol=1e-9)


# ---------------------------------------------------------------------------- the transform
@pytest.mark.parametrize("oblique", [False, True], ids=["lps_anisotropic", "oblique_lps_anisotropic"])
def test_affine_round_trip_keeps_a_blob_at_its_world_position(tmp_path, oblique):
    """A Gaussian blob at a known world point lands at the same world point in the output NIfTI."""
    in_shape = (30, 40, 14)
    in_aff = np.diag([-1.2, -0.8, 2.0, 1.0])
    in_aff[:3, 3] = (20.0, 18.0, -10.0)
    if oblique:
        in_aff[:3, :3] = rotation_z(12.0) @ in_aff[:3, :3]
    p_world = apply_affine(in_aff, (9.0, 25.0, 8.0))  # off-centre on purpose
    d2 = np.sum((_grid_world(in_shape, in_aff) - p_world) ** 2, axis=-1)
    data = (100.0 * np.exp(-d2 / (2 * 3.0 ** 2))).astype(np.float32)
    src = save(tmp_path / "in.nii.gz", data, in_aff)

    vol = load_nifti(src)
    params = PreprocessParams(shape=(24, 26, 22), spacing=(1.0, 1.0, 1.0), clip_percentiles=(0.0, 100.0))
    res = preprocess_volume(vol.data, vol.affine, params, source=str(src))
    out_path = save(tmp_path / "out.nii.gz", res.data, res.affine)

    img = nib.load(out_path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), (1.0, 1.0, 1.0))
    out = img.get_fdata()
    w = np.where(out > 0.05, out, 0.0)
    centroid_vox = np.array([np.sum(w * g) for g in np.meshgrid(*map(np.arange, out.shape), indexing="ij")]) / w.sum()
    np.testing.assert_allclose(apply_affine(img.affine, centroid_vox), p_world, atol=0.15)
    peak_world = apply_affine(img.affine, np.unravel_index(np.argmax(out), out.shape))
    assert np.linalg.norm(peak_world - p_world) <= np.sqrt(3) / 2 + 1e-6
    # the grid need not hit the peak: a sample within sqrt(3)/2 mm of it keeps >= exp(-0.75/18) of it
    assert 0.95 <= out.max() <= 1.0 and out.min() >= 0.0


def test_grid_aligned_input_is_shifted_by_whole_voxels_without_blurring():
    data = brain()
    aff = np.eye(4)
    aff[:3, 3] = (-5.0, 3.0, 8.0)
    params = PreprocessParams(shape=(16, 18, 12), spacing=(1.0, 1.0, 1.0), clip_percentiles=(0.0, 100.0))
    res = preprocess_volume(data, aff, params)
    shift = res.affine[:3, 3] - aff[:3, 3]
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    expected = (data - data.min()) / (data.max() - data.min())
    o = -np.round(shift).astype(int)  # input voxel 0 sits at output voxel o
    window = res.data[o[0]:o[0] + SHAPE[0], o[1]:o[1] + SHAPE[1], o[2]:o[2] + SHAPE[2]]
    np.testing.assert_allclose(window, expected, atol=1e-6)
    assert res.data.sum() == pytest.approx(expected.sum(), rel=1e-5)


def test_field_of_view_is_centred_on_the_brain_not_the_array():
    data = np.zeros((40, 40, 40), np.float32)
    data[2:10, 3:11, 28:36] = 5.0 + RNG.random((8, 8, 8))
    params = PreprocessParams(shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0), clip_percentiles=(0.0, 100.0))
    res = preprocess_volume(data, np.eye(4), params)
    assert np.count_nonzero(res.data > 0.5) == 8 * 8 * 8  # the whole brain is inside the 16^3 grid
    centre_world = apply_affine(res.affine, (np.array(params.shape) - 1) / 2)
    np.testing.assert_allclose(centre_world, (5.5, 6.5, 31.5), atol=0.5 + 1e-9)


def test_brain_larger_than_the_field_of_view_is_cropped_symmetrically():
    data = brain((20, 20, 20))
    params = PreprocessParams(shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    res = preprocess_volume(data, np.eye(4), params)
    assert res.data.shape == (8, 8, 8) and np.all(res.data > 0)  # all inside the brain box
    np.testing.assert_allclose(apply_affine(res.affine, (3.5, 3.5, 3.5)), (9.5, 9.5, 9.5), atol=0.5 + 1e-9)


def test_antialias_sigma_follows_the_downsampling_factor_per_input_axis():
    np.testing.assert_allclose(antialias_sigma(np.diag([1.0, 0.5, 2.0, 1.0]), (2.0, 2.0, 2.0)), (0.5, 1.5, 0.0))
    swapped = np.zeros((4, 4))
    swapped[0, 1] = swapped[1, 0] = swapped[2, 2] = swapped[3, 3] = 1.0  # input axis 0 runs along world y
    np.testing.assert_allclose(antialias_sigma(swapped, (1.0, 3.0, 1.0)), (1.0, 0.0, 0.0))


@pytest.mark.parametrize("antialias", [False, True])
def test_downsampling_a_nyquist_pattern(antialias):
    """A 1-voxel stripe pattern has no representation at twice the spacing: without filtering it
    aliases to a constant 0 or 1; the sampled Gaussian (sigma 0.5 voxel, radius 2) keeps its mean,
    0.5, and scales the stripes by its response at f = 0.5 cycles/voxel, sum_k w_k (-1)^k / sum_k w_k."""
    data = np.broadcast_to((1.0 + np.arange(24) % 2)[:, None, None], (24, 24, 24)).astype(np.float32)
    params = PreprocessParams(shape=(8, 8, 8), spacing=(2.0, 1.0, 1.0), clip_percentiles=(0.0, 100.0),
                              antialias=antialias)
    out = preprocess_volume(data, np.eye(4), params).data
    if antialias:
        k = np.arange(-2, 3)
        w = np.exp(-k ** 2 / (2 * 0.5 ** 2))
        attenuation = np.sum(w * (-1.0) ** k) / w.sum()  # 0.574
        np.testing.assert_allclose(np.abs(out - 0.5), 0.5 * attenuation, atol=1e-5)
    else:
        assert np.all(out == out[0, 0, 0]) and out[0, 0, 0] in (0.0, 1.0)


# ---------------------------------------------------------------------------- intensities
def test_percentile_clipping_and_minmax_match_numpy():
    data = RNG.normal(100, 20, size=(10, 10, 10)).astype(np.float32)
    data[0, 0, 0] = 1e6  # a hot voxel
    out, background = normalize_intensities(data, None, "minmax", (0.5, 99.5))
    lo, hi = np.percentile(data, (0.5, 99.5))
    np.testing.assert_allclose(out, (np.clip(data, lo, hi) - lo) / (hi - lo), atol=1e-6)
    assert out[0, 0, 0] == pytest.approx(1.0) and background == pytest.approx(0.0)
    assert out.min() == pytest.approx(0.0, abs=1e-7) and out.max() == pytest.approx(1.0)


def test_zscore_uses_the_stats_region():
    data = RNG.normal(50, 5, size=(8, 8, 8)).astype(np.float32)
    region = np.zeros(data.shape, bool)
    region[2:6, 2:6, 2:6] = True
    out, background = normalize_intensities(data, None, "zscore", (0.0, 100.0), stats_region=region)
    assert out[region].mean() == pytest.approx(0.0, abs=1e-5) and out[region].std() == pytest.approx(1.0, rel=1e-4)
    assert background == pytest.approx((data.min() - data[region].mean()) / data[region].std(), rel=1e-4)


def test_foreground_mask_mode_zeroes_the_background():
    data = brain() + 0.05 * RNG.random(SHAPE).astype(np.float32)  # noisy air around the head
    params = PreprocessParams(shape=SHAPE, spacing=(1.0, 1.0, 1.0), mask="foreground")
    plain = preprocess_volume(data, np.eye(4), PreprocessParams(shape=SHAPE, spacing=(1.0, 1.0, 1.0)))
    masked = preprocess_volume(data, np.eye(4), params)
    assert np.count_nonzero(masked.data == 0) > np.count_nonzero(plain.data == 0)
    assert masked.data[0, 0, 0] == 0.0 and plain.data[0, 0, 0] > 0.0


def test_brain_mask_file_defines_percentiles_and_background():
    data = brain()
    data[0, 0, 0] = 1e4  # bright artefact outside the brain must not affect the scaling
    mask = np.zeros(SHAPE, bool)
    mask[4:8, 4:10, 3:7] = True
    params = PreprocessParams(shape=SHAPE, spacing=(1.0, 1.0, 1.0), mask="file", mask_column="mask",
                              clip_percentiles=(0.0, 100.0))
    res = preprocess_volume(data, np.eye(4), params, brain_mask=mask)
    o = np.round(res.affine[:3, 3]).astype(int)  # output voxel i <-> input voxel i + o
    back = np.zeros(SHAPE, np.float32)
    src = [slice(max(0, oo), min(s, oo + s)) for oo, s in zip(o, SHAPE)]
    dst = [slice(max(0, -oo), max(0, -oo) + (sl.stop - sl.start)) for oo, sl in zip(o, src)]
    back[tuple(src)] = res.data[tuple(dst)]
    lo, hi = data[mask].min(), data[mask].max()
    np.testing.assert_allclose(back[mask], (data[mask] - lo) / (hi - lo), atol=1e-6)
    assert np.all(back[~mask] == 0.0)


def test_mask_on_another_grid_is_resampled_to_the_image_grid():
    mask = np.zeros((6, 7, 5), np.float32)
    mask[1:4, 2:5, 1:3] = 1
    mask_aff = np.diag([2.0, 2.0, 2.0, 1.0])  # same field of view at half resolution
    image_aff = np.eye(4)
    image_aff[:3, 3] = -0.5  # voxel centres of a 1 mm grid covering the same box
    got = mask_on_image_grid(mask, mask_aff, (12, 14, 10), image_aff)
    expected = np.repeat(np.repeat(np.repeat(mask > 0, 2, 0), 2, 1), 2, 2)
    np.testing.assert_array_equal(got, expected)
    same = mask_on_image_grid(mask, mask_aff, mask.shape, mask_aff)
    np.testing.assert_array_equal(same, mask > 0)


def test_empty_or_constant_brain_mask_is_an_input_error():
    params = PreprocessParams(shape=SHAPE, spacing=(1.0, 1.0, 1.0), mask="file", mask_column="m")
    with pytest.raises(InputError, match="brain mask is empty"):
        preprocess_volume(brain(), np.eye(4), params, brain_mask=np.zeros(SHAPE, bool))
    mask = np.zeros(SHAPE, bool)
    mask[0, 0, :] = True  # only air: constant inside the mask
    with pytest.raises(InputError, match="constant"):
        preprocess_volume(brain(), np.eye(4), params, brain_mask=mask)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4, 4, 4, 4)}, "shape"),
    ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
    ({"normalize": "histogram"}, "normalize"),
    ({"clip_percentiles": (99.0, 1.0)}, "clip_percentiles"),
    ({"mask": "otsu"}, "mask"),
    ({"mask": "file"}, "mask_column"),
    ({"foreground_fraction": 1.5}, "foreground_fraction"),
    ({"slice_fit": "crop"}, "slice_fit"),
])
def test_invalid_parameters_raise_config_error(kwargs, match):
    base = {"shape": (4, 4, 4), "spacing": (1.0, 1.0, 1.0)}
    with pytest.raises(ConfigError, match=match):
        PreprocessParams(**{**base, **kwargs})


# ---------------------------------------------------------------------------- 2D slices
def test_slice_fit_pad_keeps_aspect_ratio_and_stretch_fills():
    image = 10.0 + RNG.random((20, 10)).astype(np.float32)
    padded = preprocess_slice(image, PreprocessParams(shape=(16, 16), spacing=(1.0, 1.0)))
    assert padded.shape == (16, 16)
    content_cols = np.flatnonzero(np.any(padded > 0, axis=0))
    assert content_cols.tolist() == list(range(4, 12))  # 20x10 scaled by 0.8 -> 16x8, centred
    stretched = preprocess_slice(image, PreprocessParams(shape=(16, 16), spacing=(1.0, 1.0), slice_fit="stretch"))
    assert np.count_nonzero(np.any(stretched > 0, axis=0)) == 16
    assert 0.0 <= stretched.min() and stretched.max() <= 1.0


def test_load_slice_image_grayscale_conversion_and_16_bit(tmp_path):
    rgb = RNG.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray, _ = load_slice_image(tmp_path / "rgb.png")
    ref = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(gray, ref, atol=1.0)
    deep = RNG.integers(0, 60000, size=(9, 11)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got, sha = load_slice_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(got, deep.astype(np.float32))
    assert len(sha) == 64


def test_bad_slice_images_raise_input_error(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_slice_image(tmp_path / "text.png")
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(InputError, match="constant"):
        load_slice_image(tmp_path / "flat.png")
    with pytest.raises(InputError, match="file not found"):
        load_slice_image(tmp_path / "gone.png")
