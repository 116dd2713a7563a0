"""The seed-002 ablation benchmark (benchmarks/clinical_ablation.py): its arms are Table 2's rows plus the
w/o cls/reg column, and at its smallest setting it trains and scores real runs into sane JSON + Markdown."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import clinical_ablation as bench
from bsynth_hpc.engine.config import packaged_config
from bsynth_hpc.engine.run import train_main
from test_recipe_clinical import make_clinical_store


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")


def test_arms_are_table2_then_the_conditioned_row_without_cls_reg():
    arms = bench.arms()
    rows = [a["name"] for a in arms]
    assert rows[:5] == [r["name"] for r in bench.ablation_rows()] and rows[5] == bench.NO_CLS_REG
    base = next(a for a in arms if a["name"] == bench.CONDITIONED_ROW)["overrides"]
    assert arms[5]["overrides"] == [*base, "recipe.cls_weight=0", "recipe.reg_weight=0"]
    training = bench.demo_training(7)
    assert "engine.max_steps=7" in training and not any("perceptual" in o for o in training)
    assert sum(o.startswith("engine.max_steps") for o in training) == 1


def test_two_rows_train_and_score(tmp_path: Path):
    store = make_clinical_store(tmp_path / "store.zarr")
    aux = tmp_path / "aux"
    assert train_main(["clinical-aux", "--config", str(packaged_config("clinical-aux_tiny.yaml")), "--store",
                       str(store), "--run-dir", str(aux), "engine.max_steps=2", "engine.val_every=0",
                       "engine.ckpt_every=0", "engine.progress=false", "engine.tensorboard=false"]) == 0
    assert bench.main(["--store", str(store), "--labels", str(tmp_path / "labels"), "--aux-run", str(aux),
                       "--rows", "3D VAE", bench.NO_CLS_REG, "--steps", "2", "--n", "2", "--split", "val", "--work",
                       str(tmp_path / "work"), "--out", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "clinical_ablation_cpu.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["3D VAE", bench.NO_CLS_REG] and result["random_features"]
    vae, ours = rows["3D VAE"], rows[bench.NO_CLS_REG]
    full = {r["name"]: r["parameters"] / 1e6 for r in bench.ablation_parameters("full")}
    assert vae["parameters_full_m"] == pytest.approx(full["3D VAE"]) and ours["parameters_full_m"] is None
    assert vae["parameters_tiny_m"] > ours["parameters_tiny_m"]        # standard convs vs depthwise-separable
    for r in rows.values():
        assert r["val_l1"] > 0 and math.isfinite(r["val_l1"]) and 0 <= r["balanced_accuracy"] <= 100
        assert r["roi_mse_1e5"] >= 0 and 0 < r["ssim_triplanar"] <= 1 and r["train_seconds"] > 0
        assert set(r["sweep_spearman"]) == {"CN", "AD"}
    md = (tmp_path / "results" / "clinical_ablation_cpu.md").read_text()
    assert "| 3D VAE |" in md and "random here" in md and "Table 4" not in md   # needs both of its rows
    both = {bench.CONDITIONED_ROW: ours, bench.NO_CLS_REG: ours}
    assert "## Table 4" in bench.markdown(both, {**result, "training": "x"})
