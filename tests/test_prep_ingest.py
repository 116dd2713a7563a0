"""bsynth_hpc.prep.ingest: manifest / BraTS / slice-folder inputs -> work items and up-front failures."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bsynth_hpc.data.metadata import CLINICAL_ROI_FIELDS, FIELD_NAMES
from bsynth_hpc.errors import ConfigError, ManifestError
from bsynth_hpc.prep.ingest import (
    PrepSource,
    collect,
    make_volume_id,
    read_manifest,
    sanitize,
    scan_brats,
    scan_slices,
)

ROI = ["roi_hippocampus_l", "roi_hippocampus_r", "roi_amygdala_l", "roi_amygdala_r",
       "roi_ventricle_l", "roi_ventricle_r"]


def nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), path)
    return path


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def row(subject: str, path: str, modality: str = "T1w", **extra: str) -> dict:
    return {"subject": subject, "session": "ses-1", "dataset": "ds", "modality": modality, "path": path, **extra}


# ---------------------------------------------------------------------------- volume ids
def test_volume_id_is_sanitized_and_deterministic():
    assert make_volume_id("OASIS 3", "sub/01", None, "T1w") == "OASIS-3__sub-01__T1w"
    assert make_volume_id("ds", "..hidden", "ses 1", "FLAIR") == "ds__hidden__ses-1__FLAIR"
    assert sanitize("///") == "x"
    assert make_volume_id("a", "b", "c", "T2w") == make_volume_id("a", "b", "c", "T2w")


# ---------------------------------------------------------------------------- manifest, good rows
def test_manifest_rows_become_items_with_typed_fields(tmp_path):
    nifti(tmp_path / "img" / "a.nii.gz")
    nifti(tmp_path / "img" / "b.nii")
    roi_vals = {c: f"0.00{i + 1}" for i, c in enumerate(ROI)}
    man = write_csv(tmp_path / "m.csv", [
        row("s1", "img/a.nii.gz", "t1ce", label="AD", age="71", sex="F", tumor="yes", **roi_vals, extra="x"),
        {**row("s2", "img/../img/b.nii", "flair"), "session": "", "label": "", "age": "", "sex": "",
         "tumor": "", **{c: "" for c in ROI}, "extra": ""},
    ])
    ing = read_manifest(man)
    assert ing.failures == []
    a, b = ing.items
    assert a.volume_id == "ds__s1__ses-1__T1Gd" and a.modality == "T1Gd"
    assert a.source_path == str((tmp_path / "img" / "a.nii.gz").resolve())
    assert a.label == "AD" and a.session == "ses-1"
    assert a.metadata["age"] == 71.0 and a.metadata["sex"] == "female" and a.metadata["tumor"] is True
    assert set(a.metadata) == set(FIELD_NAMES) and a.metadata["bmi"] is None
    assert list(a.clinical) == list(CLINICAL_ROI_FIELDS)
    assert a.clinical["roi_hippocampus_left"] == pytest.approx(0.001)
    assert a.clinical["roi_lateral_ventricle_right"] == pytest.approx(0.006)
    assert b.volume_id == "ds__s2__FLAIR" and b.session is None and b.label is None and b.clinical is None
    assert b.source_path == str((tmp_path / "img" / "b.nii").resolve())
    assert ing.info["ignored_columns"] == ["extra"]


def test_manifest_accepts_long_roi_names_and_absolute_paths_inside_root(tmp_path):
    p = nifti(tmp_path / "a.nii.gz")
    man = write_csv(tmp_path / "m.csv", [row("s1", str(p), **{k: "0.5" for k in CLINICAL_ROI_FIELDS})])
    ing = read_manifest(man)
    assert ing.failures == [] and ing.items[0].clinical == {k: 0.5 for k in CLINICAL_ROI_FIELDS}


# ---------------------------------------------------------------------------- manifest, fatal errors
def test_missing_required_columns_are_named(tmp_path):
    man = write_csv(tmp_path / "m.csv", [{"subject": "s", "modality": "T1w", "path": "a.nii.gz"}])
    with pytest.raises(ManifestError, match="lacks required column.*session, dataset"):
        read_manifest(man)


def test_missing_mask_column_is_named(tmp_path):
    man = write_csv(tmp_path / "m.csv", [row("s1", "a.nii.gz")])
    with pytest.raises(ManifestError, match="brainmask"):
        read_manifest(man, mask_column="brainmask")


@pytest.mark.parametrize("content, match", [
    ("", "empty"),
    ("subject,session,dataset,modality,path\n", "no rows"),
    ("subject,session,dataset,modality,path,age,age\ns,1,d,T1w,a.nii.gz,3,4\n", "repeats column"),
    ("subject,session,dataset,modality,path,roi_hippocampus_l\ns,1,d,T1w,a.nii.gz,0.1\n", "lacks roi_hippocampus_r"),
])
def test_unusable_manifests_raise(tmp_path, content, match):
    man = tmp_path / "m.csv"
    man.write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_manifest(man)


def test_nonexistent_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------- manifest, bad rows
def test_bad_rows_become_failures_and_good_rows_survive(tmp_path):
    root = tmp_path / "root"
    nifti(root / "good.nii.gz")
    nifti(root / "other.nii.gz")
    outside = nifti(tmp_path / "outside.nii.gz")
    (root / "link.nii.gz").symlink_to(outside)
    (root / "notes.txt").write_text("x")
    roi_partial = {c: "" for c in ROI} | {"roi_hippocampus_l": "0.1"}
    rows = [
        row("good", "good.nii.gz", **{c: "" for c in ROI}),
        row("dwi", "other.nii.gz", "DWI", **{c: "" for c in ROI}),
        row("age", "other.nii.gz", age="abc", **{c: "" for c in ROI}),
        row("sex", "other.nii.gz", sex="purple", **{c: "" for c in ROI}),
        row("escape", "../outside.nii.gz", **{c: "" for c in ROI}),
        row("symlink", "link.nii.gz", **{c: "" for c in ROI}),
        row("missing", "nope.nii.gz", **{c: "" for c in ROI}),
        row("notnifti", "notes.txt", **{c: "" for c in ROI}),
        row("roi_partial", "other.nii.gz", **roi_partial),
        row("roi_text", "other.nii.gz", **({c: "0.1" for c in ROI} | {"roi_amygdala_r": "big"})),
        row("", "other.nii.gz", **{c: "" for c in ROI}),
        row("good", "other.nii.gz", **{c: "" for c in ROI}),  # same id as row 1
    ]
    ing = read_manifest(write_csv(root / "m.csv", rows))
    assert [i.subject for i in ing.items] == ["good"]
    by_line = {f.origin: f for f in ing.failures}
    expect = {  # manifest line -> (error type, words in the message)
        3: ("ManifestError", "unknown modality 'DWI'"),
        4: ("MetadataError", "'age' has value 'abc'"),
        5: ("MetadataError", "'sex' has value 'purple'"),
        6: ("ManifestError", "outside the root folder"),
        7: ("ManifestError", "outside the root folder"),
        8: ("InputError", "file not found"),
        9: ("InputError", "not .nii or .nii.gz"),
        10: ("ManifestError", "partly filled"),
        11: ("MetadataError", "roi_amygdala_right"),
        12: ("ManifestError", "'subject' is empty"),
        13: ("ManifestError", "also produced by m.csv line 2"),
    }
    assert set(by_line) == {f"m.csv line {n}" for n in expect}
    for line, (etype, words) in expect.items():
        f = by_line[f"m.csv line {line}"]
        assert f.error_type == etype and words in f.message, (line, f)
        assert f.stage == "ingest" and f.fix
    assert by_line["m.csv line 6"].source_path == str(tmp_path / "outside.nii.gz")
    assert by_line["m.csv line 8"].source_path == str(root / "nope.nii.gz")
    assert ing.total == len(rows)


def test_allow_outside_root_accepts_escaping_paths(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    nifti(tmp_path / "outside.nii.gz")
    ing = read_manifest(write_csv(root / "m.csv", [row("s", "../outside.nii.gz")]), allow_outside_root=True)
    assert ing.failures == [] and ing.items[0].source_path == str((tmp_path / "outside.nii.gz").resolve())


def test_mask_column_paths_are_resolved_and_checked(tmp_path):
    nifti(tmp_path / "a.nii.gz")
    nifti(tmp_path / "a_mask.nii.gz")
    man = write_csv(tmp_path / "m.csv", [row("s1", "a.nii.gz", mask="a_mask.nii.gz"),
                                         row("s2", "a.nii.gz", mask=""),
                                         row("s3", "a.nii.gz", mask="gone.nii.gz")])
    ing = read_manifest(man, mask_column="mask")
    assert [i.mask_path for i in ing.items] == [str((tmp_path / "a_mask.nii.gz").resolve())]
    msgs = sorted(f.message for f in ing.failures)
    assert "mask column 'mask' is empty" in msgs[1] and "file not found" in msgs[0]


def test_mask_column_needs_a_manifest(tmp_path):
    with pytest.raises(ManifestError, match="needs a manifest"):
        collect(PrepSource.brats(tmp_path), mask_column="mask")


# ---------------------------------------------------------------------------- BraTS
def test_brats_layout(tmp_path):
    root = tmp_path / "BraTS2021"
    for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
        nifti(root / "BraTS2021_00001" / f"BraTS2021_00001_{suffix}.nii.gz")
    for suffix in ("t1n", "t2f"):
        nifti(root / "BraTS-GLI-00002-000" / f"BraTS-GLI-00002-000-{suffix}.nii")
    nifti(root / "BraTS2021_00003" / "BraTS2021_00003_dwi.nii.gz")
    nifti(root / "BraTS2021_00003" / "scan.nii.gz")
    (root / "BraTS2021_00003" / "readme.txt").write_text("ignored")
    (root / "name_mapping.csv").write_text("ignored")
    ing = scan_brats(PrepSource.brats(root, metadata={"tumor": "yes"}))
    got = {(i.subject, i.modality) for i in ing.items}
    assert got == {("BraTS2021_00001", m) for m in ("T1w", "T1Gd", "T2w", "FLAIR")} | {
        ("BraTS-GLI-00002-000", "T1w"), ("BraTS-GLI-00002-000", "FLAIR")}
    assert all(i.dataset == "BraTS2021" and i.session is None and i.metadata["tumor"] is True for i in ing.items)
    assert "BraTS2021__BraTS2021_00001__T1Gd" in {i.volume_id for i in ing.items}
    msgs = sorted(f.message for f in ing.failures)
    assert len(msgs) == 2
    assert "does not follow" in msgs[0] and "scan.nii.gz" in msgs[0]
    assert "unknown modality suffix 'dwi'" in msgs[1]
    assert scan_brats(PrepSource.brats(root, dataset="mine")).items[0].dataset == "mine"


def test_empty_brats_folder_raises(tmp_path):
    (tmp_path / "case1").mkdir()
    with pytest.raises(ManifestError, match="holds no"):
        scan_brats(PrepSource.brats(tmp_path))
    with pytest.raises(ManifestError, match="does not exist"):
        scan_brats(PrepSource.brats(tmp_path / "nope"))


# ---------------------------------------------------------------------------- slices
def test_slice_folders(tmp_path):
    for cls, names in {"glioma": ["a.png", "b.JPG"], "normal": ["a.tif", "notes.txt", ".hidden.png"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).write_bytes(b"not decoded here")
    (tmp_path / ".cache").mkdir()
    ing = scan_slices(PrepSource.slices(tmp_path, dataset="kaggle", modality="t1ce"))
    assert ing.failures == []
    assert [(i.label, i.subject, i.modality) for i in ing.items] == [
        ("glioma", "glioma/a", "T1Gd"), ("glioma", "glioma/b", "T1Gd"), ("normal", "normal/a", "T1Gd")]
    assert [i.volume_id for i in ing.items] == ["kaggle__glioma__a", "kaggle__glioma__b", "kaggle__normal__a"]
    assert ing.info["classes"] == ["glioma", "normal"]


def test_slice_subject_pattern_groups_a_patients_slices(tmp_path):
    for cls, names in {"AD": ["sub-01_T1w_0.png", "sub-01_T1w_1.png"], "CN": ["sub-02_T1w_0.png", "x.png"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).write_bytes(b"")
    ing = scan_slices(PrepSource.slices(tmp_path, subject_pattern=r"^(sub-[^_]+)_"))
    assert [i.subject for i in ing.items] == ["sub-01", "sub-01", "sub-02"]
    [bad] = ing.failures
    assert bad.source_path == str(tmp_path / "CN" / "x.png") and "no subject id matching" in bad.message
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        scan_slices(PrepSource.slices(tmp_path, subject_pattern="(unclosed"))


def test_slice_folder_without_images_raises(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(ManifestError, match="holds no"):
        scan_slices(PrepSource.slices(tmp_path))
