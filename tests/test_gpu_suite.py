"""`bsynth bench gpu` (benchmarks/gpu_suite.py, issue 15): the dry-run listing and budget, the runner's
subprocess / timeout / partial-results logic with real subprocesses on CPU, and the kernel-benchmark pieces the
suite adds (copy bandwidth, flex-attention baseline, partial payloads). No CUDA needed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite as G
from benchmarks.kernels import bench_copy_bandwidth, run_all
from benchmarks.kernels.bench_window_attention3d import _flex_api, make_flex_partitioned, sdpa_partitioned
from bsynth_hpc.kernels.window_attention3d import window_attention3d_reference

ENTRIES = ("kernel_tests", "kernel_bench", "depthwise_conv3d", "wfdm_sampling", "dit3d_training")


def _entry_blocks(text: str) -> dict[str, list[str]]:
    """Dry-run output -> {entry name: its command lines}."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and "[" in line and line.split()[0] in ENTRIES:
            current = line.split()[0]
            blocks[current] = []
        elif current and line.startswith("    ") and " s  " in line:
            blocks[current].append(line)
    return blocks


def test_dry_run_lists_the_five_entries_within_eight_minutes(capsys):
    assert G.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    blocks = _entry_blocks(out)
    assert tuple(blocks) == ENTRIES
    budgets = {e.name: e.budget_s for e in G.suite_entries(Path("/tmp/x"))}
    for name, lines in blocks.items():  # each command's budget is printed and they add up to the entry's
        assert sum(float(line.split()[0]) for line in lines) == budgets[name]
    assert sum(budgets.values()) <= 480 == G.MAX_TOTAL_S
    assert f"total budget: {sum(budgets.values()):.0f} s" in out
    assert "BSYNTH_TEST_GPU=1" in out and "tests/test_kernel_window_attention3d.py" in out
    assert "--steps-rflow 50" in out and "--size full" in out and "benchmarks.depthwise_conv3d" in out
    assert set(G.KERNEL_OPS) == set(run_all.OPS)  # the suite benchmarks every kernel op


def test_only_and_skip_select_entries(capsys):
    assert G.main(["--dry-run", "--only", "wfdm_sampling", "--only", "kernel_tests"]) == 0
    assert tuple(_entry_blocks(capsys.readouterr().out)) == ("kernel_tests", "wfdm_sampling")
    assert G.main(["--dry-run", "--skip", "kernel_bench"]) == 0
    assert "kernel_bench" not in _entry_blocks(capsys.readouterr().out)
    with pytest.raises(SystemExit, match="unknown entry nope"):
        G.main(["--dry-run", "--only", "nope"])


def test_without_cuda_the_suite_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert G.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _py(code: str, budget: float, label: str = "c") -> G.Command:
    return G.Command(label, ("{python}", "-c", code), budget)


def test_runner_timeout_failure_missing_and_partial_summary(tmp_path):
    marker = tmp_path / "child_of_killed.txt"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('alive')"
    entries = [
        G.Entry("sleeper", "sleeps past its budget, its child too",
                (_py(f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
                     "print('started', flush=True); time.sleep(30)", 1.0),)),
        G.Entry("crasher", "exits 3", (_py("import sys; print('boom'); sys.exit(3)", 10.0),)),
        G.Entry("absent", "needs a file that is not there", (_py("pass", 10.0),),
                requires_files=("benchmarks/does_not_exist.py",)),
        G.Entry("two_parts", "second part still runs after the first failed",
                (_py("raise SystemExit(1)", 10.0, "first"),
                 _py(f"open({str(tmp_path / 'second.txt')!r}, 'w').write('ran')", 10.0, "second")),
                summarize=lambda out: {"seen": sorted(p.name for p in out.iterdir() if p.suffix == ".txt")}),
    ]
    t0 = time.monotonic()
    summary = G.run_suite(entries, tmp_path, {"device_name": "fake"}, max_total_s=60)
    assert time.monotonic() - t0 < 20
    by = {e["name"]: e for e in summary["entries"]}
    assert by["sleeper"]["status"] == "timeout" and by["sleeper"]["commands"][0]["returncode"] is None
    assert by["sleeper"]["seconds"] < 5 and "started" in by["sleeper"]["commands"][0]["log_tail"]
    assert by["crasher"]["status"] == "failed" and by["crasher"]["commands"][0]["returncode"] == 3
    assert "boom" in (tmp_path / "logs" / "crasher.log").read_text()
    assert by["absent"]["status"] == "missing" and by["absent"]["missing"] == ["benchmarks/does_not_exist.py"]
    assert [c["status"] for c in by["two_parts"]["commands"]] == ["failed", "ok"]
    assert by["two_parts"]["status"] == "failed" and by["two_parts"]["summary"] == {"seen": ["second.txt"]}
    assert summary["status"] == "timeout"
    on_disk = json.loads((tmp_path / "suite_summary.json").read_text())
    assert [e["status"] for e in on_disk["entries"]] == ["timeout", "failed", "missing", "failed"]
    time.sleep(3.5)
    assert not marker.exists()  # the killed command's whole process group went with it


def test_summary_is_written_before_an_entry_finishes(tmp_path):
    """A run killed from outside keeps what it had: while entry 2 runs, entry 1's result is on disk and entry 3
    reads pending."""
    probe = tmp_path / "seen.json"
    entries = [
        G.Entry("first", "quick", (_py("print('one')", 10.0),)),
        G.Entry("second", "copies the summary as it is while running",
                (_py(f"import shutil; shutil.copy({str(tmp_path / 'suite_summary.json')!r}, {str(probe)!r})",
                     10.0),)),
        G.Entry("third", "quick", (_py("pass", 10.0),)),
    ]
    G.run_suite(entries, tmp_path, {}, max_total_s=60)
    seen = json.loads(probe.read_text())
    assert [e["status"] for e in seen["entries"]] == ["ok", "running", "pending"]
    assert seen["status"] == "running"


def test_total_deadline_cuts_late_commands(tmp_path):
    entries = [G.Entry("long", "", (_py("import time; time.sleep(30)", 100.0),)),
               G.Entry("late", "", (_py("pass", 100.0),))]
    t0 = time.monotonic()
    summary = G.run_suite(entries, tmp_path, {}, max_total_s=1.5)
    assert time.monotonic() - t0 < 10
    late = summary["entries"][1]
    assert summary["entries"][0]["status"] == "timeout" and late["status"] == "timeout"
    assert "total budget" in late["commands"][0]["reason"]


def test_child_env_puts_checkout_first_and_removes_variables(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = G.child_env({"BSYNTH_TEST_GPU": "1", "TRITON_INTERPRET": None})
    assert env["PYTHONPATH"].split(":")[0] == str(G.REPO) and env["BSYNTH_TEST_GPU"] == "1"
    assert "TRITON_INTERPRET" not in env and env["PYTHONUNBUFFERED"] == "1"


def test_summarize_junit_counts_and_failures(tmp_path):
    path = tmp_path / "kernel_tests.junit.xml"
    path.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_ok2"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped message="needs GPU"/></testcase>'
        '</testsuite></testsuites>')
    s = G.summarize_junit(path)
    assert (s["tests"], s["passed"], s["failures"], s["skipped"]) == (4, 2, 1, 1)
    assert s["failing"] == [{"test": "tests.test_a::test_bad", "kind": "failure", "message": "assert 1 == 2"}]
    assert s["skip_reasons"] == {"needs GPU": 1}
    assert G.summarize_junit(tmp_path / "none.xml")["status"] == "missing"


def test_gpu_slug():
    assert G.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert G.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


# ---------------------------------------------------------------------------- the kernel-benchmark additions
def test_copy_bandwidth_bench_writes_partial_then_complete(tmp_path, monkeypatch):
    seen: list[int] = []
    real = run_all.write_results

    def spy(name, payload, out_dir=None):
        seen.append(len(payload.get("sizes", [])) if not payload["complete"] else -1)
        return real(name, payload, out_dir)

    monkeypatch.setattr(run_all, "write_results", spy)
    monkeypatch.setattr(bench_copy_bandwidth, "QUICK_SIZES_MIB", (1, 2))
    assert run_all.main(["--device", "cpu", "--quick", "--ops", "copy_bandwidth", "--out-dir", str(tmp_path)]) == 0
    assert seen == [1, 2, -1]  # one partial payload per size, then the complete one
    out = json.loads((tmp_path / "kernels_copy_bandwidth_cpu.json").read_text())
    assert out["complete"] is True and [r["mib"] for r in out["sizes"]] == [1, 2]
    for row in out["sizes"]:
        assert row["bytes_moved"] == 2 * row["mib"] * 2**20
        assert row["impl"]["copy"]["exact"] and row["impl"]["copy"]["gbps"] > 0
    assert out["device_copy_gbps"] == out["sizes"][-1]["impl"]["copy"]["gbps"]


@pytest.mark.skipif(bench_copy_bandwidth._triton_copy() is None, reason="triton not installed")
def test_triton_copy_kernel_copies_exactly():
    """Runs through the Triton interpreter on CPU (tests/conftest.py), on the GPU under BSYNTH_TEST_GPU=1."""
    device = "cuda" if os.environ.get("BSYNTH_TEST_GPU") == "1" and torch.cuda.is_available() else "cpu"
    src = torch.randn(4096 * 2 + 37, device=device)
    dst = torch.zeros_like(src)
    bench_copy_bandwidth._triton_copy()(src, dst)
    assert torch.equal(dst, src)


@pytest.mark.skipif(_flex_api() is None, reason="this torch has no flex attention")
@pytest.mark.parametrize("grid,shift", [((5, 6, 4), (0, 0, 0)), ((5, 6, 4), (2, 2, 2)), ((8, 4, 7), (2, 0, 2))])
def test_flex_and_sdpa_baselines_match_the_reference(grid, shift):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, *grid, 16, generator=g) for _ in range(3))
    bias = 0.1 * torch.randn(2, 64, 64, generator=g)
    with torch.no_grad():
        ref = window_attention3d_reference(q, k, v, (4, 4, 4), shift, bias)
        flex = make_flex_partitioned(compiled=False)(q, k, v, (4, 4, 4), shift, bias)
        sdpa = sdpa_partitioned(q, k, v, (4, 4, 4), shift, bias)
        no_bias = make_flex_partitioned(compiled=False)(q, k, v, (4, 4, 4), shift, None)
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sdpa, ref, rtol=1e-5, atol=1e-5)
    assert (no_bias - ref).abs().max() > 1e-3  # the bias reaches the scores through score_mod


