"""Microbenchmark of 3D (shifted-)window attention at the DiT-3D shapes, implementations side by side.

Implementations (same inputs, same semantics, rel-pos bias on, padded keys masked):
  * ``triton``           kernels.window_attention3d.window_attention3d_triton (CUDA only: on CPU the
                         kernels run only through the Triton interpreter, a correctness tool);
  * ``eager``            the PyTorch reference (pad, roll, partition, dense window scores, softmax);
  * ``compiled``         ``torch.compile`` of that reference (first call's compile time recorded);
  * ``sdpa_partitioned`` the strong baseline: pad, roll, partition into windows, then
                         ``F.scaled_dot_product_attention`` with (bias + region/padding mask) as a float
                         ``attn_mask``, then reverse; partition/reverse/mask building are timed too;
  * ``flex_attention``   the same partition, then ``torch.nn.attention.flex_attention`` with a block mask of the
                         windows (one block per window) and the bias as a ``score_mod``, compiled on CUDA (flex's
                         own Triton kernel); its block mask is built once per geometry (a model would cache it).

Shapes (heads 6, head_dim 64, window (4, 4, 4), unshifted and shift (2, 2, 2)):
  * ``dit3d-48x56x40``: tokens of a 4x48x56x40 latent with patch 2 -> grid 24x28x20 (batch 4);
  * ``tle-28x34x28``:  seed 000's 4x28x34x28 latent with patch (4, 2, 4) -> grid 7x17x7 (batch 8).
``quick`` keeps the TLE grid at batch 1 with few iterations (the CPU smoke run).

FLOPs count useful work only: P = number of (real query, real key) pairs allowed by the window,
region and padding masks; forward = 4 * B * H * head_dim * P (QK^T and PV, 2 FLOPs per
multiply-add); forward+backward = 3 x forward (backward's dV, dP, dQ, dK matmuls; the recomputed
QK^T of flash-style backward and all softmax/elementwise work are not counted).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.common import environment_info, time_fn, write_results
from bsynth_hpc.kernels.window_attention3d import (window_attention3d_mask, window_attention3d_reference,
                                        window_attention3d_triton)

HEADS, HEAD_DIM, WINDOW = 6, 64, (4, 4, 4)
FULL_SHAPES = [("dit3d-48x56x40", (24, 28, 20), 4), ("tle-28x34x28", (7, 17, 7), 8)]
QUICK_SHAPES = [("tle-28x34x28", (7, 17, 7), 1)]
SHIFTS = [(0, 0, 0), (2, 2, 2)]
FLOP_FORMULA = ("P = #(real query, real key) pairs allowed by window+region+padding masks; "
                "fwd_flops = 4*B*H*head_dim*P; fwd_bwd_flops = 3*fwd_flops (recompute not counted)")


def _padded(grid: tuple[int, ...], window: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-g // w) * w for g, w in zip(grid, window))


def _to_windows(t: torch.Tensor, window: tuple[int, int, int], shift: tuple[int, int, int]) -> torch.Tensor:
    """(..., X, Y, Z, D) -> (..., nW, N, D): zero-pad, roll by -shift, partition (x-major)."""
    *lead, x, y, z, d = t.shape
    xp, yp, zp = _padded((x, y, z), window)
    t = F.pad(t, (0, 0, 0, zp - z, 0, yp - y, 0, xp - x))
    if any(shift):
        t = torch.roll(t, shifts=tuple(-s for s in shift), dims=(-4, -3, -2))
    wx, wy, wz = window
    t = t.reshape(*lead, xp // wx, wx, yp // wy, wy, zp // wz, wz, d)
    n = len(lead)
    t = t.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5, n + 6)
    return t.reshape(*lead, -1, wx * wy * wz, d)


def _from_windows(t: torch.Tensor, grid: tuple[int, int, int], window: tuple[int, int, int],
                  shift: tuple[int, int, int]) -> torch.Tensor:
    *lead, _, _, d = t.shape
    xp, yp, zp = _padded(grid, window)
    wx, wy, wz = window
    t = t.reshape(*lead, xp // wx, yp // wy, zp // wz, wx, wy, wz, d)
    n = len(lead)
    t = t.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2, n + 5, n + 6).reshape(*lead, xp, yp, zp, d)
    if any(shift):
        t = torch.roll(t, shifts=shift, dims=(-4, -3, -2))
    return t[..., : grid[0], : grid[1], : grid[2], :]


def sdpa_partitioned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int, int],
                     shift: tuple[int, int, int], bias: torch.Tensor | None,
                     scale: float | None = None) -> torch.Tensor:
    """Baseline: explicit window partition + SDPA with an additive float mask (bias + -inf outside
    the region/padding mask; the diagonal stays allowed so padded queries are finite)."""
    b, h, x, y, z, d = q.shape
    grid = (x, y, z)
    allowed = window_attention3d_mask(grid, window, shift, q.device)            # (nW, N, N), cached
    nw, n, _ = allowed.shape
    neg = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    mask = neg.expand(h, nw, n, n) if bias is None else bias.to(q.dtype)[:, None] + neg
    qw, kw, vw = (_to_windows(t, window, shift).reshape(b, h * nw, n, d) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask.reshape(h * nw, n, n), scale=scale)
    return _from_windows(out.reshape(b, h, nw, n, d), grid, window, shift)


def _flex_api() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """(flex_attention, create_block_mask), or None where this torch has no flex attention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return flex_attention, create_block_mask


