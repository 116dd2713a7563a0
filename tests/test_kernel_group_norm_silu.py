"""kernels/group_norm_silu.py: the Triton kernels (through the interpreter on CPU, or on the GPU with
BSYNTH_TEST_GPU=1) against an independent float64 oracle built from torch.nn.GroupNorm + nn.SiLU,
the reference against the same oracle, gradients of every input (4-D and 5-D: liger-kernel #1375),
numerical stability of the statistics, eps, errors, the facade and the module wrapper."""
from __future__ import annotations

import os

import pytest
import torch

import bsynth_hpc.kernels.group_norm_silu as gns
from bsynth_hpc import ops
from bsynth_hpc.kernels.group_norm_silu import group_norm_silu_reference, group_norm_silu_triton
from bsynth_hpc.nn import GroupNormSiLU

DEVICE = "cuda" if os.environ.get("BSYNTH_TEST_GPU") == "1" and torch.cuda.is_available() else "cpu"
_TRITON_RUNNABLE = gns.HAS_TRITON and (DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not _TRITON_RUNNABLE, reason="needs triton on CUDA or TRITON_INTERPRET=1")

ARGS = ("x", "weight", "bias", "scale", "shift")

# SiLU of very negative pre-activations (and of masked tail lanes) evaluates exp(-m) = inf, then
# sigmoid = 1 / (1 + inf) = 0, which is the right value; numpy in the interpreter warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


# ----------------------------------------------------------------------------------------------
# independent oracle: nn.GroupNorm + manual modulation + nn.SiLU in float64
# ----------------------------------------------------------------------------------------------
def oracle(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None, grad_out=None):
    """Return (y, grads) in float64; grads maps each given input name to d(sum(y * grad_out))/d(input)."""
    C = x.shape[1]
    affine = weight is not None or bias is not None
    gn = torch.nn.GroupNorm(num_groups, C, eps=eps, affine=affine).to(torch.float64)
    leaves = {"x": x.detach().double().cpu().requires_grad_()}
    if affine:
        with torch.no_grad():
            gn.weight.copy_(weight.detach().double().cpu() if weight is not None else torch.ones(C))
            gn.bias.copy_(bias.detach().double().cpu() if bias is not None else torch.zeros(C))
        if weight is not None:
            leaves["weight"] = gn.weight
        if bias is not None:
            leaves["bias"] = gn.bias
    h = gn(leaves["x"])
    bshape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2)
    if scale is not None:
        leaves["scale"] = scale.detach().double().cpu().requires_grad_()
        h = h * (1 + leaves["scale"].reshape(bshape))
    if shift is not None:
        leaves["shift"] = shift.detach().double().cpu().requires_grad_()
        h = h + leaves["shift"].reshape(bshape)
    y = torch.nn.SiLU()(h)
    grads = {}
    if grad_out is not None:
        names = list(leaves)
        gs = torch.autograd.grad(y, [leaves[n] for n in names], grad_out.detach().double().cpu())
        grads = dict(zip(names, gs))
    return y.detach(), grads


def make_inputs(shape, *, weight=True, bias=True, scale=True, shift=True, dtype=torch.float32,
                param_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    pd = param_dtype or dtype
    out = {"x": torch.randn(shape, generator=g).to(dtype)}
    out["weight"] = (1 + 0.5 * torch.randn(C, generator=g)).to(pd) if weight else None
    out["bias"] = (0.5 * torch.randn(C, generator=g)).to(pd) if bias else None
    out["scale"] = (0.5 * torch.randn(B, C, generator=g)).to(pd) if scale else None
    out["shift"] = (0.5 * torch.randn(B, C, generator=g)).to(pd) if shift else None
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in out.items()}


def call(fn, inp, num_groups, eps=1e-5, **kw):
    return fn(inp["x"], num_groups, inp["weight"], inp["bias"], eps, inp["scale"], inp["shift"], **kw)


def with_grad(inp, names=ARGS):
    return {k: (v.clone().requires_grad_(k in names) if v is not None else None) for k, v in inp.items()}


def grads_of(y, inp, grad_out):
    names = [k for k in ARGS if inp[k] is not None and inp[k].requires_grad]
    gs = torch.autograd.grad(y, [inp[n] for n in names], grad_out)
    return dict(zip(names, gs))


