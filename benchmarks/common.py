"""Shared benchmark plumbing: environment facts, timing, copy-bandwidth ceiling, JSON output.

Every benchmark compares implementations side by side in one process and reports ratios,
because absolute times on shared machines are noisy.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Device, library versions and host facts recorded with every result file."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": _git_commit(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            device_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: str | torch.device = "cpu", warmup: int = 3, iters: int = 10,
            min_time_s: float = 0.0) -> dict[str, float]:
    """Run `fn` repeatedly; return median/mean/min milliseconds per call.

    On CUDA each call is timed with events after a synchronize; on CPU with perf_counter.
    `min_time_s` keeps iterating (up to 10x iters) until that much time was measured.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    total = 0.0
    while len(times) < iters or (total < min_time_s and len(times) < 10 * iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        total += ms / 1e3
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "min_ms": min(times),
            "iters": len(times)}


def copy_bandwidth_gbps(nbytes: int, device: str | torch.device = "cpu", iters: int = 10) -> dict[str, float]:
    """Device-to-device copy of `nbytes` (read + write counted): the bandwidth ceiling for memory-bound ops."""
    device = torch.device(device)
    n = max(1, nbytes // 4)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, iters=iters)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes_moved": moved, "median_ms": t["median_ms"], "gbps": moved / (t["median_ms"] * 1e-3) / 1e9}


def gbps(bytes_moved: int, ms: float) -> float:
    return bytes_moved / (ms * 1e-3) / 1e9


LOCAL_RESULTS_DIR = RESULTS_DIR / "local"
"""Default output of a benchmark run (git-ignored): a rerun never overwrites the committed results;
pass the benchmark's --out/--out-dir benchmarks/results to publish a new measurement."""


def write_results(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write results JSON as `<out_dir>/<name>_<device-tag>.json` (default ``LOCAL_RESULTS_DIR``) and
    return the path."""
    out = Path(out_dir) if out_dir is not None else LOCAL_RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    env = payload.get("environment", {})
    tag = str(env.get("device_name") or env.get("device") or "cpu")
    tag = "".join(c if c.isalnum() else "-" for c in tag).strip("-").lower() or "cpu"
    if env.get("device", "cpu").startswith("cpu"):
        tag = "cpu"
    path = out / f"{name}_{tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_results_and_report(name: str, payload: dict[str, Any], markdown: str,
                             out_dir: str | Path | None = None) -> Path:
    """:func:`write_results`, the Markdown report next to it (same stem, ``.md``), both printed; returns the JSON
    path."""
    path = write_results(name, payload, out_dir)
    path.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path


def write_stem(out: str | Path, payload: dict[str, Any], markdown: str) -> None:
    """``OUT.json`` and ``OUT.md`` at a stem the user named (``--out``), the table printed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)
