"""Depthwise 3D convolution: the nn modules, the `ops.depthwise_conv3d` dispatch, and the csrc extension
(`bsynth_hpc._C`: C++ CPU kernel, CUDA kernel) against `F.conv3d(groups=C)` as the independent reference.

Extension tests skip when the extension is not built (they name the build command) and FAIL instead under
BSYNTH_REQUIRE_EXT=1, which CI sets after building it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bsynth_hpc import ops
from bsynth_hpc.nn import DepthwiseConv3d, SeparableConv3d
from bsynth_hpc.ops import _dispatch
from bsynth_hpc.ops import depthwise_ext as dw

REQUIRE_EXT = os.environ.get("BSYNTH_REQUIRE_EXT") == "1"
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _need_ext(device_type: str = "cpu") -> None:
    """Skip (or fail under BSYNTH_REQUIRE_EXT=1) unless the extension has a kernel for `device_type`."""
    if dw.available(device_type):
        return
    why = (f"bsynth_hpc._C has no {device_type} depthwise_conv3d kernel ({dw.load_error() or 'not built for it'}); "
           f"build it with `{dw.BUILD_COMMAND}`")
    if REQUIRE_EXT and device_type == "cpu":
        pytest.fail(why)
    pytest.skip(why)


def _case(shape, channels, kernel=3, dtype=torch.float32, device="cpu", seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((shape[0], channels, *shape[1:]), generator=g, dtype=torch.float64)
    w = torch.randn((channels, 1, kernel, kernel, kernel), generator=g, dtype=torch.float64) / kernel ** 1.5
    b = torch.randn((channels,), generator=g, dtype=torch.float64) if bias else None
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    return cast(x), cast(w), cast(b)


SHAPES = [(2, 5, 7, 6), (1, 9, 4, 11)]  # (B, X, Y, Z): odd and mixed sizes


# --------------------------------------------------------------------------- modules (any install)

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 0)])
def test_depthwise_module_matches_conv3d(shape, stride, padding):
    torch.manual_seed(0)
    mod = DepthwiseConv3d(3, kernel_size=3, stride=stride, padding=padding)
    ref = torch.nn.Conv3d(3, 3, 3, stride=stride, padding=padding, groups=3)
    ref.load_state_dict(mod.state_dict())
    x = torch.randn(shape[0], 3, *shape[1:], requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = mod(x), ref(x_ref)
    assert out.shape == out_ref.shape
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mod.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mod.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_separable_module_is_depthwise_then_pointwise(stride, padding):
    torch.manual_seed(1)
    mod = SeparableConv3d(4, 6, kernel_size=3, stride=stride, padding=padding)
    x = torch.randn(2, 4, 7, 5, 6)
    dw_ref = F.conv3d(x, mod.depthwise.weight, None, stride, padding, 1, 4)
    expect = F.conv3d(dw_ref, mod.pointwise.weight, mod.pointwise.bias)
    out = mod(x)
    assert out.shape == expect.shape == (2, 6, *[(n + 2 * padding - 3) // stride + 1 for n in (7, 5, 6)])
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    assert mod.depthwise.bias is None and mod.pointwise.bias is not None


def test_depthwise_module_init_matches_conv3d_bounds():
    mod = DepthwiseConv3d(64, kernel_size=3)
    ref = torch.nn.Conv3d(64, 64, 3, padding=1, groups=64)
    assert mod.weight.shape == ref.weight.shape and mod.bias.shape == ref.bias.shape
    bound = 1.0 / 27 ** 0.5  # kaiming_uniform(a=sqrt(5)) and the bias both give 1/sqrt(fan_in), fan_in = 27
    assert mod.weight.abs().max() <= bound and mod.bias.abs().max() <= bound
    assert mod.weight.abs().max() > 0.8 * bound


# --------------------------------------------------------------------------- dispatch

def test_fallback_when_disabled_equals_conv3d(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_EXT", "1")
    assert _dispatch.ext_disabled()
    x, w, b = _case((1, 5, 4, 3), 3)
    assert not _dispatch.use_ext(dw.OP, dw.DTYPES, x, w, b)
    torch.testing.assert_close(ops.depthwise_conv3d(x, w, b, 2, 1), F.conv3d(x, w, b, 2, 1, 1, 3))


def test_dispatch_rules_per_dtype_and_device(monkeypatch):
    monkeypatch.delenv("BSYNTH_DISABLE_EXT", raising=False)
    x, w, b = _case((1, 5, 4, 3), 3)
    built = dw.available("cpu")
    assert _dispatch.use_ext(dw.OP, dw.DTYPES, x, w, b) == built
    assert not _dispatch.use_ext(dw.OP, dw.DTYPES, x.bfloat16(), w.bfloat16())  # no bf16 CPU kernel
    assert not _dispatch.use_ext(dw.OP, dw.DTYPES, x, w.double())  # mixed dtypes -> reference
    assert not _dispatch.use_ext("bsynth::no_such_op", dw.DTYPES, x, w)
    _dispatch.set_ext_enabled(False)
    try:
        assert not _dispatch.use_ext(dw.OP, dw.DTYPES, x, w, b)
    finally:
        _dispatch.set_ext_enabled(None)


def test_ops_facade_calls_the_extension_where_built(monkeypatch):
    _need_ext("cpu")
    monkeypatch.delenv("BSYNTH_DISABLE_EXT", raising=False)
    calls = []
    real = dw.depthwise_conv3d_ext
    monkeypatch.setattr(dw, "depthwise_conv3d_ext", lambda *a: calls.append(1) or real(*a))
    x, w, b = _case((1, 5, 4, 3), 3)
    torch.testing.assert_close(ops.depthwise_conv3d(x, w, b), F.conv3d(x, w, b, 1, 1, 1, 3), rtol=1e-5, atol=1e-5)
    assert calls == [1]
    ops.depthwise_conv3d(x.bfloat16(), w.bfloat16(), b.bfloat16())  # unsupported dtype: F.conv3d, no ext call
    assert calls == [1]


def test_bad_geometry_is_rejected():
    x, w, _ = _case((1, 5, 4, 3), 3)
    with pytest.raises(ValueError):
        ops.depthwise_conv3d(x, w, stride=(1, 2))


# --------------------------------------------------------------------------- the C++ extension

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [1, 3, 17])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 0)])
def test_ext_forward_backward_match_conv3d(shape, channels, stride, padding):
    _need_ext("cpu")
    x, w, b = _case(shape, channels, seed=channels)
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    out = dw.depthwise_conv3d_ext(x, w, b, [stride] * 3, [padding] * 3)
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    ref = F.conv3d(xr, wr, br, stride, padding, 1, channels)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.grad, br.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,padding", [(5, (1, 2, 1), (2, 0, 1)), (1, (2, 2, 2), (0, 0, 0)),
                                                   (3, (2, 1, 2), (3, 1, 0))])
def test_ext_other_kernels_anisotropic_geometry(kernel, stride, padding):
    _need_ext("cpu")
    x, w, b = _case((2, 9, 6, 7), 5, kernel=kernel, dtype=torch.float64)
    out = dw.depthwise_conv3d_ext(x, w, b, list(stride), list(padding))
    torch.testing.assert_close(out, F.conv3d(x, w, b, stride, padding, 1, 5))


def test_ext_non_contiguous_input():
    _need_ext("cpu")
    x, w, b = _case((2, 6, 5, 7), 4, dtype=torch.float64)
    xt = x.transpose(2, 4)  # (B, C, 7, 5, 6), not contiguous
    torch.testing.assert_close(dw.depthwise_conv3d_ext(xt, w, b, [1] * 3, [1] * 3), F.conv3d(xt, w, b, 1, 1, 1, 4))
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(dw.depthwise_conv3d_ext(xcl, w, b, [2] * 3, [1] * 3), F.conv3d(x, w, b, 2, 1, 1, 4))


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_ext_gradcheck_and_gradgradcheck_float64(stride, padding):
    _need_ext("cpu")
    x, w, b = _case((1, 5, 4, 3), 2, dtype=torch.float64)
    args = tuple(t.requires_grad_(True) for t in (x, w, b))
    fn = (lambda x_, w_, b_: dw.depthwise_conv3d_ext(x_, w_, b_, [stride] * 3, [padding] * 3))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_ext_fake_tensor_shape_inference():
    _need_ext("cpu")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 64, 33, 17, 20)
        w = torch.empty(64, 1, 3, 3, 3)
        out = torch.ops.bsynth.depthwise_conv3d(x, w, None, [2, 2, 2], [1, 1, 1])
        gx = torch.ops.bsynth.depthwise_conv3d_backward_input(out, w, [33, 17, 20], [2, 2, 2], [1, 1, 1])
        gw, gb = torch.ops.bsynth.depthwise_conv3d_backward_weight(out, x, [3, 3, 3], [2, 2, 2], [1, 1, 1])
    assert tuple(out.shape) == (4, 64, 17, 9, 10)
    assert tuple(gx.shape) == tuple(x.shape) and tuple(gw.shape) == tuple(w.shape) and tuple(gb.shape) == (64,)
    with torch.device("meta"):
        meta = ops.depthwise_conv3d(torch.empty(1, 3, 5, 7, 6), torch.empty(3, 1, 3, 3, 3), stride=2, padding=0)
    assert tuple(meta.shape) == (1, 3, 2, 3, 2)


def test_ext_opcheck():
    """torch.library.opcheck: schema, fake kernel, autograd registration and dispatch are consistent."""
    _need_ext("cpu")
    x, w, b = _case((1, 5, 4, 3), 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.bsynth.depthwise_conv3d.default,
                          (x.requires_grad_(True), w.requires_grad_(True), b, [2, 1, 2], [1, 0, 1]))
    out = F.conv3d(x.detach(), w.detach(), None, (2, 1, 2), (1, 0, 1), 1, 3)
    torch.library.opcheck(torch.ops.bsynth.depthwise_conv3d_backward_input.default,
                          (out, w.detach(), [5, 4, 3], [2, 1, 2], [1, 0, 1]))
    torch.library.opcheck(torch.ops.bsynth.depthwise_conv3d_backward_weight.default,
                          (out, x.detach(), [3, 3, 3], [2, 1, 2], [1, 0, 1]))


def test_ext_torch_compile_fullgraph():
    _need_ext("cpu")
    mod = SeparableConv3d(3, 4, stride=2)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 7, 5, 6, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = F.conv3d(F.conv3d(x_ref, mod.depthwise.weight, None, 2, 1, 1, 3), mod.pointwise.weight, mod.pointwise.bias)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the CUDA kernel

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_cuda_ext_matches_cudnn(dtype, tol, stride, padding):
    _need_ext("cuda")
    x, w, b = _case((2, 9, 4, 11), 17, dtype=dtype, device="cuda")
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    out = dw.depthwise_conv3d_ext(x, w, b, [stride] * 3, [padding] * 3)
    xr, wr, br = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    ref = F.conv3d(xr, wr, br, stride, padding, 1, 17)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


def _nvcc_compile_command(source: Path, output: Path, archs: tuple[int, ...]) -> list[str]:
    from torch.utils import cpp_extension

    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    includes = [f"-I{p}" for p in cpp_extension.include_paths(device_type="cuda")]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]

    return [nvcc, "-c", str(source), "-o", str(output), "-std=c++20", "-O3", *cpp_extension.COMMON_NVCC_FLAGS,
            *gencode, *includes, f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=_C",
            "-Xcompiler", "-fPIC", "-Werror", "all-warnings"]


def test_cuda_source_compiles_with_nvcc(tmp_path):
    """`nvcc -c` compile-checks csrc/*.cu for sm_90 (the build compiles sm_80 and sm_90) with warnings as errors."""
    from torch.utils import cpp_extension

    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    if not os.path.exists(nvcc) or torch.version.cuda is None:
        if REQUIRE_EXT and shutil.which("nvcc"):
            pytest.fail("nvcc exists but torch is not a CUDA build or CUDA_HOME is unset")
        pytest.skip("nvcc or a CUDA build of torch is absent: the CUDA sources cannot be compile-checked here")
    for source in sorted(CSRC.glob("*.cu")):
        cmd = _nvcc_compile_command(source, tmp_path / (source.stem + ".o"), (90,))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr[-4000:]}"
        assert (tmp_path / (source.stem + ".o")).stat().st_size > 0


def test_benchmark_quick_writes_json(tmp_path):
    """`bsynth bench dwconv` runs end to end (tiny shapes, one iteration) and records the comparison."""
    import json

    from benchmarks import depthwise_conv3d as bench

    assert bench.main(["--device", "cpu", "--quick", "--warmup", "0", "--iters", "1", "--stride", "2",
                       "--out-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "depthwise_conv3d_cpu.json").read_text())
    assert payload["complete"] and len(payload["results"]) == len(bench.QUICK_SHAPES)
    for row in payload["results"]:
        assert row["conv3d"]["status"] == "ok" and row["output_shape"][2] == (row["shape"][2] + 1) // 2
        if dw.available("cpu"):
            assert row["ext"]["status"] == "ok" and max(row["max_abs_diff"].values()) < 1e-3
        else:
            assert row["ext"]["status"] == "missing"
