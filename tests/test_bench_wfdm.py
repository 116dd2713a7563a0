"""WFDM benchmarks (issue #6 item 8): the compressor ablation, e2e sampling and tiled-decode benchmarks
run end to end at the smallest settings and write consistent JSON (no timing assertions)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bsynth_hpc import ops
from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from engine_support import volume

SHAPE = (16, 16, 16)


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_wfdm") / "store.zarr"
    vs = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(8.0,) * 3))
    for k in range(6):
        rec = {"subject": f"sub-{k}", "session": None, "dataset": "smoke", "modality": "T1w", "modality_id": 0,
               "source_path": f"/x/{k}.nii.gz", "source_sha256": "0" * 64, "affine": np.eye(4).tolist(),
               "shape": list(SHAPE), "metadata": {}}
        vs.write_volume(f"smoke_sub-{k}_T1w", volume(k, SHAPE), rec)
    finalize_store(vs, fractions=(0.67, 0.33, 0.0), seed=0)
    return path


def test_compressor_ablation_rows_and_ordering(store, tmp_path):
    from benchmarks import compressor_ablation

    assert compressor_ablation.main(["--store", str(store), "--steps", "2", "--per-plane", "1",
                                     "--compressors", "wf-sa-vae,wf-vae,vae-gan", "--out-dir", str(tmp_path)]) == 0
    out = json.loads(next(tmp_path.glob("compressor_ablation_*.json")).read_text())
    assert [r["compressor"] for r in out["results"]] == ["wf-sa-vae", "wf-vae", "vae-gan"]
    assert out["steps"] == 2 and out["splits"]["train"] + out["splits"]["heldout"] == 6
    for r in out["results"]:
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["lpips"] >= 0 and r["parameters"] > 0
    checks = out["ordering"]["checks"]
    by = {r["compressor"]: r for r in out["results"]}
    assert checks["psnr"]["wf_vae_gt_vae_gan"] == (by["wf-vae"]["psnr"] > by["vae-gan"]["psnr"])
    assert out["ordering"]["holds"] == all(all(v.values()) for v in checks.values())
    assert out["environment"]["torch"]


def test_e2e_sampling_protocol_and_ratios(tmp_path):
    from benchmarks import e2e_sampling

    assert e2e_sampling.main(["--size", "tiny", "--device", "cpu", "--runs", "2", "--warmup", "0",
                              "--steps-rflow", "2", "--steps-ddpm", "4", "--steps-ddim", "0",
                              "--out-dir", str(tmp_path)]) == 0
    out = json.loads(next(tmp_path.glob("e2e_sampling_*.json")).read_text())
    rows = {r["name"]: r for r in out["results"]}
    assert set(rows) == {"rflow_euler", "ddpm_ancestral"}
    for r in rows.values():
        assert r["runs"] == 2 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert out["ratios"]["rflow_over_ddpm_time"] == pytest.approx(rows["rflow_euler"]["mean_s"]
                                                                  / rows["ddpm_ancestral"]["mean_s"])
    assert out["volume_shape"] == [48, 56, 40] and out["latent_shape"][1:] == [12, 14, 10]


def test_tiled_decode_reports_memory_time_and_difference(tmp_path):
    from benchmarks import tiled_decode

    assert tiled_decode.main(["--size", "tiny", "--tiles", "6", "--runs", "1", "--threads", "1",
                              "--out-dir", str(tmp_path)]) == 0
    out = json.loads(next(tmp_path.glob("tiled_decode_tiny_*.json")).read_text())
    whole, tiled = out["results"]
    assert whole["mode"] == "whole" and tiled["tile"] == 6 and tiled["overlap"] == 1
    assert 0 < tiled["max_abs_diff"] <= 1 and tiled["time_ratio_vs_whole"] > 0
    # PSNR from the MSE is bounded by the one of the max difference (MSE <= max^2)
    assert math.isfinite(tiled["psnr_vs_whole_db"]) and tiled["psnr_vs_whole_db"] >= -20 * math.log10(tiled["max_abs_diff"]) - 1e-9
    assert all(r["peak_mib"] >= 0 for r in out["results"])
