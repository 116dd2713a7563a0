"""Test-wide settings.

Kernels run through the Triton interpreter on CPU unless BSYNTH_TEST_GPU=1 (then the real
GPU kernels run). The variable must be set before triton is imported anywhere.

The engine's test stages (``smoke-vaegan``, ``smoke-denoiser``) are a fixture, tests/smoke_recipe.py,
not part of the package: ``$BSYNTH_PLUGINS`` names it and tests/ is prepended to ``PYTHONPATH`` in
os.environ, so every subprocess (python -m, torchrun, the deepspeed launcher, mpiexec, sbatch/srun
with --export=ALL) registers it too; importing it here registers it (and its export factories) in
this process.
"""
from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("BSYNTH_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TESTS_DIR = str(Path(__file__).resolve().parent)
SMOKE_PLUGIN = "smoke_recipe"


def _add_smoke_plugin() -> None:
    """Put tests/ first on PYTHONPATH and ``smoke_recipe`` into $BSYNTH_PLUGINS (keeping what is there)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, *(p for p in paths if p != TESTS_DIR)])
    plugins = [m.strip() for m in os.environ.get("BSYNTH_PLUGINS", "").split(",") if m.strip()]
    if SMOKE_PLUGIN not in plugins:
        os.environ["BSYNTH_PLUGINS"] = ",".join([*plugins, SMOKE_PLUGIN])


_add_smoke_plugin()

import pytest  # noqa: E402

import smoke_recipe  # noqa: E402,F401  (registers the smoke recipe and its model factories in this process)


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
