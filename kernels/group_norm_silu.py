"""Fused GroupNorm + affine + adaptive modulation + SiLU (forward and backward) in Triton.

    y = SiLU( GroupNorm(x; weight, bias) * (1 + scale) + shift )

x is (B, C, *spatial) (1-D, 2-D or 3-D spatial), weight/bias are (C,), scale/shift are (B, C)
(the adaptive GroupNorm of diffusion U-Net and DiT blocks; any of the four may be None).
Statistics are computed in fp32 whatever the input dtype; the output has the input's dtype and
every gradient the dtype of its input.

Why not PyTorch eager: eager runs one program per (batch, group) for the statistics, so a
batch-1 3D volume with 32 groups occupies 32 SMs of a 132-SM GPU, and norm, modulation and SiLU
each cost another full read/write of the tensor. Here the work is split so that every launch
has enough programs to fill the GPU at batch 1:

forward
  1. ``_stats_partial_kernel``  grid (B*G*chunks): each program reduces one contiguous chunk of a
     group to (mean, M2). Within the chunk every lane runs Welford's update over the tiles it
     sees, then the lanes are merged with Chan's parallel formula. No sum of squares is ever
     formed, so offset data (x = 1000 + noise) keeps its variance (E[x^2] - E[x]^2 in fp32
     would cancel catastrophically).
  2. ``_stats_finalize_kernel`` grid (B*G): merges the chunk partials exactly (weighted mean,
     then M2 = sum M2_i + n_i (mean_i - mean)^2) into mean and rstd per (b, g).
  3. ``_fwd_apply_kernel``      grid (B*C*spatial_blocks): folds weight/bias/scale/shift into
     one per-(b, c) pair (A, K), computes m = (x - mean) * A + K and y = m * sigmoid(m).

backward (only x, mean and rstd are kept; x_hat, m and sigmoid(m) are recomputed)
  With n = w * x_hat + beta, m = n (1 + s) + t and dm = dy * SiLU'(m), everything reduces to
  two sums per (b, c):  S1 = sum_spatial dm,  S2 = sum_spatial dm * x_hat. Then
      dshift = S1,  dscale = w S2 + beta S1,  dbias = sum_b (1 + s) S1,  dweight = sum_b (1 + s) S2,
      dx = A dm - rstd / N * (sum_{c in g} w (1 + s) S1 + x_hat * sum_{c in g} w (1 + s) S2).
  4. ``_bwd_partial_kernel``    grid (B*C*chunks): partial S1, S2 per (b, c, spatial chunk).
  5. ``_bwd_finalize_kernel``   grid (B*G): per-channel S1/S2, the (B, C) parameter gradient
     terms and two per-(b, g) coefficients of dx.
  6. ``_bwd_dx_kernel``         grid (B*C*spatial_blocks): dx elementwise.
  The per-row indexing (row = b*C + c over the flattened spatial extent) is the same for 3-D,
  4-D and 5-D inputs, so the weight/bias gradients are right for any number of spatial dims
  (liger-kernel issue #1375 was a GroupNorm backward that was only right for (B, C, L)).

`group_norm_silu_reference` is the plain differentiable PyTorch definition (the CPU path and the
readable spec); the nn.Module wrapper is `bsynth_hpc.nn.GroupNormSiLU`, which calls the `bsynth_hpc.ops`
facade.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # triton is an optional dependency: the reference must import without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - platform without triton
    HAS_TRITON = False

from .launch import Launch

__all__ = [
    "HAS_TRITON",
    "GroupNormSiLUFunction",
    "group_norm_silu_reference",
    "group_norm_silu_triton",
    "plan_forward",
    "plan_backward",
    "programs_for_sms",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DEFAULT_BLOCK = 1024  # elements per program tile (4 warps -> 8 elements per thread)


# --------------------------------------------------------------------------------------------
# argument checks shared by the reference and the kernel path
# --------------------------------------------------------------------------------------------
def _as_bc(t: torch.Tensor | None, name: str, x: torch.Tensor) -> torch.Tensor | None:
    """Return a (B, C) view of scale/shift; accept (B, C) or (B, C, 1, ..., 1)."""
    if t is None:
        return None
    B, C = x.shape[:2]
    if tuple(t.shape) == (B, C):
        return t
    if t.dim() == x.dim() and tuple(t.shape[:2]) == (B, C) and all(d == 1 for d in t.shape[2:]):
        return t.reshape(B, C)
    raise ValueError(f"group_norm_silu: {name} must have shape (B, C) = {(B, C)} "
                     f"(or (B, C, 1, ...) broadcastable to x); got {tuple(t.shape)}")


def _validate(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
              scale: torch.Tensor | None, shift: torch.Tensor | None
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check shapes/devices; return scale and shift as (B, C) tensors (or None)."""
    if x.dim() < 3:
        raise ValueError(f"group_norm_silu: x must be (B, C, *spatial) with at least one spatial dim; "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"group_norm_silu: x must be a floating-point tensor; got {x.dtype}")
    C = x.shape[1]
    if not isinstance(num_groups, int) or num_groups <= 0 or C % num_groups != 0:
        raise ValueError(f"group_norm_silu: num_channels={C} must be divisible by num_groups={num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"group_norm_silu: {name} must have shape (C,) = ({C},); got {tuple(t.shape)}")
    scale2, shift2 = _as_bc(scale, "scale", x), _as_bc(shift, "shift", x)
    for name, t in (("weight", weight), ("bias", bias), ("scale", scale2), ("shift", shift2)):
        if t is not None and t.device != x.device:
            raise ValueError(f"group_norm_silu: {name} is on {t.device} but x is on {x.device}")
    return scale2, shift2


# --------------------------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------------------------
def group_norm_silu_reference(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                              bias: torch.Tensor | None = None, eps: float = 1e-5,
                              scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
                              ) -> torch.Tensor:
    """Plain differentiable PyTorch: F.group_norm in fp32 (fp64 stays fp64) -> (1 + scale), + shift
    -> F.silu -> cast back to x.dtype."""
    scale2, shift2 = _validate(x, num_groups, weight, bias, scale, shift)
    ct = torch.promote_types(x.dtype, torch.float32)
    h = F.group_norm(x.to(ct), num_groups, None if weight is None else weight.to(ct),
                     None if bias is None else bias.to(ct), eps)
    bshape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2)
    if scale2 is not None:
        h = h * (1.0 + scale2.to(ct).reshape(bshape))
    if shift2 is not None:
        h = h + shift2.to(ct).reshape(bshape)
    return F.silu(h).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _row_affine(row, C, CPG, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                    ss_b, ss_c, sh_b, sh_c,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                    HAS_SHIFT: tl.constexpr):
        """Per-(b, c) constants: m = (x - mean) * A + K folds rstd, weight, bias, scale, shift."""
        b = row // C
        c = row % C
        bg = row // CPG  # == b * G + c // CPG because C == G * CPG
        mean = tl.load(mean_ptr + bg)
        rstd = tl.load(rstd_ptr + bg)
        A = rstd
        K = rstd * 0.0
        if HAS_W:
            A = A * tl.load(w_ptr + c).to(tl.float32)
        if HAS_B:
            K = K + tl.load(b_ptr + c).to(tl.float32)
        if HAS_SCALE:
            s1 = 1.0 + tl.load(scale_ptr + b * ss_b + c * ss_c).to(tl.float32)
            A = A * s1
            K = K * s1
        if HAS_SHIFT:
            K = K + tl.load(shift_ptr + b * sh_b + c * sh_c).to(tl.float32)
        return mean, rstd, A, K

    @triton.jit
    def _stats_partial_kernel(x_ptr, pmean_ptr, pm2_ptr, group_numel, chunk, n_chunks, tiles_per_chunk,
                              BLOCK: tl.constexpr):
        """(mean, M2) of one contiguous chunk of one (b, g) group: lane-wise Welford, Chan merge."""
        pid = tl.program_id(0)
        bg = pid // n_chunks
        ck = pid % n_chunks
        start = ck.to(tl.int64) * chunk
        base = x_ptr + bg.to(tl.int64) * group_numel + start
        remaining = group_numel - start
        offs = tl.arange(0, BLOCK)
        mean = tl.zeros([BLOCK], dtype=tl.float32)
        m2 = tl.zeros([BLOCK], dtype=tl.float32)
        cnt = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(0, tiles_per_chunk):
            idx = t * BLOCK + offs
            mask = idx < remaining
            v = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            # chunks are whole tiles, so only a group's last tile is partial: a valid lane has
            # been valid in every earlier tile and has seen exactly t + 1 values.
            inv = 1.0 / (t + 1.0)
            delta = v - mean
            new_mean = mean + delta * inv
            m2 = tl.where(mask, m2 + delta * (v - new_mean), m2)
            mean = tl.where(mask, new_mean, mean)
            cnt = cnt + mask.to(tl.float32)
        n = tl.sum(cnt, axis=0)
        cmean = tl.sum(cnt * mean, axis=0) / n
        d = mean - cmean
        cm2 = tl.sum(m2, axis=0) + tl.sum(cnt * d * d, axis=0)
        tl.store(pmean_ptr + pid, cmean)
        tl.store(pm2_ptr + pid, cm2)

    @triton.jit
    def _stats_finalize_kernel(pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, group_numel, chunk, n_chunks, eps,
                               BLOCK_P: tl.constexpr):
        """Exact merge of the chunk partials of one (b, g): mean, then M2 around that mean."""
        bg = tl.program_id(0)
        base = bg.to(tl.int64) * n_chunks
        offs = tl.arange(0, BLOCK_P)
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for p0 in range(0, n_chunks, BLOCK_P):
            i = p0 + offs
            mask = i < n_chunks
            cnt = tl.minimum(group_numel - i.to(tl.int64) * chunk, chunk).to(tl.float32)
            mu = tl.load(pmean_ptr + base + i, mask=mask, other=0.0)
            acc += tl.where(mask, cnt * mu, 0.0)
        mean = tl.sum(acc, axis=0) / group_numel  # a division: exact for constant groups
        acc2 = tl.zeros([BLOCK_P], dtype=tl.float32)
        for p0 in range(0, n_chunks, BLOCK_P):
            i = p0 + offs
            mask = i < n_chunks
            cnt = tl.minimum(group_numel - i.to(tl.int64) * chunk, chunk).to(tl.float32)
            mu = tl.load(pmean_ptr + base + i, mask=mask, other=0.0)
            m2 = tl.load(pm2_ptr + base + i, mask=mask, other=0.0)
            d = mu - mean
            acc2 += tl.where(mask, m2 + cnt * d * d, 0.0)
        var = tl.sum(acc2, axis=0) / group_numel
        tl.store(mean_ptr + bg, mean)
        tl.store(rstd_ptr + bg, 1.0 / tl.sqrt(var + eps))

    @triton.jit
    def _fwd_apply_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                          C, CPG, S, n_sblk, ss_b, ss_c, sh_b, sh_c,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                          HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
        """y = SiLU((x - mean) * A + K) on one spatial block of one (b, c) row."""
        pid = tl.program_id(0)
        row = pid // n_sblk
        blk = pid % n_sblk
        mean, rstd, A, K = _row_affine(row, C, CPG, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                                       ss_b, ss_c, sh_b, sh_c, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < S
        ptr_off = row.to(tl.int64) * S + offs
        x = tl.load(x_ptr + ptr_off, mask=mask, other=0.0).to(tl.float32)
        m = (x - mean) * A + K
        y = m * tl.sigmoid(m)
        tl.store(y_ptr + ptr_off, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_partial_kernel(x_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                            p1_ptr, p2_ptr, C, CPG, S, chunk, n_chunks, tiles_per_chunk,
                            ss_b, ss_c, sh_b, sh_c,
                            HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                            HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
        """Partial S1 = sum dm and S2 = sum dm * x_hat over one spatial chunk of one (b, c) row."""
        pid = tl.program_id(0)
        row = pid // n_chunks
        ck = pid % n_chunks
        mean, rstd, A, K = _row_affine(row, C, CPG, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                                       ss_b, ss_c, sh_b, sh_c, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
        start = ck.to(tl.int64) * chunk
        base = row.to(tl.int64) * S + start
        remaining = S - start
        offs = tl.arange(0, BLOCK)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(0, tiles_per_chunk):
            idx = t * BLOCK + offs
            mask = idx < remaining
            x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
            xc = x - mean
            m = xc * A + K
            sig = tl.sigmoid(m)
            dm = tl.where(mask, dy * sig * (1.0 + m * (1.0 - sig)), 0.0)
            acc1 += dm
            acc2 += dm * (xc * rstd)
        tl.store(p1_ptr + pid, tl.sum(acc1, axis=0))
        tl.store(p2_ptr + pid, tl.sum(acc2, axis=0))

    @triton.jit
    def _bwd_finalize_kernel(p1_ptr, p2_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, red_ptr, coef_ptr,
                             C, CPG, BC, BG, n_chunks, inv_n, ss_b, ss_c,
                             HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                             BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Per (b, g): channel sums S1/S2 -> parameter-gradient terms and the dx coefficients.

        red rows: 0 dshift, 1 dscale, 2 dbias contribution, 3 dweight contribution (each B*C).
        coef rows: 0 coefficient of (x - mean), 1 constant term of dx (each B*G).
        """
        bg = tl.program_id(0)
        b = (bg * CPG) // C
        ci = tl.arange(0, BLOCK_C)
        cmask = ci < CPG
        c = (bg * CPG) % C + ci
        rows = b * C + c
        pi = tl.arange(0, BLOCK_P)
        acc1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for p0 in range(0, n_chunks, BLOCK_P):
            i = p0 + pi
            m = cmask[:, None] & (i < n_chunks)[None, :]
            off = rows.to(tl.int64)[:, None] * n_chunks + i[None, :]
            acc1 += tl.load(p1_ptr + off, mask=m, other=0.0)
            acc2 += tl.load(p2_ptr + off, mask=m, other=0.0)
        s1 = tl.sum(acc1, axis=1)
        s2 = tl.sum(acc2, axis=1)
        if HAS_W:
            w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        else:
            w = tl.where(cmask, 1.0, 0.0)
        if HAS_B:
            beta = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        else:
            beta = tl.zeros([BLOCK_C], dtype=tl.float32)
        if HAS_SCALE:
            s_1 = 1.0 + tl.load(scale_ptr + b * ss_b + c * ss_c, mask=cmask, other=0.0).to(tl.float32)
        else:
            s_1 = tl.where(cmask, 1.0, 0.0)
        tl.store(red_ptr + rows, s1, mask=cmask)
        tl.store(red_ptr + BC + rows, w * s2 + beta * s1, mask=cmask)
        tl.store(red_ptr + 2 * BC + rows, s_1 * s1, mask=cmask)
        tl.store(red_ptr + 3 * BC + rows, s_1 * s2, mask=cmask)
        g1 = tl.sum(tl.where(cmask, w * s_1 * s1, 0.0), axis=0)
        g2 = tl.sum(tl.where(cmask, w * s_1 * s2, 0.0), axis=0)
        rstd = tl.load(rstd_ptr + bg)
        tl.store(coef_ptr + bg, -rstd * rstd * g2 * inv_n)
        tl.store(coef_ptr + BG + bg, -rstd * g1 * inv_n)

    @triton.jit
    def _bwd_dx_kernel(x_ptr, dy_ptr, dx_ptr, mean_ptr, rstd_ptr, coef_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                       C, CPG, S, n_sblk, BG, ss_b, ss_c, sh_b, sh_c,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                       HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
        """dx = A * dm + cx * (x - mean) + c0 on one spatial block of one (b, c) row."""
        pid = tl.program_id(0)
        row = pid // n_sblk
        blk = pid % n_sblk
        mean, rstd, A, K = _row_affine(row, C, CPG, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                                       ss_b, ss_c, sh_b, sh_c, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
        bg = row // CPG
        cx = tl.load(coef_ptr + bg)
        c0 = tl.load(coef_ptr + BG + bg)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < S
        ptr_off = row.to(tl.int64) * S + offs
        x = tl.load(x_ptr + ptr_off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + ptr_off, mask=mask, other=0.0).to(tl.float32)
        xc = x - mean
        m = xc * A + K
        sig = tl.sigmoid(m)
        dm = dy * sig * (1.0 + m * (1.0 - sig))
        dx = A * dm + cx * xc + c0
        tl.store(dx_ptr + ptr_off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launch planning
# --------------------------------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=16)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def programs_for_sms(sm_count: int) -> int:
    """Programs a split reduction aims for on a GPU with `sm_count` SMs: a few waves."""
    return 8 * sm_count


def _target_programs(device: torch.device) -> int:
    """`programs_for_sms` of x's GPU; few on the CPU interpreter."""
    if device.type == "cuda":
        return programs_for_sms(_sm_count(device.index if device.index is not None else torch.cuda.current_device()))
    return 16


@dataclass(frozen=True)
class _Split:
    """One split reduction: `n_chunks` chunks of `tiles` tiles of `block` elements per outer item."""

    block: int
    tiles: int
    n_chunks: int

    @property
    def chunk(self) -> int:
        return self.block * self.tiles


def _split(outer: int, inner: int, block: int, programs: int) -> _Split:
    """Split `inner` elements (per outer item) so that outer * n_chunks ~ programs."""
    block = min(block, max(16, _next_pow2(inner)))
    max_chunks = _cdiv(inner, block)
    want = max(1, min(max_chunks, _cdiv(programs, outer)))
    tiles = _cdiv(max_chunks, want)
    return _Split(block, tiles, _cdiv(inner, block * tiles))


@dataclass(frozen=True)
class _Plan:
    stats: _Split  # forward statistics, per (b, g) over CPG * S contiguous elements
    grads: _Split  # backward sums, per (b, c) over S elements
    apply_block: int  # elementwise kernels: tile along the spatial extent of one (b, c) row

    def n_sblk(self, S: int) -> int:
        return _cdiv(S, self.apply_block)


def _make_plan(x: torch.Tensor, num_groups: int, block: int | None, programs: int | None) -> _Plan:
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    block = block or _DEFAULT_BLOCK
    if block < 16 or block & (block - 1):
        raise ValueError(f"group_norm_silu: block must be a power of two >= 16; got {block}")
    programs = programs or _target_programs(x.device)
    return _Plan(stats=_split(B * num_groups, (C // num_groups) * S, block, programs),
                 grads=_split(B * C, S, block, programs),
                 apply_block=min(block, max(16, _next_pow2(S))))


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def _device_guard(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it x's device (multi-GPU nodes)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def plan_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 scale: torch.Tensor | None, shift: torch.Tensor | None, G: int, eps: float, plan: _Plan
                 ) -> tuple[list[Launch], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three forward launches (statistics partials, finalize, apply) and their outputs y, mean,
    rstd, allocated on x's device (meta tensors work: the compile check builds them this way)."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    N = (C // G) * S
    f32 = dict(device=x.device, dtype=torch.float32)
    st = plan.stats
    pmean = torch.empty(B * G * st.n_chunks, **f32)
    pm2 = torch.empty_like(pmean)
    mean = torch.empty(B * G, **f32)
    rstd = torch.empty_like(mean)
    bp = min(1024, max(16, _next_pow2(st.n_chunks)))
    y = torch.empty_like(x)
    dummy = mean  # never read: the HAS_* flags are constexpr
    n_sblk = plan.n_sblk(S)
    launches = [
        Launch(_stats_partial_kernel, (B * G * st.n_chunks,), (x, pmean, pm2, N, st.chunk, st.n_chunks, st.tiles),
               {"BLOCK": st.block}, _warps(st.block)),
        Launch(_stats_finalize_kernel, (B * G,), (pmean, pm2, mean, rstd, N, st.chunk, st.n_chunks, float(eps)),
               {"BLOCK_P": bp}, _warps(bp)),
        Launch(_fwd_apply_kernel, (B * C * n_sblk,),
               (x, y, mean, rstd, dummy if weight is None else weight, dummy if bias is None else bias,
                dummy if scale is None else scale, dummy if shift is None else shift,
                C, C // G, S, n_sblk, *_strides(scale), *_strides(shift)),
               dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
                    HAS_SHIFT=shift is not None, BLOCK=plan.apply_block), _warps(plan.apply_block)),
    ]
    return launches, y, mean, rstd


def plan_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  scale: torch.Tensor | None, shift: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
                  G: int, plan: _Plan, need_dx: bool
                  ) -> tuple[list[Launch], torch.Tensor | None, torch.Tensor]:
    """The backward launches (partial sums, finalize, dx if `need_dx`), dx (or None) and `red`
    (4, B, C) fp32: dshift, dscale, dbias/dweight contributions."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    CPG = C // G
    f32 = dict(device=x.device, dtype=torch.float32)
    gs = plan.grads
    p1 = torch.empty(B * C * gs.n_chunks, **f32)
    p2 = torch.empty_like(p1)
    dummy = mean
    wp, bp_, sp, hp = (dummy if t is None else t for t in (weight, bias, scale, shift))
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None)
    ss, sh = _strides(scale), _strides(shift)
    red = torch.empty(4, B, C, **f32)
    coef = torch.empty(2, B * G, **f32)
    block_c = _next_pow2(CPG)
    block_p = max(1, min(_next_pow2(gs.n_chunks), max(1, 4096 // block_c)))
    launches = [
        Launch(_bwd_partial_kernel, (B * C * gs.n_chunks,),
               (x, dy, mean, rstd, wp, bp_, sp, hp, p1, p2, C, CPG, S, gs.chunk, gs.n_chunks, gs.tiles, *ss, *sh),
               dict(**flags, HAS_SHIFT=shift is not None, BLOCK=gs.block), _warps(gs.block)),
        Launch(_bwd_finalize_kernel, (B * G,),
               (p1, p2, rstd, wp, bp_, sp, red, coef, C, CPG, B * C, B * G, gs.n_chunks, 1.0 / (CPG * S), *ss),
               dict(**flags, BLOCK_C=block_c, BLOCK_P=block_p), _warps(block_c * block_p)),
    ]
    dx = None
    if need_dx:
        dx = torch.empty_like(x)
        n_sblk = plan.n_sblk(S)
        launches.append(Launch(_bwd_dx_kernel, (B * C * n_sblk,),
                               (x, dy, dx, mean, rstd, coef, wp, bp_, sp, hp, C, CPG, S, n_sblk, B * G, *ss, *sh),
                               dict(**flags, HAS_SHIFT=shift is not None, BLOCK=plan.apply_block),
                               _warps(plan.apply_block)))
    return launches, dx, red


def _run(launches: list[Launch]) -> None:
    for launch in launches:
        launch()


class GroupNormSiLUFunction(torch.autograd.Function):
    """Autograd glue: saves x, the parameters and the fp32 mean/rstd; recomputes the rest."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                scale: torch.Tensor | None, shift: torch.Tensor | None, num_groups: int, eps: float,
                plan: _Plan) -> torch.Tensor:
        x = x.contiguous()
        with _device_guard(x):
            launches, y, mean, rstd = plan_forward(x, weight, bias, scale, shift, num_groups, eps, plan)
            _run(launches)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.num_groups = num_groups
        ctx.plan = plan
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        need_x, need_w, need_b, need_s, need_t = ctx.needs_input_grad[:5]
        if not (need_x or need_w or need_b or need_s or need_t):
            return (None,) * 8
        with _device_guard(x):
            launches, dx, red = plan_backward(dy.contiguous(), x, weight, bias, scale, shift, mean, rstd,
                                              ctx.num_groups, ctx.plan, need_x)
            _run(launches)
        dw = red[3].sum(0).to(weight.dtype) if need_w else None
        db = red[2].sum(0).to(bias.dtype) if need_b else None
        ds = red[1].to(scale.dtype) if need_s else None
        dt = red[0].to(shift.dtype) if need_t else None
        return dx, dw, db, ds, dt, None, None, None


def group_norm_silu_triton(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                           bias: torch.Tensor | None = None, eps: float = 1e-5,
                           scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, *,
                           block: int | None = None, programs: int | None = None) -> torch.Tensor:
    """Triton path of `bsynth_hpc.ops.group_norm_silu` (same positional signature as the reference).

    `block` (tile size, power of two) and `programs` (target programs of the split reductions)
    override the launch plan; they exist for tests and tuning. float64 inputs and empty tensors
    go to the reference (the kernels compute in fp32).
    """
    if not HAS_TRITON:
        raise RuntimeError("group_norm_silu_triton needs the 'triton' package; use group_norm_silu_reference")
    scale2, shift2 = _validate(x, num_groups, weight, bias, scale, shift)
    params = [t for t in (weight, bias, scale2, shift2) if t is not None]
    if x.dtype not in _SUPPORTED_DTYPES or x.numel() == 0 or any(t.dtype not in _SUPPORTED_DTYPES for t in params):
        return group_norm_silu_reference(x, num_groups, weight, bias, eps, scale, shift)
    plan = _make_plan(x, num_groups, block, programs)
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    return GroupNormSiLUFunction.apply(x, w, b, scale2, shift2, num_groups, float(eps), plan)
