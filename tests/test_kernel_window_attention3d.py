"""kernels/window_attention3d: Triton kernel vs PyTorch reference vs an independent brute force.

The brute force below never partitions or rolls anything: it builds the full (L x L) "same window,
same Swin region" mask over the flattened grid of *real* tokens from coordinate arithmetic and runs
dense masked attention. Agreement with it (plus the hand-worked cases and the perturbation test)
is what shows that attention really is restricted to 3D windows. Triton runs through the
interpreter on CPU (tests/conftest.py), so shapes are tiny; BSYNTH_TEST_GPU=1 runs them on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import bsynth_hpc.ops as ops
from bsynth_hpc.kernels import window_attention3d as wa
from bsynth_hpc.kernels.window_attention3d import window_attention3d_reference, window_attention3d_triton
from bsynth_hpc.nn import WindowAttention3d, relative_position_index

DEVICE = "cuda" if os.environ.get("BSYNTH_TEST_GPU") == "1" and torch.cuda.is_available() else "cpu"
needs_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs BSYNTH_TEST_GPU=1 and a CUDA device")


# ------------------------------------------------------------------------------------------------
# independent brute force
# ------------------------------------------------------------------------------------------------
def brute_force_mask(grid, window, shift) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) bool 'query i may attend key j' over the real tokens (x-major flattening), and the
    window-local index of every token (for the bias), from coordinates alone."""
    coords = torch.cartesian_prod(*(torch.arange(n) for n in grid))              # (L, 3)
    w = torch.tensor(window)
    s = torch.tensor(shift)
    p = (torch.tensor(grid) + w - 1) // w * w                                      # padded sizes
    rolled = (coords - s) % p              # torch.roll(-s) moves the token at c to (c - s) mod P
    win = rolled // w
    local = rolled % w
    # Swin's regions per axis: [0, P-w) -> 0, [P-w, P-s) -> 1, [P-s, P) -> 2; no split without shift
    region = torch.where(s > 0, (rolled >= p - w).long() + (rolled >= p - s).long(), torch.zeros_like(rolled))
    same = (win[:, None] == win[None, :]).all(-1) & (region[:, None] == region[None, :]).all(-1)
    n = local[:, 0] * window[1] * window[2] + local[:, 1] * window[2] + local[:, 2]
    return same, n


def brute_force_attention(q, k, v, window, shift=(0, 0, 0), bias=None, scale=None) -> torch.Tensor:
    b, h, x, y, z, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    same, n = brute_force_mask((x, y, z), window, shift)
    qf, kf, vf = (t.double().reshape(b, h, x * y * z, d) for t in (q, k, v))
    scores = torch.einsum("bhid,bhjd->bhij", qf, kf) * scale
    if bias is not None:
        scores = scores + bias.double()[:, n[:, None], n[None, :]]
    scores = scores.masked_fill(~same.to(q.device), float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), vf).reshape(q.shape)


def make_inputs(batch, heads, grid, head_dim, window, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, *grid, head_dim, generator=g).to(DEVICE, dtype).requires_grad_()
               for _ in range(3))
    n = window[0] * window[1] * window[2]
    bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32   # tables stay fp32 under AMP
    rel = torch.randn(heads, n, n, generator=g).to(DEVICE, bias_dtype).requires_grad_() if bias else None
    return q, k, v, rel