@functools.lru_cache(maxsize=16)
def _flex_block_mask(grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int],
                     device: torch.device) -> Any:
    """Block mask over the window-major token sequence: query and key in one window and allowed there."""
    _, create_block_mask = _flex_api()  # type: ignore[misc]
    allowed = window_attention3d_mask(grid, window, shift, device).clone()
    nw, n, _ = allowed.shape

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001 - flex's vmapped index signature
        w = q_idx // n
        return (kv_idx // n == w) & allowed[w, q_idx % n, kv_idx % n]

    block = n if n % 16 == 0 else 128
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=nw * n, KV_LEN=nw * n, device=device, BLOCK_SIZE=block)


def _flex_windows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int, int],
                  shift: tuple[int, int, int], bias: torch.Tensor | None, block_mask: Any,
                  scale: float | None) -> torch.Tensor:
    """Partition, flex attention over the window-major sequence (bias as score_mod), reverse."""
    flex_attention, _ = _flex_api()  # type: ignore[misc]
    b, h, x, y, z, d = q.shape
    n = window[0] * window[1] * window[2]
    # contiguous 4D inputs: Inductor's flex templates expect a plain (B, H, L, D) layout, not a view
    qw, kw, vw = (_to_windows(t, window, shift).reshape(b, h, -1, d).contiguous() for t in (q, k, v))
    score_mod = None
    if bias is not None:
        def score_mod(score, bb, hh, q_idx, kv_idx):  # noqa: ANN001 - flex's score_mod signature
            return score + bias[hh, q_idx % n, kv_idx % n].to(score.dtype)

    out = flex_attention(qw, kw, vw, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return _from_windows(out.reshape(b, h, -1, n, d), (x, y, z), window, shift)


def make_flex_partitioned(compiled: bool) -> Callable[..., torch.Tensor]:
    """Window attention through flex attention. ``compiled``: the partition + flex + reverse path under
    torch.compile (flex's fused Triton kernel, the fast path on CUDA; the score_mod is created inside the
    compiled region so it does not recompile per call). The block mask is built outside, once per geometry."""
    if _flex_api() is None:
        raise RuntimeError("torch.nn.attention.flex_attention is not available in this torch")
    core = torch.compile(_flex_windows, dynamic=False) if compiled else _flex_windows

    def flex_partitioned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int, int],
                         shift: tuple[int, int, int], bias: torch.Tensor | None,
                         scale: float | None = None) -> torch.Tensor:
        window, shift = tuple(window), tuple(shift)
        block_mask = _flex_block_mask(tuple(q.shape[2:5]), window, shift, q.device)
        return core(q, k, v, window, shift, bias, block_mask, scale)

    return flex_partitioned


def useful_pairs(grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> int:
    """Allowed (real query, real key) pairs; every real query's row of the mask holds real keys only."""
    allowed = window_attention3d_mask(grid, window, shift)
    real = _to_windows(torch.ones(*grid, 1), window, shift)[..., 0] > 0          # (nW, N)
    return int((allowed & real[:, :, None] & real[:, None, :]).sum())


def _time(fn: Callable[[], Any], device: torch.device, quick: bool) -> dict[str, float]:
    if device.type == "cuda":
        return time_fn(fn, device, warmup=3 if quick else 10, iters=5 if quick else 30,
                       min_time_s=0.0 if quick else 1.0)
    return time_fn(fn, device, warmup=2, iters=5 if quick else 10)


def _peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)


