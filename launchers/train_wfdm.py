#!/usr/bin/env python
"""``launchers/train.py`` for WFDM: STAGE defaults to the wfdm recipe's default_stage (wfdm-ldm)."""
from train import main

if __name__ == "__main__":
    raise SystemExit(main(recipe="wfdm"))
