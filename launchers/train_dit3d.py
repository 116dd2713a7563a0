#!/usr/bin/env python
"""Train a DiT-3D (VAE-GAN + class-conditional DiT-3D) stage: the default stage is ``dit3d``; pass ``dit3d-vae`` for the compressor.

Same arguments as ``bsynth train`` (STAGE is optional here)::

    python   launchers/train_dit3d.py [STAGE] --config YAML --store STORE.zarr --run-dir RUN [--resume auto] [k=v ...]
    torchrun --nproc_per_node 4 launchers/train_dit3d.py ...
    deepspeed --num_gpus 4 launchers/train_dit3d.py ...
    srun python launchers/train_dit3d.py ...            (one task per GPU; see launchers/dit3d.slurm)
    mpiexec -n 4 python launchers/train_dit3d.py ...

Stages: ``dit3d-vae`` (configs/dit3d-vae*.yaml) and ``dit3d`` (configs/dit3d_tle.yaml, dit3d_tiny.yaml;
needs ``recipe.latents`` from ``bsynth encode``); any other registered stage also trains, and an unknown
stage name lists the registered ones. Exit status 75 means "preempted, checkpoint written: requeue".
"""
from __future__ import annotations

import sys

from _bootstrap import ensure_importable

DEFAULT_STAGE = "dit3d"


def main(argv: list[str] | None = None) -> int:
    ensure_importable()
    from bsynth_hpc.engine.run import train_main

    return train_main(argv, default_stage=DEFAULT_STAGE, prog="train_dit3d.py")


if __name__ == "__main__":
    sys.exit(main())
