"""argparse ``type=`` validators shared by every `bsynth` subcommand.

A bad value is refused by argparse itself (exit 2, one line naming the option and the fix) before
any model, store or GPU is touched; nothing is silently coerced (``--batch-size 0`` used to become
1, ``--tile 0`` a whole-volume decode, ``--steps 0`` the run's default).
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["int_at_least", "float_at_least", "existing_file", "output_folder", "device_name", "tile_size"]


def _at_least(convert: Callable[[str], float], noun: str, minimum: float, what: str,
              finite: bool = False) -> Callable[[str], Any]:
    """A parser of ``noun`` values >= ``minimum``; ``what`` says why in the message."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if finite and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum:
            why = f" ({what})" if what else ""
            raise argparse.ArgumentTypeError(f"{value:g} is too small: give {noun} >= {minimum:g}{why}")
        return value

    parse.__name__ = f"{noun.split()[-1]}>={minimum:g}"
    return parse


def int_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """An integer >= ``minimum`` (``what`` says why, e.g. "one sample per condition")."""
    return _at_least(int, "an integer", minimum, what)


def float_at_least(minimum: float, what: str = "") -> Callable[[str], float]:
    """A finite float >= ``minimum``."""
    return _at_least(float, "a number", minimum, what, finite=True)


def tile_size(text: str) -> int:
    """A decode tile edge in latent voxels (>= 2: a tile must overlap its neighbours)."""
    return int_at_least(2, "latent voxels per tile edge; e.g. 16 for 192x224x160 on a 6 GB card")(text)


def existing_file(text: str) -> str:
    """A path to an existing regular file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file: give the file's path")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} not found: check the path")
    return text


def output_folder(text: str) -> str:
    """A folder to write into: it may exist (as a folder) or not yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a folder: give a folder path "
                                         "(it is created if missing)")
    return text


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str | None:
    """``auto`` (None: CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, with the GPU checked to
    exist now rather than after the models have loaded."""
    if text == "auto":
        return None
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: give auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.split(":")[1]) if ":" in text else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: this machine has no usable CUDA GPU (torch "
                                             f"{torch.__version__}); use --device cpu or run on a GPU node")
        if index >= count:
            raise argparse.ArgumentTypeError(f"{text}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})")
    return text
