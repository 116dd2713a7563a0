"""Test-wide settings.

Kernels run through the Triton interpreter on CPU unless BSYNTH_TEST_GPU=1 (then the real
GPU kernels run). The variable must be set before triton is imported anywhere.
"""
from __future__ import annotations

import os

if os.environ.get("BSYNTH_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
