"""Measured device memory bandwidth: the ceiling every memory-bound kernel's GB/s is read against.

A device-to-device ``dst.copy_(src)`` (read + write counted) at sizes from below to far above the L2 cache,
next to two other ways of streaming the same bytes: ``torch.add(src, 0, out=dst)`` (an elementwise kernel,
what a fused op can at best reach) and, on CUDA with Triton, a plain Triton copy kernel (what our own
kernels can at best reach). The largest size's copy is the device ceiling (``device_copy_gbps``); sizes
that fit the L2 cache read high and are labelled as such.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from benchmarks.common import environment_info, gbps, time_fn

MIB = 2**20
FULL_SIZES_MIB = (16, 64, 256, 1024, 4096)
QUICK_SIZES_MIB = (1, 8, 32)


def _triton_copy() -> Callable[[torch.Tensor, torch.Tensor], None] | None:
    """A 1D Triton copy (one block of 4096 float32 per program), or None where Triton is absent."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)

    def copy(src: torch.Tensor, dst: torch.Tensor) -> None:
        n = src.numel()
        _copy_kernel[(triton.cdiv(n, 4096),)](src, dst, n, BLOCK=4096, num_warps=8)

    return copy


def _measure_size(nbytes: int, device: torch.device, iters: int,
                  triton_copy: Callable[[torch.Tensor, torch.Tensor], None] | None) -> dict[str, Any]:
    n = max(1, nbytes // 4)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    moved = 2 * n * 4
    impls: dict[str, Callable[[], Any]] = {"copy": lambda: dst.copy_(src),
                                           "add_zero": lambda: torch.add(src, 0, out=dst)}
    if triton_copy is not None:
        impls["triton_copy"] = lambda: triton_copy(src, dst)
    row: dict[str, Any] = {"mib": nbytes / MIB, "bytes_moved": moved, "impl": {}}
    for name, fn in impls.items():
        try:
            fn()
            ok = torch.equal(dst, src)
            t = time_fn(fn, device, warmup=3, iters=iters)
            row["impl"][name] = {"median_ms": t["median_ms"], "min_ms": t["min_ms"], "iters": t["iters"],
                                 "gbps": gbps(moved, t["median_ms"]), "gbps_at_min": gbps(moved, t["min_ms"]),
                                 "exact": ok}
        except Exception as exc:  # noqa: BLE001 - one failing way (OOM at 4 GiB, no Triton) is recorded
            row["impl"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        dst.zero_()
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run(device: str, quick: bool, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Copy bandwidth at every size; ``checkpoint`` gets the payload so far after each size."""
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    sizes = QUICK_SIZES_MIB if quick or not on_cuda else FULL_SIZES_MIB
    iters = 5 if quick else (20 if on_cuda else 5)
    triton_copy = _triton_copy() if on_cuda else None
    l2 = None
    if on_cuda:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", None)
    payload: dict[str, Any] = {
        "op": "copy_bandwidth", "quick": quick, "environment": environment_info(dev),
        "l2_cache_bytes": l2, "statistic": "median of CUDA-event-timed calls (read + write bytes counted)",
        "triton": "run" if triton_copy is not None else "not run (needs CUDA and triton)", "sizes": [],
    }
    for mib in sizes:
        row = _measure_size(mib * MIB, dev, iters, triton_copy)
        row["fits_l2"] = bool(l2 and mib * MIB * 2 <= l2)
        payload["sizes"].append(row)
        if checkpoint is not None:
            checkpoint(payload)
    largest = payload["sizes"][-1]["impl"].get("copy", {})
    payload["device_copy_gbps"] = largest.get("gbps")
    payload["device_copy_mib"] = payload["sizes"][-1]["mib"]
    return payload


if __name__ == "__main__":
    from benchmarks.kernels.run_all import main

    sys.exit(main(["--ops", "copy_bandwidth", *sys.argv[1:]]))
