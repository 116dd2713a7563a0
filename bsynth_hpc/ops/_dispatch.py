"""Choose the implementation of a fast op: C++/CUDA extension, Triton kernel or PyTorch reference.

Rules (docs/design.md, "One facade for the fast ops"):
  * BSYNTH_DISABLE_TRITON=1 (or `set_triton_enabled(False)`) -> always the reference;
  * tensors on CUDA and Triton importable                     -> Triton;
  * TRITON_INTERPRET=1 and Triton importable                  -> Triton, also on CPU tensors
    (the interpreter runs the kernel code on the CPU: this is how CI tests the kernels);
  * anything else (CPU without the interpreter)                -> the reference.

Extension ops (`bsynth_hpc._C`, built from csrc/ with BSYNTH_BUILD_EXT=1) follow `use_ext`:
  * BSYNTH_DISABLE_EXT=1 (or `set_ext_enabled(False)`)         -> never the extension;
  * all tensors on one device type whose dispatch key (CPU, CUDA) has a kernel registered for
    the op, and a dtype that kernel supports                   -> the extension;
  * anything else                                              -> the next choice (the reference).
"""
from __future__ import annotations

import functools
import os

import torch

_override: bool | None = None
_ext_override: bool | None = None
_ext_kernels: dict[tuple[str, str], bool] = {}  # (operator, dispatch key) -> kernel registered (probe_ext_kernels)


def set_triton_enabled(enabled: bool | None) -> None:
    """Force Triton on/off from config (None restores the environment-driven default)."""
    global _override
    _override = enabled


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the triton package imports."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - platform without triton
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_disabled() -> bool:
    if _override is not None:
        return not _override
    return os.environ.get("BSYNTH_DISABLE_TRITON", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path should run for these input tensors."""
    if triton_disabled() or not triton_available():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreter_enabled() and not any(t.is_cuda for t in tensors)


def set_ext_enabled(enabled: bool | None) -> None:
    """Force the csrc extension ops on/off (None restores the environment-driven default)."""
    global _ext_override
    _ext_override = enabled


def ext_disabled() -> bool:
    if _ext_override is not None:
        return not _ext_override
    return os.environ.get("BSYNTH_DISABLE_EXT", "0") == "1"


def probe_ext_kernels(op: str) -> bool:
    """Record for which dispatch keys operator `op` ("bsynth::name") has a kernel; the extension's Python side
    calls this once after loading `bsynth_hpc._C` (a plain lookup later, which torch.compile can trace).
    Returns whether the operator exists at all."""
    for key in ("CPU", "CUDA"):
        try:
            _ext_kernels[(op, key)] = bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
        except RuntimeError:  # the operator is not registered
            _ext_kernels[(op, key)] = False
    return any(_ext_kernels[(op, key)] for key in ("CPU", "CUDA"))


def has_ext_kernel(op: str, dispatch_key: str) -> bool:
    """Whether extension operator `op` has a kernel for `dispatch_key` ("CPU", "CUDA"), as probed at load time."""
    return _ext_kernels.get((op, dispatch_key), False)


def use_ext(op: str, dtypes: dict[str, tuple[torch.dtype, ...]], *tensors: torch.Tensor) -> bool:
    """Whether the extension op `op` should run for these tensors; `dtypes` maps a dispatch key to the
    dtypes its kernel supports (every tensor must share one device type and one supported dtype)."""
    if ext_disabled() or not tensors:
        return False
    device_types = {t.device.type for t in tensors}
    dtype_set = {t.dtype for t in tensors}
    if len(device_types) != 1 or len(dtype_set) != 1:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_types.pop())
    if key is None or dtype_set.pop() not in dtypes.get(key, ()):
        return False
    return has_ext_kernel(op, key)
