"""Choose the implementation of a fast op: Triton kernel or PyTorch reference.

Rules (docs/design.md, "One facade for the fast ops"):
  * BSYNTH_DISABLE_TRITON=1 (or `set_triton_enabled(False)`) -> always the reference;
  * tensors on CUDA and Triton importable                     -> Triton;
  * TRITON_INTERPRET=1 and Triton importable                  -> Triton, also on CPU tensors
    (the interpreter runs the kernel code on the CPU: this is how CI tests the kernels);
  * anything else (CPU without the interpreter)                -> the reference.
"""
from __future__ import annotations

import functools
import os

import torch

_override: bool | None = None


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
