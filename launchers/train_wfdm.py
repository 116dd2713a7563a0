#!/usr/bin/env python
"""Train a WFDM (WF-VAE + latent diffusion) stage: the default stage is ``wfdm-ldm``; pass ``wfdm-vae`` for the compressor.

Same arguments as ``bsynth train`` (STAGE is optional here)::

    python   launchers/train_wfdm.py [STAGE] --config YAML --store STORE.zarr --run-dir RUN [--resume auto] [k=v ...]
    torchrun --nproc_per_node 4 launchers/train_wfdm.py ...
    deepspeed --num_gpus 4 launchers/train_wfdm.py ...
    srun python launchers/train_wfdm.py ...            (one task per GPU; see launchers/wfdm.slurm)
    mpiexec -n 4 python launchers/train_wfdm.py ...

Stages: ``wfdm-vae`` (configs/wfdm-vae*.yaml) and ``wfdm-ldm`` (configs/wfdm-ldm*.yaml; needs
``recipe.latents`` from ``bsynth encode``); any other registered stage also trains, and an unknown
stage name lists the registered ones. Exit status 75 means "preempted, checkpoint written: requeue".
"""
from __future__ import annotations

import sys

from _bootstrap import ensure_importable

DEFAULT_STAGE = "wfdm-ldm"


def main(argv: list[str] | None = None) -> int:
    ensure_importable()
    from bsynth_hpc.engine.run import train_main

    return train_main(argv, default_stage=DEFAULT_STAGE, prog="train_wfdm.py")


if __name__ == "__main__":
    sys.exit(main())
