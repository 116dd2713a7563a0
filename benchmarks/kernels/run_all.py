"""Run every kernel microbenchmark (`bsynth bench kernels`) and write JSON results.

Each `bench_<op>.py` module exposes `run(device: str, quick: bool, checkpoint=None) -> dict`; `checkpoint`, when
given, is called with the payload so far after every case, and this runner writes it (``"complete": false``)
so a run killed by a time budget keeps its finished cases. Results go to `<out-dir>/kernels_<op>_<device>.json`;
every op's payload also carries the device's measured copy bandwidth (`device_copy_bandwidth`, one large
device-to-device copy in the same process), the ceiling its GB/s are read against.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import copy_bandwidth_gbps, environment_info, write_results

OPS = ("copy_bandwidth", "haar_dwt3d", "group_norm_silu", "window_attention3d")
CEILING_BYTES = {"cuda": 1 << 30, "cpu": 32 << 20}
"""Bytes of the one copy that gives each op's payload its device ceiling (far above any L2 cache on CUDA)."""


def device_ceiling(device: str) -> dict[str, Any]:
    """One large device-to-device copy: read + write GB/s (``{"error": ...}`` when it cannot run, e.g. OOM)."""
    kind = torch.device(device).type
    try:
        return {**copy_bandwidth_gbps(CEILING_BYTES.get(kind, CEILING_BYTES["cpu"]), device), "statistic": "median"}
    except Exception as exc:  # noqa: BLE001 - the benchmark itself still runs
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def run_op(op: str, device: str, quick: bool, out_dir: Path | None) -> Path:
    """Run one op's benchmark, writing partial payloads after every case and the complete one at the end."""
    module = importlib.import_module(f"benchmarks.kernels.bench_{op}")
    env = environment_info(device)
    ceiling = device_ceiling(device) if op != "copy_bandwidth" else None

    def finish(payload: dict[str, Any], complete: bool) -> Path:
        payload.setdefault("environment", env)
        if ceiling is not None:
            payload["device_copy_bandwidth"] = ceiling
        payload["complete"] = complete
        return write_results(f"kernels_{op}", payload, out_dir)

    return finish(module.run(device, quick, checkpoint=lambda p: finish(dict(p), False)), True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bsynth bench kernels", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    parser.add_argument("--quick", action="store_true", help="small shapes / few iterations (smoke run)")
    parser.add_argument("--out-dir", default=None, help="where JSON goes (default benchmarks/results/local)")
    args = parser.parse_args(argv)
    for op in args.ops:
        path = run_op(op, args.device, args.quick, Path(args.out_dir) if args.out_dir else None)
        print(f"[bench kernels] {op}: wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
