"""The DiT-3D benchmarks (benchmarks/dit3d_training.py, dit3d_sampling.py) run at their smallest settings
and write sane JSON: positive times, ratios equal to the quotients of their rows. No timing assertions."""
from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import dit3d as dispatch
from benchmarks import dit3d_sampling as sampling
from benchmarks import dit3d_training as training

TINY_LATENT = "4x8x8x8"   # patch (4, 2, 4) -> a 2x4x2 token grid


def _check_ratio_entries(payload: dict) -> None:
    rows = {(r["latent"], r["mode"], r["variant"]): r for r in payload["results"] if r["status"] == "ok"}
    for e in payload["ratios"]:
        if e["kind"].startswith("probe_"):
            continue
        num = rows[(e["latent"], e["numerator"]["mode"], e["numerator"]["variant"])]
        base = rows[(e["latent"], e["baseline"]["mode"], e["baseline"]["variant"])]
        assert e["step_time"] == pytest.approx(num["step_time_s"] / base["step_time_s"], rel=1e-3)
        assert e["peak_mem"] == pytest.approx(max(num["peak_mem_mb_per_rank"]) / max(base["peak_mem_mb_per_rank"]),
                                              rel=1e-3)
        if e["kind"] == "attention_vs_global":
            assert e["baseline"]["mode"] == "global" and e["numerator"]["variant"] == e["baseline"]["variant"]
        else:
            assert e["kind"] == f"backend_vs_{e['baseline']['variant']}" and e["baseline"]["variant"] in ("ddp", "single")
            assert e["numerator"]["mode"] == e["baseline"]["mode"]


def test_attention_facts_match_the_model_geometry():
    model = training.model_settings("full")
    assert (model["depth"], model["hidden_size"], model["window_blocks"]) == (12, 384, [0, 3, 6, 9])
    assert training.window_blocks("window", model) == list(range(12)) and training.window_blocks("global", model) == []
    f = training.attention_facts((4, 28, 34, 28), model, [0, 3, 6, 9])
    assert f["token_grid"] == [7, 17, 7] and f["tokens_per_volume"] == 833 and f["appended_tokens"] == 1
    assert f["padded_grid"] == [8, 20, 8] and f["windows_per_volume"] == 20 and f["tokens_per_window"] == 64
    big = training.attention_facts((4, 48, 56, 40), model, [])
    assert big["token_grid"] == [12, 28, 10] and big["global_blocks"] == 12
    assert big["score_elements_per_head_global_block"] == 3361 ** 2
    win = training.attention_facts((4, 48, 56, 40), model, list(range(12)))
    assert win["attention_matmul_gflop_fwd_per_volume"] < big["attention_matmul_gflop_fwd_per_volume"] / 10
    assert win["linear_gflop_fwd_per_volume"] == big["linear_gflop_fwd_per_volume"]
    tiny = training.model_settings("tiny")
    assert tiny["window_blocks"] == [0, 3] and tiny["patch_size"] == model["patch_size"]
    assert training.count_parameters((4, 8, 8, 8), tiny, []) > 0
    probe = training._probe_main({"latent": [4, 8, 8, 8], "model": tiny, "blocks": [0, 3], "micro_batch": 1,
                                  "device": "cpu"})   # in-process here; the benchmark runs it in a fresh process
    assert probe["fwd_bwd_s"] > 0 and probe["fwd_bwd_peak_mb"] >= 0 and probe["weights_mb"] > 0


def test_ratio_table_pairs_rows_of_the_same_size():
    def row(lat, mode, var, t, mem):
        return {"latent": lat, "mode": mode, "variant": var, "status": "ok", "step_time_s": t,
                "cpu_s_per_step_all_ranks": 2 * t, "peak_mem_mb_per_rank": [mem, mem - 1],
                "train_state_mb_per_rank": [10.0 if var == "ddp" else 5.0]}
    rows = [row("a", "global", "ddp", 2.0, 100.0), row("a", "window", "ddp", 1.0, 50.0),
            row("a", "global", "zero2", 4.0, 100.0), row("a", "window", "zero2", 3.0, 80.0),
            row("b", "window", "ddp", 9.0, 1.0), {"latent": "b", "mode": "global", "variant": "ddp", "status": "failed"},
            row("c", "window", "single", 1.0, 10.0), row("c", "window", "zero1", 1.5, 12.0)]
    table = training.ratios(rows)
    got = {(e["latent"], e["kind"], e["numerator"]["mode"], e["numerator"]["variant"]): e for e in table}
    assert set(got) == {("a", "attention_vs_global", "window", "ddp"), ("a", "attention_vs_global", "window", "zero2"),
                        ("a", "backend_vs_ddp", "global", "zero2"), ("a", "backend_vs_ddp", "window", "zero2"),
                        ("c", "backend_vs_single", "window", "zero1")}
    assert got[("c", "backend_vs_single", "window", "zero1")]["peak_mem"] == 1.2
    assert got[("a", "attention_vs_global", "window", "ddp")]["step_time"] == 0.5
    assert got[("a", "attention_vs_global", "window", "zero2")]["peak_mem"] == 0.8
    assert got[("a", "backend_vs_ddp", "window", "zero2")]["step_time"] == 3.0
    assert got[("a", "backend_vs_ddp", "global", "zero2")]["train_state"] == 0.5
    _check_ratio_entries({"results": rows, "ratios": table})


