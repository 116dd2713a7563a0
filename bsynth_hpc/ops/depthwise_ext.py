"""Python side of the csrc depthwise 3D convolution ops (`torch.ops.bsynth.depthwise_conv3d*`).

`bsynth_hpc._C` (built from csrc/ with BSYNTH_BUILD_EXT=1) defines three operators with
`TORCH_LIBRARY(bsynth, m)` and their CPU (C++/OpenMP) and CUDA kernels. This module loads it where it
is built and registers, for each operator, a fake kernel (shape inference: FakeTensor, torch.compile,
meta tensors) and an autograd formula. The three operators are closed under differentiation, so
double backward (gradient penalties) works too, using

    <F(x, w), g> = <x, Bi(g, w)> = <w, Bw(g, x)>

with F the forward, Bi the input gradient and Bw the weight gradient. `depthwise_conv3d_reference`
(`F.conv3d(groups=C)`) is the fallback and the tests' independent reference.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._dispatch import has_ext_kernel, probe_ext_kernels

__all__ = ["BUILD_COMMAND", "DTYPES", "OP", "available", "depthwise_conv3d_ext", "depthwise_conv3d_reference",
           "load_error", "output_size", "triple"]

OP = "bsynth::depthwise_conv3d"
# dtypes each kernel is compiled for (csrc/depthwise_conv3d.cpp, csrc/depthwise_conv3d_cuda.cu).
DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "CPU": (torch.float32, torch.float64),
    "CUDA": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
BUILD_COMMAND = "BSYNTH_BUILD_EXT=1 .venv/bin/pip install --no-deps --no-build-isolation -e ."

try:
    from .. import _C  # noqa: F401  (loading the library runs its TORCH_LIBRARY registrations)
    _LOAD_ERROR: str | None = None
except ImportError as exc:  # not built (the default install) or built against another torch
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def load_error() -> str | None:
    """Why `bsynth_hpc._C` did not load (None when it did)."""
    return _LOAD_ERROR


def available(device_type: str | None = None) -> bool:
    """Whether the extension is loaded and, for `device_type` ("cpu", "cuda"), has a kernel there."""
    if _LOAD_ERROR is not None:
        return False
    if device_type is None:
        return True
    return has_ext_kernel(OP, {"cpu": "CPU", "cuda": "CUDA"}[device_type])


def triple(value: int | Sequence[int], name: str = "value") -> list[int]:
    """An int or a 3-sequence of ints as a list of three ints."""
    values = [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"depthwise_conv3d: {name} needs 1 or 3 values, got {value!r}")
    return values


def output_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                padding: Sequence[int]) -> list[int]:
    """Spatial output size of a convolution: floor((n + 2p - k) / s) + 1 per dimension."""
    out = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding)]
    if min(out) < 1:
        raise ValueError(f"depthwise_conv3d: input {list(size)} with kernel {list(kernel)}, padding "
                         f"{list(padding)} gives an empty output {out}")
    return out


def depthwise_conv3d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """The PyTorch path: `F.conv3d` with groups = channels (cuDNN on GPU, MKLDNN on CPU)."""
    return F.conv3d(x, weight, bias, tuple(stride), tuple(padding), 1, x.shape[1])


def depthwise_conv3d_ext(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """The extension path: `torch.ops.bsynth.depthwise_conv3d` (differentiable)."""
    return torch.ops.bsynth.depthwise_conv3d(x, weight, bias, list(stride), list(padding))


def _register() -> None:
    """Fake kernels and autograd formulas for the three operators (only when `_C` is loaded)."""
    lib = torch.ops.bsynth

    @torch.library.register_fake("bsynth::depthwise_conv3d")
    def _fwd_fake(x, weight, bias, stride, padding):
        torch._check(x.dim() == 5 and weight.dim() == 5, lambda: "depthwise_conv3d: 5-D input and weight")
        torch._check(weight.shape[0] == x.shape[1] and weight.shape[1] == 1,
                     lambda: "depthwise_conv3d: weight must be (C, 1, kx, ky, kz)")
        out = output_size(x.shape[2:], weight.shape[2:], stride, padding)
        return x.new_empty((x.shape[0], x.shape[1], *out))

    @torch.library.register_fake("bsynth::depthwise_conv3d_backward_input")
    def _bi_fake(grad_output, weight, input_size, stride, padding):
        return grad_output.new_empty((grad_output.shape[0], grad_output.shape[1], *input_size))

    @torch.library.register_fake("bsynth::depthwise_conv3d_backward_weight")
    def _bw_fake(grad_output, x, kernel_size, stride, padding):
        return (grad_output.new_empty((x.shape[1], 1, *kernel_size)), grad_output.new_empty((x.shape[1],)))

    def _fwd_setup(ctx, inputs, output):
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry = (list(stride), list(padding))

    def _fwd_backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = lib.depthwise_conv3d_backward_input(grad, weight, list(x.shape[2:]), stride, padding)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw, gb = lib.depthwise_conv3d_backward_weight(grad, x, list(weight.shape[2:]), stride, padding)
        return gx, gw, gb if ctx.needs_input_grad[2] else None, None, None

    def _bi_setup(ctx, inputs, output):
        grad_output, weight, input_size, stride, padding = inputs
        ctx.save_for_backward(grad_output, weight)
        ctx.geometry = (list(stride), list(padding))

    def _bi_backward(ctx, gg):  # d/d(grad_output) <gg, Bi(g, w)> = F(gg, w); d/dw = Bw(g, gg)
        grad_output, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        dg = dw = None
        if ctx.needs_input_grad[0]:
            dg = lib.depthwise_conv3d(gg, weight, None, stride, padding)
        if ctx.needs_input_grad[1]:
            dw = lib.depthwise_conv3d_backward_weight(grad_output, gg, list(weight.shape[2:]), stride, padding)[0]
        return dg, dw, None, None, None

    def _bw_setup(ctx, inputs, output):
        grad_output, x, kernel_size, stride, padding = inputs
        ctx.save_for_backward(grad_output, x)
        ctx.geometry = (list(stride), list(padding))

    def _bw_backward(ctx, ggw, ggb):  # d/dg = F(x, ggw) + ggb (broadcast); d/dx = Bi(g, ggw)
        grad_output, x = ctx.saved_tensors
        stride, padding = ctx.geometry
        dg = dx = None
        if ctx.needs_input_grad[0]:
            dg = lib.depthwise_conv3d(x, ggw, ggb, stride, padding)
        if ctx.needs_input_grad[1]:
            dx = lib.depthwise_conv3d_backward_input(grad_output, ggw, list(x.shape[2:]), stride, padding)
        return dg, dx, None, None, None

    torch.library.register_autograd("bsynth::depthwise_conv3d", _fwd_backward, setup_context=_fwd_setup)
    torch.library.register_autograd("bsynth::depthwise_conv3d_backward_input", _bi_backward,
                                    setup_context=_bi_setup)
    torch.library.register_autograd("bsynth::depthwise_conv3d_backward_weight", _bw_backward,
                                    setup_context=_bw_setup)


if _LOAD_ERROR is None:
    _register()
    probe_ext_kernels(OP)
