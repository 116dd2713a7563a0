"""Ahead-of-time compile check (benchmarks/kernels_compile.py): every Triton kernel compiles for sm_90
with the launch its wrapper plans, attention kernels use tensor cores and never spill; the occupancy
arithmetic against hand-worked cases. No GPU needed (triton's ptxas compiles for the target)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("triton", reason="the compile check needs triton")

from benchmarks import kernels_compile as kc  # noqa: E402

KERNELS = {
    "haar_dwt3d": {"_haar_dwt3d_kernel", "_haar_idwt3d_kernel"},
    "group_norm_silu": {"_stats_partial_kernel", "_stats_finalize_kernel", "_fwd_apply_kernel",
                        "_bwd_partial_kernel", "_bwd_finalize_kernel", "_bwd_dx_kernel"},
    "window_attention3d": {"_wa3d_fwd_kernel", "_wa3d_bwd_dq_kernel", "_wa3d_bwd_dkdv_kernel"},
}


def _check(rows: list[dict], targets: set[str]) -> None:
    assert rows and not [r for r in rows if "error" in r]
    assert {r["target"] for r in rows} == targets
    for op, names in KERNELS.items():
        assert names <= {r["kernel"] for r in rows if r["op"] == op}, op
    attention = [r for r in rows if r["op"] == "window_attention3d"]
    assert {r["dtype"].split("/")[0] for r in attention} == {"float32", "bfloat16"}
    for r in attention:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["regs"] < 255, r
        if not r["dtype"].endswith("ieee"):
            assert r["tensor_core"]["ptx_wgmma"] + r["tensor_core"]["ptx_mma"] > 0, r   # tf32 / bf16 MMA
    for r in rows:
        assert 0 < r["regs"] <= 255 and r["ctas_per_sm"] >= 1 and 0 < r["occupancy"] <= 1


def test_ci_subset_compiles_for_sm90_without_spills(tmp_path):
    out = tmp_path / "compile.json"
    rc = kc.main(["--subset", "ci", "--targets", "sm_90", "--require-no-spills", "attention", "--out", str(out),
                  "--quiet"])
    payload = json.loads(out.read_text())
    assert rc == 0, payload["failures"]
    _check(payload["rows"], {"sm_90"})
    # the DiT-3D batch-2 attention grid is split to fill an H100 (>= 3 programs per SM)
    for r in payload["rows"]:
        if r["op"] == "window_attention3d":
            assert r["programs_per_sm"] >= 3, r


@pytest.mark.heavy
def test_full_sweep_both_targets(tmp_path):
    out = tmp_path / "compile.json"
    rc = kc.main(["--require-no-spills", "attention", "--out", str(out), "--quiet"])
    payload = json.loads(out.read_text())
    assert rc == 0, payload["failures"]
    _check(payload["rows"], {"sm_90", "sm_80"})


def test_occupancy_hand_worked():
    h100, a100 = kc.TARGETS["sm_90"], kc.TARGETS["sm_80"]
    # 128 regs x 32 lanes = 4096 per warp -> 16 warps -> 4 CTAs of 4 warps
    assert kc.occupancy(h100, 128, 0, 4) == {"ctas_per_sm": 4, "warps_per_sm": 16, "occupancy": 0.25,
                                             "limiter": "registers"}
    # 100 regs round up to 104 x 32 = 3328 per warp -> 19 warps -> 4 CTAs; 40 KB (+1 KB) smem -> 5 on A100
    assert kc.occupancy(a100, 100, 40 * 1024, 4)["ctas_per_sm"] == 4
    # 100 KB smem: 228 KB / 101 KB -> 2 CTAs on H100, 164 / 101 -> 1 on A100
    assert kc.occupancy(h100, 32, 100 * 1024, 4) == {"ctas_per_sm": 2, "warps_per_sm": 8, "occupancy": 0.125,
                                                     "limiter": "shared_memory"}
    assert kc.occupancy(a100, 32, 100 * 1024, 4)["ctas_per_sm"] == 1
    # 32 regs, 1 warp, no smem: the 32-CTA limit binds
    assert kc.occupancy(h100, 32, 0, 1)["limiter"] == "ctas"
    assert kc.occupancy(a100, 32, 200 * 1024, 4)["ctas_per_sm"] == 0     # over the per-CTA limit


def test_failures_flag_spills_and_errors():
    row = {"target": "sm_90", "kernel": "k", "case": "c", "dtype": "float32", "regs": 255}
    spill = {**row, "op": "window_attention3d", "spill_stores": 8, "spill_loads": 8}
    gn = {**row, "op": "group_norm_silu", "spill_stores": 8, "spill_loads": 0}
    assert kc.failures([spill, gn], None) == []
    assert len(kc.failures([spill, gn], "attention")) == 1
    assert len(kc.failures([spill, gn], "all")) == 2
    assert len(kc.failures([{**row, "op": "haar_dwt3d", "error": "boom"}], None)) == 1