def assert_scaled_close(actual, expected, rel, what=""):
    """max |a - e| <= rel * max(|e|, 1): a tolerance relative to the tensor's scale."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (actual - expected).abs().max().item()
    bound = rel * max(expected.abs().max().item(), 1.0)
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


# ----------------------------------------------------------------------------------------------
# the reference against the oracle (cheap, no Triton)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,groups", [((1, 6, 5, 7, 3), 2), ((2, 8, 9, 10), 8), ((3, 4, 17), 1)])
@pytest.mark.parametrize("affine,modulated", [(True, True), (False, False), (True, False), (False, True)])
def test_reference_matches_torch_modules(shape, groups, affine, modulated):
    inp = make_inputs(shape, weight=affine, bias=affine, scale=modulated, shift=modulated, dtype=torch.float64)
    y = call(group_norm_silu_reference, inp, groups)
    y_ref, _ = oracle(**inp, num_groups=groups)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-12, atol=1e-12)


def test_reference_keeps_dtype_and_computes_in_fp32():
    inp = make_inputs((2, 4, 6, 6), dtype=torch.bfloat16)
    y = call(group_norm_silu_reference, inp, 2)
    assert y.dtype == torch.bfloat16
    y_ref, _ = oracle(**inp, num_groups=2)
    # one bf16 rounding of an fp32 result: within half an ulp of bf16 (2^-8 relative)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=2 ** -8, atol=1e-6)


def test_reference_gradcheck_float64():
    inp = {k: v.requires_grad_() for k, v in make_inputs((2, 4, 3, 5), dtype=torch.float64).items()}
    fn = lambda x, w, b, s, t: group_norm_silu_reference(x, 2, w, b, 1e-5, s, t)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inp[k] for k in ARGS), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Triton forward
# ----------------------------------------------------------------------------------------------
FWD_CASES = [
    ((1, 6, 5, 7, 3), 1), ((1, 6, 5, 7, 3), 2), ((1, 6, 5, 7, 3), 6),   # 5-D, odd spatial, CPG 6/3/1
    ((2, 8, 9, 10), 1), ((2, 8, 9, 10), 4), ((2, 8, 9, 10), 8),          # 4-D
    ((3, 4, 17), 2),                                                      # 3-D (B, C, L)
    ((1, 12, 11, 13, 9), 4),                                              # S=1287 > one 1024 tile, CPG=3
]


@needs_triton
@pytest.mark.parametrize("shape,groups", FWD_CASES)
def test_triton_forward_fp32(shape, groups):
    inp = make_inputs(shape)
    y = call(group_norm_silu_triton, inp, groups)
    y_ref, _ = oracle(**inp, num_groups=groups)
    assert y.shape == inp["x"].shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("present", [(), ("weight", "bias"), ("scale", "shift"), ("weight", "shift"),
                                     ("bias", "scale")])
def test_triton_forward_optional_inputs(present):
    inp = make_inputs((2, 6, 4, 5, 3), **{k: k in present for k in ARGS[1:]})
    y = call(group_norm_silu_triton, inp, 3)
    y_ref, _ = oracle(**inp, num_groups=3)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)


@needs_triton
# fp32 math then one rounding to the output dtype. One ulp (2^-7 for bf16, 2^-10 for fp16) rather
# than half: the Triton interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest even).
@pytest.mark.parametrize("dtype,rtol", [(torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -10)])
@pytest.mark.parametrize("shape,groups", [((1, 6, 5, 7, 3), 2), ((2, 8, 9, 10), 4)])
def test_triton_forward_low_precision(dtype, rtol, shape, groups):
    inp = make_inputs(shape, dtype=dtype, param_dtype=torch.float32)  # bf16 activations, fp32 params
    y = call(group_norm_silu_triton, inp, groups)
    assert y.dtype == dtype
    y_ref, _ = oracle(**inp, num_groups=groups)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=rtol, atol=1e-5)
    y_torch = call(group_norm_silu_reference, inp, groups)
    torch.testing.assert_close(y.double().cpu(), y_torch.double().cpu(), rtol=2 * rtol, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Triton backward
# ----------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("shape,groups", [
    ((1, 6, 5, 7, 3), 2),    # 5-D, CPG=3: the liger #1375 case (spatial dims beyond (B, C, L))
    ((2, 8, 9, 10), 4),      # 4-D
    ((2, 6, 4, 3, 5), 6),    # 5-D, one channel per group
    ((3, 4, 17), 1),         # 3-D, one group
])
def test_triton_gradients_all_inputs_fp32(shape, groups):
    inp = with_grad(make_inputs(shape))
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    y = call(group_norm_silu_triton, inp, groups)
    got = grads_of(y, inp, dy)
    _, want = oracle(**inp, num_groups=groups, grad_out=dy)
    assert set(got) == set(ARGS)
    for k in ARGS:
        assert got[k].shape == inp[k].shape and got[k].dtype == inp[k].dtype, k
        assert_scaled_close(got[k], want[k], 2e-5, k)


@needs_triton
@pytest.mark.parametrize("present,requires", [
    (("weight", "bias"), ("weight",)),                # only a parameter needs grad: no dx kernel
    ((), ("x",)),                                     # plain GroupNorm + SiLU
    (("scale", "shift"), ("x", "scale", "shift")),    # adaptive norm without affine
])
def test_triton_gradients_subsets(present, requires):
    shape = (2, 6, 3, 4, 5)
    inp = with_grad(make_inputs(shape, **{k: k in present for k in ARGS[1:]}), requires)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y = call(group_norm_silu_triton, inp, 2)
    got = grads_of(y, inp, dy)
    _, want = oracle(**inp, num_groups=2, grad_out=dy)
    assert set(got) == set(requires)
    for k in requires:
        assert_scaled_close(got[k], want[k], 2e-5, k)


@needs_triton
@pytest.mark.parametrize("dtype,rel", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_triton_gradients_low_precision(dtype, rel):
    """bf16/fp16 activations with fp32 params (autocast style): grads come back in each input's dtype."""
    shape = (1, 6, 5, 7, 3)
    inp = with_grad(make_inputs(shape, dtype=dtype, param_dtype=torch.float32))
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    y = call(group_norm_silu_triton, inp, 2)
    got = grads_of(y, inp, dy)
    _, want = oracle(**inp, num_groups=2, grad_out=dy)
    assert got["x"].dtype == dtype and got["weight"].dtype == torch.float32
    for k in ARGS:
        assert_scaled_close(got[k], want[k], rel, k)


