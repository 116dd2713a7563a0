"""3D Haar DWT/IDWT: Triton kernels (through the interpreter on CPU) and the PyTorch reference,
checked against PyWavelets, hand-computed impulses, autograd of the reference, gradcheck and the
adjoint identity; plus the two-level helper, error paths and the facade's dispatch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bsynth_hpc.nn as bnn
import bsynth_hpc.ops as ops
from bsynth_hpc.kernels import haar_dwt3d as H

pywt = pytest.importorskip("pywt")

# Written out here (not taken from the module) so the ordering itself is under test.
PYWT_ORDER = ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")
ODD_SHAPES = [(1, 2, 5, 6, 7), (2, 3, 4, 4, 4), (1, 1, 9, 3, 5)]
IMPLS = {
    "reference": (H.haar_dwt3d_reference, H.haar_idwt3d_reference),
    "triton": (H.haar_dwt3d_triton, H.haar_idwt3d_triton),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _half(shape):
    return tuple((n + 1) // 2 for n in shape)


def _pywt_dwt(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, 8C, ...) with pywt.dwtn per volume, subband-major channels."""
    B, C = x.shape[:2]
    out = np.zeros((B, 8, C) + _half(x.shape[2:]))
    for b in range(B):
        for c in range(C):
            coeffs = pywt.dwtn(x[b, c].double().numpy(), "haar")  # default mode 'symmetric'
            for s, key in enumerate(PYWT_ORDER):
                out[b, s, c] = coeffs[key]
    return torch.from_numpy(out.reshape((B, 8 * C) + out.shape[3:]))


def _pywt_idwt(y: torch.Tensor, spatial) -> torch.Tensor:
    B, C8 = y.shape[:2]
    C = C8 // 8
    yy = y.double().numpy().reshape((B, 8, C) + tuple(y.shape[2:]))
    out = np.zeros((B, C) + tuple(spatial))
    for b in range(B):
        for c in range(C):
            full = pywt.idwtn({key: yy[b, s, c] for s, key in enumerate(PYWT_ORDER)}, "haar")
            out[b, c] = full[: spatial[0], : spatial[1], : spatial[2]]
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------
def test_subband_tables_match_pywt_key_order():
    assert H.PYWT_KEYS == PYWT_ORDER
    assert tuple(sorted(pywt.dwtn(np.zeros((2, 2, 2)), "haar"))) == PYWT_ORDER
    assert H.SUBBAND_NAMES[1] == "LLH" and H.SUBBAND_NAMES[4] == "HLL"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ODD_SHAPES + [(1, 1, 1, 1, 1)])
