#!/usr/bin/env python
"""``launchers/train.py`` for DiT-3D: STAGE defaults to the dit3d recipe's default_stage (dit3d)."""
from train import main

if __name__ == "__main__":
    raise SystemExit(main(recipe="dit3d"))