def _bench_config(name: str, grid: tuple[int, int, int], batch: int, shift: tuple[int, int, int],
                  device: torch.device, dtype: torch.dtype, quick: bool,
                  impls: dict[str, Callable[..., torch.Tensor] | str]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    n = WINDOW[0] * WINDOW[1] * WINDOW[2]
    q, k, v = (torch.randn(batch, HEADS, *grid, HEAD_DIM, generator=gen).to(device, dtype) for _ in range(3))
    bias = (0.1 * torch.randn(HEADS, n, n, generator=gen)).to(device)                # fp32 table, as under AMP
    grad_out = torch.randn(q.shape, generator=gen).to(device, dtype)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, bias)]
    pairs = useful_pairs(grid, WINDOW, shift)
    fwd_flops = 4 * batch * HEADS * HEAD_DIM * pairs
    entry: dict[str, Any] = {"shape": name, "grid": list(grid), "batch": batch, "heads": HEADS, "head_dim": HEAD_DIM,
                             "window": list(WINDOW), "shift": list(shift), "dtype": str(dtype).replace("torch.", ""),
                             "useful_pairs_per_head": pairs, "fwd_gflop": fwd_flops / 1e9,
                             "fwd_bwd_gflop": 3 * fwd_flops / 1e9, "results": {}}
    with torch.no_grad():
        expected = window_attention3d_reference(q, k, v, WINDOW, shift, bias)
    for impl, fn in impls.items():
        if isinstance(fn, str):
            entry["results"][impl] = {"status": "not run", "reason": fn}
            continue
        try:
            res: dict[str, Any] = {"status": "ok"}
            if impl == "compiled":
                t0 = time.perf_counter()
                fn(*leaves[:3], WINDOW, shift, leaves[3]).backward(grad_out)  # compiles fwd and bwd graphs
                with torch.no_grad():
                    fn(q, k, v, WINDOW, shift, bias)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                res["compile_s"] = round(time.perf_counter() - t0, 2)
            with torch.no_grad():
                out = fn(q, k, v, WINDOW, shift, bias)
                res["max_abs_err_vs_eager"] = float((out.float() - expected.float()).abs().max())
                fwd = _time(lambda: fn(q, k, v, WINDOW, shift, bias), device, quick)

            def step() -> None:
                o = fn(*leaves[:3], WINDOW, shift, leaves[3])
                torch.autograd.grad(o, leaves, grad_out)

            both = _time(step, device, quick)
            res.update(fwd_ms=round(fwd["median_ms"], 4), fwd_bwd_ms=round(both["median_ms"], 4),
                       fwd_tflops=round(fwd_flops / (fwd["median_ms"] * 1e-3) / 1e12, 4),
                       fwd_bwd_tflops=round(3 * fwd_flops / (both["median_ms"] * 1e-3) / 1e12, 4),
                       fwd_bwd_peak_mib=_peak_mib(step, device))
        except Exception as exc:  # record and keep going: one failing baseline must not hide the rest
            res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
        entry["results"][impl] = res
    ok = {k: r for k, r in entry["results"].items() if r.get("status") == "ok"}
    ratios: dict[str, float] = {}
    for base in ("sdpa_partitioned", "flex_attention", "eager", "compiled"):
        if "triton" in ok and base in ok:
            for phase in ("fwd", "fwd_bwd"):
                ratios[f"triton_speedup_vs_{base}_{phase}"] = round(
                    ok[base][f"{phase}_ms"] / ok["triton"][f"{phase}_ms"], 3)
    if "sdpa_partitioned" in ok and "eager" in ok:
        for phase in ("fwd", "fwd_bwd"):
            ratios[f"sdpa_partitioned_speedup_vs_eager_{phase}"] = round(
                ok["eager"][f"{phase}_ms"] / ok["sdpa_partitioned"][f"{phase}_ms"], 3)
    entry["ratios"] = ratios
    return entry


def run(device: str, quick: bool, checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark all implementations at the DiT-3D shapes; returns the JSON payload. `checkpoint` gets the
    finished configs after each one (a killed run keeps them)."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    impls: dict[str, Callable[..., torch.Tensor] | str] = {}
    if dev.type == "cuda":
        impls["triton"] = window_attention3d_triton
    else:
        impls["triton"] = ("Triton kernels need a CUDA device; on CPU they run only through the Triton "
                           "interpreter (TRITON_INTERPRET=1), a correctness tool whose timings mean nothing")
    impls["eager"] = window_attention3d_reference
    impls["compiled"] = torch.compile(window_attention3d_reference, dynamic=False)
    impls["sdpa_partitioned"] = sdpa_partitioned
    impls["flex_attention"] = (make_flex_partitioned(compiled=dev.type == "cuda") if _flex_api() is not None
                               else "torch.nn.attention.flex_attention is not available in this torch")
    configs = []
    for name, grid, batch in (QUICK_SHAPES if quick else FULL_SHAPES):
        for shift in SHIFTS:
            configs.append(_bench_config(name, grid, batch, shift, dev, dtype, quick, impls))
            if checkpoint is not None:
                checkpoint({"benchmark": "window_attention3d", "quick": quick, "configs": configs})
    return {
        "benchmark": "window_attention3d",
        "quick": quick,
        "flop_formula": FLOP_FORMULA,
        "timing": "median of repeated calls (CUDA events after a synchronize on CUDA, perf_counter on CPU); "
                  "fwd under no_grad, fwd_bwd = forward + autograd.grad of q, k, v and the bias",
        "triton_launch": "BLOCK_M = BLOCK_N = 64 (one tile per 4x4x4 window), fwd 4 warps, bwd 4 warps "
                         "(8 for head_dim > 64), 2 stages; deterministic d(bias) via per-group partials",
        "configs": configs,
        "environment": environment_info(dev),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("warning: TRITON_INTERPRET=1 is set; timings of Triton code would be meaningless", file=sys.stderr)
    payload = run(args.device, args.quick)
    path = write_results("kernels_window_attention3d", payload, args.out_dir)
    for c in payload["configs"]:
        cells = [f"{k} " + (f'{r["fwd_ms"]:.3f}/{r["fwd_bwd_ms"]:.3f} ms' if r["status"] == "ok" else r["status"])
                 for k, r in c["results"].items()]
        print(f'{c["shape"]} B={c["batch"]} shift={tuple(c["shift"])} (fwd/fwd+bwd): ' + "; ".join(cells))
        if c["ratios"]:
            print("  ratios: " + json.dumps(c["ratios"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
