"""The ``bsynth eval clinical`` parser (argparse only: torch and the networks load when the command runs,
in :mod:`.clinical`)."""
from __future__ import annotations

import argparse
from typing import Any

from ..argtypes import int_at_least, output_folder

__all__ = ["add_clinical_eval_parser"]


def _run(args: argparse.Namespace) -> int:
    from .clinical import cmd_eval_clinical  # lazy: torch and the clinical networks (fast --help)

    return cmd_eval_clinical(args)


def add_clinical_eval_parser(ev: Any) -> None:
    """``bsynth eval clinical`` on the eval subparsers."""
    p = ev.add_parser("clinical", help="a clinical (seed 002) run: consistency, independent ROI check, prior "
                                       "fidelity, FID/SSIM/LPIPS, timing",
                      description="Seed 002 §3 on a trained clinical recipe: Table 4 consistency of the frozen heads on "
                                  "real vs generated volumes, the independent ROI check on template regions, the "
                                  "controllability sweep, prior fidelity (KDE/PCA), FID/SSIM/LPIPS and timing.")
    p.add_argument("--run", required=True, help="the clinical (VAE-GAN) run")
    p.add_argument("--aux-run", required=True, help="the clinical-aux run (frozen heads)")
    p.add_argument("--store", required=True, help="the store the runs trained on")
    p.add_argument("--split", default="test", help="real volumes to compare with (default test)")
    p.add_argument("--prior-run", default=None, help="the clinical-prior run: generated c from the prior, fidelity")
    p.add_argument("--ablation-run", default=None, help="a clinical run trained without cls/reg losses (Table 4)")
    p.add_argument("--labels", default=None, help="label maps of the cohort (demo: COHORT/derivatives/demo-labels)")
    p.add_argument("--n", type=int_at_least(2), default=100, help="generated volumes (default 100)")
    p.add_argument("--prior-samples", type=int_at_least(2), default=1000, help="prior draws for fidelity")
    p.add_argument("--steps", type=int_at_least(1), default=None, help="prior sampling steps (default the run's)")
    p.add_argument("--solver", choices=["ddpm", "ddim"], default=None)
    p.add_argument("--sweep", type=int_at_least(3), default=5, help="ventricle ratios in the controllability sweep")
    p.add_argument("--timing-samples", type=int_at_least(1), default=5)
    p.add_argument("--per-plane", type=int_at_least(1), default=32, help="tri-planar slices per plane (002: 32)")
    p.add_argument("--weights", default=None, help="MedicalNet ResNet-18 checkpoint for the FID")
    p.add_argument("--lpips-weights", default=None, help="torchvision AlexNet state dict for LPIPS")
    p.add_argument("--allow-random-features", action="store_true",
                   help="smoke tests: random FID/LPIPS networks where no weights are found (the report says so)")
    p.add_argument("--batch-size", type=int_at_least(1), default=4)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--out", required=True, type=output_folder)
    p.set_defaults(func=_run)