def test_training_benchmark_smallest_setting(tmp_path):
    # one run through the real engine in one process (no torchrun): 1 warm-up + 2 measured steps; the ratio
    # arithmetic is covered above, the 2-rank DDP/ZeRO rows by the heavy test below
    code = training.main(["--cpu", "--latents", TINY_LATENT, "--modes", "window", "--variants", "single",
                          "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--timeout", "300", "--no-probe"])
    assert code == 0
    payload = json.loads((tmp_path / "dit3d_training_cpu.json").read_text())
    assert payload["environment"]["device"] == "cpu" and payload["environment"]["torch"] == torch.__version__
    assert len(payload["load_average_before"]) == 3 and payload["settings"]["modes"] == {"window": [0, 1, 2, 3]}
    (r,) = payload["results"]
    assert r["status"] == "ok", r.get("error")
    assert (r["mode"], r["variant"], r["world_size"], r["latent_shape"]) == ("window", "single", 1, [4, 8, 8, 8])
    assert r["steps_timed"] == 2 and r["step_time_s"] > 0 and r["volumes_per_s"] > 0
    assert r["volumes_per_s"] == pytest.approx(r["global_batch"] / r["step_time_s"], rel=1e-2)
    assert r["cpu_s_per_step_all_ranks"] > 0 and min(r["peak_mem_mb_per_rank"]) > 0
    assert min(r["train_state_mb_per_rank"]) > 0
    assert math.isfinite(r["final_loss"]) and r["loss_key"] == "loss/dit"
    facts = payload["attention"][TINY_LATENT]["window"]
    assert facts["tokens_per_volume"] == 16 and facts["global_blocks"] == 0 and facts["parameters"] > 0
    assert payload["ratios"] == []


def test_sampling_benchmark_smallest_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    code = dispatch.main(["sampling", "--latents", TINY_LATENT, "--device", "cpu", "--ddpm-steps", "4",
                          "--ddim-steps", "2", "--ddpm-runs", "1", "--ddim-runs", "2", "--warmup", "1",
                          "--threads", str(torch.get_num_threads()), "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads((tmp_path / "dit3d_sampling_cpu.json").read_text())
    assert payload["guidance_scale"] == 3.0 and payload["size"] == "tiny"
    (entry,) = payload["entries"]
    assert entry["volume_shape"] == [32, 32, 32] and entry["mode"] == "interleave" and entry["window_blocks"] == [0, 3]
    by = {r["solver"]: r for r in entry["results"]}
    assert (by["ddpm"]["steps"], by["ddpm"]["runs"], by["ddim"]["steps"], by["ddim"]["runs"]) == (4, 1, 2, 2)
    for r in by.values():
        assert r["s_per_volume_median"] > 0 and r["loop_s_median"] > 0 and r["decode_s_median"] > 0
        assert r["s_per_volume_min"] <= r["s_per_volume_median"] <= r["s_per_volume_max"]
        assert len(r["run_seconds"]) == r["runs"]
    ratios = entry["ratios"]
    assert ratios["ddpm_over_ddim_s_per_volume"] == pytest.approx(
        by["ddpm"]["s_per_volume_median"] / by["ddim"]["s_per_volume_median"])
    assert ratios["ddpm_over_ddim_loop_s_per_step"] == pytest.approx(
        by["ddpm"]["loop_s_per_step"] / by["ddim"]["loop_s_per_step"])


def test_dispatcher_rejects_unknown_benchmark(capsys):
    assert dispatch.main(["nope"]) == 2
    assert dispatch.main(["--", "--steps", "2"]) == 2


@pytest.mark.heavy
@pytest.mark.distributed
def test_training_benchmark_ddp_vs_zero_two_ranks(tmp_path):
    code = training.main(["--cpu", "--latents", TINY_LATENT, "--modes", "window", "--variants", "ddp", "zero1",
                          "zero2", "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--timeout", "600"])
    assert code == 0
    payload = json.loads((tmp_path / "dit3d_training_cpu.json").read_text())
    assert all(r["world_size"] == 2 and len(r["peak_mem_mb_per_rank"]) == 2 for r in payload["results"])
    kinds = {(e["kind"], e["numerator"]["variant"]) for e in payload["ratios"]}
    assert kinds == {("backend_vs_ddp", "zero1"), ("backend_vs_ddp", "zero2")}
    _check_ratio_entries(payload)
    probe = payload["attention"][TINY_LATENT]["window"]["fwd_bwd_probe"]
    assert probe["status"] == "ok" and probe["fwd_bwd_s"] > 0 and probe["micro_batch"] == 1