def test_dwt_matches_pywt(impl, shape):
    x = _randn(shape, seed=1)
    y = IMPLS[impl][0](x)
    assert y.shape == (shape[0], 8 * shape[1]) + _half(shape[2:]) and y.dtype == torch.float64
    torch.testing.assert_close(y, _pywt_dwt(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_idwt_matches_pywt_cropped(impl, shape):
    y = _randn((shape[0], 8 * shape[1]) + _half(shape[2:]), seed=2)
    x = IMPLS[impl][1](y, shape[2:])
    assert x.shape == shape
    torch.testing.assert_close(x, _pywt_idwt(y, shape[2:]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_impulses_give_hand_computed_signs(impl):
    """An impulse at corner (dx, dy, dz) of a 2x2x2 block gives subband (ax, ay, az) the value
    (-1)^(ax*dx + ay*dy + az*dz) / (2 sqrt 2): low = (x0 + x1)/sqrt2, high = (x0 - x1)/sqrt2."""
    dwt = IMPLS[impl][0]
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                x = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)
                x[0, 0, dx, dy, dz] = 1.0
                got = dwt(x).flatten()
                want = [(-1) ** (ax * dx + ay * dy + az * dz) / (2 * math.sqrt(2))
                        for ax in (0, 1) for ay in (0, 1) for az in (0, 1)]
                torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("impl", IMPLS)
def test_odd_size_repeats_last_sample(impl):
    # Z = [1, 2, 4] with X = Y = 1: every axis repeats its last sample, so the padded volume is
    # 2 x 2 x 4 with rows [1, 2, 4, 4]; a coefficient is (sum of +-8 block values) / (2 sqrt 2).
    x = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).reshape(1, 1, 1, 1, 3)
    y = IMPLS[impl][0](x)
    assert y.shape == (1, 8, 1, 1, 2)
    torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor([3.0, 8.0], dtype=torch.float64) * math.sqrt(2) ** 3 / 2)
    torch.testing.assert_close(y[0, 1, 0, 0], torch.tensor([-1.0, 0.0], dtype=torch.float64) * math.sqrt(2) ** 3 / 2)
    assert torch.all(y[0, 2:] == 0)  # every Y- or X-detail vanishes on a replicated singleton axis


@pytest.mark.parametrize(
    "dtype,rtol,atol",
    [(torch.float32, 1e-6, 1e-6), (torch.bfloat16, 1.6e-2, 1e-2), (torch.float16, 1e-3, 1e-3)],
)
def test_triton_matches_reference_per_dtype(dtype, rtol, atol):
    """fp32 arithmetic inside both, so half-precision results differ by at most one output rounding."""
    shape = (1, 2, 5, 6, 7)
    x = _randn(shape, dtype, seed=3)
    y_t, y_r = H.haar_dwt3d_triton(x), H.haar_dwt3d_reference(x)
    assert y_t.dtype == dtype
    torch.testing.assert_close(y_t, y_r, rtol=rtol, atol=atol)
    torch.testing.assert_close(y_t.double(), _pywt_dwt(x.double()), rtol=rtol, atol=atol)
    x_t, x_r = H.haar_idwt3d_triton(y_r, shape[2:]), H.haar_idwt3d_reference(y_r, shape[2:])
    assert x_t.dtype == dtype
    torch.testing.assert_close(x_t, x_r, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# Reconstruction and orthonormality
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_perfect_reconstruction(impl, shape):
    dwt, idwt = IMPLS[impl]
    x = _randn(shape, torch.float32, seed=4)
    torch.testing.assert_close(idwt(dwt(x), shape[2:]), x, rtol=0, atol=2e-6)
    torch.testing.assert_close(idwt(dwt(x), shape), x, rtol=0, atol=2e-6)  # 5-D output_shape form


@pytest.mark.parametrize("impl", IMPLS)
def test_orthonormal_on_even_sizes(impl):
    dwt, idwt = IMPLS[impl]
    y = _randn((2, 16, 2, 3, 2), seed=5)
    out = dwt(idwt(y))  # default output_shape: twice y's size
    assert out.shape == y.shape
    torch.testing.assert_close(out, y, rtol=0, atol=1e-12)
    x = _randn((2, 2, 4, 6, 4), seed=6)
    torch.testing.assert_close(dwt(x).norm(), x.norm(), rtol=1e-12, atol=0)  # energy preserved


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_triton_grads_match_reference_autograd(shape):
    x = _randn(shape, torch.float32, seed=7)
    g = _randn((shape[0], 8 * shape[1]) + _half(shape[2:]), torch.float32, seed=8)
    xt, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    (gt,) = torch.autograd.grad(H.haar_dwt3d_triton(xt), xt, g)
    (gr,) = torch.autograd.grad(H.haar_dwt3d_reference(xr), xr, g)
    torch.testing.assert_close(gt, gr, rtol=1e-6, atol=1e-6)  # IDWT + fold of the replicated sample

    gx = _randn(shape, torch.float32, seed=9)
    yt, yr = g.clone().requires_grad_(), g.clone().requires_grad_()
    (gt,) = torch.autograd.grad(H.haar_idwt3d_triton(yt, shape[2:]), yt, gx)
    (gr,) = torch.autograd.grad(H.haar_idwt3d_reference(yr, shape[2:]), yr, gx)
    torch.testing.assert_close(gt, gr, rtol=1e-6, atol=1e-6)  # zero-extend + DWT


def test_triton_bf16_backward_dtype_and_values():
    shape = (1, 2, 5, 4, 3)
    x = _randn(shape, torch.bfloat16, seed=10).requires_grad_()
    g = _randn((1, 16, 3, 2, 2), torch.bfloat16, seed=11)
    (gt,) = torch.autograd.grad(H.haar_dwt3d_triton(x), x, g)
    assert gt.dtype == torch.bfloat16
    xr = x.detach().double().requires_grad_()
    (gr,) = torch.autograd.grad(H.haar_dwt3d_reference(xr), xr, g.double())
    torch.testing.assert_close(gt.double(), gr, rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_fp64(impl):
    """Full Jacobian check of the reference; the Triton path (many slow interpreter launches per
    Jacobian) uses gradcheck's fast mode (random projections), its exact grads are compared above."""
    dwt, idwt = IMPLS[impl]
    fast = impl == "triton"
    shape = (1, 1, 3, 3, 3)
    x = _randn(shape, seed=12).requires_grad_()
    y = _randn((1, 8, 2, 2, 2), seed=13).requires_grad_()
    assert torch.autograd.gradcheck(dwt, (x,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda t: idwt(t, shape[2:]), (y,), fast_mode=fast)


def test_triton_double_backward():
    """Backward is built from the same autograd.Function, so second derivatives flow (gradgradcheck)."""
    shape = (1, 1, 3, 2, 3)
    x = _randn(shape, seed=14).requires_grad_()
    y = _randn((1, 8, 2, 1, 2), seed=15).requires_grad_()
    assert torch.autograd.gradgradcheck(H.haar_dwt3d_triton, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: H.haar_idwt3d_triton(t, shape[2:]), (y,), fast_mode=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_adjoint_identity(impl):
    """<A x, g> = <x, A^T g> for A = DWT (replicate) and A = IDWT (crop), odd sizes, with A^T the
    implementation's own backward; on even sizes A^T of the DWT is the IDWT."""
    dwt, idwt = IMPLS[impl]
    shape = (1, 2, 5, 3, 7)
    x = _randn(shape, seed=16).requires_grad_()
    g = _randn((1, 16, 3, 2, 4), seed=17)
    (at_g,) = torch.autograd.grad(dwt(x), x, g)
    torch.testing.assert_close((dwt(x) * g).sum(), (x * at_g).sum(), rtol=1e-12, atol=1e-12)

    y = g.clone().requires_grad_()
    (bt_x,) = torch.autograd.grad(idwt(y, shape[2:]), y, x.detach())
    torch.testing.assert_close((idwt(y, shape[2:]) * x).sum(), (y * bt_x).sum(), rtol=1e-12, atol=1e-12)

    xe = _randn((1, 2, 4, 2, 6), seed=18)
    ge = _randn((1, 16, 2, 1, 3), seed=19)
    torch.testing.assert_close((dwt(xe) * ge).sum(), (xe * idwt(ge)).sum(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Memory layout and tiling
# ------------------------------------------------------------------------------------------------
def test_triton_non_contiguous_inputs():
    base = _randn((1, 7, 6, 5, 2), torch.float32, seed=20)
    x = base.permute(0, 4, 1, 2, 3)[:, :, 1:, :, ::2]  # (1, 2, 6, 3, 3), non-contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(H.haar_dwt3d_triton(x), H.haar_dwt3d_reference(x), rtol=1e-6, atol=1e-6)
    y = _randn((1, 4, 16, 3, 2), torch.float32, seed=21).transpose(1, 2)  # (1, 16, 4, 3, 2)
    torch.testing.assert_close(H.haar_idwt3d_triton(y, (7, 5, 4)), H.haar_idwt3d_reference(y, (7, 5, 4)),
                               rtol=1e-6, atol=1e-6)


def test_triton_multi_block_tiles(monkeypatch):
    """Tiles smaller than a (Y, Z) plane: partial last tiles and tiles spanning several Y rows."""
    monkeypatch.setattr(H, "_MAX_BLOCK", 16)
    shape = (2, 1, 3, 9, 11)  # plane of 5 x 6 = 30 coefficient positions -> 2 tiles of 16
    x = _randn(shape, torch.float32, seed=22).requires_grad_()
    y_t = H.haar_dwt3d_triton(x)
    torch.testing.assert_close(y_t, H.haar_dwt3d_reference(x), rtol=1e-6, atol=1e-6)
    g = _randn(y_t.shape, torch.float32, seed=23)
    (gt,) = torch.autograd.grad(y_t, x, g)
    (gr,) = torch.autograd.grad(H.haar_dwt3d_reference(x), x, g)
    torch.testing.assert_close(gt, gr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(H.haar_idwt3d_triton(g, shape[2:]), H.haar_idwt3d_reference(g, shape[2:]),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch(impl):
    dwt, idwt = IMPLS[impl]
    y = dwt(torch.zeros(0, 3, 5, 4, 3))
    assert y.shape == (0, 24, 3, 2, 2)
    assert idwt(y, (5, 4, 3)).shape == (0, 3, 5, 4, 3)


# ------------------------------------------------------------------------------------------------
# Two-level helper (WF-VAE stage 2)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dwt", [None, H.haar_dwt3d_triton], ids=["reference", "triton"])
@pytest.mark.parametrize("shape,subbands", [((1, 2, 8, 6, 10), (0, 1, 2, 4)), ((1, 1, 9, 7, 5), None),
                                            ((2, 1, 4, 4, 6), (4, 0))])
def test_two_level_matches_pywt_twice(dwt, shape, subbands):
    x = _randn(shape, seed=24)
    level1, level2 = H.haar_dwt3d_two_level(x, subbands, dwt=dwt)
    B, C = shape[:2]
    sel = list(range(8)) if subbands is None else list(subbands)
    K = len(sel)
    ref1 = _pywt_dwt(x)
    torch.testing.assert_close(level1, ref1, rtol=0, atol=1e-12)
    ref1 = ref1.reshape((B, 8, C) + ref1.shape[2:])
    half2 = _half(ref1.shape[3:])
    assert level2.shape == (B, 8 * K * C) + half2
    expected = torch.empty((B, 8, K, C) + half2, dtype=torch.float64)
    for b in range(B):
        for k, s in enumerate(sel):
            for c in range(C):
                coeffs = pywt.dwtn(ref1[b, s, c].numpy(), "haar")
                for t, key in enumerate(PYWT_ORDER):
                    expected[b, t, k, c] = torch.from_numpy(coeffs[key])
    torch.testing.assert_close(level2, expected.reshape(level2.shape), rtol=0, atol=1e-12)
    # Decoder side: inverting stage 2 recovers the selected stage-1 subbands.
    recovered = H.haar_idwt3d_reference(level2, level1.shape[2:])
    torch.testing.assert_close(recovered, ref1[:, sel].reshape(recovered.shape), rtol=0, atol=1e-12)


def test_two_level_default_is_64_channel_stage2_for_one_channel_volume():
    level1, level2 = H.haar_dwt3d_two_level(torch.zeros(1, 1, 8, 8, 12))
    assert level1.shape == (1, 8, 4, 4, 6) and level2.shape == (1, 64, 2, 2, 3)


@pytest.mark.parametrize("subbands,match", [([], "at least one"), ([8], "0..7"), ([-1], "0..7"),
                                            ([1, 1], "repeat")])
def test_two_level_rejects_bad_subbands(subbands, match):
    with pytest.raises(ValueError, match=match):
        H.haar_dwt3d_two_level(torch.zeros(1, 1, 4, 4, 4), subbands)


# ------------------------------------------------------------------------------------------------
# Failure paths
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_input_errors(impl):
    dwt, idwt = IMPLS[impl]
    with pytest.raises(ValueError, match="5-D"):
        dwt(torch.zeros(1, 4, 4, 4))
    with pytest.raises(TypeError, match="dtype"):
        dwt(torch.zeros(1, 1, 4, 4, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        dwt(np.zeros((1, 1, 2, 2, 2)))
    with pytest.raises(ValueError, match="5-D"):
        idwt(torch.zeros(8, 2, 2, 2))
    with pytest.raises(ValueError, match="8\\*C"):
        idwt(torch.zeros(1, 12, 2, 2, 2))
    y = torch.zeros(1, 8, 3, 2, 2)
    with pytest.raises(ValueError, match="axis 0 must be 5 or 6"):
        idwt(y, (4, 4, 4))
    with pytest.raises(ValueError, match="axis 2 must be 3 or 4"):
        idwt(y, (6, 4, 5))
    with pytest.raises(ValueError, match="output_shape must be"):
        idwt(y, (6, 4))
    with pytest.raises(ValueError, match="does not match"):
        idwt(y, (1, 2, 6, 4, 4))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        H.haar_dwt3d_triton(torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        H.haar_idwt3d_triton(torch.zeros(1, 8, 1, 1, 1))


# ------------------------------------------------------------------------------------------------
# Facade and modules
# ------------------------------------------------------------------------------------------------
def _spy(monkeypatch, name: str, calls: list[str]) -> None:
    fn = getattr(H, name)

    def wrapped(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)

    monkeypatch.setattr(H, name, wrapped)


@pytest.fixture
def spies(monkeypatch):
    calls: list[str] = []
    for name in ("haar_dwt3d_triton", "haar_dwt3d_reference", "haar_idwt3d_triton", "haar_idwt3d_reference"):
        _spy(monkeypatch, name, calls)
    monkeypatch.delenv("BSYNTH_DISABLE_TRITON", raising=False)
    yield calls
    ops.set_triton_enabled(None)


def test_facade_dispatches_to_triton_under_interpreter(spies, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = _randn((1, 1, 3, 4, 5), torch.float32, seed=25)
    y = ops.haar_dwt3d(x)
    out = ops.haar_idwt3d(y, x.shape[2:])
    assert spies == ["haar_dwt3d_triton", "haar_idwt3d_triton"]
    torch.testing.assert_close(out, x, rtol=0, atol=2e-6)
    spies.clear()
    level1, level2 = ops.haar_dwt3d_two_level(x, [0])
    assert spies == ["haar_dwt3d_triton", "haar_dwt3d_triton"] and level2.shape == (1, 8, 1, 1, 2)


@pytest.mark.parametrize("how", ["env", "config"])
def test_facade_falls_back_to_reference_when_disabled(spies, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    else:
        ops.set_triton_enabled(False)
    x = _randn((1, 1, 3, 4, 5), torch.float32, seed=26)
    ops.haar_idwt3d(ops.haar_dwt3d(x), x.shape[2:])
    assert spies == ["haar_dwt3d_reference", "haar_idwt3d_reference"]


def test_modules_wrap_the_transforms():
    dwt, idwt = bnn.HaarDWT3d(), bnn.HaarIDWT3d()
    assert not list(dwt.parameters()) and not list(idwt.parameters())
    x = _randn((1, 2, 3, 4, 5), torch.float32, seed=27)
    y = dwt(x)
    torch.testing.assert_close(y, H.haar_dwt3d_reference(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(idwt(y, x.shape[2:]), x, rtol=0, atol=2e-6)
