"""Microbenchmark of the 3D Haar DWT (`kernels/haar_dwt3d.py`) at the WF-VAE's shapes.

Side by side in one process, per shape and dtype:
  * triton    - the one-pass Triton kernel (CUDA only: interpreter timings on CPU mean nothing);
  * eager     - the PyTorch reference (`haar_dwt3d_reference`);
  * compile   - `torch.compile` of that reference (Inductor);
  * conv3d    - the ptwt way: one conv3d with the 8 stacked 2x2x2 Haar filters and stride 2, then
                the (B, C, 8) -> (B, 8, C) channel reorder to the same layout as ours;
  * pywt_cpu  - PyWavelets `dwtn` per volume on the host (float32, forward only);
  * copy      - a device-to-device copy of the same bytes: the bandwidth ceiling of this
                memory-bound op.
Timed: forward DWT, forward + backward, and the inverse (IDWT) forward. Bandwidth counts the
bytes the op must move (input read + output written; twice that for forward + backward).
Every implementation's output is compared with the eager reference in the same run.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import copy_bandwidth_gbps, gbps, synchronize, time_fn
from bsynth_hpc.kernels import haar_dwt3d as H

# WF-VAE (seed 003): the (192, 224, 160) input volume and stage-1/2 feature maps at half size.
FULL_SHAPES: list[tuple[int, ...]] = [(1, 1, 192, 224, 160), (1, 64, 96, 112, 80), (2, 8, 96, 112, 80)]
QUICK_SHAPES: list[tuple[int, ...]] = [(1, 1, 48, 56, 40), (1, 8, 24, 28, 20)]

Impl = Callable[[torch.Tensor], torch.Tensor]


def _haar_filters(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(8, 1, 2, 2, 2) stacked filters, filter s = 4*a_x + 2*a_y + a_z, cross-correlation taps."""
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)  # rows: low, high
    w = torch.einsum("ai,bj,ck->abcijk", h, h, h).reshape(8, 1, 2, 2, 2)
    return w.to(dtype=dtype, device=device)


def _conv3d_dwt(weight: torch.Tensor) -> Impl:
    def dwt(x: torch.Tensor) -> torch.Tensor:
        B, C, X, Y, Z = x.shape
        t = x.reshape(B * C, 1, X, Y, Z)
        if X % 2 or Y % 2 or Z % 2:
            t = F.pad(t, (0, Z % 2, 0, Y % 2, 0, X % 2), mode="replicate")
        out = F.conv3d(t, weight, stride=2)  # (B*C, 8, X2, Y2, Z2)
        return out.reshape(B, C, 8, *out.shape[2:]).transpose(1, 2).reshape(B, 8 * C, *out.shape[2:])

    return dwt


def _pywt_dwt(x_host: np.ndarray) -> list[dict[str, np.ndarray]]:
    import pywt

    return [pywt.dwtn(x_host[b, c], "haar") for b in range(x_host.shape[0]) for c in range(x_host.shape[1])]


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int, nbytes: int) -> dict[str, Any]:
    t = time_fn(fn, device, warmup=warmup, iters=iters)
    return {"median_ms": t["median_ms"], "min_ms": t["min_ms"], "iters": t["iters"],
            "gbps": gbps(nbytes, t["median_ms"]), "gbps_at_min": gbps(nbytes, t["min_ms"])}


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failing implementation is recorded, not fatal to the others."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the results on purpose
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _ratio(num: dict[str, Any], den: dict[str, Any], key: str = "median_ms") -> float | None:
    if key in num and key in den and den[key] > 0:
        return num[key] / den[key]
    return None


