"""The training-throughput benchmark (benchmarks/training_throughput.py) measures the real recipes: it trains
wfdm-vae and dit3d from their packaged tiny configs at its smallest setting and writes sane JSON (positive
times, the recipes' own loss keys, ratios equal to the quotients of their rows). No timing assertions."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from benchmarks import training_throughput as bench
from bsynth_hpc.engine.config import packaged_config


def test_configs_are_the_packaged_recipes_with_bench_engine_settings(tmp_path):
    inputs = {"volumes": tmp_path / "store.zarr", "latents": tmp_path / "latents.zarr"}
    for stage, spec in bench.STAGES.items():
        packaged = yaml.safe_load(packaged_config(spec["config"]).read_text())
        cfg = yaml.safe_load(bench.write_config(tmp_path / f"{stage}.yaml", stage, 7, inputs).read_text())
        assert cfg["stage"] == packaged["stage"] == stage
        assert cfg["engine"]["max_steps"] == 7 and cfg["engine"]["val_every"] == 0 and not cfg["engine"]["export_at_end"]
        assert cfg["data"]["val_split"] is None
        changed = {k for k in cfg["recipe"] if cfg["recipe"][k] != packaged["recipe"].get(k)}
        assert changed <= set(spec["recipe"]) | {"latents"}, changed  # the model is the packaged one
        assert (bench.store_for(stage, inputs) is None) == (spec["input"] == "latents")


def test_ratios_are_quotients_of_rows_vs_ddp():
    def row(stage, variant, t, cpu, state):
        return {"stage": stage, "variant": variant, "status": "ok", "step_time_s": t, "cpu_s_per_step_all_ranks": cpu,
                "train_state_mb_per_rank": [state, state / 2]}
    rows = [row("dit3d", "ddp", 2.0, 4.0, 10.0), row("dit3d", "zero2", 3.0, 5.0, 6.0),
            {"stage": "dit3d", "variant": "zero3", "status": "failed"}, row("wfdm-vae", "single", 1.0, 1.0, 1.0)]
    got = bench._ratios(rows)
    assert set(got) == {"dit3d"}  # wfdm-vae has no DDP row to compare with
    assert got["dit3d"]["zero2_step_time_vs_ddp"] == 1.5
    assert got["dit3d"]["zero2_cpu_per_step_vs_ddp"] == 1.25
    assert got["dit3d"]["zero2_train_state_vs_ddp"] == 0.6 and got["dit3d"]["ddp_train_state_vs_ddp"] == 1.0
    assert not any(k.startswith("zero3") for k in got["dit3d"])


def test_smallest_setting_trains_the_real_recipes(tmp_path):
    # one process per stage (no torchrun): 1 warm-up + 2 measured steps; the 2-rank rows run in the heavy test below
    code = bench.main(["--cpu", "--stages", "wfdm-vae", "dit3d", "--variants", "single", "--shape", "16", "16", "16",
                       "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--timeout", "300"])
    assert code == 0
    payload = json.loads((tmp_path / "training_throughput_cpu.json").read_text())
    assert payload["environment"]["device"] == "cpu" and payload["environment"]["torch"] == torch.__version__
    assert set(payload["settings"]["stages"]) == {"wfdm-vae", "dit3d"} and payload["settings"]["latent"] == [4, 8, 8, 8]
    by = {r["stage"]: r for r in payload["results"]}
    assert set(by) == {"wfdm-vae", "dit3d"}
    for stage, r in by.items():
        assert r["status"] == "ok", r.get("error")
        assert (r["variant"], r["world_size"], r["steps_timed"]) == ("single", 1, 2)
        assert r["step_time_s"] > 0 and r["volumes_per_s"] == pytest.approx(r["global_batch"] / r["step_time_s"],
                                                                            rel=1e-2)
        assert min(r["peak_mem_mb_per_rank"]) > 0 and min(r["train_state_mb_per_rank"]) > 0
        assert math.isfinite(r["final_loss"])
    assert by["wfdm-vae"]["loss_key"] == "loss/generator" and by["dit3d"]["loss_key"] == "loss/dit"
    assert payload["ratios"] == {}


@pytest.mark.heavy
@pytest.mark.distributed
def test_ddp_vs_zero_two_ranks(tmp_path):
    code = bench.main(["--cpu", "--stages", "dit3d", "--variants", "ddp", "zero1", "zero2", "zero3", "--world-size",
                       "2", "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--timeout", "600"])
    assert code == 0
    payload = json.loads((tmp_path / "training_throughput_cpu.json").read_text())
    assert all(r["world_size"] == 2 and len(r["peak_mem_mb_per_rank"]) == 2 for r in payload["results"])
    ratios = payload["ratios"]["dit3d"]
    rows = {r["variant"]: r for r in payload["results"]}
    for v in ("zero1", "zero2", "zero3"):
        assert ratios[f"{v}_step_time_vs_ddp"] == pytest.approx(rows[v]["step_time_s"] / rows["ddp"]["step_time_s"],
                                                                abs=1e-3)
    assert ratios["zero3_train_state_vs_ddp"] < 1  # ZeRO-3 shards the weights, too
