"""bsynth_hpc.prep.pipeline end to end: mixed good/bad inputs, report, resume after a crash, cluster
equivalence, BraTS and slice-folder sources, the SLURM construction path."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bsynth_hpc.data.finalize import load_index
from bsynth_hpc.data.store import VolumeStore
from bsynth_hpc.errors import ConfigError, ManifestError, StoreError
from bsynth_hpc.prep.cluster import build_slurm_cluster, check_cluster_args, slurm_cluster_kwargs
from bsynth_hpc.prep.ingest import WorkItem
from bsynth_hpc.prep.pipeline import LOCK_NAME, PrepConfig, PrepSource, resolve_params, run_prep, store_lock
from bsynth_hpc.prep.preprocess import PreprocessParams
from bsynth_hpc.prep.report import failure_from_exception, format_summary
from bsynth_hpc.prep.worker import FAILED, process_item

REPO = Path(__file__).resolve().parents[1]
GRID = {"shape": (12, 14, 10), "spacing": (2.0, 2.0, 2.0)}
RECORD_FIELDS = {"volume_id", "subject", "session", "dataset", "modality", "modality_id", "label", "clinical",
                 "metadata", "source_path", "source_sha256", "affine", "source_affine", "source_shape",
                 "source_spacing", "shape", "preprocessing"}
ROI = ["roi_hippocampus_l", "roi_hippocampus_r", "roi_amygdala_l", "roi_amygdala_r",
       "roi_ventricle_l", "roi_ventricle_r"]


def head(rng: np.random.Generator, shape=(14, 16, 10)) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    data[inner] = 50.0 + 50.0 * rng.random(tuple(s - 4 for s in shape))
    return data


def affine(zooms, flip=(1, 1, 1), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([z * f for z, f in zip(zooms, flip)] + [1.0])
    a[:3, 3] = origin
    return a


def save(path: Path, data: np.ndarray, aff: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    fields = ["subject", "session", "dataset", "modality", "path", "label", "age", "sex", *ROI]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


@dataclass
class Cohort:
    root: Path
    manifest: Path
    good_ids: list[str]
    bad: dict[str, tuple[str, str, str]]
    """subject -> (error type, stage, words in the message)"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    """6 good volumes in three geometries + one row for every kind of bad input."""
    base = tmp_path_factory.mktemp("prep")
    root = base / "cohort"
    root.mkdir()
    rng = np.random.default_rng(7)
    rows: list[dict] = []

    def add(subject, modality, file, **extra):
        rows.append({"subject": subject, "session": "1", "dataset": "toy", "modality": modality, "path": file,
                     **extra})

    roi = {c: f"0.0{i + 1}" for i, c in enumerate(ROI)}
    for m in ("T1w", "FLAIR"):
        save(root / f"g1_{m}.nii.gz", head(rng), affine((1.5, 1.5, 1.5), origin=(-10, -12, -7)))
        add("g1", m, f"g1_{m}.nii.gz", label="CN", age="64", sex="F", **roi)
    for m in ("t1", "t2"):
        save(root / f"g2_{m}.nii.gz", head(rng, (16, 20, 8)), affine((1.2, 0.9, 2.5), (-1, -1, 1), (9, 8, -9)))
        add("g2", m, f"g2_{m}.nii.gz", label="AD", age="71.5", sex="male")
    save(root / "g3_t1ce.nii", head(rng)[..., None], affine((1.0, 1.0, 1.0)))
    add("g3", "T1Gd", "g3_t1ce.nii")
    save(root / "g4_flair.nii.gz", head(rng), affine((1.0, 1.0, 1.0)))
    add("g4", "FLAIR", "g4_flair.nii.gz", session="")

    raw = (root / "g1_T1w.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (root / "text.nii.gz").write_text("not a nifti\n")
    save(root / "series.nii.gz", np.stack([head(rng)] * 3, -1), affine((1, 1, 1)))
    nan = head(rng)
    nan[5, 5, 5] = np.nan
    save(root / "nan.nii.gz", nan, affine((1, 1, 1)))
    zero = nib.Nifti1Image(head(rng), None)
    zero.header.set_sform(np.zeros((4, 4)), code="aligned")
    nib.save(zero, root / "zero_affine.nii.gz")
    save(root / "constant.nii.gz", np.full((8, 8, 8), 3.0, np.float32), affine((1, 1, 1)))
    save(base / "outside.nii.gz", head(rng), affine((1, 1, 1)))
    bad = {
        "b_trunc": ("truncated.nii.gz", "T1w", {}, ("InputError", "load", "truncated")),
        "b_text": ("text.nii.gz", "T1w", {}, ("InputError", "load", "not a readable NIfTI")),
        "b_4d": ("series.nii.gz", "T1w", {}, ("InputError", "load", "series of 3 volumes")),
        "b_nan": ("nan.nii.gz", "T1w", {}, ("InputError", "load", "1 NaN")),
        "b_affine": ("zero_affine.nii.gz", "T1w", {}, ("InputError", "load", "zero voxel size")),
        "b_const": ("constant.nii.gz", "T1w", {}, ("InputError", "load", "constant")),
        "b_missing": ("gone.nii.gz", "T1w", {}, ("InputError", "ingest", "file not found")),
        "b_dwi": ("g1_T1w.nii.gz", "DWI", {}, ("ManifestError", "ingest", "unknown modality 'DWI'")),
        "b_age": ("g1_T1w.nii.gz", "T1w", {"age": "abc"}, ("MetadataError", "ingest", "'age'")),
        "b_sex": ("g1_T1w.nii.gz", "T1w", {"sex": "purple"}, ("MetadataError", "ingest", "'sex'")),
        "b_escape": ("../outside.nii.gz", "T1w", {}, ("ManifestError", "ingest", "outside the root folder")),
    }
    for i, (subject, (file, modality, extra, _)) in enumerate(bad.items()):
        add(subject, modality, file, **extra)
        if i == 4:  # interleave good and bad rows
            add("g5", "T2w", "g1_FLAIR.nii.gz")
    manifest = write_manifest(root / "manifest.csv", rows)
    good_ids = sorted(["toy__g1__1__T1w", "toy__g1__1__FLAIR", "toy__g2__1__T1w", "toy__g2__1__T2w",
                       "toy__g3__1__T1Gd", "toy__g4__FLAIR", "toy__g5__1__T2w"])
    return Cohort(root=base, manifest=manifest, good_ids=good_ids,
                  bad={s: expect for s, (_, _, _, expect) in bad.items()})


@pytest.fixture(scope="module")
def runs(cohort):
    """One run on a real 2-worker LocalCluster and one in-process, shared by several tests."""
    local = run_prep(PrepSource.manifest(cohort.manifest), cohort.root / "local.zarr",
                     PrepConfig(cluster="local", workers=2, progress=False, **GRID))
    sync = run_prep(PrepSource.manifest(cohort.manifest), cohort.root / "sync.zarr", PrepConfig(cluster="sync",
                    progress=False, **GRID))
    return {"local": local, "sync": sync}


def files_with_mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def assert_same_volumes(a: Path, b: Path) -> None:
    sa, sb = VolumeStore(a), VolumeStore(b)
    assert sa.volume_ids() == sb.volume_ids()
    for vid in sa.volume_ids():
        np.testing.assert_array_equal(sa.read_volume(vid, "float16"), sb.read_volume(vid, "float16"))
        assert sa.record(vid) == sb.record(vid)


# ---------------------------------------------------------------------------- mixed inputs
def test_good_inputs_are_stored_and_exactly_the_bad_ones_reported(cohort, runs):
    result = runs["local"]
    assert result.exit_code == 1
    assert (result.done, result.skipped, result.failed, result.total) == (7, 0, 11, 18)
    store = VolumeStore(result.store_path)
    assert store.volume_ids() == cohort.good_ids
    assert {f.subject for f in result.failures} == set(cohort.bad)
    for f in result.failures:
        etype, stage, words = cohort.bad[f.subject]
        assert (f.error_type, f.stage) == (etype, stage) and words in f.message, f
        assert f.fix and f.origin.startswith("manifest.csv line")

    report = json.loads((result.store_path / "prep_report.json").read_text())
    assert report["counts"] == {"total": 18, "done": 7, "skipped": 0, "failed": 11}
    assert report["exit_code"] == 1 and report["parameters"]["shape"] == [12, 14, 10]
    assert report["parameters"]["cluster"] == "local" and report["parameters"]["workers"] == 2
    assert {f["subject"] for f in report["failures"]} == set(cohort.bad)
    for f in report["failures"]:
        assert {"source_path", "subject", "session", "modality", "error_type", "message", "fix"} <= set(f)
    trunc = next(f for f in report["failures"] if f["subject"] == "b_trunc")
    assert trunc["source_path"] == str((cohort.root / "cohort" / "truncated.nii.gz").resolve())
    assert not list(cohort.root.glob("local.zarr/.prep_report*"))  # atomic write left no temp file


def test_records_carry_the_documented_fields(cohort, runs):
    store = VolumeStore(runs["sync"].store_path)
    rec = store.record("toy__g1__1__T1w")
    assert RECORD_FIELDS <= set(rec)
    assert (rec["modality"], rec["modality_id"], rec["label"], rec["session"]) == ("T1w", 0, "CN", "1")
    assert rec["metadata"]["age"] == 64.0 and rec["metadata"]["sex"] == "female"
    assert rec["clinical"]["roi_hippocampus_left"] == pytest.approx(0.01)
    src = Path(rec["source_path"])
    assert src.is_absolute() and rec["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert rec["source_shape"] == [14, 16, 10] and rec["source_spacing"] == pytest.approx([1.5, 1.5, 1.5])
    np.testing.assert_allclose(rec["source_affine"], nib.load(src).affine)
    out_aff = np.array(rec["affine"])
    np.testing.assert_allclose(out_aff[:3, :3], np.diag(GRID["spacing"]))
    assert rec["shape"] == list(GRID["shape"]) and rec["preprocessing"]["normalize"] == "minmax"
    g2 = store.record("toy__g2__1__T2w")
    assert g2["modality"] == "T2w" and g2["source_spacing"] == pytest.approx([1.2, 0.9, 2.5])
    assert store.record("toy__g4__FLAIR")["session"] is None
    vol = store.read_volume("toy__g2__1__T1w")
    assert vol.shape == GRID["shape"] and vol.min() >= 0.0 and 0.5 < vol.max() <= 1.0


def test_store_is_finalized_with_splits_and_table(runs):
    result = runs["sync"]
    info, entries = load_index(result.store_path)
    assert sorted(e.volume_id for e in entries) == VolumeStore(result.store_path).volume_ids()
    assert set(info["splits"]["assignment"]) == {"toy/g1", "toy/g2", "toy/g3", "toy/g4", "toy/g5"}
    assert info["labels"] == ["AD", "CN"] and result.finalize["table_csv"].endswith("table.csv")


def test_console_summary_names_each_bad_file(cohort, runs):
    text = format_summary(runs["sync"])
    assert "7 written, 0 already present, 11 failed" in text
    for f in runs["sync"].failures:
        assert f"FAILED {f.source_path}" in text and f.message in text and f"fix: {f.fix}" in text


def test_local_cluster_and_sync_give_identical_stores(runs):
    assert_same_volumes(runs["local"].store_path, runs["sync"].store_path)
    for name in ("splits", "metadata_stats", "labels", "preprocessing"):
        assert VolumeStore(runs["local"].store_path).info[name] == VolumeStore(runs["sync"].store_path).info[name]


# ---------------------------------------------------------------------------- resume
def test_rerun_skips_published_volumes_without_rewriting_them(cohort, runs):
    path = runs["sync"].store_path
    before = files_with_mtimes(path / "volumes")
    again = run_prep(PrepSource.manifest(cohort.manifest), path, PrepConfig(cluster="sync", progress=False, **GRID))
    assert (again.done, again.skipped, again.failed, again.exit_code) == (0, 7, 11, 1)
    assert files_with_mtimes(path / "volumes") == before


CRASHING_RUN = textwrap.dedent("""
    import os, signal, sys, types
    import bsynth_hpc.data.store as store_module
    from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep

    publishes = 0

    def rename_or_die(src, dst):
        # Fault injection: die hard (no cleanup) when publishing the 3rd volume, whose array is
        # then complete in the staging folder but not yet renamed into the store.
        global publishes
        publishes += 1
        if publishes == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename(src, dst)

    store_module.os = types.SimpleNamespace(**{**vars(os), "rename": rename_or_die})
    run_prep(PrepSource.manifest(sys.argv[1]), sys.argv[2],
             PrepConfig(shape=(12, 14, 10), spacing=(2.0, 2.0, 2.0), cluster="sync", progress=False))
