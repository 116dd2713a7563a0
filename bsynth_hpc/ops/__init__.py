"""The only place models call accelerated ops (shared/DESIGN.md).

Each op dispatches to the Triton kernel on CUDA (or under TRITON_INTERPRET=1) and to the
PyTorch reference elsewhere; see `_dispatch` for the rules. Models never import `kernels`.
"""
from __future__ import annotations

from ._dispatch import set_triton_enabled, triton_available, use_triton

__all__ = [
    "set_triton_enabled",
    "triton_available",
    "use_triton",
]