@needs_triton
def test_split_reductions_multi_chunk_partial_tiles():
    """Tiny tiles force several chunks per group, several tiles per chunk and a partial last tile."""
    shape, groups = (1, 6, 5, 7, 3), 2
    inp = with_grad(make_inputs(shape, seed=4))
    plan = gns._make_plan(inp["x"], groups, 16, 8)
    for sp, inner in ((plan.stats, 3 * 105), (plan.grads, 105)):
        assert sp.n_chunks > 1 and sp.tiles > 1 and inner % sp.block != 0, sp
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    y = call(group_norm_silu_triton, inp, groups, block=16, programs=8)
    y_ref, want = oracle(**inp, num_groups=groups, grad_out=dy)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)
    got = grads_of(y, inp, dy)
    for k in ARGS:
        assert_scaled_close(got[k], want[k], 2e-5, k)


def test_plan_fills_gpu_at_batch_one():
    """At B=1 with 32 groups the statistics pass is split into ~target programs, not 32."""
    sp = gns._split(outer=32, inner=2 * 96 * 112 * 80, block=1024, programs=8 * 132)
    assert 32 * sp.n_chunks >= 1000
    assert sp.chunk * sp.n_chunks >= 2 * 96 * 112 * 80 > sp.chunk * (sp.n_chunks - 1)
    tiny = gns._split(outer=64, inner=40, block=1024, programs=1056)
    assert (tiny.block, tiny.tiles, tiny.n_chunks) == (64, 1, 1)


