"""One Triton kernel launch as data: kernel, grid, arguments, constexprs, warps and stages.

The wrappers in this package build their launches with a `plan_*` function and then call them;
the ahead-of-time compile check (``benchmarks/kernels_compile.py``) builds the same launches on
meta tensors and compiles them for sm_90/sm_80 without a GPU. Both read the one launch decision,
so the check sees exactly the signature, specialisation and launch settings a GPU would run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Launch", "device_arch", "device_sm_count"]


@dataclass(frozen=True)
class Launch:
    """``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)``, ready to run."""

    kernel: Any                      # a triton JITFunction (or InterpretedFunction under TRITON_INTERPRET)
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3              # triton's default

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return getattr(fn, "__name__", repr(fn))

    @property
    def programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= int(g)
        return n

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)


@functools.lru_cache(maxsize=16)
def _properties(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return 10 * props.major + props.minor, props.multi_processor_count


def _index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def device_arch(t: torch.Tensor) -> int | None:
    """Compute capability as major*10 + minor of a CUDA tensor's device (90 for H100), else None."""
    return _properties(_index(t))[0] if t.is_cuda else None


def device_sm_count(t: torch.Tensor) -> int | None:
    """Number of SMs of a CUDA tensor's device, else None (CPU interpreter, meta tensors)."""
    return _properties(_index(t))[1] if t.is_cuda else None
