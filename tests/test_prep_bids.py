"""Issue #12, prep side: `prep --bids` (participants.tsv labels/metadata), `bsynth manifest --from`,
subject tables for BraTS (--labels / --label-column), `bsynth info` advice on raw folders, `--cluster
slurm` without sbatch, the --chunks help, and the recorded intensity mapping (denormalize)."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bsynth_hpc.cli import build_parser
from bsynth_hpc.cli import main as bsynth
from bsynth_hpc.data.intensity import denormalize
from bsynth_hpc.data.store import StoreLayout, VolumeStore, default_chunks
from bsynth_hpc.errors import ConfigError, ManifestError, StoreError
from bsynth_hpc.prep.bids import bids_modality, find_anat_files, parse_bids_name
from bsynth_hpc.prep.ingest import PrepSource, collect
from bsynth_hpc.prep.manifest_writer import guess_from_name, manifest_from_folder
from bsynth_hpc.prep.pipeline import PrepConfig, run_prep
from bsynth_hpc.prep.preprocess import PreprocessParams, preprocess_volume
from bsynth_hpc.prep.tables import read_subject_table

GRID = {"shape": (12, 14, 10), "spacing": (2.0, 2.0, 2.0)}


# ---------------------------------------------------------------------------- helpers
def head(seed: int, shape=(14, 16, 10)) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    data[inner] = 50.0 + 50.0 * np.random.default_rng(seed).random(tuple(s - 4 for s in shape))
    return data


def nifti(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(head(seed), np.diag([1.5, 1.5, 1.5, 1.0])), path)
    return path


def tsv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prep(source: PrepSource, out: Path, **kwargs):
    return run_prep(source, out, PrepConfig(cluster="sync", progress=False, **{**GRID, **kwargs}))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = bsynth(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bids_dataset(root: Path) -> Path:
    """Two subjects (one with two sessions), contrast-enhanced T1w, an acq- duplicate, files to skip."""
    (root).mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Tiny Study", "BIDSVersion": "1.9.0"}))
    tsv(root / "participants.tsv", [["participant_id", "age", "sex", "group", "site"],
                                    ["sub-01", "64", "F", "patient", "A"],
                                    ["02", "n/a", "M", "control", "B"]])  # without the sub- prefix
    anat1 = root / "sub-01" / "ses-1" / "anat"
    nifti(anat1 / "sub-01_ses-1_T1w.nii.gz", 1)
    nifti(anat1 / "sub-01_ses-1_ce-gadolinium_T1w.nii.gz", 2)
    nifti(anat1 / "sub-01_ses-1_FLAIR.nii.gz", 3)
    nifti(anat1 / "sub-01_ses-1_T2starw.nii.gz", 4)
    (anat1 / "sub-01_ses-1_T1w.json").write_text("{}")
    nifti(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", 5)
    anat2 = root / "sub-02" / "anat"
    nifti(anat2 / "sub-02_T2w.nii.gz", 6)
    nifti(anat2 / "sub-02_acq-highres_T2w.nii.gz", 7)
    nifti(root / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz", 8)
    nifti(root / "derivatives" / "x" / "sub-02" / "anat" / "sub-02_desc-brain_T2w.nii.gz", 9)
    return root


# ---------------------------------------------------------------------------- 1. BIDS
def test_bids_names_map_to_modalities():
    name = parse_bids_name("sub-01_ses-1_ce-gadolinium_T1w.nii.gz")
    assert name.subject == "sub-01" and name.session == "ses-1" and bids_modality(name) == ("T1Gd", "")
    assert bids_modality(parse_bids_name("sub-01_FLAIR.nii"))[0] == "FLAIR"
    assert bids_modality(parse_bids_name("sub-01_T2starw.nii.gz"))[0] is None
    assert bids_modality(parse_bids_name("sub-01_ce-gd_FLAIR.nii.gz"))[0] is None
    assert parse_bids_name("brain_T1.nii.gz") is None and parse_bids_name("sub-01_T1w_mask.nii.gz") is None


def test_bids_folder_to_store_with_participants_labels_and_metadata(tmp_path, capsys):
    root = bids_dataset(tmp_path / "ds")
    out = tmp_path / "ds_store.zarr"
    code, _, err = run_cli(capsys, "prep", "--bids", str(root), "--label-column", "group", "--out", str(out),
                           "--cluster", "sync", "--shape", "12", "14", "10", "--spacing", "2", "--quiet")
    assert code == 0, err
    store = VolumeStore(out)
    assert store.volume_ids() == ["Tiny-Study__sub-01__ses-1__FLAIR", "Tiny-Study__sub-01__ses-1__T1Gd",
                                  "Tiny-Study__sub-01__ses-1__T1w", "Tiny-Study__sub-01__ses-2__T1w",
                                  "Tiny-Study__sub-02__T2w"]
    gd = store.record("Tiny-Study__sub-01__ses-1__T1Gd")
    assert (gd["dataset"], gd["subject"], gd["session"], gd["label"]) == ("Tiny Study", "sub-01", "ses-1", "patient")
    assert gd["metadata"]["age"] == 64.0 and gd["metadata"]["sex"] == "female"
    assert gd["source_path"].endswith("sub-01_ses-1_ce-gadolinium_T1w.nii.gz")
    t2 = store.record("Tiny-Study__sub-02__T2w")
    assert t2["label"] == "control" and t2["metadata"]["age"] is None and t2["metadata"]["sex"] == "male"
    assert t2["source_path"].endswith("sub-02_T2w.nii.gz")  # the acq- variant is skipped
    assert store.info["labels"] == ["control", "patient"]
    report = json.loads((out / "prep_report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["source"]["skipped"]}
    assert set(skipped) == {"sub-01_ses-1_T2starw.nii.gz", "sub-02_acq-highres_T2w.nii.gz"}
    assert "T2starw" in skipped["sub-01_ses-1_T2starw.nii.gz"] and "sub-02_T2w" in skipped[
        "sub-02_acq-highres_T2w.nii.gz"]
    assert report["source"]["subject_table"]["label_column"] == "group"
    assert err.count("'site'") == 1 and "participants.tsv column" in err  # the unknown column, warned once


def test_bids_bad_participant_value_fails_only_that_subject(tmp_path):
    root = bids_dataset(tmp_path / "ds")
    tsv(root / "participants.tsv", [["participant_id", "age"], ["sub-01", "64"], ["sub-02", "300"]])
    result = prep(PrepSource.bids(root), tmp_path / "s.zarr")
    assert result.exit_code == 1 and result.done == 4
    [bad] = result.failures
    assert bad.subject == "sub-02" and bad.error_type == "MetadataError"
    assert "participants.tsv line 3" in bad.message and "age" in bad.message


def test_bids_label_column_and_table_errors(tmp_path):
    root = bids_dataset(tmp_path / "ds")
    with pytest.raises(ManifestError, match="no column 'diagnosis' for --label-column.*participant_id"):
        collect(PrepSource.bids(root, label_column="diagnosis"))
    (root / "participants.tsv").unlink()
    with pytest.raises(ManifestError, match="needs a subject table.*participants.tsv"):
        collect(PrepSource.bids(root, label_column="group"))
    ingested = collect(PrepSource.bids(root))  # no participants.tsv: no labels, no error
    assert len(ingested.items) == 5 and all(i.label is None for i in ingested.items)
    tsv(root / "participants.tsv", [["participant_id", "age"], ["sub-01", "1"], ["01", "2"]])
    with pytest.raises(ManifestError, match="line 3 repeats subject '01'"):
        collect(PrepSource.bids(root))


def test_bids_out_inside_or_equal_to_the_dataset_is_refused(tmp_path):
    root = bids_dataset(tmp_path / "ds")
    for out, words in ((root / "store.zarr", "inside the bids folder"), (root, "is the input folder"),
                       (tmp_path, "contains the input folder")):
        with pytest.raises(StoreError, match=words):
            prep(PrepSource.bids(root), out)
    assert not (root / "store.zarr").exists() and not (root / "zarr.json").exists()


def test_bids_folder_without_anat_files_says_where_to_point(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    nifti(tmp_path / "sub-01" / "anat" / "sub-01_T2starw.nii.gz")
    with pytest.raises(ManifestError, match=r"holds no sub-\*.*1 other NIfTI file\(s\) skipped"):
        collect(PrepSource.bids(tmp_path))
    files, skipped = find_anat_files(tmp_path)
    assert files == [] and len(skipped) == 1


# ---------------------------------------------------------------------------- 2. bsynth manifest --from
def own_folder(root: Path) -> Path:
    nifti(root / "P001_t1ce.nii.gz", 1)
    nifti(root / "P001_FLAIR.nii", 2)
    nifti(root / "P002" / "T1.nii.gz", 3)
    nifti(root / "sub-03" / "ses-a" / "anat" / "sub-03_ses-a_T2w.nii.gz", 4)
    nifti(root / "P001_brainmask.nii.gz", 5)
    nifti(root / "sub-03" / "ses-a" / "dwi" / "sub-03_ses-a_dwi.nii.gz", 6)
    (root / "notes.txt").write_text("ignored")
    return root


def test_manifest_from_folder_is_accepted_by_prep(tmp_path, capsys):
    root = own_folder(tmp_path / "scans")
    code, out, _ = run_cli(capsys, "manifest", "--from", str(root))
    assert code == 0
    assert "not classified (2 file(s)" in out and "P001_brainmask.nii.gz" in out and "sub-03_ses-a_dwi" in out
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {(r["subject"], r["session"], r["modality"], r["path"]) for r in rows}
    assert got == {("P001", "", "T1Gd", "P001_t1ce.nii.gz"), ("P001", "", "FLAIR", "P001_FLAIR.nii"),
                   ("P002", "", "T1w", "P002/T1.nii.gz"),
                   ("sub-03", "ses-a", "T2w", "sub-03/ses-a/anat/sub-03_ses-a_T2w.nii.gz")}
    assert {r["dataset"] for r in rows} == {"scans"}
    result = prep(PrepSource.manifest(root / "manifest.csv"), tmp_path / "scans_store.zarr")
    assert result.exit_code == 0 and result.done == 4
    code, _, err = run_cli(capsys, "manifest", "--from", str(root))
    assert code == 2 and "exists" in err and "--force" in err


def test_manifest_pattern_with_named_groups(tmp_path, capsys):
    root = tmp_path / "site"
    nifti(root / "patient-7" / "visit2" / "scan_T2.nii.gz")
    nifti(root / "patient-8" / "visit1" / "scan_T1.nii.gz")
    nifti(root / "other" / "x.nii.gz")
    draft = manifest_from_folder(root, tmp_path / "site" / "m.csv",
                                 pattern=r"patient-(?P<subject>\d+)/(?P<session>visit\d)/scan_(?P<modality>T\d)")
    assert [(r["subject"], r["session"], r["modality"]) for r in draft.rows] == [("7", "visit2", "T2w"),
                                                                                ("8", "visit1", "T1w")]
    assert [s.path for s in draft.unclassified] == ["other/x.nii.gz"]
    code, _, err = run_cli(capsys, "manifest", "--from", str(root), "--pattern", "(?P<modality>T1)", "--force")
    assert code == 2 and "(?P<subject>...)" in err and err.count("\n") == 1


def test_name_guessing_rules():
    from pathlib import PurePosixPath as P

    assert guess_from_name(P("BraTS-GLI-00002-000-t2f.nii.gz")).modality == "FLAIR"
    assert guess_from_name(P("a/sub-01_ce-gd_T1w.nii.gz")).modality == "T1Gd"
    assert guess_from_name(P("P9_T2_FLAIR.nii.gz")).subject == "P9"
    assert isinstance(guess_from_name(P("P9_seg.nii.gz")), str)


# ---------------------------------------------------------------------------- 3. BraTS subject tables
def test_brats_cases_take_labels_and_metadata_from_a_subject_table(tmp_path, capsys):
    root = tmp_path / "BraTS"
    for case in ("BraTS_001", "BraTS_002"):
        for suffix in ("t1", "flair"):
            nifti(root / case / f"{case}_{suffix}.nii.gz")
    table = tmp_path / "cases.csv"
    table.write_text("subject,diagnosis,age,sex,grade\nBraTS_001,GBM,51,M,4\nBraTS_002,LGG,,F,2\n")
    code, _, err = run_cli(capsys, "prep", "--brats", str(root), "--labels", str(table), "--label-column",
                           "diagnosis", "--out", str(tmp_path / "b.zarr"), "--cluster", "sync", "--shape", "12",
                           "14", "10", "--spacing", "2", "--quiet")
    assert code == 0, err
    store = VolumeStore(tmp_path / "b.zarr")
    rec = store.record("BraTS__BraTS_001__FLAIR")
    assert rec["label"] == "GBM" and rec["metadata"]["age"] == 51.0 and rec["metadata"]["sex"] == "male"
    assert store.record("BraTS__BraTS_002__T1w")["label"] == "LGG"
    assert "'grade'" in err
    ing = collect(PrepSource.brats(root, metadata={"tumor": "yes"}, subjects_table=table))
    assert all(i.metadata["tumor"] is True and i.label is None for i in ing.items)  # no 'label' column
    with pytest.raises(ConfigError, match="needs --subjects-table"):
        PrepSource.brats(root, label_column="diagnosis")
    code, _, err = run_cli(capsys, "prep", "--manifest", str(table), "--labels", str(table), "--out",
                           str(tmp_path / "x.zarr"))
    assert code == 2 and "apply to --bids and --brats" in err


def test_subject_table_matches_ids_with_or_without_the_sub_prefix(tmp_path):
    table = read_subject_table(tsv(tmp_path / "p.tsv", [["participant_id", "label", "Age"], ["01", "AD", "70"]]))
    assert table.fields("sub-01")["label"] == "AD" and table.has("01") and not table.has("sub-02")
    assert table.ignored_columns == ("Age",) and "did you mean 'age'" in " ".join(table.warnings())


# ---------------------------------------------------------------------------- 4. bsynth info on raw folders
def test_info_on_raw_folders_suggests_a_prep_command_that_works(tmp_path, capsys):
    root = own_folder(tmp_path / "scans")
    code, _, err = run_cli(capsys, "info", str(root))
    assert code == 2 and f"bsynth manifest --from {root}" in err and f"--out {root}_store.zarr" in err
    assert f"--out {root}`" not in err and f"--out {root} " not in err
    manifest_from_folder(root)
    code, _, err = run_cli(capsys, "info", str(root))
    assert code == 2 and f"bsynth prep --manifest {root / 'manifest.csv'} --out {root}_store.zarr" in err
    bids = bids_dataset(tmp_path / "ds")
    code, _, err = run_cli(capsys, "info", str(bids))
    assert code == 2 and f"bsynth prep --bids {bids} --out {bids}_store.zarr" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------- 5. slurm without sbatch
def test_slurm_without_sbatch_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    root = bids_dataset(tmp_path / "ds")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, "prep", "--bids", str(root), "--out", str(tmp_path / "s.zarr"),
                           "--cluster", "slurm")
    assert code == 2 and time.perf_counter() - t0 < 10
    assert err == ("bsynth: error: --cluster slurm needs SLURM's sbatch on PATH; on a workstation use "
                   "--cluster local\n")
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------- 6. --chunks help
def test_chunks_help_states_the_real_default(tmp_path):
    prep_parser = build_parser()._subparsers._group_actions[0].choices["prep"]
    text = next(a.help for a in prep_parser._actions if "--chunks" in a.option_strings)
    assert "64^3" not in text and "ceil(n/2)" in text
    assert default_chunks((48, 56, 40)) == (24, 28, 20) and "24 28 20 for 48 56 40" in text
    assert default_chunks((192, 224, 160)) == (96, 112, 80) and "96 112 80 for 192 224 160" in text
    store = VolumeStore.create_or_open(tmp_path / "s.zarr", StoreLayout("volume3d", (48, 56, 40), (4.0,) * 3))
    assert store.info["chunks"] == [24, 28, 20]


# ---------------------------------------------------------------------------- 7. intensity mapping
@pytest.mark.parametrize("normalize", ["minmax", "zscore"])
def test_denormalize_inverts_the_recorded_intensity_mapping(normalize):
    data = head(11, shape=(12, 14, 10)) + 20.0 * np.random.default_rng(1).random((12, 14, 10)).astype(np.float32)
    data[6, 7, 5] = 1e4  # a hot voxel: clipped away
    params = PreprocessParams(shape=(12, 14, 10), spacing=(2.0, 2.0, 2.0), normalize=normalize)
    in_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    out = preprocess_volume(data, in_aff, params)
    record = {"volume_id": "v", "intensity": out.intensity.as_dict()}
    lo, hi = record["intensity"]["clip_low"], record["intensity"]["clip_high"]
    assert lo < hi < 1e4
    shift = np.rint((np.linalg.inv(in_aff) @ out.affine)[:3, 3]).astype(int)  # whole voxels: same grid
    back = denormalize(out.data, record)
    src = np.clip(data, lo, hi)
    idx = np.argwhere(np.ones(out.data.shape, bool))
    inside = np.all((idx + shift >= 0) & (idx + shift < data.shape), axis=1)
    i, j = idx[inside], idx[inside] + shift
    np.testing.assert_allclose(back[tuple(i.T)], src[tuple(j.T)], rtol=0, atol=1e-3 * (hi - lo))
    assert back.max() <= hi and back.min() >= lo
    with pytest.raises(StoreError, match="rerun `bsynth prep`"):
        denormalize(out.data, {"volume_id": "old"})


def test_prepped_records_carry_the_intensity_mapping(tmp_path):
    root = tmp_path / "c"
    nifti(root / "a.nii.gz", 3)
    (root / "m.csv").write_text("subject,session,dataset,modality,path\na,,d,T1w,a.nii.gz\n")
    result = prep(PrepSource.manifest(root / "m.csv"), tmp_path / "s.zarr")
    store = VolumeStore(result.store_path)
    rec = store.record("d__a__T1w")
    assert set(rec["intensity"]) == {"method", "clip_low", "clip_high", "offset", "scale"}
    lo, hi = rec["intensity"]["clip_low"], rec["intensity"]["clip_high"]
    back = denormalize(store.read_volume("d__a__T1w"), rec)  # resampled 1.5 -> 2 mm: smoothed, inside [lo, hi]
    assert lo == 0.0 and 90.0 < hi <= 100.0 and back.min() == lo and 0.9 * hi < back.max() <= hi
