"""Run every kernel microbenchmark (`bsynth bench kernels`) and write JSON results.

Each `bench_<op>.py` module exposes `run(device: str, quick: bool) -> dict` and this runner
collects them into `benchmarks/results/kernels_<op>_<device>.json`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from benchmarks.common import environment_info, write_results

OPS = ("haar_dwt3d", "group_norm_silu", "window_attention3d")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bsynth bench kernels", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    parser.add_argument("--quick", action="store_true", help="small shapes / few iterations (smoke run)")
    parser.add_argument("--out-dir", default=None, help="where JSON goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    for op in args.ops:
        module = importlib.import_module(f"benchmarks.kernels.bench_{op}")
        payload = module.run(args.device, args.quick)
        payload.setdefault("environment", environment_info(args.device))
        path = write_results(f"kernels_{op}", payload, Path(args.out_dir) if args.out_dir else None)
        print(f"[bench kernels] {op}: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