def test_kernel_test_files_exist():
    files = G.kernel_test_files()
    assert "tests/test_kernel_window_attention3d.py" in files
    assert all((G.REPO / f).is_file() for f in files)


def test_e2e_sampling_rflow_only_as_the_suite_runs_it(tmp_path, monkeypatch):
    """The suite's WFDM entry passes --steps-ddpm 0 --steps-ddim 0: the RFlow arm alone, with seconds and peak
    memory (tiny size on CPU here; the suite runs --size full on the GPU)."""
    from benchmarks import e2e_sampling
    from bsynth_hpc import ops

    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    ops.set_triton_enabled(False)
    try:
        assert e2e_sampling.main(["--size", "tiny", "--device", "cpu", "--runs", "1", "--warmup", "0",
                                  "--steps-rflow", "2", "--steps-ddpm", "0", "--steps-ddim", "0",
                                  "--out-dir", str(tmp_path)]) == 0
    finally:
        ops.set_triton_enabled(None)
    out = json.loads(next(tmp_path.glob("e2e_sampling_*.json")).read_text())
    (row,) = out["results"]
    assert row["name"] == "rflow_euler" and row["steps"] == 2 and row["runs"] == 1
    assert row["median_s"] > 0 and row["peak_memory_mib"] >= 0 and "memory_metric" in row
    assert "rflow_over_ddpm_time" not in out["ratios"] and set(out["projected_table6_s"]) == {"note", "rflow_euler"}


def test_bsynth_bench_gpu_is_registered(capsys):
    from bsynth_hpc import cli

    assert cli.BENCHMARKS["gpu"] == "benchmarks.gpu_suite"
    assert cli.main(["bench", "gpu", "--dry-run", "--only", "wfdm_sampling"]) == 0
    assert "wfdm_sampling" in capsys.readouterr().out