@needs_triton
def test_statistics_stable_for_offset_inputs():
    """x = 1000 + N(0, 1): a one-pass E[x^2] - E[x]^2 in fp32 loses the variance; Welford/Chan does not."""
    shape, groups = (1, 4, 6, 7, 5), 2
    inp = with_grad(make_inputs(shape, seed=6))
    with torch.no_grad():
        inp["x"].add_(1000.0)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    y = call(group_norm_silu_triton, inp, groups, block=16, programs=8)
    y_ref, want = oracle(**inp, num_groups=groups, grad_out=dy)
    # inputs carry ulp(1000) = 6e-5 of absolute precision; normalized errors stay near that
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=5e-4, atol=5e-4)
    got = grads_of(y, inp, dy)
    for k in ARGS:
        assert_scaled_close(got[k], want[k], 1e-3, k)
    # the test discriminates: the naive fp32 variance of this data is visibly wrong
    xg = inp["x"].detach().float().reshape(1, groups, -1)
    naive = (xg * xg).mean(-1) - xg.mean(-1) ** 2
    exact = inp["x"].detach().double().reshape(1, groups, -1).var(-1, unbiased=False)
    assert ((naive.double() - exact).abs() / exact).max() > 1e-2


@needs_triton
def test_eps_constant_input_and_large_eps():
    # constant groups: var = 0, x_hat = 0, output = SiLU(bias * (1 + scale) + shift), grads finite
    inp = with_grad(make_inputs((2, 4, 3, 5), seed=8))
    with torch.no_grad():
        inp["x"].fill_(3.0)
    dy = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    y = call(group_norm_silu_triton, inp, 2)
    y_ref, want = oracle(**inp, num_groups=2, grad_out=dy)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-6, atol=1e-6)
    got = grads_of(y, inp, dy)
    for k in ARGS:
        assert torch.isfinite(got[k]).all(), k
        assert_scaled_close(got[k], want[k], 1e-4, k)
    # eps comparable to the variance: must sit inside the square root, as in nn.GroupNorm
    inp = make_inputs((2, 4, 3, 5), seed=10)
    inp["x"] = inp["x"] * 0.3
    y = call(group_norm_silu_triton, inp, 2, eps=0.5)
    y_ref, _ = oracle(**inp, num_groups=2, eps=0.5)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)
    y_small_eps, _ = oracle(**inp, num_groups=2, eps=1e-5)
    assert (y_small_eps - y_ref).abs().max() > 1e-2


@needs_triton
def test_noncontiguous_x_and_chunked_modulation():
    """x transposed in memory; scale/shift are strided views from one (B, 2C) embedding (DiT style)."""
    B, C = 2, 6
    g = torch.Generator().manual_seed(11)
    x = torch.randn(B, C, 7, 5, generator=g).transpose(2, 3).to(DEVICE).requires_grad_()
    emb = (0.5 * torch.randn(B, 2 * C, generator=g)).to(DEVICE).requires_grad_()
    scale, shift = emb.chunk(2, dim=1)
    assert not x.is_contiguous() and not scale.is_contiguous()
    dy = torch.randn(x.shape, generator=g).to(DEVICE)
    y = group_norm_silu_triton(x, 3, None, None, 1e-5, scale, shift)
    gx, gemb = torch.autograd.grad(y, [x, emb], dy)
    x64, e64 = (t.detach().double().cpu().requires_grad_() for t in (x, emb))
    s64, t64 = e64.chunk(2, dim=1)
    y64 = torch.nn.SiLU()(torch.nn.GroupNorm(3, C, affine=False).double()(x64) * (1 + s64[..., None, None])
                          + t64[..., None, None])
    wx, wemb = torch.autograd.grad(y64, [x64, e64], dy.double().cpu())
    torch.testing.assert_close(y.double().cpu(), y64, rtol=1e-5, atol=1e-5)
    assert_scaled_close(gx, wx, 2e-5, "x")
    assert_scaled_close(gemb, wemb, 2e-5, "emb")


