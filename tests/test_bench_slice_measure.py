"""benchmarks.slice_measure: a 3D demo folder is cut into slices and scored on the slice measure; rows, seed
means and the table. The samples are the store's own held-out volumes, so on every slice they match the real
held-out slices: the same medians, no gap, a deviation ratio of exactly 1."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks import slice_measure
from bsynth_hpc.eval.io import open_store_set
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep

from test_eval_fidelity import SHAPE, phantom, write_samples

CASES = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Phantom heads in the BraTS layout (FLAIR, T1ce) through `bsynth prep --brats` (min-max, as the demos)."""
    tmp = tmp_path_factory.mktemp("brats")
    for c in range(CASES):
        case = tmp / "BraTS" / f"case{c:02d}"
        case.mkdir(parents=True)
        for suffix, contrast in (("flair", "T2w"), ("t1ce", "T1w")):
            nib.save(nib.Nifti1Image(phantom(c, contrast), np.eye(4)), str(case / f"{case.name}_{suffix}.nii.gz"))
    result = run_prep(PrepSource.brats(tmp / "BraTS"), tmp / "volumes.zarr",
                      PrepConfig(shape=SHAPE, spacing=(1.0, 1.0, 1.0), cluster="sync", progress=False,
                                 splits=(0.5, 0.25, 0.25)))
    assert result.exit_code == 0
    return result.store_path


def _demo_folder(root: Path, store_path: Path, seed: int) -> Path:
    """A finished 3D demo as the benchmark reads it: demo_summary.json, store.zarr, samples/."""
    d = root / f"wfdm_s{seed}"
    d.mkdir()
    (d / "store.zarr").symlink_to(store_path)
    (d / "demo_summary.json").write_text(json.dumps({"recipe": "wfdm", "options": {"seed": seed}}))
    held = [(r.volume_id, vs.load(i), r.modality) for vs in (open_store_set(store_path, split=split)
                                                             for split in ("val", "test"))
            for i, r in enumerate(vs.refs)]   # every held-out volume: the fidelity command's real reference
    write_samples(d / "samples", held, affine=np.eye(4))
    return d


def test_a_3d_demo_is_cut_into_slices_and_scored_against_its_own_slice_store(store, tmp_path):
    demo = _demo_folder(tmp_path, store, 0)
    out = tmp_path / "res" / "slices"
    assert slice_measure.main(["--demo-dir", str(demo), "--out", str(out), "--size", "32"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["modality"]: r for r in result["rows"]}
    assert set(rows) == {"FLAIR", "T1Gd"}
    assert (tmp_path / "res" / "slices_work" / demo.name / "slices.zarr").is_dir()
    for r in rows.values():
        assert r["seed"] == 0 and r["recipe"] == "wfdm" and r["n"] > 0
        assert r["corr"] == pytest.approx(r["real_corr"]) and r["dice"] == pytest.approx(r["real_dice"])
        assert r["gap_corr"] == pytest.approx(0.0, abs=1e-6)
        assert r["deviation_ratio"] == pytest.approx(1.0, rel=1e-3)   # the slice store keeps float16
        assert r["copies"] == 0
    assert result["per_recipe"]["wfdm"]["rows"] == 2 and result["flair"]["wfdm"]["rows"] == 1
    md = out.with_suffix(".md").read_text()
    assert "| wfdm | 0 | FLAIR |" in md and "Seed means, FLAIR" in md


def test_seed_means_skip_missing_values():
    rows = [{"recipe": "slice2d", "modality": "FLAIR", "corr": 0.97, "dice": 0.95, "real_corr": 0.96,
             "real_dice": 0.95, "gap_corr": 0.01, "gap_dice": None, "deviation_ratio": 0.8, "pairwise_ratio": 0.7},
            {"recipe": "slice2d", "modality": "FLAIR", "corr": 0.95, "dice": 0.93, "real_corr": 0.94,
             "real_dice": 0.93, "gap_corr": 0.03, "gap_dice": None, "deviation_ratio": None, "pairwise_ratio": 0.5}]
    s = slice_measure.per_recipe(rows, "FLAIR")["slice2d"]
    assert s["corr_mean"] == pytest.approx(0.96) and s["gap_corr_mean"] == pytest.approx(0.02)
    assert s["gap_dice_mean"] is None and s["deviation_ratio_mean"] == pytest.approx(0.8)
    assert s["pairwise_ratio_mean"] == pytest.approx(0.6)
    assert slice_measure.per_recipe(rows, "T1w") == {}
