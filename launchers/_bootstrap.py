"""Make ``bsynth_hpc`` importable when a launcher runs from a checkout that is not pip-installed."""
from __future__ import annotations

import sys
from pathlib import Path


def ensure_importable() -> None:
    try:
        import bsynth_hpc  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