def grads(out, tensors, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return torch.autograd.grad(out, [t for t in tensors if t is not None], g)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


# ------------------------------------------------------------------------------------------------
# the reference is right
# ------------------------------------------------------------------------------------------------
GEOMETRIES = [
    ((5, 6, 3), (2, 4, 2), (0, 0, 0)),   # odd, non-divisible
    ((5, 6, 3), (2, 4, 2), (1, 2, 1)),   # + half-window shift (pad, then roll)
    ((4, 4, 4), (2, 2, 2), (1, 1, 1)),   # divisible, shifted
    ((3, 5, 4), (3, 3, 2), (1, 0, 1)),   # shift on some axes only
    ((2, 3, 2), (4, 4, 4), (2, 2, 2)),   # window larger than the grid
    ((6, 4, 5), (3, 2, 5), (2, 1, 0)),   # non-cubic window, shift > half window
]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("grid,window,shift", GEOMETRIES)
def test_reference_matches_brute_force(grid, window, shift, with_bias):
    q, k, v, bias = make_inputs(2, 2, grid, 4, window, torch.float64, with_bias)
    out = window_attention3d_reference(q, k, v, window, shift, bias)
    torch.testing.assert_close(out, brute_force_attention(q, k, v, window, shift, bias), rtol=1e-10, atol=1e-10)


def test_hand_worked_shift_region_mask():
    """grid x = 4, window 2, shift 1: rolled order is (1, 2, 3, 0); windows {1, 2} and {3, 0}, but 0
    wrapped around (region [P-s, P)) so 3 and 0 must not see each other: each outputs its own v."""
    v = torch.arange(4.0, dtype=torch.float64).reshape(1, 1, 4, 1, 1, 1) + 10.0
    q = torch.zeros_like(v)
    out = window_attention3d_reference(q, torch.zeros_like(v), v, (2, 1, 1), (1, 0, 0))
    assert out.flatten().tolist() == pytest.approx([10.0, 11.5, 11.5, 13.0])


def test_hand_worked_padding_is_masked():
    """grid x = 3, window 2: token 2 shares its window only with a padded token, which is masked, so
    it returns its own v (Swin's original code would average in the zero padding: 12 / 2 = 6)."""
    v = torch.tensor([10.0, 11.0, 12.0], dtype=torch.float64).reshape(1, 1, 3, 1, 1, 1)
    out = window_attention3d_reference(torch.zeros_like(v), torch.zeros_like(v), v, (2, 1, 1))
    assert out.flatten().tolist() == pytest.approx([10.5, 10.5, 12.0])


def test_reference_gradcheck_float64():
    q, k, v, bias = make_inputs(1, 2, (3, 2, 3), 3, (2, 2, 2), torch.float64, True)
    fn = lambda q_, k_, v_, b_: window_attention3d_reference(q_, k_, v_, (2, 2, 2), (1, 1, 0), b_, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, bias), eps=1e-6, atol=1e-6)


def test_relative_position_index_encodes_offsets():
    window = (2, 3, 2)
    idx = relative_position_index(window)
    n = 12
    assert idx.shape == (n, n) and idx.dtype == torch.long
    coords = torch.cartesian_prod(*(torch.arange(w) for w in window))
    offsets = {}
    for i in range(n):
        for j in range(n):
            offsets.setdefault(tuple((coords[i] - coords[j]).tolist()), set()).add(int(idx[i, j]))
    assert all(len(s) == 1 for s in offsets.values())                 # an offset -> one table row
    rows = [next(iter(s)) for s in offsets.values()]
    assert len(set(rows)) == len(rows)                                # distinct offsets -> distinct rows
    assert 0 <= min(rows) and max(rows) < 3 * 5 * 3
    assert int(idx[0, 0]) == (1 * 5 + 2) * 3 + 1                      # zero offset is the table centre


# ------------------------------------------------------------------------------------------------
# the Triton kernel matches the reference (values and gradients)
# ------------------------------------------------------------------------------------------------
TRITON_CASES = [
    # id, batch, heads, grid, head_dim, window, shift, bias, block_m/n, windows per dbias program
    ("plain-b2h2", 2, 2, (3, 4, 2), 16, (2, 4, 2), (0, 0, 0), False, None, None),
    ("pad-shift-bias-grouped", 1, 1, (5, 6, 3), 16, (2, 4, 2), (1, 2, 1), True, None, 5),
    ("odd-window-d24", 1, 2, (4, 5, 3), 24, (3, 3, 3), (1, 1, 0), True, None, None),
    ("multi-block-dbias-kernel", 1, 1, (3, 4, 4), 16, (2, 4, 4), (1, 2, 2), True, 16, 2),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=[c[0] for c in TRITON_CASES])