@needs_triton
def test_broadcast_shaped_modulation_and_float64_fallback():
    inp = with_grad(make_inputs((2, 4, 3, 4, 5), seed=12))
    s5 = inp["scale"].detach()[:, :, None, None, None].clone().requires_grad_()
    y = group_norm_silu_triton(inp["x"], 2, inp["weight"], inp["bias"], 1e-5, s5, inp["shift"])
    y2 = call(group_norm_silu_triton, inp, 2)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    (gs5,) = torch.autograd.grad(y.sum(), [s5])
    (gs2,) = torch.autograd.grad(y2.sum(), [inp["scale"]])
    assert gs5.shape == s5.shape
    torch.testing.assert_close(gs5.reshape(gs2.shape), gs2)
    # float64 is outside the kernels' fp32 math: the reference answers, bit for bit
    inp64 = make_inputs((2, 4, 5), dtype=torch.float64)
    torch.testing.assert_close(call(group_norm_silu_triton, inp64, 2), call(group_norm_silu_reference, inp64, 2),
                               rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# failure paths
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [group_norm_silu_reference, group_norm_silu_triton], ids=["reference", "triton"])
@pytest.mark.parametrize("case,match", [
    ("groups_not_dividing", "divisible"),
    ("zero_groups", "divisible"),
    ("scale_wrong_shape", "scale must have shape"),
    ("shift_per_channel_only", "shift must have shape"),
    ("weight_wrong_shape", "weight must have shape"),
    ("no_spatial_dim", "at least one spatial"),
    ("integer_input", "floating-point"),
])
def test_invalid_arguments_raise(fn, case, match):
    if fn is group_norm_silu_triton and not gns.HAS_TRITON:
        pytest.skip("triton not installed")
    inp = make_inputs((2, 6, 4, 5))
    groups = 4 if case == "groups_not_dividing" else (0 if case == "zero_groups" else 3)
    if case == "scale_wrong_shape":
        inp["scale"] = torch.zeros(2, 7, device=DEVICE)
    elif case == "shift_per_channel_only":
        inp["shift"] = torch.zeros(6, device=DEVICE)
    elif case == "weight_wrong_shape":
        inp["weight"] = torch.ones(6, 1, device=DEVICE)
    elif case == "no_spatial_dim":
        inp["x"] = inp["x"][:, :, 0, 0]
    elif case == "integer_input":
        inp["x"] = inp["x"].to(torch.int32)
    with pytest.raises(ValueError, match=match):
        call(fn, inp, groups)


@needs_triton
def test_invalid_block_raises():
    inp = make_inputs((1, 2, 4, 4))
    with pytest.raises(ValueError, match="power of two"):
        call(group_norm_silu_triton, inp, 1, block=24)


# ----------------------------------------------------------------------------------------------
# facade and module wrapper
# ----------------------------------------------------------------------------------------------
@needs_triton
def test_facade_dispatches_to_triton_and_to_reference_when_disabled(monkeypatch):
    calls: list[str] = []
    real_triton, real_ref = gns.group_norm_silu_triton, gns.group_norm_silu_reference
    monkeypatch.setattr(gns, "group_norm_silu_triton", lambda *a: calls.append("triton") or real_triton(*a))
    monkeypatch.setattr(gns, "group_norm_silu_reference", lambda *a: calls.append("reference") or real_ref(*a))
    inp = make_inputs((1, 4, 3, 5))
    y_ref, _ = oracle(**inp, num_groups=2)
    try:
        ops.set_triton_enabled(None)
        y = call(ops.group_norm_silu, inp, 2)
        assert calls == ["triton"]
        torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)
        ops.set_triton_enabled(False)
        y = call(ops.group_norm_silu, inp, 2)
        assert calls == ["triton", "reference"]
        torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)
        ops.set_triton_enabled(None)
        monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
        call(ops.group_norm_silu, inp, 2)
        assert calls == ["triton", "reference", "reference"]
    finally:
        ops.set_triton_enabled(None)


def test_module_wrapper_parameters_forward_and_grads():
    mod = GroupNormSiLU(2, 6, eps=1e-4).to(DEVICE)
    assert mod.weight.shape == (6,) and mod.bias.shape == (6,)
    assert "2, 6, eps=0.0001, affine=True" in repr(mod)
    with torch.no_grad():
        mod.weight.copy_(torch.linspace(0.5, 1.5, 6))
        mod.bias.copy_(torch.linspace(-0.3, 0.3, 6))
    inp = make_inputs((2, 6, 3, 4, 2), seed=13)
    y = mod(inp["x"], inp["scale"], inp["shift"])
    y_ref, _ = oracle(inp["x"], 2, mod.weight, mod.bias, 1e-4, inp["scale"], inp["shift"])
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0
    assert mod.bias.grad is not None and mod.bias.grad.abs().sum() > 0

    plain = GroupNormSiLU(3, 6, affine=False)
    assert plain.weight is None and plain.bias is None and len(list(plain.parameters())) == 0
    x = inp["x"].cpu()
    torch.testing.assert_close(plain(x).double(), oracle(x, 3)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        GroupNormSiLU(4, 6)
