"""The ``bsynth eval slice2d`` parser (argparse only: torch and the networks load when the command runs, in
:mod:`.evaluate`)."""
from __future__ import annotations

import argparse
from typing import Any

from ...argtypes import int_at_least, output_folder

__all__ = ["add_slice2d_eval_parser"]


def _run(args: argparse.Namespace) -> int:
    from .evaluate import cmd_eval_slice2d  # lazy: torch, Inception and the models (fast --help)

    return cmd_eval_slice2d(args)


def add_slice2d_eval_parser(ev: Any) -> None:
    """``bsynth eval slice2d`` on the eval subparsers."""
    p = ev.add_parser("slice2d", help="a slice2d (seeds 001/004) run: VAE SSIM/PSNR, FID, spectra, diversity, "
                                      "latent statistics, CFG sweep",
                      description="Seed 001 §IV on a slice recipe: SSIM/PSNR of VAE reconstructions and of generated "
                                  "slices against the real set, 2D Inception FID (per class too), reconstruction "
                                  "heatmaps, power spectra, pairwise diversity, latent channel statistics; for a "
                                  "conditional (004) run a CFG-scale sweep scored by a classifier trained on real "
                                  "slices.")
    p.add_argument("--store", required=True, help="the slice store (bsynth prep --slices-from)")
    p.add_argument("--vae-run", default=None, help="slice2d-vae run: reconstruction metrics and latent statistics")
    p.add_argument("--samples", default=None, help="a `bsynth sample slice2d` folder")
    p.add_argument("--ldm-run", default=None, help="a conditional slice2d-ldm run: the CFG sweep")
    p.add_argument("--split", default="test", help="real slices to compare with (default test)")
    p.add_argument("--max-real", type=int_at_least(2), default=200, help="real slices at most (001: 200)")
    p.add_argument("--inception-weights", default=None, help="InceptionV3 state dict (default $BSYNTH_WEIGHTS_DIR)")
    p.add_argument("--allow-random-features", action="store_true",
                   help="smoke tests: a random Inception network where no weights are found (the report says so)")
    p.add_argument("--cfg-scales", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="guidance scales to sweep")
    p.add_argument("--sweep-n", type=int_at_least(1), default=16, help="samples per class and scale")
    p.add_argument("--sweep-steps", type=int_at_least(1), default=None, help="DDIM steps (default the run's)")
    p.add_argument("--classifier-epochs", type=int_at_least(1), default=10)
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--out", required=True, type=output_folder)
    p.set_defaults(func=_run)