def test_triton_matches_reference_fp32(case, monkeypatch):
    _, batch, heads, grid, head_dim, window, shift, with_bias, block, group = case
    if group is not None:
        monkeypatch.setattr(wa, "_window_group", lambda *args: group)
    q, k, v, bias = make_inputs(batch, heads, grid, head_dim, window, torch.float32, with_bias)
    out = window_attention3d_triton(q, k, v, window, shift, bias, block_m=block, block_n=block, precision="ieee")
    ref = window_attention3d_reference(q, k, v, window, shift, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = grads(out, (q, k, v, bias))
    want = grads(ref, (q, k, v, bias))
    for name, a, b in zip("q k v bias".split(), got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("dtype,out_tol,grad_tol", [(torch.bfloat16, 2e-2, 3e-2), (torch.float16, 3e-3, 4e-3)])
def test_triton_low_precision(dtype, out_tol, grad_tol):
    """fp16/bf16 inputs, fp32 accumulation: compared with the fp32 reference on the same rounded
    inputs (errors come from P and dS being rounded before their matmuls, as in flash attention)."""
    q, k, v, bias = make_inputs(1, 1, (5, 6, 3), 16, (2, 4, 2), dtype, True)
    out = window_attention3d_triton(q, k, v, (2, 4, 2), (1, 2, 1), bias)
    assert out.dtype == dtype
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = window_attention3d_reference(q32, k32, v32, (2, 4, 2), (1, 2, 1), bias)
    assert max_rel(out, ref) < out_tol
    got = grads(out, (q, k, v, bias))
    want = grads(ref, (q32, k32, v32, bias))
    for name, a, b in zip("q k v bias".split(), got, want):
        assert a.dtype == (torch.float32 if name == "bias" else dtype)
        assert max_rel(a, b) < grad_tol, name


# ------------------------------------------------------------------------------------------------
# the dots exactly as the GPU compiles them (bf16 tl.dot without UPCAST, tf32 rounding)
# ------------------------------------------------------------------------------------------------
def _round_tf32(a: np.ndarray) -> np.ndarray:
    """fp32 -> the nearest value with a 10-bit mantissa (round half to even), kept as fp32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


@pytest.fixture
def gpu_dots(monkeypatch):
    """The Triton interpreter's dot (triton 3.9) multiplies bf16 *storage bits* as integers and ignores
    input_precision. Patch it to do what the tensor cores do: bf16 operands are decoded to their exact
    fp32 values, tf32 operands of fp32 dots are rounded to 10 mantissa bits; fp32 accumulation."""
    if DEVICE != "cpu":
        pytest.skip("interpreter-only: on a GPU the real dots run")
    interp = pytest.importorskip("triton.runtime.interpreter")
    from triton._C.libtriton import ir
    import triton.language as tl

    def operand(h, precision):
        data = h.data
        if h.dtype == tl.bfloat16:
            return (data.astype(np.uint32) << np.uint32(16)).view(np.float32)
        if h.dtype == tl.float32 and precision == ir.INPUT_PRECISION.TF32:
            return _round_tf32(data)
        return data

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        prod = np.matmul(operand(a, input_precision), operand(b, input_precision), dtype=d.data.dtype)
        return interp.TensorHandle(prod + d.data, d.dtype.scalar)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", create_dot)


def test_interpreter_bf16_dot_is_wrong_without_the_patch():
    """Why UPCAST exists: the unpatched interpreter's bf16 dot is garbage (if this starts failing, triton
    fixed it and UPCAST can go)."""
    if DEVICE != "cpu":
        pytest.skip("interpreter-only")
    q, k, v, _ = make_inputs(1, 1, (2, 2, 4), 16, (2, 2, 4), torch.bfloat16, False)
    plan = wa.plan_attention(16, 16, torch.bfloat16, num_windows=1, batch_heads=1, interpreter=True)
    assert plan.upcast
    with torch.no_grad():
        good = window_attention3d_triton(q, k, v, (2, 2, 4))
    raw = replace(plan, upcast=False)
    geo = wa._Geometry(q, (2, 2, 4), (0, 0, 0))
    launch, o, _ = wa.plan_forward(q.detach(), k.detach(), v.detach(), None, geo, 0.25, raw)
    launch()
    assert max_rel(o, good) > 0.1


@pytest.mark.parametrize("case", TRITON_CASES[1:3], ids=[c[0] for c in TRITON_CASES[1:3]])
def test_triton_bf16_gpu_dot_path(case, gpu_dots, monkeypatch):
    """bf16 through `tl.dot(bf16, bf16)` (UPCAST=False, the code the GPU compiles), forward and all
    gradients: equal to the UPCAST path (bf16 products are exact in fp32) and close to the fp32
    reference on the same rounded inputs."""
    _, batch, heads, grid, head_dim, window, shift, with_bias, block, group = case
    q, k, v, bias = make_inputs(batch, heads, grid, head_dim, window, torch.bfloat16, with_bias)
    upcast = window_attention3d_triton(q, k, v, window, shift, bias)
    g_upcast = grads(upcast, (q, k, v, bias))
    real_plan = wa.plan_attention
    monkeypatch.setattr(wa, "plan_attention", lambda *a, **kw: replace(real_plan(*a, **kw), upcast=False))
    out = window_attention3d_triton(q, k, v, window, shift, bias)
    g_out = grads(out, (q, k, v, bias))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = window_attention3d_reference(q32, k32, v32, window, shift, bias)
    g_ref = grads(ref, (q32, k32, v32, bias))
    assert max_rel(out, upcast) < 1e-2 and max_rel(out, ref) < 2e-2
    for name, a, b, r in zip("q k v bias".split(), g_out, g_upcast, g_ref):
        assert max_rel(a, b) < 2e-2 and max_rel(a, r) < 3e-2, name


def test_triton_fp32_tf32_default(gpu_dots):
    """fp32 inputs run TF32 dots by default (operands rounded to 10 mantissa bits): the error against
    the fp64 brute force is that of TF32 (well above fp32's, below 5e-3), and precision="ieee" is
    exact to fp32 again."""
    grid, window, shift = (5, 6, 3), (2, 4, 2), (1, 2, 1)
    q, k, v, bias = make_inputs(1, 2, grid, 16, window, torch.float32, True)
    want = brute_force_attention(q, k, v, window, shift, bias)
    tf32 = window_attention3d_triton(q, k, v, window, shift, bias)
    exact = window_attention3d_triton(q, k, v, window, shift, bias, precision="ieee")
    assert 1e-5 < max_rel(tf32, want) < 5e-3
    assert max_rel(exact, want) < 1e-5
    gt, ge = grads(tf32, (q, k, v, bias)), grads(exact, (q, k, v, bias))
    for name, a, b in zip("q k v bias".split(), gt, ge):
        assert max_rel(a, b) < 1e-2, name


def test_fp32_precision_switch(monkeypatch):
    monkeypatch.delenv(wa.PRECISION_ENV, raising=False)
    assert wa.fp32_precision() == "tf32"
    monkeypatch.setenv(wa.PRECISION_ENV, "ieee")
    assert wa.fp32_precision() == "ieee" and wa.fp32_precision("tf32") == "tf32"
    plan = wa.plan_attention(64, 64, torch.float32, num_windows=20, batch_heads=12)
    assert plan.prec == "ieee" and plan.fwd.block_m <= 16      # exact mode: small tiles
    assert wa.plan_attention(64, 64, torch.bfloat16, num_windows=20, batch_heads=12).prec == "tf32"
    with pytest.raises(ValueError, match="precision"):
        wa.fp32_precision("fp64")
    with pytest.raises(ValueError, match="precision"):
        window_attention3d_triton(*make_inputs(1, 1, (2, 2, 2), 16, (2, 2, 2), bias=False)[:3], (2, 2, 2),
                                  precision="half")


@pytest.mark.parametrize("batch,arch,sms", [(2, 90, 132), (2, 80, 108), (4, 90, 132)])
def test_plan_fills_the_gpu_at_dit3d_shapes(batch, arch, sms):
    """DiT-3D: 7x17x7 tokens, window 4x4x4 (20 windows), 6 heads. Every kernel's grid has at least
    3 programs per SM, and the planned launch's grid is the one the kernel gets."""
    for dtype in (torch.float32, torch.bfloat16):
        plan = wa.plan_attention(64, 64, dtype, num_windows=20, batch_heads=batch * 6, arch=arch, sm_count=sms)
        for tile, rows in ((plan.fwd, plan.fwd.block_m), (plan.dq, plan.dq.block_m), (plan.dkdv, plan.dkdv.block_n)):
            assert 20 * batch * 6 * (64 // rows) >= 3 * sms, (dtype, tile)
        q = torch.empty(batch, 6, 7, 17, 7, 64, dtype=dtype, device="meta")
        geo = wa._Geometry(q, (4, 4, 4), (2, 2, 2))
        launch, o, lse = wa.plan_forward(q, q, q, None, geo, 0.125, plan)
        assert launch.grid == (20 * (64 // plan.fwd.block_m), batch * 6)
        assert launch.constexprs["BLOCK_M"] == plan.fwd.block_m and launch.num_warps == plan.fwd.num_warps
        assert launch.constexprs["PREC"] == "tf32" and not launch.constexprs["UPCAST"]


def test_triton_windows_are_local():
    """Perturbing keys/values of a random token set changes exactly the queries whose window
    (and region) contains one of them; all other outputs stay bit-identical."""
    grid, window, shift = (5, 6, 3), (2, 4, 2), (1, 2, 1)
    q, k, v, _ = make_inputs(1, 1, grid, 16, window, torch.float32, False)
    q, k, v = q.detach(), k.detach(), v.detach()
    hit = torch.zeros(grid, dtype=torch.bool)
    hit.view(-1)[torch.randperm(hit.numel(), generator=torch.Generator().manual_seed(3))[:6]] = True
    hit = hit.to(DEVICE)
    k2 = torch.where(hit[..., None], k + 3.0, k)
    v2 = torch.where(hit[..., None], v - 2.0, v)
    out = window_attention3d_triton(q, k, v, window, shift)
    out2 = window_attention3d_triton(q, k2, v2, window, shift)
    same, _ = brute_force_mask(grid, window, shift)
    affected = (same.to(DEVICE) & hit.reshape(1, -1)).any(1).reshape(grid)
    changed = (out2 - out).abs().amax(-1)[0, 0] > 1e-4
    assert 0 < int(affected.sum()) < affected.numel()
    assert torch.equal(changed, affected)
    assert torch.equal(out2[0, 0][~affected], out[0, 0][~affected])


def test_triton_strided_views_and_module(monkeypatch):
    """WindowAttention3d feeds strided q/k/v views of one qkv projection to the facade: the Triton
    path (no copies) and the reference path agree in output and in every parameter gradient."""
    torch.manual_seed(0)
    module = WindowAttention3d(dim=32, num_heads=2, window_size=(2, 2, 2), shift_size=(1, 1, 1)).to(DEVICE)
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    x = torch.randn(1, 3, 4, 3, 32, device=DEVICE, requires_grad=True)
    calls = []
    spy = lambda *a, **kw: calls.append(a[0].is_contiguous()) or window_attention3d_triton(*a, **kw)  # noqa: E731
    monkeypatch.setattr(wa, "window_attention3d_triton", spy)
    out = module(x)
    assert calls == [False]                                   # the kernel got the strided view
    params = [x] + list(module.parameters())
    got = grads(out, params)
    ops.set_triton_enabled(False)
    try:
        ref = module(x)
        want = grads(ref, params)
    finally:
        ops.set_triton_enabled(None)
    assert calls == [False]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# facade dispatch
# ------------------------------------------------------------------------------------------------
def _spies(monkeypatch):
    calls = []

    def spy(name):
        real = getattr(wa, name)
        return lambda *a, **kw: calls.append(name) or real(*a, **kw)

    for name in ("window_attention3d_triton", "window_attention3d_reference"):
        monkeypatch.setattr(wa, name, spy(name))
    return calls


@pytest.mark.parametrize("mode", ["enabled", "env-disabled", "config-disabled"])
def test_facade_dispatch(mode, monkeypatch):
    calls = _spies(monkeypatch)
    monkeypatch.delenv("BSYNTH_DISABLE_TRITON", raising=False)
    if mode == "env-disabled":
        monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    q, k, v, bias = make_inputs(1, 1, (2, 2, 3), 16, (2, 2, 2), torch.float32, True)
    if mode == "config-disabled":
        ops.set_triton_enabled(False)
    try:
        out = ops.window_attention3d(q, k, v, [2, 2, 2], [0, 1, 1], bias)
    finally:
        ops.set_triton_enabled(None)
    expected = "window_attention3d_triton" if mode == "enabled" else "window_attention3d_reference"
    assert calls[0] == expected
    torch.testing.assert_close(out, brute_force_attention(q, k, v, (2, 2, 2), (0, 1, 1), bias).float(),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# failure paths
# ------------------------------------------------------------------------------------------------
def _bad_calls():
    t = torch.zeros(1, 2, 4, 4, 4, 16)
    bias = torch.zeros(2, 8, 8)
    return [
        ("5-D", (t[0], t[0], t[0], (2, 2, 2)), {}, ValueError, "B, heads, X, Y, Z, head_dim"),
        ("shape mismatch", (t, t[:, :, :3], t, (2, 2, 2)), {}, ValueError, "same shape"),
        ("dtype mismatch", (t, t.double(), t, (2, 2, 2)), {}, TypeError, "dtypes differ"),
        ("integer", (t.long(), t.long(), t.long(), (2, 2, 2)), {}, TypeError, "floating point"),
        ("window rank", (t, t, t, (2, 2)), {}, ValueError, "3 entries"),
        ("window zero", (t, t, t, (2, 0, 2)), {}, ValueError, ">= 1"),
        ("window float", (t, t, t, (2, 2.5, 2)), {}, ValueError, "three integers"),
        ("shift = window", (t, t, t, (2, 2, 2), (0, 2, 0)), {}, ValueError, "shift_size < window_size"),
        ("negative shift", (t, t, t, (2, 2, 2), (-1, 0, 0)), {}, ValueError, "shift_size < window_size"),
        ("bias shape", (t, t, t, (2, 2, 2), (0, 0, 0), bias[:, :4]), {}, ValueError, r"\(2, 8, 8\)"),
        ("bias heads", (t, t, t, (2, 2, 2), (0, 0, 0), torch.zeros(3, 8, 8)), {}, ValueError, "heads"),
        ("bias integer", (t, t, t, (2, 2, 2), (0, 0, 0), bias.long()), {}, TypeError, "rel_pos_bias"),
    ]


@pytest.mark.parametrize("fn", [window_attention3d_reference, window_attention3d_triton, ops.window_attention3d],
                         ids=["reference", "triton", "facade"])
@pytest.mark.parametrize("bad", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_invalid_arguments(fn, bad):
    _, args, kwargs, exc, pattern = bad
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)


def test_triton_specific_limits():
    t = torch.zeros(1, 1, 2, 2, 2, 16)
    with pytest.raises(TypeError, match="float64"):
        window_attention3d_triton(t.double(), t.double(), t.double(), (2, 2, 2))
    big = torch.zeros(1, 1, 2, 2, 2, 512)
    with pytest.raises(ValueError, match="head_dim 512"):
        window_attention3d_triton(big, big, big, (2, 2, 2))
    with pytest.raises(ValueError, match="power of two"):
        window_attention3d_triton(t, t, t, (2, 2, 2), block_m=24)
    with pytest.raises(ValueError, match="divisible"):
        WindowAttention3d(dim=30, num_heads=4, window_size=(2, 2, 2))
    with pytest.raises(ValueError, match="shift_size"):
        WindowAttention3d(dim=32, num_heads=4, window_size=(2, 2, 2), shift_size=(2, 0, 0))
    with pytest.raises(ValueError, match=r"\(B, X, Y, Z, 32\)"):
        WindowAttention3d(dim=32, num_heads=4, window_size=(2, 2, 2))(torch.zeros(1, 2, 2, 2, 16))


@pytest.mark.parametrize("fn", [window_attention3d_reference, window_attention3d_triton], ids=["reference", "triton"])
@pytest.mark.parametrize("shape", [(0, 2, 3, 3, 3, 16), (1, 2, 0, 3, 3, 16)])
def test_empty_inputs(fn, shape):
    q = torch.zeros(shape, device=DEVICE, requires_grad=True)
    out = fn(q, q, q, (2, 2, 2), (1, 1, 1))
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


# ------------------------------------------------------------------------------------------------
# GPU only (BSYNTH_TEST_GPU=1): DiT-3D-sized shapes and bitwise-reproducible backward
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype,precision,tol", [(torch.bfloat16, None, 2e-2), (torch.float32, "tf32", 5e-3),
                                                 (torch.float32, "ieee", 1e-4)])
def test_gpu_dit3d_shape_and_determinism(dtype, precision, tol):
    q, k, v, bias = make_inputs(2, 6, (7, 17, 7), 64, (4, 4, 4), dtype, True)
    outs = [window_attention3d_triton(q, k, v, (4, 4, 4), (2, 2, 2), bias, precision=precision) for _ in range(2)]
    gs = [grads(o, (q, k, v, bias)) for o in outs]
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*gs))      # no atomics: bitwise reproducible
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = window_attention3d_reference(q32, k32, v32, (4, 4, 4), (2, 2, 2), bias)
    assert max_rel(outs[0], ref) < tol
    for a, b in zip(gs[0], grads(ref, (q32, k32, v32, bias))):
        assert max_rel(a, b) < 2 * tol
