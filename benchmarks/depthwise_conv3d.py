"""Depthwise 3D convolution: the csrc extension (`torch.ops.bsynth.depthwise_conv3d`) vs `F.conv3d(groups=C)`
(cuDNN on GPU, MKLDNN/native on CPU) at seed 002's Xception shapes.

Seed 002 encodes 128^3 volumes with channels 64 -> 128 -> 256 -> 512 at 1/1 .. 1/8 resolution, batch 4; every
stage is a depthwise 3x3x3 conv (stride 1) followed by a point-wise one. Per shape, side by side in one process:
forward, and forward + backward (input, weight and bias gradients); the extension's outputs and gradients are
compared with F.conv3d's in the same run. GB/s counts the bytes the op must move (input read + output written;
forward + backward: twice that plus the gradient of the input). CPU runs a reduced size (batch 1, 32^3).

    python -m benchmarks.depthwise_conv3d                    # CUDA when available, else CPU (reduced)
    python -m benchmarks.depthwise_conv3d --device cpu --quick
    bsynth bench dwconv --out-dir benchmarks/results         # publish

Results: `<out-dir>/depthwise_conv3d_<device>.json`, rewritten after every case ("complete": false until the end).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.common import environment_info, gbps, time_fn, write_results
from bsynth_hpc.ops import depthwise_ext as dw

# (batch, channels, size): 128^3 input, channels 64..512 at 1/1..1/8 resolution (seed 002 §2.2).
GPU_SHAPES: list[tuple[int, int, int]] = [(4, 64, 128), (4, 128, 64), (4, 256, 32), (4, 512, 16)]
CPU_SHAPES: list[tuple[int, int, int]] = [(1, 16, 32), (1, 32, 16), (1, 64, 8), (1, 128, 4)]
QUICK_SHAPES: list[tuple[int, int, int]] = [(1, 8, 16), (1, 16, 8)]

Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _impls(stride: int) -> dict[str, Conv]:
    impls: dict[str, Conv] = {"conv3d": lambda x, w, b: dw.depthwise_conv3d_reference(x, w, b, [stride] * 3, [1] * 3)}
    impls["ext"] = lambda x, w, b: dw.depthwise_conv3d_ext(x, w, b, [stride] * 3, [1] * 3)
    return impls


def _fwd_bwd(conv: Conv, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = w.grad = b.grad = None
    conv(x, w, b).backward(grad)


def bench_shape(batch: int, channels: int, size: int, stride: int, dtype: torch.dtype, device: torch.device,
                warmup: int, iters: int) -> dict[str, Any]:
    """Time both implementations at one shape; check the extension against F.conv3d."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, channels, size, size, size, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(channels, 1, 3, 3, 3, generator=gen) / 27 ** 0.5).to(device=device, dtype=dtype)
    b = torch.randn(channels, generator=gen).to(device=device, dtype=dtype)
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    impls = _impls(stride)
    with torch.no_grad():
        out_ref = impls["conv3d"](x, w, b)
    grad = torch.randn_like(out_ref)
    elem = x.element_size()
    fwd_bytes = (x.numel() + out_ref.numel()) * elem
    row: dict[str, Any] = {"shape": [batch, channels, size, size, size], "stride": stride, "dtype": str(dtype),
                           "output_shape": list(out_ref.shape)}
    if not dw.available(device.type):
        row["ext"] = {"status": "missing", "why": dw.load_error() or f"no {device.type} kernel built"}
        names = ["conv3d"]
    else:
        names = ["conv3d", "ext"]
        _fwd_bwd(impls["conv3d"], x, w, b, grad)
        ref_grads = [t.grad.clone() for t in (x, w, b)]
        with torch.no_grad():
            out_ext = impls["ext"](x, w, b)
        _fwd_bwd(impls["ext"], x, w, b, grad)
        row["max_abs_diff"] = {
            "out": (out_ext - out_ref).abs().max().item(),
            **{f"grad_{n}": (t.grad - r).abs().max().item() for n, t, r in zip("xwb", (x, w, b), ref_grads)}}
        del out_ext, ref_grads
    for name in names:
        conv = impls[name]

        def forward() -> None:
            with torch.no_grad():
                conv(x, w, b)

        fwd = time_fn(forward, device, warmup=warmup, iters=iters)
        both = time_fn(lambda: _fwd_bwd(conv, x, w, b, grad), device, warmup=warmup, iters=iters)
        row[name] = {"status": "ok", "fwd_ms": fwd["median_ms"], "fwd_bwd_ms": both["median_ms"],
                     "fwd_gbps": gbps(fwd_bytes, fwd["median_ms"]),
                     "fwd_bwd_gbps": gbps(2 * fwd_bytes + x.numel() * elem, both["median_ms"])}
    if "ext" in names:
        row["ext_speedup"] = {k: row["conv3d"][k] / row["ext"][k] for k in ("fwd_ms", "fwd_bwd_ms")}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bsynth bench dwconv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--stride", type=int, nargs="+", default=[1, 2], help="strides to time (default 1 2)")
    parser.add_argument("--quick", action="store_true", help="two tiny shapes (a smoke test)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results/local)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    payload: dict[str, Any] = {"benchmark": "depthwise_conv3d", "environment": environment_info(device),
                               "extension": {"loaded": dw.available(), "cpu": dw.available("cpu"),
                                             "cuda": dw.available("cuda"), "load_error": dw.load_error()},
                               "complete": False, "results": []}
    if device.type == "cuda":
        payload["environment"]["cudnn"] = torch.backends.cudnn.version()
    for batch, channels, size in shapes:
        for stride in args.stride:
            row = bench_shape(batch, channels, size, stride, dtype, device, args.warmup, args.iters)
            payload["results"].append(row)
            path = write_results("depthwise_conv3d", payload, args.out_dir)
            ext = row.get("ext", {})
            speed = (f"ext {ext['fwd_ms']:.3f} / {ext['fwd_bwd_ms']:.3f} ms" if ext.get("status") == "ok"
                     else "ext missing")
            print(f"{row['shape']} stride {stride}: conv3d {row['conv3d']['fwd_ms']:.3f} / "
                  f"{row['conv3d']['fwd_bwd_ms']:.3f} ms (fwd / fwd+bwd), {speed}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    payload["complete"] = True
    path = write_results("depthwise_conv3d", payload, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
