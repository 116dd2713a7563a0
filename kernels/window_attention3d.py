"""3D (shifted-)window multi-head attention: Triton kernels, PyTorch reference, autograd.

Op: ``window_attention3d(q, k, v, window_size, shift_size=(0, 0, 0), rel_pos_bias=None, scale=None)``
with q, k, v of shape (B, heads, X, Y, Z, head_dim); every token attends only to the tokens of its
non-overlapping 3D window of ``window_size = (wx, wy, wz)`` (N = wx*wy*wz tokens), as in DiT-3D's
window attention and Video-Swin. Unlike the public DiT-3D code (whose "window" attention attends
globally), attention here really is restricted to windows.

Semantics (the reference below is the definition):
  * Grid sizes not divisible by the window are zero-padded at the high end up to multiples of the
    window. Padded *keys are masked* (never attended to); padded queries are computed and dropped.
    This differs from Swin / Video-Swin's original code, which pads with zeros and lets real tokens
    attend to those zero tokens (so their outputs depend on the amount of padding).
  * Shift (Swin's SW-MSA): pad first, then ``torch.roll(-shift)``, window, attend, roll back
    ``+shift``, crop. Tokens that come from different regions of the rolled grid do not attend to
    each other (Swin's attention mask: per axis the regions are [0, P-w), [P-w, P-s), [P-s, P) of
    the rolled padded axis of size P). The region mask and the padding mask both apply.
  * ``rel_pos_bias``: dense (heads, N, N) added to every window's scores (window-local token order
    x-major: n = lx*wy*wz + ly*wz + lz). `bsynth_hpc.nn.WindowAttention3d` builds it from the usual
    learnable ((2wx-1)(2wy-1)(2wz-1), heads) table and `bsynth_hpc.nn.relative_position_index`.
  * ``scale`` defaults to head_dim ** -0.5.

Triton implementation (flash-attention-2 style, fp32 accumulation; fp32/fp16/bf16 inputs):
  * forward: one program per (window * query block, batch*head). The window's tokens are gathered by
    index arithmetic straight from the (B, H, X, Y, Z, D) tensors (any strides with unit stride on
    head_dim): no partition copy, no padded copy, the cyclic shift is ``(r + s) mod P`` on the padded
    grid and out-of-range (padded) tokens are masked loads/stores. Online softmax over key blocks;
    no score matrix reaches global memory. Saves the per-query log-sum-exp (base 2, fp32).
  * backward (scores recomputed): a dq kernel (which also computes delta = rowsum(dO * O) for its
    rows, so no separate pre-pass), then a dk/dv kernel. d(rel_pos_bias) is reduced over batch and
    windows *deterministically*: programs own a group of windows, accumulate their dS tiles in
    registers and write one fp32 partial per (batch*head, window group); a torch sum over those
    partials gives (heads, N, N). When the window fits in one key block (N <= BLOCK_N, e.g. 4x4x4)
    this is fused into the dq kernel; otherwise a dedicated kernel recomputes dS per
    (query block, key block) tile. No atomics anywhere: results are bitwise reproducible.
  * fp32 inputs use TF32 tensor-core dots by default (fp32 accumulation; ~1e-3 relative error, as
    cuBLAS/cuDNN with TF32); ``precision="ieee"`` (or $BSYNTH_ATTENTION_FP32=ieee) selects exact fp32
    FMA dots with smaller tiles. 16-bit inputs always multiply on tensor cores.
  * head_dim 1..256 (padded to a power of two >= 16 inside the kernel with masked lanes).
  * Launch decisions (`plan_attention`, fixed rules): 64x64 forward/dq tiles and 64x32 dk/dv tiles
    with 4 warps for tensor-core dots (8 for head_dim > 64), small tiles for "ieee"; a kernel whose
    grid would have fewer than 3 programs per SM gets its tile split (query rows for forward/dq, key
    rows for dk/dv), then fp32 tiles are fitted to the registers (`_fit_registers`).
    ``benchmarks/kernels_compile.py`` compiles exactly these launches for sm_90 and sm_80 without a
    GPU and reports registers, spills, shared memory and occupancy.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

try:  # triton is optional: the reference and the module work without it.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - platform without triton
    triton = None
    tl = None

from .launch import Launch, device_arch, device_sm_count

__all__ = [
    "window_attention3d_reference",
    "window_attention3d_triton",
    "window_attention3d_mask",
    "as_int3",
    "AttentionPlan",
    "Tile",
    "fp32_precision",
    "plan_attention",
    "PRECISION_ENV",
]

Int3 = tuple[int, int, int]
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
PRECISION_ENV = "BSYNTH_ATTENTION_FP32"
_PRECISIONS = ("tf32", "ieee")
_MIN_WAVES = 3  # split tiles until the grid has this many programs per SM (see `_split_for_occupancy`)


# ----------------------------------------------------------------------------------------------
# argument checks and shared helpers
# ----------------------------------------------------------------------------------------------
def as_int3(value: Sequence[int], name: str) -> Int3:
    """`value` as an (x, y, z) int triple; ValueError naming `name` otherwise (shared with the module)."""
    try:
        items = tuple(int(v) for v in value)
        if any(int(v) != v for v in value):
            raise TypeError
    except TypeError:
        raise ValueError(f"window_attention3d: {name} must be three integers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"window_attention3d: {name} must have 3 entries (x, y, z), got {value!r}")
    return items  # type: ignore[return-value]


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Sequence[int],
                  shift_size: Sequence[int], rel_pos_bias: torch.Tensor | None) -> tuple[Int3, Int3]:
    """Validate shapes/dtypes/devices; return (window, shift) as int triples."""
    if q.dim() != 6:
        raise ValueError("window_attention3d: q, k, v must be (B, heads, X, Y, Z, head_dim), "
                         f"got q of shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError("window_attention3d: q, k, v must have the same shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"window_attention3d: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if not q.is_floating_point():
        raise TypeError(f"window_attention3d: q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"window_attention3d: q, k, v devices differ ({q.device}, {k.device}, {v.device})")
    window = as_int3(window_size, "window_size")
    shift = as_int3(shift_size, "shift_size")
    if any(w < 1 for w in window):
        raise ValueError(f"window_attention3d: window_size entries must be >= 1, got {window}")
    if any(s < 0 or s >= w for s, w in zip(shift, window)):
        raise ValueError(f"window_attention3d: need 0 <= shift_size < window_size per axis, got shift {shift} "
                         f"for window {window} (use shift = window // 2 for Swin's shifted windows)")
    if rel_pos_bias is not None:
        n = window[0] * window[1] * window[2]
        heads = q.shape[1]
        if tuple(rel_pos_bias.shape) != (heads, n, n):
            raise ValueError(f"window_attention3d: rel_pos_bias must have shape (heads, N, N) = ({heads}, {n}, {n}) "
                             f"for window {window}, got {tuple(rel_pos_bias.shape)}")
        if not rel_pos_bias.is_floating_point():
            raise TypeError(f"window_attention3d: rel_pos_bias must be floating point, got {rel_pos_bias.dtype}")
        if rel_pos_bias.device != q.device:
            raise ValueError(f"window_attention3d: rel_pos_bias is on {rel_pos_bias.device}, q on {q.device}")
    return window, shift


def _padded(sizes: Sequence[int], window: Int3) -> Int3:
    return tuple(-(-s // w) * w for s, w in zip(sizes, window))  # type: ignore[return-value]


def _partition(t: torch.Tensor, window: Int3) -> torch.Tensor:
    """(..., Xp, Yp, Zp, D) -> (..., nW, N, D), windows x-major, tokens x-major inside a window."""
    *lead, xp, yp, zp, d = t.shape
    wx, wy, wz = window
    t = t.reshape(*lead, xp // wx, wx, yp // wy, wy, zp // wz, wz, d)
    nl = len(lead)
    perm = list(range(nl)) + [nl, nl + 2, nl + 4, nl + 1, nl + 3, nl + 5, nl + 6]
    return t.permute(perm).reshape(*lead, -1, wx * wy * wz, d)


def _unpartition(t: torch.Tensor, window: Int3, padded: Int3) -> torch.Tensor:
    """Inverse of `_partition`: (..., nW, N, D) -> (..., Xp, Yp, Zp, D)."""
    *lead, _, _, d = t.shape
    wx, wy, wz = window
    xp, yp, zp = padded
    t = t.reshape(*lead, xp // wx, yp // wy, zp // wz, wx, wy, wz, d)
    nl = len(lead)
    perm = list(range(nl)) + [nl, nl + 3, nl + 1, nl + 4, nl + 2, nl + 5, nl + 6]
    return t.permute(perm).reshape(*lead, xp, yp, zp, d)


def _build_mask(grid: Int3, window: Int3, shift: Int3) -> torch.Tensor:
    """The (nW, N, N) allowed-key mask on CPU (see `window_attention3d_mask`)."""
    padded = _padded(grid, window)
    # Swin's region labels, written on the rolled padded grid.
    region = torch.zeros(padded, dtype=torch.int64)
    axis_slices = []
    for p, w, s in zip(padded, window, shift):
        axis_slices.append((slice(0, p - w), slice(p - w, p - s), slice(p - s, p)) if s > 0 else (slice(0, p),))
    label = 0
    for sx in axis_slices[0]:
        for sy in axis_slices[1]:
            for sz in axis_slices[2]:
                region[sx, sy, sz] = label
                label += 1
    real = torch.zeros(padded, dtype=torch.bool)
    real[: grid[0], : grid[1], : grid[2]] = True
    if any(shift):
        real = torch.roll(real, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    region_w = _partition(region[..., None], window)[..., 0]   # (nW, N)
    real_w = _partition(real[..., None], window)[..., 0]       # (nW, N)
    allowed = (region_w[:, :, None] == region_w[:, None, :]) & real_w[:, None, :]
    # Padded queries may have no allowed key; letting every query see itself keeps softmax finite.
    # Real queries always see themselves anyway, so their result is unchanged.
    allowed |= torch.eye(allowed.shape[-1], dtype=torch.bool)[None]
    return allowed


@functools.lru_cache(maxsize=64)
def _cached_mask(grid: Int3, window: Int3, shift: Int3, device: torch.device) -> torch.Tensor:
    return _build_mask(grid, window, shift).to(device)


def window_attention3d_mask(grid: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int] = (0, 0, 0),
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """(nW, N, N) bool: key j may be attended by query i of window w (region mask & real key, plus the
    diagonal so padded queries stay finite). Windows in x-major order on the rolled, padded grid.
    The tensor is cached per (grid, window, shift, device): treat it as read-only."""
    args = (as_int3(grid, "grid"), as_int3(window_size, "window_size"), as_int3(shift_size, "shift_size"))
    if torch.compiler.is_compiling():  # traced once into the graph as constants; no cache needed
        return _build_mask(*args).to(device)
    return _cached_mask(*args, torch.device(device))


# ----------------------------------------------------------------------------------------------
# PyTorch reference (the definition of the op)
# ----------------------------------------------------------------------------------------------
def window_attention3d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Sequence[int],
                                 shift_size: Sequence[int] = (0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                                 scale: float | None = None) -> torch.Tensor:
    """Differentiable PyTorch window attention: pad, roll, partition, masked softmax, reverse.

    Computes in fp32 (fp64 for fp64 inputs) and returns q's dtype. Materialises the
    (B, H, nW, N, N) scores: use it as the definition and CPU fallback, not for speed.
    """
    window, shift = _check_inputs(q, k, v, window_size, shift_size, rel_pos_bias)
    if q.numel() == 0:
        return q.clone()  # empty batch/heads/grid: nothing to attend (kept in the autograd graph)
    b, h, x, y, z, d = q.shape
    grid = (x, y, z)
    padded = _padded(grid, window)
    scale = d ** -0.5 if scale is None else float(scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32

    def to_windows(t: torch.Tensor) -> torch.Tensor:
        t = t.to(cdt)
        pads = (0, 0, 0, padded[2] - z, 0, padded[1] - y, 0, padded[0] - x)
        if any(pads):
            t = F.pad(t, pads)
        if any(shift):
            t = torch.roll(t, shifts=tuple(-s for s in shift), dims=(2, 3, 4))
        return _partition(t, window)                            # (B, H, nW, N, D)

    qw, kw, vw = to_windows(q), to_windows(k), to_windows(v)
    scores = torch.matmul(qw, kw.transpose(-1, -2)) * scale   # (B, H, nW, N, N)
    if rel_pos_bias is not None:
        scores = scores + rel_pos_bias.to(cdt)[None, :, None]
    allowed = window_attention3d_mask(grid, window, shift, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vw)
    out = _unpartition(out, window, padded)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(2, 3, 4))
    return out[:, :, :x, :y, :z].to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
if triton is not None:

    _LOG2E = tl.constexpr(1.4426950408889634)

    @triton.jit
    def _window_origin(win, NWY, NWZ, WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr):
        """First rolled-grid coordinate of window `win` (windows in x-major order)."""
        return (win // (NWY * NWZ)) * WX, ((win // NWZ) % NWY) * WY, (win % NWZ) * WZ

    @triton.jit
    def _wrap(r, S: tl.constexpr, P):
        """Rolled coordinate -> padded-grid coordinate: rolling by -S puts (r + S) mod P at r."""
        if S == 0:
            return r
        else:
            o = r + S
            return tl.where(o >= P, o - P, o)

    @triton.jit
    def _window_tokens(n, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                       WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr,
                       SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr):
        """Window-local token ids `n` (x-major) of the window at rolled origin (x0, y0, z0) ->
        original (unrolled) coordinates, validity (inside the window and not padding) and Swin's
        region code (only meaningful with a shift)."""
        N: tl.constexpr = WX * WY * WZ
        rx = x0 + n // (WY * WZ)
        ry = y0 + (n // WZ) % WY
        rz = z0 + n % WZ
        ox = _wrap(rx, SX, XP)
        oy = _wrap(ry, SY, YP)
        oz = _wrap(rz, SZ, ZP)
        valid = (n < N) & (ox < X) & (oy < Y) & (oz < Z)
        # Swin's regions per rolled axis: [0, P-w), [P-w, P-s), [P-s, P). The first boundary is a
        # window boundary, so inside a window only "r >= P - s" (the wrapped-around strip) differs.
        if SX + SY + SZ == 0:
            region = n  # unused: `_allowed` ignores regions without a shift
        else:
            region = ((rx >= XP - SX).to(tl.int32) * 4 + (ry >= YP - SY).to(tl.int32) * 2
                      + (rz >= ZP - SZ).to(tl.int32))
        return ox, oy, oz, valid, region

    @triton.jit
    def _allowed(q_ok, q_reg, k_ok, k_reg, SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr):
        """(BLOCK_M, BLOCK_N) mask: real query, real key, same Swin region (only with a shift)."""
        allowed = q_ok[:, None] & k_ok[None, :]
        if SX + SY + SZ > 0:
            allowed = allowed & (q_reg[:, None] == k_reg[None, :])
        return allowed

    @triton.jit
    def _offsets(ox, oy, oz, s_x, s_y, s_z):
        return ox.to(tl.int64) * s_x + oy.to(tl.int64) * s_y + oz.to(tl.int64) * s_z

    @triton.jit
    def _batch_head(bh, H):
        """(batch, head) of program axis 1 (b * H + h), as int64 for the pointer arithmetic."""
        return (bh // H).to(tl.int64), (bh % H).to(tl.int64)

    @triton.jit
    def _token_rows(ox, oy, oz, s_x, s_y, s_z, offs_d):
        """(BLOCK, BLOCK_D) element offsets of the tokens at (ox, oy, oz), channels ``offs_d``."""
        return _offsets(ox, oy, oz, s_x, s_y, s_z)[:, None] + offs_d[None, :]

    @triton.jit
    def _load_kv(k_base, v_base, kx, ky, kz, k_ok, s_x, s_y, s_z, offs_d, d_ok):
        """K and V rows of one key block (zeros for padding, tokens outside the window, d >= head_dim)."""
        k_off = _token_rows(kx, ky, kz, s_x, s_y, s_z, offs_d)
        kv_mask = k_ok[:, None] & d_ok[None, :]
        return tl.load(k_base + k_off, mask=kv_mask, other=0.0), tl.load(v_base + k_off, mask=kv_mask, other=0.0)

    @triton.jit
    def _bias_tile(Bias, h, offs_m, offs_n, N: tl.constexpr):
        """Pointers to, and the mask of, the (query block, key block) tile of head h's (N, N) bias."""
        return (Bias + h * (N * N) + offs_m[:, None] * N + offs_n[None, :],
                (offs_m[:, None] < N) & (offs_n[None, :] < N))

    @triton.jit
    def _mm(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """a @ b with fp32 accumulation. UPCAST multiplies fp32 copies; it is set only for bf16 under
        the Triton interpreter, whose dot multiplies bf16 storage bits as integers (triton 3.9); the
        products of bf16 values are exact in fp32, so the result equals the GPU's bf16 dot up to the
        summation order. The tests run the UPCAST=False path too, with the interpreter's dot fixed."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PREC)

    @triton.jit
    def _recompute_p_ds(q, k, v, do, lse, delta, bias_ptrs, bias_mask, allowed, qk_scale,
                        HAS_BIAS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """Backward recompute of one (query block, key block) tile: P and dS = dL/dscores (fp32)."""
        s = _mm(q, tl.trans(k), PREC, UPCAST) * qk_scale
        if HAS_BIAS:
            s += tl.load(bias_ptrs, mask=bias_mask, other=0.0).to(tl.float32) * _LOG2E
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        return p, ds

    @triton.jit
    def _wa3d_fwd_kernel(Q, K, V, Bias, O, LSE, sm_scale,
                         s_b, s_h, s_x, s_y, s_z,
                         o_b, o_h, o_x, o_y, o_z,
                         H, X, Y, Z, XP, YP, ZP, NWY, NWZ,
                         WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr,
                         SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         HAS_BIAS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """Output and base-2 log-sum-exp of one query block of one window (online softmax)."""
        N: tl.constexpr = WX * WY * WZ
        NUM_QB: tl.constexpr = (N + BLOCK_M - 1) // BLOCK_M
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        win = pid // NUM_QB
        qb = pid % NUM_QB
        b, h = _batch_head(bh, H)
        q_base = Q + b * s_b + h * s_h
        k_base = K + b * s_b + h * s_h
        v_base = V + b * s_b + h * s_h
        x0, y0, z0 = _window_origin(win, NWY, NWZ, WX, WY, WZ)

        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        qx, qy, qz, q_ok, q_reg = _window_tokens(offs_m, x0, y0, z0, X, Y, Z, XP, YP, ZP, WX, WY, WZ, SX, SY, SZ)
        q_mask = q_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + _token_rows(qx, qy, qz, s_x, s_y, s_z, offs_d), mask=q_mask, other=0.0)

        qk_scale = sm_scale * _LOG2E  # exp2 domain
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kx, ky, kz, k_ok, k_reg = _window_tokens(offs_n, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                     WX, WY, WZ, SX, SY, SZ)
            k, v = _load_kv(k_base, v_base, kx, ky, kz, k_ok, s_x, s_y, s_z, offs_d, d_ok)
            s = _mm(q, tl.trans(k), PREC, UPCAST) * qk_scale
            if HAS_BIAS:
                bias_ptrs, bias_mask = _bias_tile(Bias, h, offs_m, offs_n, N)
                s += tl.load(bias_ptrs, mask=bias_mask, other=0.0).to(tl.float32) * _LOG2E
            # Finite "minus infinity": while a row has seen no allowed key its max stays -1e30 and
            # the junk it sums is wiped by alpha = 0 once a real key arrives (every real query sees
            # itself). Rows without any allowed key are padded queries and are never stored.
            s = tl.where(_allowed(q_ok, q_reg, k_ok, k_reg, SX, SY, SZ), s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, PREC, UPCAST)
            m_i = m_new
        acc = acc / l_i[:, None]
        o_base = O + b * o_b + h * o_h
        tl.store(o_base + _token_rows(qx, qy, qz, o_x, o_y, o_z, offs_d),
                 acc.to(O.dtype.element_ty), mask=q_mask)
        lse_idx = bh.to(tl.int64) * (X * Y * Z) + (qx * Y + qy) * Z + qz
        tl.store(LSE + lse_idx, m_i + tl.log2(l_i), mask=q_ok)

    @triton.jit
    def _wa3d_bwd_dq_kernel(Q, K, V, Bias, O, DO, DQ, LSE, DELTA, DBIAS_PART, sm_scale,
                            s_b, s_h, s_x, s_y, s_z,
                            o_b, o_h, o_x, o_y, o_z,
                            H, X, Y, Z, XP, YP, ZP, NWY, NWZ, NW, GROUP, NUM_GROUPS,
                            WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr,
                            SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            HAS_BIAS: tl.constexpr, FUSE_DBIAS: tl.constexpr,
                            PREC: tl.constexpr, UPCAST: tl.constexpr):
        """dq and delta = rowsum(dO * O) of one query block, for each window of a group of windows;
        with FUSE_DBIAS (window = one key block) also the group's d(bias) partial."""
        N: tl.constexpr = WX * WY * WZ
        NUM_QB: tl.constexpr = (N + BLOCK_M - 1) // BLOCK_M
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        grp = pid // NUM_QB
        qb = pid % NUM_QB
        b, h = _batch_head(bh, H)
        q_base = Q + b * s_b + h * s_h
        k_base = K + b * s_b + h * s_h
        v_base = V + b * s_b + h * s_h
        o_base = O + b * o_b + h * o_h
        do_base = DO + b * o_b + h * o_h
        dq_base = DQ + b * o_b + h * o_h
        lse_base = bh.to(tl.int64) * (X * Y * Z)
        qk_scale = sm_scale * _LOG2E

        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        dbias_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        w_end = tl.minimum(grp * GROUP + GROUP, NW)
        for win in range(grp * GROUP, w_end):
            x0, y0, z0 = _window_origin(win, NWY, NWZ, WX, WY, WZ)
            qx, qy, qz, q_ok, q_reg = _window_tokens(offs_m, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                     WX, WY, WZ, SX, SY, SZ)
            q_mask = q_ok[:, None] & d_ok[None, :]
            o_off = _token_rows(qx, qy, qz, o_x, o_y, o_z, offs_d)
            q = tl.load(q_base + _token_rows(qx, qy, qz, s_x, s_y, s_z, offs_d), mask=q_mask, other=0.0)
            do = tl.load(do_base + o_off, mask=q_mask, other=0.0)
            o = tl.load(o_base + o_off, mask=q_mask, other=0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
            lse_idx = lse_base + (qx * Y + qy) * Z + qz
            tl.store(DELTA + lse_idx, delta, mask=q_ok)
            lse = tl.load(LSE + lse_idx, mask=q_ok, other=0.0)
            dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            for start_n in range(0, N, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                kx, ky, kz, k_ok, k_reg = _window_tokens(offs_n, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                         WX, WY, WZ, SX, SY, SZ)
                k, v = _load_kv(k_base, v_base, kx, ky, kz, k_ok, s_x, s_y, s_z, offs_d, d_ok)
                bias_ptrs, bias_mask = _bias_tile(Bias, h, offs_m, offs_n, N)
                p, ds = _recompute_p_ds(q, k, v, do, lse, delta, bias_ptrs, bias_mask,
                                        _allowed(q_ok, q_reg, k_ok, k_reg, SX, SY, SZ), qk_scale,
                                        HAS_BIAS, PREC, UPCAST)
                dq += _mm(ds.to(k.dtype), k, PREC, UPCAST)
                if FUSE_DBIAS:
                    dbias_acc += ds
            tl.store(dq_base + o_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)
        if FUSE_DBIAS:
            offs_n = tl.arange(0, BLOCK_N)
            part = DBIAS_PART + (bh.to(tl.int64) * NUM_GROUPS + grp) * (N * N)
            tl.store(part + offs_m[:, None] * N + offs_n[None, :], dbias_acc,
                     mask=(offs_m[:, None] < N) & (offs_n[None, :] < N))

    @triton.jit
    def _wa3d_bwd_dkdv_kernel(Q, K, V, Bias, DO, DK, DV, LSE, DELTA, sm_scale,
                              s_b, s_h, s_x, s_y, s_z,
                              o_b, o_h, o_x, o_y, o_z,
                              H, X, Y, Z, XP, YP, ZP, NWY, NWZ,
                              WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr,
                              SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
                              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              HAS_BIAS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """dk, dv of one key block of one window: loop over the window's query blocks."""
        N: tl.constexpr = WX * WY * WZ
        NUM_KB: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        win = pid // NUM_KB
        kb = pid % NUM_KB
        b, h = _batch_head(bh, H)
        q_base = Q + b * s_b + h * s_h
        do_base = DO + b * o_b + h * o_h
        lse_base = bh.to(tl.int64) * (X * Y * Z)
        qk_scale = sm_scale * _LOG2E
        x0, y0, z0 = _window_origin(win, NWY, NWZ, WX, WY, WZ)

        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        kx, ky, kz, k_ok, k_reg = _window_tokens(offs_n, x0, y0, z0, X, Y, Z, XP, YP, ZP, WX, WY, WZ, SX, SY, SZ)
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k, v = _load_kv(K + b * s_b + h * s_h, V + b * s_b + h * s_h, kx, ky, kz, k_ok, s_x, s_y, s_z, offs_d, d_ok)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for start_m in range(0, N, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            qx, qy, qz, q_ok, q_reg = _window_tokens(offs_m, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                     WX, WY, WZ, SX, SY, SZ)
            q_mask = q_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + _token_rows(qx, qy, qz, s_x, s_y, s_z, offs_d), mask=q_mask, other=0.0)
            do = tl.load(do_base + _token_rows(qx, qy, qz, o_x, o_y, o_z, offs_d), mask=q_mask, other=0.0)
            lse_idx = lse_base + (qx * Y + qy) * Z + qz
            lse = tl.load(LSE + lse_idx, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + lse_idx, mask=q_ok, other=0.0)
            bias_ptrs, bias_mask = _bias_tile(Bias, h, offs_m, offs_n, N)
            p, ds = _recompute_p_ds(q, k, v, do, lse, delta, bias_ptrs, bias_mask,
                                    _allowed(q_ok, q_reg, k_ok, k_reg, SX, SY, SZ), qk_scale,
                                    HAS_BIAS, PREC, UPCAST)
            dv += _mm(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
            dk += _mm(tl.trans(ds.to(q.dtype)), q, PREC, UPCAST)
        dkv_off = _token_rows(kx, ky, kz, o_x, o_y, o_z, offs_d)
        tl.store(DK + b * o_b + h * o_h + dkv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b * o_b + h * o_h + dkv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _wa3d_bwd_dbias_kernel(Q, K, V, Bias, DO, LSE, DELTA, DBIAS_PART, sm_scale,
                               s_b, s_h, s_x, s_y, s_z,
                               o_b, o_h, o_x, o_y, o_z,
                               H, X, Y, Z, XP, YP, ZP, NWY, NWZ, NW, GROUP, NUM_GROUPS,
                               WX: tl.constexpr, WY: tl.constexpr, WZ: tl.constexpr,
                               SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
                               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               PREC: tl.constexpr, UPCAST: tl.constexpr):
        """d(bias) partial of one (query block, key block) tile summed over a group of windows; used
        when the window spans several key blocks (the dq kernel cannot then hold a whole row)."""
        N: tl.constexpr = WX * WY * WZ
        NUM_QB: tl.constexpr = (N + BLOCK_M - 1) // BLOCK_M
        NUM_KB: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        grp = pid // (NUM_QB * NUM_KB)
        tile = pid % (NUM_QB * NUM_KB)
        qb = tile // NUM_KB
        kb = tile % NUM_KB
        b, h = _batch_head(bh, H)
        q_base = Q + b * s_b + h * s_h
        k_base = K + b * s_b + h * s_h
        v_base = V + b * s_b + h * s_h
        do_base = DO + b * o_b + h * o_h
        lse_base = bh.to(tl.int64) * (X * Y * Z)
        qk_scale = sm_scale * _LOG2E

        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        bias_ptrs, bias_mask = _bias_tile(Bias, h, offs_m, offs_n, N)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        w_end = tl.minimum(grp * GROUP + GROUP, NW)
        for win in range(grp * GROUP, w_end):
            x0, y0, z0 = _window_origin(win, NWY, NWZ, WX, WY, WZ)
            qx, qy, qz, q_ok, q_reg = _window_tokens(offs_m, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                     WX, WY, WZ, SX, SY, SZ)
            kx, ky, kz, k_ok, k_reg = _window_tokens(offs_n, x0, y0, z0, X, Y, Z, XP, YP, ZP,
                                                     WX, WY, WZ, SX, SY, SZ)
            q_mask = q_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + _token_rows(qx, qy, qz, s_x, s_y, s_z, offs_d), mask=q_mask, other=0.0)
            do = tl.load(do_base + _token_rows(qx, qy, qz, o_x, o_y, o_z, offs_d), mask=q_mask, other=0.0)
            k, v = _load_kv(k_base, v_base, kx, ky, kz, k_ok, s_x, s_y, s_z, offs_d, d_ok)
            lse_idx = lse_base + (qx * Y + qy) * Z + qz
            lse = tl.load(LSE + lse_idx, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + lse_idx, mask=q_ok, other=0.0)
            p, ds = _recompute_p_ds(q, k, v, do, lse, delta, bias_ptrs, bias_mask,
                                    _allowed(q_ok, q_reg, k_ok, k_reg, SX, SY, SZ), qk_scale,
                                    True, PREC, UPCAST)
            acc += ds
        part = DBIAS_PART + (bh.to(tl.int64) * NUM_GROUPS + grp) * (N * N)
        tl.store(part + offs_m[:, None] * N + offs_n[None, :], acc, mask=bias_mask)


# ----------------------------------------------------------------------------------------------
# launch helpers and autograd
# ----------------------------------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class Tile:
    """Tile of one kernel: query rows ``block_m``, key rows ``block_n``, warps and pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int = 2


@dataclass(frozen=True)
class AttentionPlan:
    """Every launch decision of one call: head-dim padding, dot precision and each kernel's tile."""

    block_d: int
    prec: str          # tl.dot input_precision: "tf32" (tensor cores; ignored for 16-bit inputs) or "ieee"
    upcast: bool       # bf16 under the interpreter: multiply fp32 copies (see `_mm`)
    fwd: Tile
    dq: Tile
    dkdv: Tile
    dbias: Tile


def fp32_precision(precision: str | None = None) -> str:
    """Dot precision for fp32 inputs: `precision`, else $BSYNTH_ATTENTION_FP32, else "tf32".

    "tf32" runs tensor-core dots on fp32 data (10-bit mantissa products, fp32 accumulation; relative
    error ~1e-3, like cuDNN/cuBLAS with TF32); "ieee" is exact fp32 FMA arithmetic with smaller tiles.
    """
    value = precision if precision is not None else os.environ.get(PRECISION_ENV, "tf32")
    if value not in _PRECISIONS:
        raise ValueError(f"window_attention3d: fp32 precision must be one of {_PRECISIONS}, got {value!r} "
                         f"(argument precision= or ${PRECISION_ENV})")
    return value


def _mma_tiles(base: int, block_d: int) -> tuple[Tile, Tile, Tile]:
    """(fwd, dq, dkdv) tiles for tensor-core dots, before the occupancy split. One 64x64 forward/dq tile
    covers a 4x4x4 window with 4 warps (one warpgroup: Hopper's wgmma needs M = 64); dk/dv keeps 32 key
    rows (its dk, dv accumulators, K and V live across the query loop) and loops over 64 queries;
    head_dim > 64 doubles the accumulators and takes 8 warps."""
    warps = 4 if block_d <= 64 else 8
    return Tile(base, base, warps), Tile(base, base, warps), Tile(base, min(base, 32), warps)


def _ieee_tiles(base: int, block_d: int) -> tuple[Tile, Tile, Tile]:
    """(fwd, dq, dkdv) tiles for exact fp32 FMA dots, whose operands are replicated across the
    threads that share an output row/column: small score tiles keep them in registers. dk/dv keeps
    16 key rows and loops over the window's queries in blocks of 64."""
    small = min(base, 16)
    warps = 4 if block_d <= 64 else 8
    # dq with 4 warps spills a few bytes at ~100 registers (ptxas, sm_80 and the tiny config on sm_90); 2 do not
    return (Tile(small, min(base, 32), warps), Tile(small, min(base, 32), max(2, warps // 2)),
            Tile(min(base, 64), small, warps))


def _split_for_occupancy(tile: Tile, rows: str, blocks: int, sm_count: int | None) -> Tile:
    """Halve the tile's parallel rows (query rows for fwd/dq, key rows for dkdv) down to 16 while the
    grid (`blocks` programs at the planned tile) is under `_MIN_WAVES` programs per SM: at DiT-3D's
    batch 2 one 64-row tile per window and head is 240 programs, under two per SM of an H100."""
    if sm_count is None:
        return tile
    size = getattr(tile, rows)
    while size > 16 and blocks < _MIN_WAVES * sm_count:
        size //= 2
        blocks *= 2
    return replace(tile, **{rows: size})


def _fit_registers(fwd: Tile, dq: Tile, wide: bool, arch: int | None) -> tuple[Tile, Tile]:
    """Register fit after the split, for fp32 (tf32) operands, which take twice the registers of
    16-bit ones (measured with benchmarks/kernels_compile.py): the forward on Ampere (mma.sync keeps
    the accumulators in registers) takes 8 warps (4 warps: 255 registers at 64 rows, a few spilled
    bytes at 32), and a
    32-row dq tile takes 32 key columns (32x64: ~240 registers, 32x32: ~140)."""
    if not wide:
        return fwd, dq
    if arch is not None and arch < 90 and fwd.num_warps < 8:
        fwd = replace(fwd, num_warps=8)
    if dq.block_m <= 32:
        dq = replace(dq, block_n=min(dq.block_n, dq.block_m))
    return fwd, dq


def plan_attention(n_tokens: int, head_dim: int, dtype: torch.dtype, *, num_windows: int, batch_heads: int,
                   arch: int | None = None, sm_count: int | None = None, precision: str | None = None,
                   interpreter: bool = False, block_m: int | None = None, block_n: int | None = None
                   ) -> AttentionPlan:
    """All launch decisions for windows of `n_tokens` tokens (fixed rules, not autotuned).

    `arch` (e.g. 90, 80) and `sm_count` describe the GPU (None: the CPU interpreter, no split);
    `block_m`/`block_n` override every kernel's tile rows (powers of two >= 16, for tests and tuning).
    Used by the launches below and by the ahead-of-time compile check, so both see the same tiles.
    """
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if val is not None and (val < 16 or val & (val - 1)):
            raise ValueError(f"window_attention3d: {name} must be a power of two >= 16, got {val}")
    block_d = max(16, _next_pow2(head_dim))
    base = min(64, max(16, _next_pow2(n_tokens)))
    prec = fp32_precision(precision) if dtype == torch.float32 else "tf32"
    per_row_block = num_windows * batch_heads
    if prec == "ieee":
        fwd, dq, dkdv = _ieee_tiles(base, block_d)
    else:
        fwd, dq, dkdv = _mma_tiles(base, block_d)
    fwd = _split_for_occupancy(fwd, "block_m", per_row_block * -(-n_tokens // fwd.block_m), sm_count)
    dq = _split_for_occupancy(dq, "block_m", per_row_block * -(-n_tokens // dq.block_m), sm_count)
    dkdv = _split_for_occupancy(dkdv, "block_n", per_row_block * -(-n_tokens // dkdv.block_n), sm_count)
    if prec != "ieee":
        fwd, dq = _fit_registers(fwd, dq, dtype == torch.float32, arch)
    if block_m is not None or block_n is not None:
        fwd, dq, dkdv = (replace(t, block_m=block_m or t.block_m, block_n=block_n or t.block_n)
                         for t in (fwd, dq, dkdv))
    # the d(bias) kernel (when dq cannot fuse it) works on the dq tiles; with FMA dots it holds q, dO, K
    # and V of a tile at once and takes 16x16 tiles (16x32: 255 registers and spills on sm_80)
    dbias = replace(dq, block_n=min(dq.block_n, 16), num_warps=4) if prec == "ieee" else dq
    return AttentionPlan(block_d=block_d, prec=prec, upcast=interpreter and dtype == torch.bfloat16,
                         fwd=fwd, dq=dq, dkdv=dkdv, dbias=dbias)


def _window_group(num_windows: int, programs_per_window: int, batch_heads: int) -> int:
    """Windows per program for the d(bias) reduction: enough programs to fill a GPU (~1k), few
    partials to sum (each partial is one (N, N) fp32 tile per batch*head and group)."""
    per_window = programs_per_window * batch_heads
    return max(1, min(num_windows, (num_windows * per_window) // 1024))


class _Geometry:
    """Integer facts shared by all launches of one call."""

    def __init__(self, q: torch.Tensor, window: Int3, shift: Int3) -> None:
        self.B, self.H, self.X, self.Y, self.Z, self.D = q.shape
        self.window, self.shift = window, shift
        self.XP, self.YP, self.ZP = _padded((self.X, self.Y, self.Z), window)
        self.NWX, self.NWY, self.NWZ = self.XP // window[0], self.YP // window[1], self.ZP // window[2]
        self.NW = self.NWX * self.NWY * self.NWZ
        self.N = window[0] * window[1] * window[2]

    def scalars(self) -> tuple[int, ...]:
        return (self.H, self.X, self.Y, self.Z, self.XP, self.YP, self.ZP, self.NWY, self.NWZ)

    def constexprs(self) -> dict[str, int]:
        (wx, wy, wz), (sx, sy, sz) = self.window, self.shift
        return {"WX": wx, "WY": wy, "WZ": wz, "SX": sx, "SY": sy, "SZ": sz, "HEAD_DIM": self.D}


def plan_for(q: torch.Tensor, geo: _Geometry, precision: str | None = None, block_m: int | None = None,
             block_n: int | None = None, arch: int | None = None, sm_count: int | None = None) -> AttentionPlan:
    """`plan_attention` for q's device (`arch`/`sm_count` override it: the compile check's targets)."""
    on_gpu = q.is_cuda
    return plan_attention(geo.N, geo.D, q.dtype, num_windows=geo.NW, batch_heads=geo.B * geo.H,
                          arch=arch if arch is not None else device_arch(q),
                          sm_count=sm_count if sm_count is not None else device_sm_count(q),
                          precision=precision, interpreter=not on_gpu and q.device.type != "meta",
                          block_m=block_m, block_n=block_n)


def _device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _strides5(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride()[:5])


def _prepare_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Kernels read q, k, v with one set of strides and unit stride on head_dim; copy only if needed
    (views of a fused qkv projection usually qualify as they are)."""
    if q.stride(-1) == 1 and q.stride() == k.stride() == v.stride():
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


def _tile_constexprs(plan: AttentionPlan, tile: Tile) -> dict[str, object]:
    return {"BLOCK_D": plan.block_d, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n,
            "PREC": plan.prec, "UPCAST": plan.upcast}


def plan_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, geo: _Geometry,
                 scale: float, plan: AttentionPlan) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """The forward launch and its outputs (o, base-2 lse), allocated on q's device (meta works)."""
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)          # contiguous
    lse = torch.empty((geo.B * geo.H, geo.X * geo.Y * geo.Z), dtype=torch.float32, device=q.device)
    t = plan.fwd
    launch = Launch(_wa3d_fwd_kernel, (geo.NW * -(-geo.N // t.block_m), geo.B * geo.H),
                    (q, k, v, bias if bias is not None else q, o, lse, scale,
                     *_strides5(q), *_strides5(o), *geo.scalars()),
                    {**geo.constexprs(), **_tile_constexprs(plan, t), "HAS_BIAS": bias is not None},
                    t.num_warps, t.num_stages)
    return launch, o, lse


@dataclass
class _Backward:
    """The backward launches of one call and the buffers they write."""

    launches: list[Launch]
    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    part: torch.Tensor | None      # (B*H, groups, N, N) fp32 d(bias) partials


def plan_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                  o: torch.Tensor, lse: torch.Tensor, geo: _Geometry, scale: float, plan: AttentionPlan,
                  need_dbias: bool) -> _Backward:
    """dq (+ delta, + fused d(bias)), dk/dv and, when the window spans several key blocks of the dq
    tile, the d(bias) kernel; `do` must be contiguous (same strides as o, dq, dk, dv)."""
    dq, dk, dv = torch.empty_like(o), torch.empty_like(o), torch.empty_like(o)
    delta = torch.empty_like(lse)
    bh = geo.B * geo.H
    tq, tk, tb = plan.dq, plan.dkdv, plan.dbias
    num_qb = -(-geo.N // tq.block_m)
    fuse = need_dbias and geo.N <= tq.block_n
    tiles_b = -(-geo.N // tb.block_m) * -(-geo.N // tb.block_n)
    group = _window_group(geo.NW, num_qb if fuse else tiles_b, bh) if need_dbias else 1
    num_groups = -(-geo.NW // group)
    part = torch.empty((bh, num_groups, geo.N, geo.N), dtype=torch.float32, device=q.device) if need_dbias else None
    strides = (*_strides5(q), *_strides5(o))
    bias_arg = bias if bias is not None else q
    has_bias = {"HAS_BIAS": bias is not None}
    launches = [
        # 1) dq (+ delta, + fused d(bias) partials)
        Launch(_wa3d_bwd_dq_kernel, (num_groups * num_qb, bh),
               (q, k, v, bias_arg, o, do, dq, lse, delta, part if fuse else lse, scale,
                *strides, *geo.scalars(), geo.NW, group, num_groups),
               {**geo.constexprs(), **_tile_constexprs(plan, tq), **has_bias, "FUSE_DBIAS": fuse},
               tq.num_warps, tq.num_stages),
        # 2) dk, dv (reads delta written by 1)
        Launch(_wa3d_bwd_dkdv_kernel, (geo.NW * -(-geo.N // tk.block_n), bh),
               (q, k, v, bias_arg, do, dk, dv, lse, delta, scale, *strides, *geo.scalars()),
               {**geo.constexprs(), **_tile_constexprs(plan, tk), **has_bias}, tk.num_warps, tk.num_stages),
    ]
    if need_dbias and not fuse:  # 3) d(bias) partials per (query block, key block) tile
        launches.append(Launch(_wa3d_bwd_dbias_kernel, (num_groups * tiles_b, bh),
                               (q, k, v, bias, do, lse, delta, part, scale,
                                *strides, *geo.scalars(), geo.NW, group, num_groups),
                               {**geo.constexprs(), **_tile_constexprs(plan, tb)}, tb.num_warps, tb.num_stages))
    return _Backward(launches, dq, dk, dv, part)


class _WindowAttention3dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                window: Int3, shift: Int3, scale: float, options: dict[str, object]) -> torch.Tensor:
        qc, kc, vc = _prepare_qkv(q, k, v)
        bias_c = bias.contiguous() if bias is not None else None
        geo = _Geometry(qc, window, shift)
        plan = plan_for(qc, geo, **options)
        launch, o, lse = plan_forward(qc, kc, vc, bias_c, geo, scale, plan)
        with _device_guard(qc):
            launch()
        ctx.save_for_backward(qc, kc, vc, bias_c, o, lse)
        ctx.geo, ctx.scale, ctx.plan = geo, scale, plan
        return o

    @staticmethod
    def backward(ctx, do: torch.Tensor):  # type: ignore[override]
        q, k, v, bias, o, lse = ctx.saved_tensors
        geo = ctx.geo
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        bwd = plan_backward(do.contiguous(), q, k, v, bias, o, lse, geo, ctx.scale, ctx.plan, need_dbias)
        with _device_guard(q):
            for launch in bwd.launches:
                launch()
        dbias = None
        if need_dbias:
            assert bwd.part is not None and bias is not None
            dbias = bwd.part.view(geo.B, geo.H, -1, geo.N, geo.N).sum(dim=(0, 2)).to(bias.dtype)
        return bwd.dq, bwd.dk, bwd.dv, dbias, None, None, None, None


def window_attention3d_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Sequence[int],
                              shift_size: Sequence[int] = (0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                              scale: float | None = None, *, block_m: int | None = None,
                              block_n: int | None = None, precision: str | None = None) -> torch.Tensor:
    """Triton window attention (same contract as `window_attention3d_reference`), differentiable in
    q, k, v and rel_pos_bias. `block_m`/`block_n` override the tile sizes (powers of two >= 16);
    `precision` ("tf32" or "ieee", see `fp32_precision`) applies to fp32 inputs."""
    if triton is None:  # pragma: no cover
        raise RuntimeError("window_attention3d_triton: triton is not installed; use window_attention3d_reference")
    window, shift = _check_inputs(q, k, v, window_size, shift_size, rel_pos_bias)
    if q.dtype not in _TRITON_DTYPES:
        raise TypeError(f"window_attention3d_triton: dtype {q.dtype} not supported (float16, bfloat16, float32); "
                        "use window_attention3d_reference for float64")
    if q.shape[-1] > _MAX_HEAD_DIM:
        raise ValueError(f"window_attention3d_triton: head_dim {q.shape[-1]} > {_MAX_HEAD_DIM} is not supported")
    n_tokens = window[0] * window[1] * window[2]
    # validate the options before any work (also for empty inputs)
    plan_attention(n_tokens, q.shape[-1], q.dtype, num_windows=1, batch_heads=1, precision=precision,
                   block_m=block_m, block_n=block_n)
    if q.numel() == 0:
        return window_attention3d_reference(q, k, v, window, shift, rel_pos_bias, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    options = {"precision": precision, "block_m": block_m, "block_n": block_n}
    return _WindowAttention3dFunction.apply(q, k, v, rel_pos_bias, window, shift, scale, options)
