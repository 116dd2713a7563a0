"""One-level 3D orthonormal Haar DWT / IDWT: Triton kernels, PyTorch reference, autograd.

The Wavelet-Fusion VAE of seed 003 (§2.5.2) decomposes the input volume with a 3D Haar DWT,
projects the eight stacked subbands, transforms a selected subset of them a second time and, on
the decoder side, inverts both stages. These transforms run on every encoder/decoder call on
full-resolution volumes and wide feature maps, so they are pure memory traffic: the Triton
kernels read each 2x2x2 input block once and write all eight subbands in the same pass
(and the inverse the other way round), instead of the several strided copies of the reference.

Conventions (shared by every function here, checked against PyWavelets in the tests):
  * x is (B, C, X, Y, Z); the transform y is (B, 8*C, ceil(X/2), ceil(Y/2), ceil(Z/2)).
  * Channel ``s*C + c`` of y holds subband ``s`` of input channel ``c``, where
    ``s = 4*a_x + 2*a_y + a_z`` and ``a = 0`` is the low pass, ``a = 1`` the high pass
    (X is the first spatial axis). ``SUBBAND_NAMES[s]`` names it ('LLL', 'LLH', ... 'HHH'),
    ``PYWT_KEYS[s]`` is the matching `pywt.dwtn` key ('aaa', 'aad', ... 'ddd').
  * Filters l = [1, 1]/sqrt(2), h = [-1, 1]/sqrt(2) applied by convolution as PyWavelets does:
    low = (x[2n] + x[2n+1])/sqrt(2), high = (x[2n] - x[2n+1])/sqrt(2).
  * Odd sizes: the last sample is repeated (PyWavelets' 'symmetric' mode for a length-2
    filter); the inverse's ``output_shape`` crops the reconstruction back.

Autograd. With E the edge replication and C the crop, the forward is W E and the inverse with
crop is C W^T (W orthonormal). Their adjoints are E^T W^T (IDWT, then fold the replicated
sample's gradient onto the last sample) and W C^T (zero-extend, then DWT). The Triton kernels
take a flag for that edge rule, so all four linear maps are the same two kernels, and the
backward of each is the other (which makes double backward work too).

Implementations: ``*_reference`` (plain differentiable PyTorch, any device, the fallback and the
test oracle) and ``*_triton`` (CUDA, or CPU under TRITON_INTERPRET=1; needs triton, which is
optional). Models call the facade ``bsynth_hpc.ops.haar_dwt3d``/``haar_idwt3d``/``haar_dwt3d_two_level``
or the parameter-free modules ``bsynth_hpc.nn.HaarDWT3d``/``HaarIDWT3d``, never the kernels directly.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch

try:  # triton is optional: the references must import and run without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - platform without triton
    HAS_TRITON = False

from .launch import Launch

__all__ = [
    "HAS_TRITON",
    "SUBBAND_NAMES",
    "PYWT_KEYS",
    "haar_dwt3d_reference",
    "haar_idwt3d_reference",
    "haar_dwt3d_triton",
    "haar_idwt3d_triton",
    "haar_dwt3d_two_level",
    "plan_dwt",
    "plan_idwt",
]

SUBBAND_NAMES: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
PYWT_KEYS: tuple[str, ...] = ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")

_SCALE3 = 1.0 / (2.0 * math.sqrt(2.0))  # (1/sqrt(2))^3: the three butterflies' scale, applied once
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_BLOCK = 512  # output voxels of one (Y, Z) plane per program; tests lower it to cover tiling


# ----------------------------------------------------------------------------------------------
# Validation and shape helpers
# ----------------------------------------------------------------------------------------------
def _check_input(t: torch.Tensor, name: str, fn: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 5:
        raise ValueError(f"{fn}: {name} must be 5-D (B, C, X, Y, Z), got {t.ndim}-D with shape "
                         f"{tuple(t.shape)}; add batch/channel dims with x[None, None] for a single volume")
    if t.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{fn}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64 "
                        "(cast with .float())")


def _half(n: int) -> int:
    return (n + 1) // 2


def _resolve_output_shape(y: torch.Tensor, output_shape: Sequence[int] | None, fn: str) -> tuple[int, int, int]:
    """Spatial size of the inverse: (2X2, 2Y2, 2Z2) by default, else `output_shape` (3 spatial sizes
    or the full 5-D shape of the original x), each of which must be 2n or 2n - 1."""
    _check_input(y, "y", fn)
    if y.shape[1] % 8 != 0:
        raise ValueError(f"{fn}: y must have 8*C channels (eight subbands in blocks of C), got {y.shape[1]}")
    half = tuple(y.shape[2:])
    if output_shape is None:
        return (2 * half[0], 2 * half[1], 2 * half[2])
    shape = tuple(int(s) for s in output_shape)
    if len(shape) == 5:
        if shape[0] != y.shape[0] or shape[1] * 8 != y.shape[1]:
            raise ValueError(f"{fn}: output_shape {shape} does not match y of shape {tuple(y.shape)} "
                             f"(expected batch {y.shape[0]} and {y.shape[1] // 8} channels)")
        shape = shape[2:]
    if len(shape) != 3:
        raise ValueError(f"{fn}: output_shape must be (X, Y, Z) or the 5-D shape of x, got {tuple(output_shape)}")
    for axis, (n, h) in enumerate(zip(shape, half)):
        if n not in (2 * h - 1, 2 * h) or n < 1:
            raise ValueError(f"{fn}: output_shape {shape} is incompatible with y's spatial size {half}: "
                             f"axis {axis} must be {2 * h - 1} or {2 * h}, got {n}")
    return shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# PyTorch reference (differentiable, any device; the fallback and the test oracle)
# ----------------------------------------------------------------------------------------------
def _butterfly(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Unscaled Haar butterfly on a size-2 dim: (a, b) -> (a + b, a - b). Its own inverse up to 1/2."""
    a, b = t.unbind(dim)
    return torch.stack((a + b, a - b), dim)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def haar_dwt3d_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch 3D Haar DWT (fp32 arithmetic for half inputs): (B, C, X, Y, Z) ->
    (B, 8C, ceil(X/2), ceil(Y/2), ceil(Z/2)), subband layout as in the module docstring."""
    _check_input(x, "x", "haar_dwt3d_reference")
    B, C, X, Y, Z = x.shape
    X2, Y2, Z2 = _half(X), _half(Y), _half(Z)
    t = x.to(_compute_dtype(x.dtype))
    for dim, n in ((2, X), (3, Y), (4, Z)):
        if n % 2:  # odd size: repeat the last sample (pywt 'symmetric' for Haar)
            t = torch.cat((t, t.narrow(dim, n - 1, 1)), dim)
    t = t.reshape(B, C, X2, 2, Y2, 2, Z2, 2)
    for dim in (3, 5, 7):
        t = _butterfly(t, dim)
    # (B, C, X2, ax, Y2, ay, Z2, az) -> (B, ax, ay, az, C, X2, Y2, Z2): subband-major channels.
    t = t.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(B, 8 * C, X2, Y2, Z2) * _SCALE3
    return t.to(x.dtype)


def haar_idwt3d_reference(y: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Plain-PyTorch inverse of `haar_dwt3d_reference`; `output_shape` (X, Y, Z) or the 5-D shape of
    x crops the odd sizes back (default: twice y's spatial size)."""
    X, Y, Z = _resolve_output_shape(y, output_shape, "haar_idwt3d_reference")
    B, C8, X2, Y2, Z2 = y.shape
    C = C8 // 8
    t = y.to(_compute_dtype(y.dtype)).reshape(B, 2, 2, 2, C, X2, Y2, Z2)
    for dim in (1, 2, 3):
        t = _butterfly(t, dim)
    # (B, dx, dy, dz, C, X2, Y2, Z2) -> (B, C, X2, dx, Y2, dy, Z2, dz) -> interleaved voxels.
    t = t.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(B, C, 2 * X2, 2 * Y2, 2 * Z2) * _SCALE3
    return t[:, :, :X, :Y, :Z].to(y.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
if HAS_TRITON:  # the kernels exist only where triton imports; the references never need it
    @triton.jit
    def _scale(F64: tl.constexpr):
        """1/(2 sqrt 2), the product of the three butterflies' 1/sqrt 2, in the arithmetic dtype
        (a Python float literal would be an fp32 constant and cost fp64 its precision)."""
        if F64:
            return tl.sqrt(tl.full([], 0.125, tl.float64))
        else:
            return tl.full([], 0.3535533905932738, tl.float32)

    @triton.jit
    def _plane_positions(pid, n_pblocks, C, X2, Y2, Z2, BLOCK: tl.constexpr):
        """What program ``pid`` covers: BLOCK coefficient positions p = j * Z2 + k of the (Y2, Z2) plane
        ``i`` of channel ``c`` of batch ``b`` (bc = b * C + c); returns i, bc, b, c, P = Y2 * Z2, p, p < P, j, k."""
        pblock = pid % n_pblocks
        row = pid // n_pblocks  # = (b*C + c) * X2 + i
        i = row % X2
        bc = row // X2
        P = Y2 * Z2
        p = pblock * BLOCK + tl.arange(0, BLOCK)
        return i, bc, bc // C, bc % C, P, p, p < P, p // Z2, p % Z2

    @triton.jit
    def _subband0(y_ptr, b, c, C, i, X2, P, p):
        """Pointers to the positions ``p`` of plane ``i`` of channel ``c`` in subband 0 of batch ``b``
        (subband s lies s * SUB elements further)."""
        return y_ptr + (b.to(tl.int64) * 8 * C + c) * (X2 * P) + i.to(tl.int64) * P + p

    @triton.jit
    def _voxel_blocks(x_ptr, bc, i, j, k, pmask, X, Y, Z, REPLICATE: tl.constexpr):
        """Pointers and masks of the 2x2x2 voxel blocks (2i+dx, 2j+dy, 2k+{0,1}) of positions (i, j, k):
        four (BLOCK, 2) tiles, z pairs contiguous, in the order (dx, dy) = 00, 01, 10, 11. Even indices
        (2n) are always in range; only the odd partner can pass an odd edge: REPLICATE clamps it to the
        last voxel, else it is masked out."""
        zz = 2 * k[:, None] + tl.arange(0, 2)[None, :]  # (BLOCK, 2) z index, contiguous
        ya = 2 * j
        yb = 2 * j + 1
        xa = 2 * i
        xb = 2 * i + 1
        if REPLICATE:
            zz = tl.minimum(zz, Z - 1)
            yb = tl.minimum(yb, Y - 1)
            xb = tl.minimum(xb, X - 1)
            m_a = pmask[:, None] & (zz >= 0)  # (BLOCK, 2), all lanes of live positions
            m_b = m_a
            m_c = m_a
            m_d = m_a
        else:
            m_a = pmask[:, None] & (zz < Z)
            m_b = m_a & (yb < Y)[:, None]
            x_in = (tl.zeros_like(zz) + xb) < X  # per-lane form: the interpreter rejects scalar masks
            m_c = m_a & x_in
            m_d = m_b & x_in
        YZ = Y * Z
        base = bc.to(tl.int64) * X * YZ
        pa = x_ptr + base + xa.to(tl.int64) * YZ
        pb = x_ptr + base + xb.to(tl.int64) * YZ
        ra = (ya * Z)[:, None] + zz
        rb = (yb * Z)[:, None] + zz
        return pa + ra, pa + rb, pb + ra, pb + rb, m_a, m_b, m_c, m_d

    @triton.jit
    def _haar_dwt3d_kernel(
        x_ptr, y_ptr, C, X, Y, Z, X2, Y2, Z2, SUB, n_pblocks,
        REPLICATE: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Forward DWT. One program: BLOCK output voxels of the (Y2, Z2) plane `i` of one (b, c);
        it loads their 2x2x2 input blocks (z pairs as contiguous (BLOCK, 2) tiles) and writes all
        eight subbands. Past an odd edge the loads clamp (REPLICATE, the forward) or read zero
        (not REPLICATE: the adjoint of the cropping inverse)."""
        i, bc, b, c, P, p, pmask, j, k = _plane_positions(tl.program_id(0), n_pblocks, C, X2, Y2, Z2, BLOCK)
        p00, p01, p10, p11, m00, m01, m10, m11 = _voxel_blocks(x_ptr, bc, i, j, k, pmask, X, Y, Z, REPLICATE)
        a00 = tl.load(p00, mask=m00, other=0.0)
        a01 = tl.load(p01, mask=m01, other=0.0)
        a10 = tl.load(p10, mask=m10, other=0.0)
        a11 = tl.load(p11, mask=m11, other=0.0)
        if F64:
            a00, a01, a10, a11 = a00.to(tl.float64), a01.to(tl.float64), a10.to(tl.float64), a11.to(tl.float64)
        else:
            a00, a01, a10, a11 = a00.to(tl.float32), a01.to(tl.float32), a10.to(tl.float32), a11.to(tl.float32)
        # z butterfly: v{dx}{dy}{az}
        e, o = tl.split(a00)
        v000, v001 = e + o, e - o
        e, o = tl.split(a01)
        v010, v011 = e + o, e - o
        e, o = tl.split(a10)
        v100, v101 = e + o, e - o
        e, o = tl.split(a11)
        v110, v111 = e + o, e - o
        # y butterfly: w{dx}{ay}{az}
        w000, w010 = v000 + v010, v000 - v010
        w001, w011 = v001 + v011, v001 - v011
        w100, w110 = v100 + v110, v100 - v110
        w101, w111 = v101 + v111, v101 - v111
        # x butterfly and the orthonormal scale: s{ax}{ay}{az}
        s = _scale(F64)
        out = _subband0(y_ptr, b, c, C, i, X2, P, p)
        ty = y_ptr.dtype.element_ty
        # Subband s lives SUB = C*X2*Y2*Z2 elements after subband s-1 (pointer steps, no int overflow).
        tl.store(out, ((w000 + w100) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w001 + w101) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w010 + w110) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w011 + w111) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w000 - w100) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w001 - w101) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w010 - w110) * s).to(ty), mask=pmask)
        out += SUB
        tl.store(out, ((w011 - w111) * s).to(ty), mask=pmask)

    @triton.jit
    def _haar_idwt3d_kernel(
        y_ptr, x_ptr, C, X, Y, Z, X2, Y2, Z2, SUB, n_pblocks,
        FOLD: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Inverse DWT. One program: BLOCK coefficient positions of plane `i` of one (b, c); it loads
        the eight subbands and writes the 2x2x2 voxel blocks (z pairs as contiguous (BLOCK, 2) tiles)
        inside (X, Y, Z). Voxels past an odd edge are dropped (the cropping inverse) or, with FOLD,
        added onto the last voxel (the adjoint of the replicating forward)."""
        i, bc, b, c, P, p, pmask, j, k = _plane_positions(tl.program_id(0), n_pblocks, C, X2, Y2, Z2, BLOCK)
        src = _subband0(y_ptr, b, c, C, i, X2, P, p)
        c0 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c1 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c2 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c3 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c4 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c5 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c6 = tl.load(src, mask=pmask, other=0.0)
        src += SUB
        c7 = tl.load(src, mask=pmask, other=0.0)
        if F64:
            ct = tl.float64
        else:
            ct = tl.float32
        c0, c1, c2, c3 = c0.to(ct), c1.to(ct), c2.to(ct), c3.to(ct)
        c4, c5, c6, c7 = c4.to(ct), c5.to(ct), c6.to(ct), c7.to(ct)
        # x butterfly: w{dx}{ay}{az}
        w000, w100 = c0 + c4, c0 - c4
        w001, w101 = c1 + c5, c1 - c5
        w010, w110 = c2 + c6, c2 - c6
        w011, w111 = c3 + c7, c3 - c7
        # y butterfly: v{dx}{dy}{az}
        v000, v010 = w000 + w010, w000 - w010
        v001, v011 = w001 + w011, w001 - w011
        v100, v110 = w100 + w110, w100 - w110
        v101, v111 = w101 + w111, w101 - w111
        # z butterfly -> voxels u{dx}{dy}{dz}
        s = _scale(F64)
        u000, u001 = (v000 + v001) * s, (v000 - v001) * s
        u010, u011 = (v010 + v011) * s, (v010 - v011) * s
        u100, u101 = (v100 + v101) * s, (v100 - v101) * s
        u110, u111 = (v110 + v111) * s, (v110 - v111) * s
        if FOLD:
            # Adjoint of edge replication: the voxel at index 2n+1 == size lies past an odd edge and
            # its value belongs to the last real voxel 2n. Separable, so fold z, then y, then x.
            fz = (2 * k + 1) == Z
            u000 += tl.where(fz, u001, 0.0)
            u010 += tl.where(fz, u011, 0.0)
            u100 += tl.where(fz, u101, 0.0)
            u110 += tl.where(fz, u111, 0.0)
            fy = (2 * j + 1) == Y
            u000 += tl.where(fy, u010, 0.0)
            u001 += tl.where(fy, u011, 0.0)
            u100 += tl.where(fy, u110, 0.0)
            u101 += tl.where(fy, u111, 0.0)
            if 2 * i + 1 == X:
                u000 += u100
                u001 += u101
                u010 += u110
                u011 += u111
        p00, p01, p10, p11, m00, m01, m10, m11 = _voxel_blocks(x_ptr, bc, i, j, k, pmask, X, Y, Z, False)
        tx = x_ptr.dtype.element_ty
        tl.store(p00, tl.join(u000, u001).to(tx), mask=m00)
        tl.store(p01, tl.join(u010, u011).to(tx), mask=m01)
        tl.store(p10, tl.join(u100, u101).to(tx), mask=m10)
        tl.store(p11, tl.join(u110, u111).to(tx), mask=m11)


def _launch_config(plane: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a (Y2, Z2) plane of `plane` output positions."""
    block = min(_MAX_BLOCK, max(16, triton.next_power_of_2(plane)))
    num_warps = 4 if block >= 256 else (2 if block >= 128 else 1)
    return block, num_warps


def _check_triton_device(t: torch.Tensor, fn: str) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{fn} needs the 'triton' package; use haar_dwt3d_reference/haar_idwt3d_reference "
                           "or the bsynth_hpc.ops facade, which falls back to them")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"{fn}: the Triton kernel needs a CUDA tensor (got device {t.device}); on CPU use "
                           "haar_dwt3d_reference/haar_idwt3d_reference or the bsynth_hpc.ops facade, or set "
                           "TRITON_INTERPRET=1 before importing triton to run the kernel in the interpreter")


def plan_dwt(x: torch.Tensor, replicate: bool) -> tuple[Launch | None, torch.Tensor]:
    """The forward-DWT launch (None for an empty output) and its output, for a contiguous 5-D `x`
    (meta tensors work: the compile check builds the launch this way); `replicate` picks the
    odd-edge rule."""
    B, C, X, Y, Z = x.shape
    X2, Y2, Z2 = _half(X), _half(Y), _half(Z)
    y = torch.empty((B, 8 * C, X2, Y2, Z2), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return None, y
    block, num_warps = _launch_config(Y2 * Z2)
    n_pblocks = triton.cdiv(Y2 * Z2, block)
    return Launch(_haar_dwt3d_kernel, (n_pblocks * X2 * B * C,),
                  (x, y, C, X, Y, Z, X2, Y2, Z2, C * X2 * Y2 * Z2, n_pblocks),
                  {"REPLICATE": replicate, "F64": x.dtype == torch.float64, "BLOCK": block},
                  num_warps), y


def plan_idwt(y: torch.Tensor, spatial: tuple[int, int, int], fold: bool) -> tuple[Launch | None, torch.Tensor]:
    """The inverse-DWT launch (None for an empty output) and its output of size `spatial`, for a
    contiguous 5-D `y`; `fold` picks the odd-edge rule."""
    B, C8, X2, Y2, Z2 = y.shape
    C = C8 // 8
    X, Y, Z = spatial
    x = torch.empty((B, C, X, Y, Z), dtype=y.dtype, device=y.device)
    if x.numel() == 0:
        return None, x
    block, num_warps = _launch_config(Y2 * Z2)
    n_pblocks = triton.cdiv(Y2 * Z2, block)
    return Launch(_haar_idwt3d_kernel, (n_pblocks * X2 * B * C,),
                  (y, x, C, X, Y, Z, X2, Y2, Z2, C * X2 * Y2 * Z2, n_pblocks),
                  {"FOLD": fold, "F64": y.dtype == torch.float64, "BLOCK": block}, num_warps), x


def _run(plan: tuple[Launch | None, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    launch, out = plan
    if launch is not None:
        with torch.cuda.device_of(t):  # launch on t's GPU, not the current one (no-op on CPU)
            launch()
    return out


class _HaarTransform3d(torch.autograd.Function):
    """The four linear maps as one Function: DWT (inverse=False) or IDWT (inverse=True), with the
    odd-edge rule `edge` = True (replicate / fold) or False (zero-extend / crop). The adjoint of
    (inverse, edge) is (not inverse, edge), so backward is the same Function again."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, inverse: bool, edge: bool, spatial: tuple[int, int, int]) -> torch.Tensor:
        ctx.inverse, ctx.edge, ctx.spatial = inverse, edge, spatial
        t = t.contiguous()
        return _run(plan_idwt(t, spatial, fold=edge) if inverse else plan_dwt(t, replicate=edge), t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _HaarTransform3d.apply(grad, not ctx.inverse, ctx.edge, ctx.spatial), None, None, None


def haar_dwt3d_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton 3D Haar DWT, one pass over memory (same result as `haar_dwt3d_reference`).

    Differentiable; the backward is the inverse kernel with the odd-edge fold. Any B, C and sizes;
    non-contiguous inputs are made contiguous; fp16/bf16/fp32 use fp32 arithmetic, fp64 stays fp64.
    """
    _check_input(x, "x", "haar_dwt3d_triton")
    _check_triton_device(x, "haar_dwt3d_triton")
    return _HaarTransform3d.apply(x, False, True, tuple(x.shape[2:]))


def haar_idwt3d_triton(y: torch.Tensor, output_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Triton inverse 3D Haar DWT (same result as `haar_idwt3d_reference`); `output_shape` (X, Y, Z)
    or the 5-D shape of x crops odd sizes. The backward is the forward kernel with zero extension."""
    spatial = _resolve_output_shape(y, output_shape, "haar_idwt3d_triton")
    _check_triton_device(y, "haar_idwt3d_triton")
    return _HaarTransform3d.apply(y, True, False, spatial)


# ----------------------------------------------------------------------------------------------
# Two-level helper (WF-VAE stage 2)
# ----------------------------------------------------------------------------------------------
def _check_subbands(subbands: Sequence[int] | None) -> tuple[int, ...]:
    if subbands is None:
        return tuple(range(8))
    sel = tuple(int(s) for s in subbands)
    if not sel:
        raise ValueError("haar_dwt3d_two_level: subbands must select at least one subband (or be None for all 8)")
    bad = [s for s in sel if not 0 <= s < 8]
    if bad:
        raise ValueError(f"haar_dwt3d_two_level: subband indices must be in 0..7 "
                         f"(s = 4*a_x + 2*a_y + a_z, {SUBBAND_NAMES}), got {bad}")
    if len(set(sel)) != len(sel):
        raise ValueError(f"haar_dwt3d_two_level: subbands must not repeat, got {list(sel)}")
    return sel


def haar_dwt3d_two_level(
    x: torch.Tensor,
    subbands: Sequence[int] | None = None,
    dwt: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 and stage-2 transforms of the Wavelet-Fusion VAE (seed 003 §2.5.2).

    Returns ``(level1, level2)``: ``level1 = dwt(x)`` is (B, 8C, X/2, Y/2, Z/2) (ceil for odd
    sizes); ``level2 = dwt(S(level1))`` where S stacks the level-1 subbands listed in `subbands`
    (default: all eight, in the given order) into (B, K*C, ...) with K = len(subbands).
    level2 is (B, 8*K*C, X/4, Y/4, Z/4) and its channel ``t*K*C + k*C + c`` is level-2 subband
    ``t`` of level-1 subband ``subbands[k]`` of input channel ``c``. For a one-channel volume with
    all eight subbands selected this is the 64-channel stage-2 representation (8 x 8).
    To invert stage 2 on the decoder side, ``idwt(level2, level1.shape[2:])`` gives S(level1) back.
    `dwt` defaults to `haar_dwt3d_reference`; the facade passes its dispatching `haar_dwt3d`.
    """
    sel = _check_subbands(subbands)
    dwt = haar_dwt3d_reference if dwt is None else dwt
    level1 = dwt(x)
    if level1.ndim != 5 or level1.shape[1] % 8:
        raise ValueError(f"haar_dwt3d_two_level: dwt returned shape {tuple(level1.shape)}, expected (B, 8C, ...)")
    B, C8 = level1.shape[:2]
    C = C8 // 8
    if sel == tuple(range(8)):
        selected = level1
    else:
        lo, n = sel[0], len(sel)
        if sel == tuple(range(lo, lo + n)):  # a contiguous run is a free channel slice
            selected = level1[:, lo * C:(lo + n) * C]
        else:
            selected = level1.unflatten(1, (8, C))[:, list(sel)].flatten(1, 2)
    return level1, dwt(selected)
