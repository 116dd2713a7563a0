"""Test-wide settings.

Kernels run through the Triton interpreter on CPU unless BSYNTH_TEST_GPU=1 (then the real
GPU kernels run). The variable must be set before triton is imported anywhere.
"""
from __future__ import annotations

import os

if os.environ.get("BSYNTH_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _kernel_tests_see_the_default_dispatch(request, monkeypatch):
    """Kernel tests check that ``bsynth_hpc.ops`` dispatches to Triton: other modules' fixtures switch
    the references on process-wide (BSYNTH_DISABLE_TRITON=1 for whole-network tests), and under
    pytest-xdist any module may have run before in the same worker, so reset both switches here."""
    if not request.module.__name__.rsplit(".", 1)[-1].startswith("test_kernel_"):
        yield
        return
    from bsynth_hpc import ops

    monkeypatch.delenv("BSYNTH_DISABLE_TRITON", raising=False)
    ops.set_triton_enabled(None)
    yield
    ops.set_triton_enabled(None)