""")


def test_resume_after_a_crash_mid_write(cohort, runs, tmp_path):
    store_path = tmp_path / "crashed.zarr"
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(cohort.manifest), str(store_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr

    reference = VolumeStore(runs["local"].store_path)
    crashed = VolumeStore(store_path)
    published = crashed.volume_ids()
    assert len(published) == 2 and set(published) <= set(cohort.good_ids)
    for vid in published:  # what is visible is complete
        np.testing.assert_array_equal(crashed.read_volume(vid, "float16"), reference.read_volume(vid, "float16"))
    assert len(list(crashed.staging_dir.iterdir())) == 1  # the unpublished third volume
    assert (store_path / LOCK_NAME).exists()  # stale lock of the killed run
    before = files_with_mtimes(store_path / "volumes")

    result = run_prep(PrepSource.manifest(cohort.manifest), store_path,
                      PrepConfig(cluster="sync", progress=False, **GRID))
    assert (result.done, result.skipped, result.failed) == (5, 2, 11)
    assert not crashed.staging_dir.exists() and not (store_path / LOCK_NAME).exists()
    after = files_with_mtimes(store_path / "volumes")
    assert {k: v for k, v in after.items() if k in before} == before  # earlier volumes not rewritten
    assert_same_volumes(store_path, reference.path)


def test_store_made_with_other_parameters_is_refused(cohort, runs):
    path = runs["sync"].store_path
    with pytest.raises(StoreError, match="normalize"):
        run_prep(PrepSource.manifest(cohort.manifest), path,
                 PrepConfig(cluster="sync", progress=False, normalize="zscore", **GRID))
    with pytest.raises(StoreError, match="shape"):
        run_prep(PrepSource.manifest(cohort.manifest), path, PrepConfig(cluster="sync", progress=False,
                 shape=(8, 8, 8), spacing=(2.0, 2.0, 2.0)))


def test_store_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
    import socket

    with store_lock(tmp_path):
        with pytest.raises(StoreError, match="another prep run"):
            with store_lock(tmp_path):
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with store_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "other-node", "pid": 1}))
    with pytest.raises(StoreError, match="other-node"):
        with store_lock(tmp_path):
            pass


def test_nothing_usable_gives_exit_code_2(tmp_path):
    (tmp_path / "text.nii.gz").write_text("nope")
    man = write_manifest(tmp_path / "m.csv", [
        {"subject": "a", "session": "", "dataset": "d", "modality": "T1w", "path": "text.nii.gz"},
        {"subject": "b", "session": "", "dataset": "d", "modality": "T1w", "path": "gone.nii.gz"}])
    result = run_prep(PrepSource.manifest(man), tmp_path / "s.zarr", PrepConfig(cluster="sync", progress=False, **GRID))
    assert result.exit_code == 2 and result.failed == 2 and result.finalize is None
    assert VolumeStore(result.store_path).volume_ids() == []
    assert json.loads(result.report_path.read_text())["exit_code"] == 2


def test_brain_mask_column_masks_the_stored_volume(tmp_path):
    rng = np.random.default_rng(11)
    aff = affine((2.0, 2.0, 2.0))
    save(tmp_path / "a.nii.gz", head(rng, (12, 14, 10)), aff)
    mask = np.zeros((12, 14, 10), np.float32)
    mask[4:8, 5:9, 3:7] = 1
    save(tmp_path / "a_mask.nii.gz", mask, aff)
    (tmp_path / "broken_mask.nii.gz").write_text("not a mask")
    rows = [{"subject": s, "session": "", "dataset": "d", "modality": "T1w", "path": "a.nii.gz", "mask": m}
            for s, m in (("s1", "a_mask.nii.gz"), ("s2", "broken_mask.nii.gz"))]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    result = run_prep(PrepSource.manifest(tmp_path / "m.csv"), tmp_path / "s.zarr",
                      PrepConfig(mask="mask", cluster="sync", progress=False, **GRID))
    [failure] = result.failures
    assert failure.subject == "s2" and failure.stage == "load" and "broken_mask.nii.gz" in failure.message
    store = VolumeStore(result.store_path)
    rec = store.record("d__s1__T1w")
    assert rec["mask_path"] == str((tmp_path / "a_mask.nii.gz").resolve()) and rec["preprocessing"]["mask"] == "file"
    vol = store.read_volume("d__s1__T1w")
    # same grid and spacing: only the 64 mask voxels are non-zero, except the darkest one, which lies
    # below the 0.5th percentile of the mask and is clipped to 0
    assert np.count_nonzero(vol) == int(mask.sum()) - 1 and vol.max() == pytest.approx(1.0, abs=1e-3)


def test_worker_reports_a_store_write_failure(tmp_path):
    from bsynth_hpc.data.store import StoreLayout

    src = save(tmp_path / "a.nii.gz", head(np.random.default_rng(0)), affine((1, 1, 1)))
    store = VolumeStore.create_or_open(tmp_path / "s.zarr", StoreLayout("volume3d", (6, 6, 6), (1.0, 1.0, 1.0)))
    item = WorkItem(volume_id="d__s__T1w", source_path=str(src), subject="s", session=None, dataset="d",
                    modality="T1w", label=None, clinical=None, metadata={}, origin="test")
    params = PreprocessParams(shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))  # does not match the store
    outcome = process_item(item, params, str(store.path))
    assert outcome.status == FAILED and outcome.failure.stage == "write"
    assert outcome.failure.error_type == "StoreError" and "store expects (6, 6, 6)" in outcome.failure.message


def test_a_dying_worker_comes_back_as_a_failure_not_an_exception():
    """A task that kills its worker process (as the OOM killer would) yields KilledWorker, mapped to a fix."""
    import dask

    from bsynth_hpc.prep.cluster import map_unordered
    from bsynth_hpc.prep.report import InputRef

    crash = "__import__('os')._exit(3)"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # no retries: fail at once
        [(item, outcome)] = list(map_unordered(eval, [crash], (), kind="local", workers=1))
    assert item == crash and type(outcome).__name__ == "KilledWorker"
    lost = failure_from_exception(outcome, InputRef(origin="x"), "worker")
    assert lost.error_type == "KilledWorker" and "memory" in lost.fix and lost.traceback is None


def test_unexpected_errors_keep_their_traceback():
    from bsynth_hpc.prep.report import InputRef

    try:
        raise ZeroDivisionError("bug")
    except ZeroDivisionError as exc:
        bug = failure_from_exception(exc, InputRef(origin="x"), "preprocess")
    assert "cluster='sync'" in bug.fix and "ZeroDivisionError: bug" in bug.traceback


# ---------------------------------------------------------------------------- other sources
def test_brats_folder_to_store(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "BraTS2021"
    for case in ("BraTS2021_00001", "BraTS2021_00002"):
        (root / case).mkdir(parents=True)
        for suffix in ("t1", "t1ce", "t2", "flair"):
            save(root / case / f"{case}_{suffix}.nii.gz", head(rng), affine((1, 1, 1), (-1, -1, 1)))
        save(root / case / f"{case}_seg.nii.gz", np.zeros((14, 16, 10), np.float32), affine((1, 1, 1)))
    result = run_prep(PrepSource.brats(root), tmp_path / "brats.zarr",
                      PrepConfig(cluster="sync", progress=False, **GRID))
    assert result.exit_code == 0 and result.done == 8
    store = VolumeStore(result.store_path)
    assert store.volume_ids() == sorted(f"BraTS2021__BraTS2021_0000{c}__{m}" for c in (1, 2)
                                        for m in ("T1w", "T1Gd", "T2w", "FLAIR"))
    rec = store.record("BraTS2021__BraTS2021_00002__T1Gd")
    assert (rec["subject"], rec["dataset"], rec["session"]) == ("BraTS2021_00002", "BraTS2021", None)
    assert rec["source_path"].endswith("BraTS2021_00002_t1ce.nii.gz")


def test_slice_folders_to_store(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "kaggle"
    for cls, sizes in {"normal": [(20, 20), (30, 24)], "tumor": [(16, 40), (24, 24)]}.items():
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, size=size, dtype=np.uint8)).save(root / cls / f"img{i}.png")
    (root / "tumor" / "broken.png").write_text("not a png")
    result = run_prep(PrepSource.slices(root, modality="FLAIR"), tmp_path / "slices.zarr", PrepConfig(shape=(16, 16),
                      cluster="sync", progress=False))
    assert result.exit_code == 1 and result.done == 4
    assert [f.source_path for f in result.failures] == [str(root / "tumor" / "broken.png")]
    store = VolumeStore(result.store_path)
    assert store.kind == "slice2d" and store.shape == (16, 16)
    assert {store.record(v)["label"] for v in store.volume_ids()} == {"normal", "tumor"}
    assert store.record("kaggle__tumor__img0")["modality"] == "FLAIR"
    img = store.read_volume("kaggle__tumor__img0")  # 16x40 -> 6x16 centred, background 0
    assert img.shape == (16, 16) and np.count_nonzero(img.any(axis=1)) <= 7
    assert store.info["labels"] == ["normal", "tumor"]


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("source_kind, kwargs, match", [
    ("slices", {"shape": (16, 16, 16)}, "2D shape"),
    ("manifest", {"shape": (16, 16)}, "3D shape"),
    ("manifest", {"mask": ""}, "mask"),
    ("manifest", {"cluster": "kubernetes"}, "kubernetes"),
    ("manifest", {"workers": 0}, "workers"),
    ("manifest", {"cluster": "sync", "cluster_options": {"memory_limit": "1GB"}}, "cluster_options"),
    ("manifest", {"splits": (0.5, 0.5, 0.5)}, "fractions"),
])
def test_bad_options_fail_before_any_work(tmp_path, source_kind, kwargs, match):
    source = PrepSource.slices(tmp_path) if source_kind == "slices" else PrepSource.manifest(tmp_path / "m.csv")
    with pytest.raises(ConfigError, match=match):
        run_prep(source, tmp_path / "s.zarr", PrepConfig(progress=False, **kwargs))
    assert not (tmp_path / "s.zarr").exists()


def test_missing_manifest_columns_fail_before_the_store_is_created(tmp_path):
    (tmp_path / "m.csv").write_text("subject,path\ns,a.nii.gz\n")
    with pytest.raises(ManifestError, match="session, dataset, modality"):
        run_prep(PrepSource.manifest(tmp_path / "m.csv"), tmp_path / "s.zarr",
                 PrepConfig(cluster="sync", progress=False))
    assert not (tmp_path / "s.zarr").exists()


def test_mask_option_resolution(tmp_path):
    src = PrepSource.manifest(tmp_path / "m.csv")
    assert resolve_params(src, None, None, "minmax", (1, 99), False).mask == "none"
    assert resolve_params(src, None, None, "minmax", (1, 99), True).mask == "foreground"
    p = resolve_params(src, None, None, "minmax", (1, 99), "brain_mask")
    assert (p.mask, p.mask_column, p.shape, p.spacing) == ("file", "brain_mask", (192, 224, 160), (1.0, 1.0, 1.0))
    assert resolve_params(PrepSource.slices(tmp_path), None, (0.5, 0.5, 0.5), "minmax", (1, 99), False).shape == (
        256, 256)


def test_slurm_cluster_is_built_from_options_and_renders_its_job_script():
    options = {"queue": "cpu", "account": "brainlab", "walltime": "00:30:00", "memory": "4GiB",
               "job_script_prologue": ["source /opt/venv/bin/activate"], "job_extra_directives": ["--qos=short"],
               "wait_timeout_s": 5}
    kwargs, wait = slurm_cluster_kwargs(options)
    assert wait == 5.0 and "wait_timeout_s" not in kwargs and kwargs["cores"] == 1
    cluster = build_slurm_cluster(options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p cpu", "#SBATCH -A brainlab", "#SBATCH -t 00:30:00", "#SBATCH --qos=short",
                 "#SBATCH --cpus-per-task=1", "source /opt/venv/bin/activate", "--nthreads 1"):
        assert line in script, script
    assert "distributed.cli.dask_worker" in script and sys.executable in script


@pytest.mark.parametrize("options, match", [
    ({"cores": 1, "processes": 2}, "cores >= processes"),
    ({"no_such_option": 1}, "invalid SLURM cluster option"),
])
def test_bad_slurm_options_raise_config_error(options, match):
    with pytest.raises(ConfigError, match=match):
        build_slurm_cluster(options)


def test_cluster_argument_checks():
    check_cluster_args("processes", 3, None)
    with pytest.raises(ConfigError, match="True"):
        check_cluster_args("local", True, None)


# ---------------------------------------------------------------------------- the demo cohort
def _check_demo_store(manifest: Path, store_path: Path) -> list[dict]:
    """Every manifest row is in the store with its label, clinical ratios and metadata."""
    from bsynth_hpc.constants import canonical_modality
    from bsynth_hpc.data.metadata import parse_metadata
    from bsynth_hpc.prep.ingest import make_volume_id

    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    store = VolumeStore(store_path)
    assert len(store.volume_ids()) == len(rows)
    for row in rows:
        modality = canonical_modality(row["modality"])
        rec = store.record(make_volume_id(row["dataset"], row["subject"], row["session"] or None, modality))
        assert (rec["label"], rec["modality"]) == (row["label"], modality)
        assert list(rec["clinical"].values()) == pytest.approx([float(row[c]) for c in ROI])
        assert rec["metadata"] == parse_metadata(row)
        assert rec["source_path"] == str((manifest.parent / row["path"]).resolve())
        assert nib.aff2axcodes(np.array(rec["affine"])) == ("R", "A", "S")
    return rows


def test_demo_cohort_manifest_and_slice_folders(tmp_path):
    from bsynth_hpc.prep.demo import build_demo_cohort, export_slice_folders

    manifest = build_demo_cohort(tmp_path / "cohort", n_subjects=3, spacing_mm=6.0, seed=0)
    result = run_prep(PrepSource.manifest(manifest), tmp_path / "store.zarr", PrepConfig(shape=(32, 37, 27),
                      spacing=(6.0, 6.0, 6.0), cluster="processes", workers=2, progress=False))
    assert result.exit_code == 0, format_summary(result)
    rows = _check_demo_store(manifest, result.store_path)

    slices = export_slice_folders(manifest, tmp_path / "slices", slices_per_volume=2, size=32)
    sliced = run_prep(PrepSource.slices(slices, subject_pattern=r"^(sub-[^_]+)_"), tmp_path / "slices.zarr",
                      PrepConfig(shape=(32, 32), cluster="sync", progress=False))
    assert sliced.exit_code == 0 and sliced.done == 2 * sum(r["modality"] == "T1w" for r in rows)
    store = VolumeStore(sliced.store_path)
    assert {store.record(v)["subject"] for v in store.volume_ids()} == {r["subject"] for r in rows}


@pytest.mark.heavy
def test_demo_cohort_brats_export(tmp_path):
    from bsynth_hpc.prep.demo import build_demo_cohort, export_brats_layout

    manifest = build_demo_cohort(tmp_path / "cohort", n_subjects=6, spacing_mm=4.0, seed=0, workers=2)
    result = run_prep(PrepSource.manifest(manifest), tmp_path / "store.zarr", PrepConfig(shape=(48, 56, 40),
                      spacing=(4.0, 4.0, 4.0), cluster="local", workers=2, progress=False))
    assert result.exit_code == 0, format_summary(result)
    _check_demo_store(manifest, result.store_path)
    brats = export_brats_layout(manifest, tmp_path / "brats")
    cases = [p for p in brats.iterdir() if p.is_dir()]
    got = run_prep(PrepSource.brats(brats), tmp_path / "brats.zarr",
                   PrepConfig(shape=(48, 56, 40), spacing=(4.0, 4.0, 4.0),
                   cluster="sync", progress=False))
    assert got.exit_code == 0 and got.done == 4 * len(cases) > 0
