"""The embedded demo cohort: files, geometry, contrast physics, disease effects, metadata,
determinism and the BraTS / 2D-slice exporters, checked on a tiny coarse cohort."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from nibabel.processing import resample_from_to
from PIL import Image

from bsynth_hpc.data.metadata import FIELD_NAMES, FIELDS
from bsynth_hpc.errors import ConfigError, InputError, ManifestError
from bsynth_hpc.prep import demo as dc
from bsynth_hpc.prep.demo import demographics
from bsynth_hpc.prep.demo.acquisition import Acquisition, acquire, reorient
from bsynth_hpc.prep.demo.anatomy import sample_anatomy
from bsynth_hpc.prep.demo.contrast import SIGNALS, render_contrast
from bsynth_hpc.prep.demo.deformation import LocalScaling, Warp
from bsynth_hpc.prep.demo.labels import ROI_LABELS, ROI_NAMES, roi_ratios
from bsynth_hpc.prep.demo.template import load_template, subject_grid

SPACING = 4.0
N_SUBJECTS = 6      # covers all 5 acquisition protocols and both labels of all 3 datasets
SEED = 3
CSF_LABELS = (ROI_LABELS["ventricle_l"], ROI_LABELS["ventricle_r"])  # PV-robust at 4 mm
GM_LABELS = (2,) + tuple(ROI_LABELS[n] for n in ROI_NAMES if not n.startswith("ventricle"))
WM_LABELS = (3,)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("demo") / "cohort"
    manifest = dc.build_demo_cohort(out, n_subjects=N_SUBJECTS, spacing_mm=SPACING, seed=SEED)
    return manifest, _rows(manifest)


def _dseg(root: Path, row: dict[str, str]) -> nib.Nifti1Image:
    return nib.load(root / dc.LABEL_DIR / dc.rel_path(row["subject"], row["session"], "dseg"))


def _labels_in(img: nib.Nifti1Image, dseg: nib.Nifti1Image) -> np.ndarray:
    """Ground-truth labels on an image's own voxel grid, via nibabel's resampler (world mm)."""
    return np.asarray(resample_from_to(dseg, img, order=0).dataobj).astype(np.int64)


def _median(data: np.ndarray, labels: np.ndarray, wanted: tuple[int, ...]) -> float:
    sel = np.isin(labels, wanted)
    assert sel.sum() > 20, f"too few voxels with labels {wanted}"
    return float(np.median(data[sel]))


# ------------------------------------------------------------------------------ layout/manifest
def test_manifest_layout_and_files(cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, rows = cohort
    with manifest.open() as fh:
        header = fh.readline().strip().split(",")
    assert header == list(dc.MANIFEST_COLUMNS)
    assert len(header) == 6 + 6 + 25
    keys = [(r["subject"], r["session"], r["modality"]) for r in rows]
    assert len(keys) == len(set(keys))
    for r in rows:
        stem = f"{r['subject']}_{r['session']}_{r['modality']}"
        assert r["path"] == f"{r['subject']}/{r['session']}/anat/{stem}.nii.gz"
        assert (manifest.parent / r["path"]).is_file()
        assert r["label"] in dc.DATASET_LABELS[r["dataset"]]
        assert all(float(r[c]) > 0 for c in dc.ROI_COLUMNS)
    per_visit: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
    for r in rows:   # subject-level fields are repeated identically on each file of a visit
        per_visit[(r["subject"], r["session"])].add(
            tuple(r[c] for c in ("dataset", "label") + dc.ROI_COLUMNS + dc.META_FIELDS))
    assert all(len(v) == 1 for v in per_visit.values())
    pairs = {(r["dataset"], r["label"]) for r in rows}
    assert pairs == {(d, lab) for d, labs in dc.DATASET_LABELS.items() for lab in labs}
    assert {r["session"] for r in rows if r["dataset"] == "demo-dementia"} == {"ses-01", "ses-02"}
    assert {r["session"] for r in rows if r["dataset"] != "demo-dementia"} == {"ses-01"}
    assert all(r["modality"] != "T1Gd" for r in rows if r["dataset"] == "demo-dementia")


def test_affines_orientations_and_storage(cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, rows = cohort
    codes, dtypes, spacings, slopes = set(), set(), set(), set()
    for r in rows:
        img = nib.load(manifest.parent / r["path"])
        hdr = img.header
        assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        assert abs(np.linalg.det(img.affine[:3, :3])) > 1e-3
        np.testing.assert_allclose(np.sqrt((img.affine[:3, :3] ** 2).sum(0)),
                                   hdr.get_zooms()[:3], rtol=1e-5)
        codes.add("".join(nib.aff2axcodes(img.affine)))
        dtypes.add(str(img.get_data_dtype()))
        slopes.add(float(img.dataobj.slope) != 1.0)
        spacings.add(tuple(sorted(round(float(z), 2) for z in hdr.get_zooms()[:3])))
        data = np.asarray(img.dataobj, dtype=np.float32)
        assert np.isfinite(data).all() and data.min() >= 0
        assert np.percentile(data, 99) > 20.0          # scanner units, not [0, 1]
        if r["modality"] == "T1w":
            canon = nib.as_closest_canonical(img)
            vol = np.asarray(canon.dataobj, dtype=np.float32)
            ijk = np.argwhere(vol > 0.3 * np.percentile(vol, 99))
            centroid = apply_affine(canon.affine, ijk.mean(0))
            # head pose is at most ~10 mm / 7 deg off: the brain stays near the MNI brain centre
            assert np.linalg.norm(centroid - np.array([0.0, -17.0, 5.0])) < 25.0
    assert {"RAS", "LPS", "LAS", "PIR"} <= codes
    assert {"int16", "float32"} <= dtypes
    assert slopes == {True, False}                        # raw and scl_slope-scaled int16
    assert any(len(set(s)) > 1 for s in spacings)         # anisotropic voxels present


# ------------------------------------------------------------------------------ image physics
def test_contrast_orderings_inside_tissue(cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, rows = cohort
    seen = set()
    for r in rows:
        img = nib.load(manifest.parent / r["path"])
        labels = _labels_in(img, _dseg(manifest.parent, r))
        data = np.asarray(img.dataobj, dtype=np.float32)
        csf, gm, wm = (_median(data, labels, lab) for lab in (CSF_LABELS, GM_LABELS, WM_LABELS))
        m = r["modality"]
        if m in ("T1w", "T1Gd"):
            assert wm > gm > csf, (r["path"], wm, gm, csf)
        elif m == "T2w":
            assert csf > gm > wm, (r["path"], csf, gm, wm)
        else:  # FLAIR: free water nulled
            assert csf < 0.6 * wm and csf < 0.6 * gm, (r["path"], csf, gm, wm)
        seen.add(m)
    assert seen == {"T1w", "T2w", "FLAIR", "T1Gd"}


def test_enhancement_only_in_tumour_and_on_t1gd(cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, rows = cohort
    tumour_rows = [r for r in rows if r["label"] == "tumour"]
    assert {r["modality"] for r in tumour_rows} == {"T1w", "T2w", "FLAIR", "T1Gd"}
    non_ras = False
    for r in tumour_rows:
        img = nib.load(manifest.parent / r["path"])
        non_ras |= nib.aff2axcodes(img.affine) != ("R", "A", "S")
        labels = _labels_in(img, _dseg(manifest.parent, r))
        data = np.asarray(img.dataobj, dtype=np.float32)
        wm = _median(data, labels, WM_LABELS)
        rim = _median(data, labels, (24,)) / wm
        oedema = _median(data, labels, (22,))
        if r["modality"] == "T1Gd":
            assert rim > 1.25, rim            # gadolinium: rim brighter than white matter
        elif r["modality"] == "T1w":
            assert rim < 0.85, rim            # same place without contrast: hypointense
        elif r["modality"] == "FLAIR":
            assert oedema > 1.3 * wm          # oedema FLAIR-bright
        else:
            assert oedema > 1.3 * wm          # and T2-bright
    assert non_ras, "the tumour subject should exercise a non-RAS file (PROTOCOLS cycle)"
    # the signal model itself: without a tumour, no T1Gd voxel exceeds white matter
    tpl = load_template(2.0)
    grid = subject_grid(tpl, 2.0)
    warp = Warp(centre=tpl.brain_centre_mm, linear=np.eye(3), field_seed=1)
    healthy = sample_anatomy(tpl, grid, warp)
    wm_signal = SIGNALS["T1Gd"]["wm"]
    assert np.percentile(render_contrast(healthy, "T1Gd"), 99.99) < 1.15 * wm_signal


def test_rician_background_matches_rayleigh() -> None:
    """Zero signal through the scanner model gives Rayleigh noise: mean = sigma sqrt(pi/2)."""
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    acq = Acquisition(shape=(40, 40, 40), spacing=(2.0, 2.0, 2.0), centre_mm=np.zeros(3),
                         pose=np.eye(4), storage="float32", gain=100.0, noise=0.05, seed=7)
    img = acquire(np.zeros((30, 30, 30), np.float32), grid, acq, reference_level=1.0)
    data = np.asarray(img.dataobj, dtype=np.float64) / 100.0
    assert data.mean() == pytest.approx(0.05 * math.sqrt(math.pi / 2), rel=0.03)
    assert img.get_data_dtype() == np.float32


# ------------------------------------------------------------------------------ geometry units
@pytest.mark.parametrize("codes", ["LPS", "PIR", "LAS", "SAL"])
def test_reorient_keeps_world_coordinates(codes: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-4.0, 10.0, 2.5]
    out, out_aff = reorient(data, affine, codes)
    assert "".join(nib.aff2axcodes(out_aff)) == codes
    for ijk in rng.integers(0, out.shape, size=(20, 3)):
        world = apply_affine(out_aff, ijk)
        src = np.rint(apply_affine(np.linalg.inv(affine), world)).astype(int)
        assert out[tuple(ijk)] == data[tuple(src)]
    with pytest.raises(ConfigError):
        reorient(data, affine, "LLS")


@pytest.mark.parametrize("factor", [0.2, 0.7, 2.0, 6.0])
def test_local_scaling_is_one_to_one_with_closed_form_core(factor: float) -> None:
    axes = np.diag([6.0, 18.0, 7.0])
    s = LocalScaling(np.zeros(3), axes, factor)
    # along a ray through the centre, the radial map must be strictly increasing (no folding)
    for direction in np.eye(3):
        r = np.linspace(0.0, 80.0, 4001, dtype=np.float32)
        mapped = s.apply(direction[:, None].astype(np.float32) * r)
        assert np.all(np.diff(np.linalg.norm(mapped, axis=0)) > 0)
    # at the centre, a backward zoom by f^(-1/3) is a forward volume change of exactly f
    eps = np.float32(1e-3)
    jac = np.stack([s.apply(eps * np.eye(3, dtype=np.float32)[:, [k]])[:, 0] / eps
                    for k in range(3)])
    assert 1.0 / np.linalg.det(jac) == pytest.approx(factor, rel=1e-3)
    with pytest.raises(ConfigError):
        LocalScaling(np.zeros(3), axes, 10.0)


# ------------------------------------------------------------------------------ clinical vector
def test_roi_ratios_are_measured_on_the_label_maps(
        cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, rows = cohort
    for r in rows:
        dseg = np.asarray(_dseg(manifest.parent, r).dataobj)
        brain = np.count_nonzero(dseg)
        for name in ROI_NAMES:
            expected = np.count_nonzero(dseg == ROI_LABELS[name]) / brain
            assert float(r[f"roi_{name}"]) == pytest.approx(expected, rel=1e-9)
        # plausible magnitudes (MNI152 brain ~1.9 l: hippocampus ~2.6 ml, ventricle ~9 ml)
        assert 2e-4 < float(r["roi_hippocampus_l"]) < 4e-3
        assert 1e-3 < float(r["roi_ventricle_r"]) < 3e-2
    with pytest.raises(InputError):
        roi_ratios(np.zeros((4, 4, 4), np.uint8))


def _per_subject(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["subject"], r["session"]): r for r in rows}


def test_disease_effects(cohort: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = cohort
    subj = _per_subject(rows)

    def mean(label: str, roi: str) -> float:
        vals = [float(r[f"roi_{roi}_l"]) + float(r[f"roi_{roi}_r"])
                for r in subj.values() if r["label"] == label]
        assert vals
        return float(np.mean(vals))

    assert mean("AD", "ventricle") > 1.2 * mean("CN", "ventricle")
    assert mean("AD", "hippocampus") < 0.9 * mean("CN", "hippocampus")

    def asym(r: dict[str, str]) -> float:
        left, right = float(r["roi_hippocampus_l"]), float(r["roi_hippocampus_r"])
        return abs(left - right) / (left + right)

    tle = [asym(r) for r in subj.values() if r["label"] == "TLE"]
    healthy = [asym(r) for r in subj.values() if r["label"] == "healthy"]
    assert min(tle) > 0.1 and min(tle) > max(healthy)
    # longitudinal: the second visit never has smaller ventricles
    for (s, ses), r in subj.items():
        if ses == "ses-02":
            first = subj[(s, "ses-01")]
            for side in "lr":
                assert float(r[f"roi_ventricle_{side}"]) >= float(first[f"roi_ventricle_{side}"])
            assert float(r["age"] or 1e9) > float(first["age"] or 0)


# ------------------------------------------------------------------------------ metadata
def test_metadata_vocabulary_is_the_schema() -> None:
    """The manifest's metadata columns and categories are bsynth_hpc.data.metadata's, not a copy."""
    assert dc.META_FIELDS == FIELD_NAMES
    assert dc.CATEGORIES == {f.name: f.categories for f in FIELDS if f.kind == "categorical"}
    assert dc.MANIFEST_COLUMNS[-len(FIELD_NAMES):] == FIELD_NAMES


def test_metadata_vocabulary_consistency_and_missingness() -> None:
    plans = dc.plan_cohort(240, seed=11)
    empties: dict[str, int] = defaultdict(int)
    for p in plans:
        meta = p.metadata
        assert set(meta) == set(dc.META_FIELDS) and len(dc.META_FIELDS) == 25
        for name, vocab in dc.CATEGORIES.items():
            assert meta[name] in vocab + ("",)
        for name in dc.BINARY_FIELDS:
            assert meta[name] in ("yes", "no", "")
        if meta["age"]:
            age = float(meta["age"])
            assert 0 <= age <= 120
            if meta["age_group"]:
                assert meta["age_group"] == dc.age_group(age)
        if meta["height"] and meta["weight"] and meta["bmi"]:
            bmi = float(meta["weight"]) / (float(meta["height"]) / 100) ** 2
            assert float(meta["bmi"]) == pytest.approx(bmi, abs=0.051)
        for name in demographics._ABSENT[p.dataset]:
            assert meta[name] == ""
        case = p.label == dc.DATASET_LABELS[p.dataset][1]
        if p.dataset == "demo-epilepsy":
            assert meta["epilepsy"] == ("yes" if case else "no")
            if not case:
                assert meta["hs"] in ("no", "")
        if p.dataset == "demo-glioma":
            assert meta["tumor"] == ("yes" if case else "no")
        for name, value in meta.items():
            empties[name] += value == ""
    tle_hs = [p.metadata["hs"] for p in plans if p.label == "TLE"]
    assert tle_hs.count("yes") > len(tle_hs) / 2
    assert 0 < empties["sex"] < len(plans) and 0 < empties["age"] < len(plans)   # random gaps
    assert empties["education"] > 0 and empties["race"] > 0
    ages = {lab: np.mean([float(p.metadata["age"]) for p in plans
                          if p.label == lab and p.metadata["age"]])
            for lab in ("CN", "AD", "healthy")}
    assert ages["AD"] > ages["CN"] > ages["healthy"]


# ------------------------------------------------------------------------------ determinism
STRUCTURE_DIGEST = "1cff7ad07277b254450f7eb4174bab6ce265bc1bff5be4e058e964cd584c3932"
"""sha256 over the ``cohort`` fixture (6 subjects, 4 mm, seed 3): every file's relative path, each
NIfTI's dtype, shape and header block, the voxels of every label map (``derivatives/``) and the
bytes of every other file.  Computed with the generator as it stood before it moved into
``bsynth_hpc.prep.demo`` (``data_prep/demo_anatomy.py`` + ``demo_cohort.py``)."""

INTENSITY_STATS: dict[str, tuple[float, ...]] = {
    "sub-0001/ses-01/anat/sub-0001_ses-01_FLAIR.nii.gz":
        (98.3212051125989, 129.33829362543432, 25.84512646700475,
         29.158163951929698, 12.808096285207773),
    "sub-0001/ses-01/anat/sub-0001_ses-01_T1w.nii.gz":
        (404.5789341517857, 522.9300228867759, 23.481248819118072,
         26.707418866069673, 20.848172589599155),
    "sub-0001/ses-01/anat/sub-0001_ses-01_T2w.nii.gz":
        (356.13293974437005, 413.63455082133993, 26.1483286979248,
         29.31478848622149, 12.38330865319669),
    "sub-0002/ses-01/anat/sub-0002_ses-01_FLAIR.nii.gz":
        (82.1071521577381, 117.22333501699804, 23.28883206819631,
         28.57649990751188, 20.29743012163009),
    "sub-0002/ses-01/anat/sub-0002_ses-01_T1Gd.nii.gz":
        (445.65789620535713, 627.6389438650144, 23.756310545014408,
         28.204117683408338, 20.65405483219918),
    "sub-0002/ses-01/anat/sub-0002_ses-01_T1w.nii.gz":
        (566.9909505208333, 817.5321473457643, 23.267518209076353,
         28.444049916484406, 20.829977369666686),
    "sub-0002/ses-01/anat/sub-0002_ses-01_T2w.nii.gz":
        (77.42485696895922, 95.72825962756035, 25.854352489414275,
         32.031712526090914, 12.566263529698833),
    "sub-0003/ses-01/anat/sub-0003_ses-01_T1w.nii.gz":
        (17.962380581338934, 25.949650356625636, 23.51768368062267,
         26.916316614661984, 13.849380920470304),
    "sub-0003/ses-02/anat/sub-0003_ses-02_T1w.nii.gz":
        (72.56352613599888, 104.95409958503932, 23.60887841978419,
         26.749696406878353, 13.82276362354933),
    "sub-0004/ses-01/anat/sub-0004_ses-01_T1w.nii.gz":
        (143.55698833748224, 201.92366773076418, 18.632842007628643,
         21.19737555337141, 20.822124758209522),
    "sub-0005/ses-01/anat/sub-0005_ses-01_FLAIR.nii.gz":
        (101.64172630744801, 139.93290056115364, 28.105079339730604,
         19.021509937820685, 23.724678329619028),
    "sub-0005/ses-01/anat/sub-0005_ses-01_T1Gd.nii.gz":
        (94.14758175577923, 127.8281383711398, 28.265624980532944,
         18.17382692767938, 23.226715800906884),
    "sub-0005/ses-01/anat/sub-0005_ses-01_T1w.nii.gz":
        (42.775821841305984, 56.76911086374015, 28.65514652565565,
         18.161930213948345, 23.421400462248993),
    "sub-0005/ses-01/anat/sub-0005_ses-01_T2w.nii.gz":
        (125.40363451253113, 163.63227740171783, 31.713460009293755,
         11.566056254216601, 26.24213564293903),
    "sub-0006/ses-01/anat/sub-0006_ses-01_T1w.nii.gz":
        (141.99281063988096, 200.6678664114996, 23.42089177967189,
         26.634558818665038, 20.76804601695925),
    "sub-0006/ses-02/anat/sub-0006_ses-02_T1w.nii.gz":
        (79.9688709077381, 104.1607014130168, 23.40373503780361,
         26.74179708366339, 20.837495360976234),
}
"""Per intensity volume: mean and std of the stored voxels, then the intensity-weighted centroid
(voxel index) along each axis, from the same pre-split generator.  Intensities go through BLAS and
SIMD kernels whose rounding depends on the CPU (OpenBLAS picks its kernel at run time), so they
match to a relative 1e-6 (measured across OpenBLAS core types: at most 2.5e-8), not bit for bit."""


def _stored_voxels(img: nib.Nifti1Image) -> np.ndarray:
    return np.ascontiguousarray(np.asanyarray(img.dataobj))


def _structure_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        h.update(rel.as_posix().encode())
        if path.name.endswith(".nii.gz"):
            img = nib.load(path)
            arr = _stored_voxels(img)
            h.update(str(arr.dtype).encode())
            h.update(repr(arr.shape).encode())
            h.update(img.header.binaryblock)
            if rel.parts[0] == "derivatives":
                h.update(arr.tobytes())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()


def _intensity_stats(img: nib.Nifti1Image) -> tuple[float, ...]:
    arr = _stored_voxels(img).astype(np.float64)
    weight = np.abs(arr)
    centroid = [float((idx * weight).sum() / weight.sum()) for idx in np.indices(arr.shape)]
    return (float(arr.mean()), float(arr.std()), *centroid)


def test_cohort_matches_the_pre_split_generator(
        cohort: tuple[Path, list[dict[str, str]]]) -> None:
    manifest, _ = cohort
    root = manifest.parent
    assert _structure_digest(root) == STRUCTURE_DIGEST
    intensity = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.nii.gz"))
                 if p.relative_to(root).parts[0] != "derivatives"}
    assert set(intensity) == set(INTENSITY_STATS)
    for rel, path in intensity.items():
        assert _intensity_stats(nib.load(path)) == pytest.approx(INTENSITY_STATS[rel], rel=1e-6), rel


def test_same_seed_same_bytes_any_workers(cohort: tuple[Path, list[dict[str, str]]],
                                          tmp_path: Path) -> None:
    manifest, rows = cohort
    # subject i depends only on (seed, i): a 2-subject build in a process pool repeats them
    small = dc.build_demo_cohort(tmp_path / "again", n_subjects=2, spacing_mm=SPACING, seed=SEED,
                                 workers=2)
    again = _rows(small)
    assert again == [r for r in rows if r["subject"] in ("sub-0001", "sub-0002")]
    for r in again:
        assert (small.parent / r["path"]).read_bytes() == (manifest.parent / r["path"]).read_bytes()
    # a rebuild in place clears the previous cohort; another seed changes the voxels
    other = dc.build_demo_cohort(tmp_path / "again", n_subjects=1, spacing_mm=SPACING,
                                 seed=SEED + 1)
    assert not (tmp_path / "again" / "sub-0002").exists()
    first = _rows(other)[0]
    a = np.asarray(nib.load(other.parent / first["path"]).dataobj)
    b = np.asarray(nib.load(manifest.parent / first["path"]).dataobj)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_dataset_filter_keeps_subject_identity(cohort: tuple[Path, list[dict[str, str]]],
                                               tmp_path: Path) -> None:
    manifest, rows = cohort
    # the first epilepsy subjects keep their index, id and bytes from the unfiltered cohort
    assert dc.subject_indices(3, ["demo-epilepsy"]) == [0, 3, 6]
    assert dc.subject_indices(4, ["demo-glioma", "demo-dementia"]) == [1, 2, 4, 5]
    assert dc.subject_indices(5) == [0, 1, 2, 3, 4]
    epi = dc.build_demo_cohort(tmp_path / "epi", n_subjects=2, spacing_mm=SPACING, seed=SEED,
                               datasets=["demo-epilepsy"])
    got = _rows(epi)
    assert {r["dataset"] for r in got} == {"demo-epilepsy"}
    assert sorted({r["subject"] for r in got}) == ["sub-0001", "sub-0004"]
    assert [r for r in rows if r["subject"] in ("sub-0001", "sub-0004")] == got
    for r in got:
        assert (epi.parent / r["path"]).read_bytes() == (manifest.parent / r["path"]).read_bytes()
    desc = json.loads((epi.parent / "dataset_description.json").read_text())
    assert desc["BsynthDemoCohort"]["datasets"] == ["demo-epilepsy"]
    assert "datasets" not in json.loads(
        (manifest.parent / "dataset_description.json").read_text())["BsynthDemoCohort"]
    # labels alternate within a dataset and its protocols cycle through all five
    plans = dc.plan_cohort(10, SEED, ["demo-epilepsy"])
    assert [p.label for p in plans] == ["healthy", "TLE"] * 5
    assert len({p.protocol for p in plans[:5]}) == len(dc.PROTOCOLS)
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "bad", n_subjects=1, datasets=["demo-stroke"])
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "bad", n_subjects=1, datasets=[])


def test_cli_demo_cohort_datasets_option() -> None:
    from bsynth_hpc.cli import build_parser

    args = build_parser().parse_args(["demo-cohort", "--out", "x", "--datasets", "demo-epilepsy"])
    assert args.datasets == ["demo-epilepsy"]
    assert build_parser().parse_args(["demo-cohort", "--out", "x"]).datasets is None


def test_explicit_shape_is_centred_on_the_brain(tmp_path: Path) -> None:
    manifest = dc.build_demo_cohort(tmp_path / "c", n_subjects=1, shape=(44, 52, 40),
                                    spacing_mm=SPACING, seed=5)
    row = next(r for r in _rows(manifest) if r["modality"] == "T1w")
    img = nib.load(manifest.parent / row["path"])
    assert img.shape == (44, 52, 40)                       # subject 1 is stored RAS, isotropic
    dseg = _dseg(manifest.parent, row)
    brain_vox = np.argwhere(np.asarray(dseg.dataobj) > 0).mean(0)
    brain_world = apply_affine(dseg.affine, brain_vox)
    centre_world = apply_affine(img.affine, (np.array(img.shape) - 1) / 2.0)
    assert np.linalg.norm(brain_world - centre_world) < 12.0


def test_build_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "a", n_subjects=0)
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "b", shape=(10, 10))       # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "c", spacing_mm=0.1)
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(tmp_path / "d", workers=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(ConfigError):
        dc.build_demo_cohort(foreign, n_subjects=1)
    assert (foreign / "precious.txt").read_text() == "user data"


# ------------------------------------------------------------------------------ exporters
def test_export_brats_layout(cohort: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    manifest, rows = cohort
    out = dc.export_brats_layout(manifest, tmp_path / "brats")
    by_case = defaultdict(set)
    label = {}
    for r in rows:
        if r["dataset"] == "demo-glioma":
            by_case[(r["subject"], r["session"])].add(r["modality"])
            label[f"BraTS-DEMO-{r['subject'][4:]}-{r['session'][4:]}"] = r["label"]
    complete = [k for k, mods in by_case.items() if len(mods) == 4]
    cases = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(cases) == len(complete) >= 1
    assert "tumour" in {label[c.name] for c in cases}
    for case in cases:
        names = sorted(p.name for p in case.iterdir())
        suffixes = ["flair", "seg", "t1", "t1ce", "t2"]
        assert names == sorted(f"{case.name}_{s}.nii.gz" for s in suffixes)
        t1 = nib.load(case / f"{case.name}_t1.nii.gz")
        for s in suffixes:
            img = nib.load(case / f"{case.name}_{s}.nii.gz")
            assert img.shape == t1.shape
            np.testing.assert_allclose(img.affine, t1.affine, atol=1e-5)
        seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
        if label[case.name] != "tumour":
            assert not seg.any()
            continue
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and 4 in seg and 2 in seg
        t1ce = np.asarray(nib.load(case / f"{case.name}_t1ce.nii.gz").dataobj, dtype=np.float32)
        t1v = np.asarray(t1.dataobj, dtype=np.float32)
        # enhancing tumour brighter on t1ce than on t1 relative to the whole brain
        assert np.median(t1ce[seg == 4]) / np.median(t1ce[t1ce > 0]) > \
            np.median(t1v[seg == 4]) / np.median(t1v[t1v > 0])
    with pytest.raises(ManifestError):
        dc.export_brats_layout(manifest, tmp_path / "none", dataset="demo-dementia")
    with pytest.raises(ManifestError):
        dc.export_brats_layout(tmp_path / "missing.csv", tmp_path / "x")


def test_export_slice_folders(cohort: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    manifest, rows = cohort
    out = dc.export_slice_folders(manifest, tmp_path / "slices", dataset="demo-dementia",
                                  slices_per_volume=3, size=64)
    t1_rows = [r for r in rows if r["dataset"] == "demo-dementia" and r["modality"] == "T1w"]
    expected = defaultdict(int)
    for r in t1_rows:
        expected[r["label"]] += 3
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for label, count in expected.items():
        files = sorted((out / label).glob("*.png"))
        assert len(files) == count
        for f in files:
            subject, modality, k = f.stem.split("_")
            assert subject.startswith("sub-") and modality == "T1w" and k.isdigit()
            im = Image.open(f)
            assert im.size == (64, 64) and im.mode == "L"
            arr = np.asarray(im)
            assert arr.max() > 100 and arr.std() > 10
    # two sessions of one subject share the subject prefix and keep unique indices
    two = {r["subject"] for r in t1_rows if r["session"] == "ses-02"}
    for s in two:
        assert len(list(out.rglob(f"{s}_T1w_*.png"))) == 6
    with pytest.raises(ConfigError):
        dc.export_slice_folders(manifest, tmp_path / "bad", slices_per_volume=0)
    with pytest.raises(ManifestError):
        dc.export_slice_folders(manifest, tmp_path / "bad", dataset="no-such-dataset")
