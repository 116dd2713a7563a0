"""Previews a person can read (#14.4): legible tri-planar PNGs at the physical aspect ratio, with a
title line, and one overview grid per run (sampling and training)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bsynth_hpc.eval.figures import VIEW_MIN, triplanar_figure, write_overview
from bsynth_hpc.recipes.common.outputs import sample_title, voxel_spacing, write_samples


def _boxes(img: np.ndarray, mask: np.ndarray, min_area: int) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (top, left, height, width) of the connected regions of ``mask`` of at least
    ``min_area`` pixels, left to right."""
    labels, _ = ndimage.label(mask)
    boxes = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if int(mask[sl].sum()) >= min_area:
            boxes.append((sl[0].start, sl[1].start, h, w))
    return sorted(boxes, key=lambda b: b[1])


def _views(png) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The preview as an array and the boxes of its three views (a volume of ones is white in them)."""
    img = np.asarray(Image.open(png))
    return img, _boxes(img, img == 255, 2000)


def test_small_anisotropic_volume_gets_legible_views_at_its_physical_aspect(tmp_path):
    shape, spacing = (10, 12, 8), (2.0, 1.0, 3.0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    assert voxel_spacing(affine) == spacing
    write_samples(np.ones((1, *shape), np.float32), affine, tmp_path, ["sample-0000_T1w"], overview=False)
    img, boxes = _views(tmp_path / "previews" / "sample-0000_T1w.png")
    assert img.dtype == np.uint8 and img.ndim == 2
    assert img.shape[1] >= 3 * VIEW_MIN  # the old preview was ~3 x 2 x 12 px wide for this volume
    assert len(boxes) == 3, boxes
    X, Y, Z = (n * s for n, s in zip(shape, spacing))  # physical extents (mm)
    physical = [(Z, Y), (Z, X), (Y, X)]  # (height, width) of sagittal, coronal, axial in display order
    for (_, _, h, w), (ph, pw) in zip(boxes, physical):
        assert w >= VIEW_MIN
        assert h / w == pytest.approx(ph / pw, rel=0.03)
    # one scale (px per mm) for all three views: the narrowest one (sagittal, Y = 12 mm) is VIEW_MIN wide
    assert boxes[0][3] == VIEW_MIN
    assert [b[3] for b in boxes] == pytest.approx([VIEW_MIN * pw / Y for _, pw in physical], abs=1)


def test_isotropic_preview_keeps_square_voxels_and_is_no_smaller_than_native(tmp_path):
    vol = np.ones((200, 180, 170), np.float32)
    img = np.asarray(triplanar_figure(vol, (1.0, 1.0, 1.0)))
    boxes = _boxes(img, img == 255, 2000)
    assert [(h, w) for _, _, h, w in boxes] == [(170, 180), (170, 200), (180, 200)]  # native, not shrunk


def test_title_band_carries_the_samples_modality_and_metadata(tmp_path):
    vol = np.ones((1, 12, 12, 12), np.float32)
    title = sample_title("sample-0003_T2w", {"modality": "T2w", "label": "", "age": 71.25, "sex": "F"})
    assert title == "sample-0003_T2w  modality: T2w  age: 71.25  sex: F"
    write_samples(vol, np.eye(4), tmp_path / "t", ["s"], titles=[title], overview=False)
    write_samples(vol, np.eye(4), tmp_path / "n", ["s"], titles=[""], overview=False)
    titled, boxes = _views(tmp_path / "t" / "previews" / "s.png")
    bare, bare_boxes = _views(tmp_path / "n" / "previews" / "s.png")
    band = boxes[0][0] - bare_boxes[0][0]  # the views start lower by the title band
    assert band >= 15 and titled.shape[0] - bare.shape[0] == band and titled.shape[1] == bare.shape[1]
    assert (titled[:band] == 255).sum() > 50  # the title's text is drawn in the band
    assert [b[2:] for b in boxes] == [b[2:] for b in bare_boxes]
    with pytest.raises(ValueError, match="titles"):
        write_samples(vol, np.eye(4), tmp_path / "x", ["a"], titles=["a", "b"])


def test_default_title_is_the_sample_name(tmp_path):
    vol = np.ones((1, 12, 12, 12), np.float32)
    write_samples(vol, np.eye(4), tmp_path / "d", ["sample-0000_FLAIR"], overview=False)
    write_samples(vol, np.eye(4), tmp_path / "n", ["sample-0000_FLAIR"], titles=[""], overview=False)
    named = np.asarray(Image.open(tmp_path / "d" / "previews" / "sample-0000_FLAIR.png"))
    bare = np.asarray(Image.open(tmp_path / "n" / "previews" / "sample-0000_FLAIR.png"))
    assert named.shape[0] > bare.shape[0]


@pytest.mark.parametrize("n", [1, 5, 40])
def test_overview_tiles_every_sample_of_the_run(tmp_path, n):
    g = np.random.default_rng(n)
    vols = np.clip(0.5 + 0.3 * g.standard_normal((n, 10, 12, 9)), 0, 1).astype(np.float32)
    names = [f"sample-{i:04d}_T1w" for i in range(n)]
    # two sampling calls into one folder (as a sampler writes chunks): the overview covers both
    write_samples(vols[: n // 2], np.eye(4), tmp_path, names[: n // 2])
    write_samples(vols[n // 2:], np.eye(4), tmp_path, names[n // 2:])
    over = np.asarray(Image.open(tmp_path / "previews" / "overview.png").convert("L"))
    # every tile is a preview framed in black on the white page: one large filled region per tile
    tiles = _boxes(over, ndimage.binary_fill_holes(over < 128), 3000)
    assert len(tiles) == n
    assert over.shape[1] >= min(n, 2) * min(b[3] for b in tiles)


def test_overview_of_a_large_folder_shows_an_even_subset_including_first_and_last(tmp_path):
    for i in range(9):
        Image.new("L", (300, 100), 0).save(tmp_path / f"s{i}.png")
    path = write_overview(tmp_path, "run", max_tiles=4)
    over = np.asarray(Image.open(path))
    assert len(_boxes(over, over < 128, 3000)) == 4
    assert write_overview(tmp_path / "empty") is None


def test_training_overview_uses_the_step_previews_only(tmp_path):
    rgb = Image.new("RGB", (200, 150), (0, 0, 0))
    for step in (2, 4, 6):
        rgb.save(tmp_path / f"step-{step:08d}.png")
    Image.new("L", (200, 150), 0).save(tmp_path / "unrelated.png")
    path = write_overview(tmp_path, "wfdm-vae: validation reconstructions by step", pattern="step-*.png")
    assert path == tmp_path / "overview.png"
    with Image.open(path) as im:
        assert im.mode == "RGB"
        over = np.asarray(im.convert("L"))
    assert len(_boxes(over, over < 128, 3000)) == 3
    assert write_overview(tmp_path, pattern="step-*.png") == path  # refreshing never tiles the overview itself


def test_2d_samples_stay_exact_and_get_a_legible_titled_preview(tmp_path):
    g = np.random.default_rng(0)
    slices = g.random((2, 1, 6, 9)).astype(np.float32)
    paths = write_samples(slices, None, tmp_path / "png", ["a", "b"], spatial_dims=2, titles=["a T1w", "b T2w"])
    expected = (np.clip(slices[0, 0], 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(paths[0])), expected)  # the sample itself is unchanged
    ones = np.ones((1, 6, 9), np.float32)
    affine2d = np.array([[0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])  # rows 0.5 mm, columns 2 mm
    assert voxel_spacing(affine2d, 2) == (0.5, 2.0)
    write_samples(ones, affine2d, tmp_path / "nii", ["c"], spatial_dims=2, titles=["c"])
    img = np.asarray(Image.open(tmp_path / "nii" / "previews" / "c.png"))
    (_, _, h, w), = _boxes(img, img == 255, 2000)
    assert w >= VIEW_MIN and h / w == pytest.approx((6 * 0.5) / (9 * 2.0), rel=0.05)
    assert (tmp_path / "png" / "previews" / "overview.png").is_file()
