"""Benchmark of the fused GroupNorm(+affine)(+scale/shift)+SiLU: Triton vs PyTorch eager vs torch.compile.

All implementations run side by side in one process on the same tensors, next to a
device-to-device copy of the same bytes (the bandwidth ceiling of a memory-bound op), and the
result reports ratios: fraction of copy bandwidth, speedup over eager and over compile.

Byte model (ideal traffic, what a perfect fused kernel must move; parameters are negligible):
  forward           read x, write y              = 2 * numel * itemsize
  forward+backward  + read x, read dy, write dx  = 5 * numel * itemsize
The Triton forward actually reads x twice (statistics pass, then the apply pass), the backward
reads x and dy twice: its achieved "GB/s" is therefore at most 2/3 (forward) and 5/7 (forward +
backward) of the copy bandwidth by construction.

Shapes: WF-VAE feature maps at batch 1 (seed 003) and a 2D U-Net map with adaptive scale/shift.
The forward is timed under torch.no_grad() (the sampling path); forward+backward with
torch.autograd.grad (no .grad accumulation in the timing).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import copy_bandwidth_gbps, environment_info, gbps, time_fn

FULL_CASES: list[dict[str, Any]] = [
    dict(name="wfvae_64ch", shape=(1, 64, 96, 112, 80), groups=32, modulated=False),
    dict(name="wfvae_128ch", shape=(1, 128, 48, 56, 40), groups=32, modulated=False),
    dict(name="wfvae_32ch_fullres", shape=(1, 32, 192, 224, 160), groups=32, modulated=False),
    dict(name="unet2d_adagn", shape=(8, 128, 64, 64), groups=32, modulated=True),
]
QUICK_CASES: list[dict[str, Any]] = [
    dict(name="wfvae_small", shape=(1, 32, 24, 28, 20), groups=8, modulated=False),
    dict(name="unet2d_small_adagn", shape=(2, 64, 16, 16), groups=32, modulated=True),
]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
EPS = 1e-5


def _eager(gn: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None
           ) -> torch.Tensor:
    """What a model writes without the fused op: nn.GroupNorm, modulation, SiLU (each a kernel)."""
    h = gn(x)
    tail = (None,) * (x.dim() - 2)
    if scale is not None:
        h = h * (1 + scale[(..., *tail)])
    if shift is not None:
        h = h + shift[(..., *tail)]
    return F.silu(h)


def _measure(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> dict[str, float]:
    """First call timed separately (compilation), then the median over `iters`."""
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    out = time_fn(fn, device, warmup=warmup, iters=iters)
    out["first_call_s"] = first_s
    return out


def _entry(t: dict[str, float], nbytes: int, copy_gbps: float) -> dict[str, Any]:
    rate = gbps(nbytes, t["median_ms"])
    return {"median_ms": t["median_ms"], "min_ms": t["min_ms"], "iters": t["iters"],
            "first_call_s": round(t["first_call_s"], 3), "gbps": rate, "frac_of_copy": rate / copy_gbps}


def _run_impl(fwd: Callable[[], torch.Tensor], grad_inputs: list[torch.Tensor], dy: torch.Tensor, device: str,
              warmup: int, iters: int, nbytes: dict[str, int], copy_gbps: float) -> dict[str, Any]:
    res: dict[str, Any] = {"run": True}
    try:
        with torch.no_grad():
            res["fwd"] = _entry(_measure(fwd, device, warmup, iters), nbytes["fwd"], copy_gbps)

        def step() -> None:
            torch.autograd.grad(fwd(), grad_inputs, dy)

        res["fwd_bwd"] = _entry(_measure(step, device, warmup, iters), nbytes["fwd_bwd"], copy_gbps)
    except Exception as exc:  # record (OOM, compiler missing) and go on with the other implementations
        res = {"run": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    return res


def _bench_case(case: dict[str, Any], dtype_name: str, device: str, quick: bool,
                triton_reason: str | None) -> dict[str, Any]:
    dtype = DTYPES[dtype_name]
    shape, groups = case["shape"], case["groups"]
    B, C = shape[:2]
    warmup, iters = (2, 10) if quick else (5, 20)
    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(dev, dtype).requires_grad_()
    dy = torch.randn(shape, generator=g, dtype=torch.float32).to(dev, dtype)
    gn = nn.GroupNorm(groups, C, eps=EPS).to(dev, dtype)
    with torch.no_grad():
        gn.weight.normal_(1.0, 0.1)
        gn.bias.normal_(0.0, 0.1)
    scale = shift = None
    if case["modulated"]:
        scale = (0.1 * torch.randn(B, C, generator=g)).to(dev, dtype).requires_grad_()
        shift = (0.1 * torch.randn(B, C, generator=g)).to(dev, dtype).requires_grad_()
    grad_inputs = [t for t in (x, gn.weight, gn.bias, scale, shift) if t is not None]

    numel, item = x.numel(), x.element_size()
    nbytes = {"fwd": 2 * numel * item, "fwd_bwd": 5 * numel * item}
    copy = copy_bandwidth_gbps(numel * item, device, iters=iters)
    out: dict[str, Any] = {"name": case["name"], "shape": list(shape), "groups": groups,
                           "modulated": case["modulated"], "dtype": dtype_name, "bytes": nbytes,
                           "copy": copy, "impl": {}}

    eager = lambda: _eager(gn, x, scale, shift)  # noqa: E731
    out["impl"]["eager"] = _run_impl(eager, grad_inputs, dy, device, warmup, iters, nbytes, copy["gbps"])

    torch._dynamo.reset()
    compiled = torch.compile(_eager, dynamic=False)
    out["impl"]["compile"] = _run_impl(lambda: compiled(gn, x, scale, shift), grad_inputs, dy, device, warmup,
                                       iters, nbytes, copy["gbps"])
    torch._dynamo.reset()

    if triton_reason is None:
        from bsynth_hpc.kernels.group_norm_silu import _make_plan, group_norm_silu_reference, group_norm_silu_triton

        tri = lambda: group_norm_silu_triton(x, groups, gn.weight, gn.bias, EPS, scale, shift)  # noqa: E731
        res = _run_impl(tri, grad_inputs, dy, device, warmup, iters, nbytes, copy["gbps"])
        if res["run"]:
            plan = _make_plan(x, groups, None, None)
            res["stats_programs"] = B * groups * plan.stats.n_chunks
            res["grad_programs"] = B * C * plan.grads.n_chunks
            with torch.no_grad():  # correctness at the benchmark shape, against the fp32 reference
                ref = group_norm_silu_reference(x.float(), groups, gn.weight.float(), gn.bias.float(), EPS,
                                                None if scale is None else scale.float(),
                                                None if shift is None else shift.float())
                res["max_abs_err_vs_fp32_reference"] = (tri().float() - ref).abs().max().item()
        out["impl"]["triton"] = res
    else:
        out["impl"]["triton"] = {"run": False, "reason": triton_reason}

    ratios: dict[str, Any] = {}
    for phase in ("fwd", "fwd_bwd"):
        ms = {k: v[phase]["median_ms"] for k, v in out["impl"].items() if v.get("run")}
        r = {f"{k}_frac_of_copy": out["impl"][k][phase]["frac_of_copy"] for k in ms}
        if "triton" in ms:
            for base in ("eager", "compile"):
                if base in ms:
                    r[f"triton_speedup_vs_{base}"] = ms[base] / ms["triton"]
        if "compile" in ms and "eager" in ms:
            r["compile_speedup_vs_eager"] = ms["eager"] / ms["compile"]
        ratios[phase] = r
    out["ratios"] = ratios
    del x, dy, gn, scale, shift, grad_inputs
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _triton_unavailable_reason(device: str) -> str | None:
    if not device.startswith("cuda"):
        return ("not run: the Triton kernels need a CUDA device; on CPU they only execute under the Triton "
                "interpreter (TRITON_INTERPRET=1), a correctness tool whose timings mean nothing")
    try:
        import bsynth_hpc.kernels.group_norm_silu as k
    except Exception as exc:  # pragma: no cover
        return f"not run: kernels.group_norm_silu failed to import ({exc})"
    if not k.HAS_TRITON:
        return "not run: the triton package is not installed"
    return None


def run(device: str, quick: bool, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark every case x dtype on `device`; `quick` uses small shapes and few iterations; `checkpoint` gets
    the finished cases after each one (a killed run keeps them)."""
    triton_reason = _triton_unavailable_reason(device)
    cases = QUICK_CASES if quick else FULL_CASES
    results: list[dict[str, Any]] = []
    for case in cases:
        for name in DTYPES:
            results.append(_bench_case(case, name, device, quick, triton_reason))
            if checkpoint is not None:
                checkpoint({"op": "group_norm_silu", "quick": quick, "cases": results})
    return {
        "op": "group_norm_silu",
        "quick": quick,
        "environment": environment_info(device),
        "implementations": {
            "triton": "bsynth_hpc.kernels.group_norm_silu.group_norm_silu_triton (split stats, fused apply; split backward)",
            "eager": "nn.GroupNorm -> * (1 + scale) -> + shift -> F.silu, PyTorch eager, input dtype",
            "compile": "torch.compile(dynamic=False) of the eager function",
            "copy": "dst.copy_(src) of numel * itemsize bytes (read + write counted)",
        },
        "byte_model": {"fwd": "2 * numel * itemsize", "fwd_bwd": "5 * numel * itemsize"},
        "triton_note": triton_reason,
        "cases": results,
    }


def _summary(payload: dict[str, Any]) -> str:
    lines = [f"{'case':<22}{'dtype':<6}{'phase':<8}{'impl':<9}{'ms':>10}{'GB/s':>10}{'of copy':>9}"]
    for c in payload["cases"]:
        for phase in ("fwd", "fwd_bwd"):
            for impl, r in c["impl"].items():
                if r.get("run"):
                    e = r[phase]
                    lines.append(f"{c['name']:<22}{c['dtype']:<6}{phase:<8}{impl:<9}{e['median_ms']:>10.3f}"
                                 f"{e['gbps']:>10.1f}{e['frac_of_copy']:>9.2f}")
            lines.append(f"{'':<22}{'':<6}{phase:<8}copy     {c['copy']['median_ms']:>10.3f}{c['copy']['gbps']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the full payload here")
    args = parser.parse_args(argv)
    payload = run(args.device, args.quick)
    print(_summary(payload))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
