"""`bsynth demo`: the shared demo machinery (steps, timings, summary, manifest filter, latent-grid fit,
option checks) on its own, dispatch through the registered Recipe, and `bsynth demo --recipe dit3d`
end to end at the smallest size that runs every step (8 mm grid, 8 demo-epilepsy subjects, a few
training steps)."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import pytest

from bsynth_hpc import demo as demo_mod
from bsynth_hpc.cli import build_parser, main
from bsynth_hpc.engine.registry import get_recipe
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.recipes.common import demo as common_demo
from bsynth_hpc.recipes.dit3d import demo as dit3d_demo


def test_demo_parser_keeps_wfdm_the_default():
    args = build_parser().parse_args(["demo"])
    assert args.recipe == "wfdm" and args.subjects is None and args.spacing == 4.0 and args.out == "demo_run"
    args = build_parser().parse_args(["demo", "--recipe", "dit3d", "--override", "dit3d:engine.max_steps=2",
                                      "--override", "dit3d-vae:engine.max_steps=3", "--n-per-class", "5"])
    assert args.recipe == "dit3d" and args.n_per_class == 5 and args.cfg == 3.0
    assert args.arch == "efficientnet_v2_s"   # 000's classifier; the end-to-end test below uses --arch tiny
    assert args.override == ["dit3d:engine.max_steps=2", "dit3d-vae:engine.max_steps=3"]


def test_run_demo_defaults_and_checks(monkeypatch):
    seen = {}
    parser = build_parser()
    real = get_recipe("dit3d")
    stub = dataclasses.replace(real.load("demo"), run=lambda a: seen.setdefault("subjects", a.subjects) and 0)
    monkeypatch.setattr(demo_mod, "get_recipe", lambda name: dataclasses.replace(real, demo=stub))
    assert demo_mod.run_demo(parser.parse_args(["demo", "--recipe", "dit3d"])) == 0
    assert seen["subjects"] == dit3d_demo.DEMO.default_subjects == 40
    with pytest.raises(ConfigError, match="STAGE:key=value"):
        demo_mod.run_demo(parser.parse_args(["demo", "--recipe", "dit3d", "--override", "max_steps=3"]))


def test_demo_is_the_registered_recipe_demo():
    """`bsynth demo --recipe R` runs get_recipe(R).demo; the chains live in the recipe packages."""
    assert get_recipe("dit3d").load("demo") is dit3d_demo.DEMO
    assert get_recipe("wfdm").load("demo").default_subjects == 32
    assert get_recipe("wfdm").load("demo").run.__module__ == "bsynth_hpc.recipes.wfdm.demo"


def test_demo_steps_timings_and_summary(tmp_path, capsys):
    args = argparse.Namespace(recipe="dit3d", out=str(tmp_path / "out"), func=print, subjects=2)
    d = common_demo.Demo(args, 2)
    with d.step("first", "one"):
        pass
    with d.step("second", "two"):
        pass
    assert d.finish(0, [("store", "s"), ("samples", "x")]) == 0
    out = capsys.readouterr().out
    assert "[1/2] one" in out and "[2/2] two" in out and "demo finished in" in out
    summary = json.loads((tmp_path / "out" / common_demo.SUMMARY_NAME).read_text())
    assert list(summary["step_seconds"]) == ["first", "second"] and summary["options"]["subjects"] == 2
    assert summary["recipe"] == "dit3d" and summary["exit_code"] == 0 and "func" not in summary["options"]


def test_filter_manifest_and_latent_grid(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,modality,path\ns1,T1w,a.nii.gz\ns1,FLAIR,b.nii.gz\ns2,T1w,c.nii.gz\n")
    out = common_demo.filter_manifest(manifest, ["T1w"])
    with out.open(newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["a.nii.gz", "c.nii.gz"]
    with pytest.raises(ConfigError):
        common_demo.filter_manifest(manifest, ["T2w"])
    # 4 mm: 48x56x40 / 4 = 12x14x10 tiles into 2x2x2 patches; 8 mm needs a factor of 2
    assert dit3d_demo.fit_latent_grid(4.0) == [] and dit3d_demo.fit_latent_grid(2.0) == []
    assert dit3d_demo.fit_latent_grid(8.0) == ["recipe.downsample_factor=2"]
    assert dit3d_demo.study_slices(4.0) == 34 and dit3d_demo.study_slices(8.0) == 17
    assert sum(dit3d_demo.DIT3D_SPLITS) == pytest.approx(1.0)


def test_demo_dit3d_end_to_end(tmp_path, monkeypatch):   # ~25 s of CPU on one core
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    out = tmp_path / "tle"
    fast = ["engine.val_every=0", "engine.ckpt_every=0", "engine.log_every=1"]
    overrides = [f"dit3d-vae:{o}" for o in fast + ["engine.max_steps=2", "recipe.phase1_steps=1"]]
    overrides += [f"dit3d:{o}" for o in fast + ["engine.max_steps=2"]]
    argv = ["demo", "--recipe", "dit3d", "--out", str(out), "--subjects", "8", "--spacing", "8", "--workers", "1",
            "--n-per-class", "2", "--sample-steps", "2", "--study-epochs", "1", "--arch", "tiny"]
    for o in overrides:
        argv += ["--override", o]
    assert main(argv) == 0
    # the cohort: demo-epilepsy only, T1w only, label-stratified splits (both classes in train and test)
    with (out / "store.zarr" / "table.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["dataset"] for r in table} == {"demo-epilepsy"} and {r["modality"] for r in table} == {"T1w"}
    from bsynth_hpc.data.store import VolumeStore

    splits = VolumeStore(out / "store.zarr").info["splits"]
    assert splits["stratify"] == "label"
    per_split = {(splits["assignment"][f"{r['dataset']}/{r['subject']}"], r["label"]) for r in table}
    assert {("train", "healthy"), ("train", "TLE"), ("test", "healthy"), ("test", "TLE")} <= per_split
    # samples per class in one samples.csv
    with (out / "samples" / "samples.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["label"] for r in rows) == ["TLE", "TLE", "healthy", "healthy"]
    assert all((out / "samples" / r["path"]).is_file() for r in rows)
    # the study table
    report = json.loads((out / "study" / "metrics.json").read_text())
    assert list(report["conditions"]) == ["real", "synthetic", "real+synthetic 1:0.25", "real+synthetic 1:0.5"]
    assert report["config"]["arch"] == "tiny" and report["config"]["modality"] == "T1w"
    assert report["data"]["n_synthetic_pool"] == 4 and report["config"]["n_slices"] == 17
    assert "AUC-ROC" in (out / "study" / "metrics.md").read_text()
    summary = json.loads((out / common_demo.SUMMARY_NAME).read_text())
    assert list(summary["step_seconds"]) == ["cohort", "prep", "dit3d-vae", "encode", "dit3d", "sample",
                                             "fidelity", "study"]
    assert summary["exit_code"] == 0 and summary["study"]["arch"] == "tiny"
    fidelity = json.loads((out / "eval" / "fidelity" / "fidelity.json").read_text())
    assert fidelity["summary"]["samples"]["pooled"]["corr_modality"]["n"] == 4


def test_demo_wfdm_end_to_end(tmp_path, monkeypatch):   # ~50 s of CPU: the README's main job, kept on CI
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    out = tmp_path / "wfdm"
    argv = ["demo", "--out", str(out), "--subjects", "6", "--spacing", "8", "--workers", "1"]
    for stage in ("wfdm-vae", "wfdm-ldm"):
        argv += ["--override", f"{stage}:engine.max_steps=2", "--override", f"{stage}:engine.val_every=0"]
    assert main(argv) == 0
    summary = json.loads((out / common_demo.SUMMARY_NAME).read_text())
    assert summary["recipe"] == "wfdm" and summary["options"]["subjects"] == 6
    assert list(summary["step_seconds"]) == ["cohort", "prep", "wfdm-vae", "encode", "wfdm-ldm", "sample", "eval",
                                             "fidelity"]
    assert (out / "samples" / "samples.csv").is_file()
    assert (out / "eval" / "synth" / "metrics.json").is_file() and (out / "eval" / "recon" / "metrics.json").is_file()
    fidelity = json.loads((out / "eval" / "fidelity" / "fidelity.json").read_text())
    n_samples = len((out / "samples" / "samples.csv").read_text().strip().splitlines()) - 1
    assert fidelity["summary"]["samples"]["pooled"]["corr_modality"]["n"] == n_samples > 0


def test_demo_slice2d_end_to_end(tmp_path, monkeypatch):   # ~20 s of CPU: seeds 001/004's demo chain
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    out = tmp_path / "slices"
    argv = ["demo", "--recipe", "slice2d", "--out", str(out), "--subjects", "6", "--spacing", "8", "--workers", "1",
            "--slice-size", "32", "--slice-n", "6"]
    for stage in ("slice2d-vae", "slice2d-ldm"):
        argv += ["--override", f"{stage}:engine.max_steps=2", "--override", f"{stage}:engine.val_every=0",
                 "--override", f"{stage}:engine.ckpt_every=0"]
    assert main(argv) == 0
    summary = json.loads((out / common_demo.SUMMARY_NAME).read_text())
    assert summary["recipe"] == "slice2d" and summary["mode"] == "unconditional"
    assert list(summary["step_seconds"]) == ["cohort", "prep", "slices", "slice2d-vae", "encode", "slice2d-ldm",
                                             "sample", "fidelity"]
    from bsynth_hpc.data.store import VolumeStore

    slices = VolumeStore(out / "slices.zarr")
    assert slices.shape[-2:] == (32, 32)
    with (out / "samples" / "samples.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all((out / "samples" / r["path"]).is_file() for r in rows)
    fidelity = json.loads((out / "eval" / "fidelity" / "fidelity.json").read_text())
    pooled = fidelity["summary"]["samples"]["pooled"]
    assert pooled["corr_modality"]["n"] == 6 and len(pooled["corr_modality"]["median_ci95"]) == 2
    levels = fidelity["by_level"]["FLAIR"]
    assert sum(row["n_samples"] for row in levels["by_level"]) == 6
    assert "FLAIR by slice level" in (out / "eval" / "fidelity" / "fidelity.md").read_text()