def _bench_case(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, impls: dict[str, Impl],
                idwt_impls: dict[str, Callable[..., torch.Tensor]], warmup: int, iters: int,
                pywt_iters: int) -> dict[str, Any]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    ref = H.haar_dwt3d_reference(x)
    g = torch.randn(ref.shape, generator=gen).to(device=device, dtype=dtype)
    elem = x.element_size()
    bytes_fwd = (x.numel() + ref.numel()) * elem
    case: dict[str, Any] = {
        "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "output_shape": list(ref.shape),
        "bytes_fwd": bytes_fwd, "bytes_fwd_bwd": 2 * bytes_fwd, "bytes_idwt": bytes_fwd,
        "copy": _guard(lambda: copy_bandwidth_gbps(x.numel() * elem, device, iters=max(iters, 3))),
        "fwd": {}, "fwd_bwd": {}, "idwt_fwd": {},
    }
    for name, fn in impls.items():
        def fwd(fn: Impl = fn) -> dict[str, Any]:
            with torch.no_grad():
                err = _max_err(fn(x), ref)
                out = _timed(lambda: fn(x), device, warmup, iters, bytes_fwd)
            return {**out, "max_abs_err_vs_eager": err}

        def fwd_bwd(fn: Impl = fn) -> dict[str, Any]:
            xg = x.detach().clone().requires_grad_()
            (gx,) = torch.autograd.grad(fn(xg), xg, g)
            (gr,) = torch.autograd.grad(H.haar_dwt3d_reference(xg), xg, g)
            out = _timed(lambda: torch.autograd.grad(fn(xg), xg, g), device, warmup, iters, 2 * bytes_fwd)
            return {**out, "max_abs_err_vs_eager": _max_err(gx, gr)}

        case["fwd"][name] = _guard(fwd)
        case["fwd_bwd"][name] = _guard(fwd_bwd)
        synchronize(device)

    if dtype == torch.float32:
        def pywt_fwd() -> dict[str, Any]:
            host = x.cpu().numpy()
            coeffs = _pywt_dwt(host)
            C = shape[1]
            err = max(float(np.abs(coeffs[0][k] - ref[0, s * C].float().cpu().numpy()).max())
                      for s, k in enumerate(H.PYWT_KEYS))  # volume (b=0, c=0): channels s*C
            out = _timed(lambda: _pywt_dwt(host), torch.device("cpu"), 1, pywt_iters, bytes_fwd)
            return {**out, "max_abs_err_vs_eager": err, "note": "host CPU, numpy float32, one dwtn per volume"}

        case["fwd"]["pywt_cpu"] = _guard(pywt_fwd)

    spatial = tuple(shape[2:])
    x_ref = H.haar_idwt3d_reference(ref, spatial)
    for name, fn in idwt_impls.items():
        def inv(fn: Callable[..., torch.Tensor] = fn) -> dict[str, Any]:
            with torch.no_grad():
                err = _max_err(fn(ref, spatial), x_ref)
                out = _timed(lambda: fn(ref, spatial), device, warmup, iters, bytes_fwd)
            return {**out, "max_abs_err_vs_eager": err}

        case["idwt_fwd"][name] = _guard(inv)

    ratios: dict[str, float | None] = {}
    copy = case["copy"]
    for phase in ("fwd", "fwd_bwd", "idwt_fwd"):
        res = case[phase]
        for name, r in res.items():
            if "gbps" in r and "gbps" in copy:
                ratios[f"{name}_{phase}_fraction_of_copy_bw"] = r["gbps"] / copy["gbps"]
        if "triton" in res:
            ratios[f"triton_{phase}_speedup_vs_eager"] = _ratio(res.get("eager", {}), res["triton"])
            ratios[f"triton_{phase}_speedup_vs_compile"] = _ratio(res.get("compile", {}), res["triton"])
            ratios[f"triton_{phase}_speedup_vs_conv3d"] = _ratio(res.get("conv3d", {}), res["triton"])
        ratios[f"compile_{phase}_speedup_vs_eager"] = _ratio(res.get("eager", {}), res.get("compile", {}))
    case["ratios"] = ratios
    return case


def run(device: str, quick: bool, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark every implementation at the WF-VAE shapes (`quick`: small shapes, few iterations);
    `checkpoint` gets the finished cases after each one (a killed run keeps them)."""
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    dtypes = [torch.float32, torch.bfloat16] if on_cuda else [torch.float32]
    warmup, iters = (2, 10) if quick else ((5, 30) if on_cuda else (2, 5))
    pywt_iters = 2 if quick else 3

    compiled_dwt = torch.compile(H.haar_dwt3d_reference, dynamic=False)
    compiled_idwt = torch.compile(H.haar_idwt3d_reference, dynamic=False)
    triton_info: dict[str, Any] = {"run": on_cuda}
    if not on_cuda:
        triton_info["reason"] = ("Triton kernels need a CUDA device; on CPU they only run in the interpreter "
                                 "(TRITON_INTERPRET=1), whose timings are meaningless")

    cases = []
    t0 = time.perf_counter()
    for dtype in dtypes:
        impls: dict[str, Impl] = {}
        idwt_impls: dict[str, Callable[..., torch.Tensor]] = {}
        if on_cuda:
            impls["triton"] = H.haar_dwt3d_triton
            idwt_impls["triton"] = H.haar_idwt3d_triton
        impls["eager"] = H.haar_dwt3d_reference
        impls["compile"] = compiled_dwt
        impls["conv3d"] = _conv3d_dwt(_haar_filters(dtype, dev))
        idwt_impls["eager"] = H.haar_idwt3d_reference
        idwt_impls["compile"] = compiled_idwt
        for shape in shapes:
            cases.append(_bench_case(shape, dtype, dev, impls, idwt_impls, warmup, iters, pywt_iters))
            if checkpoint is not None:
                checkpoint({"op": "haar_dwt3d", "device": str(dev), "quick": quick, "cases": cases})
            if on_cuda:
                torch.cuda.empty_cache()
    return {
        "op": "haar_dwt3d",
        "device": str(dev),
        "quick": quick,
        "triton": triton_info,
        "timing": {"warmup": warmup, "iters": iters, "pywt_iters": pywt_iters, "statistic": "median"},
        "notes": [
            "gbps = bytes the op must move / median time; fwd_bwd counts forward plus backward "
            "(read grad_y, write grad_x), i.e. twice the forward bytes",
            "copy = same-run device-to-device copy of the input's bytes (read + write), the ceiling",
            "conv3d includes the (B, C, 8) -> (B, 8, C) channel reorder to our layout (a copy when C > 1); "
            "on CUDA, fp32 conv3d may run in TF32 (see max_abs_err_vs_eager)",
            "compile = torch.compile(haar_dwt3d_reference, dynamic=False); first-call compile time excluded",
            "ratios use medians; on a shared host compare min_ms / gbps_at_min as well",
        ],
        "cases": cases,
        "wall_s": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    from benchmarks.kernels.run_all import main

    sys.exit(main(["--ops", "haar_dwt3d", *sys.argv[1:]]))
