#!/usr/bin/env python
"""The training launcher: train any registered stage, with the arguments of ``bsynth train``::

    python   launchers/train.py STAGE --config YAML --store STORE.zarr --run-dir RUN [--resume auto] [k=v ...]
    torchrun --nproc_per_node 4 launchers/train.py STAGE ...
    deepspeed --num_gpus 4 launchers/train.py STAGE ...
    srun python launchers/train.py STAGE ...           (one task per GPU; see launchers/<recipe>.slurm)
    mpiexec -n 4 python launchers/train.py STAGE ...

``launchers/train_<recipe>.py`` (train_wfdm.py, train_dit3d.py) are aliases whose STAGE is optional: it
defaults to the config's ``stage:``, else the recipe's ``default_stage`` (its Recipe in
``bsynth_hpc/recipes/<recipe>/__init__.py``). An unknown stage name lists the registered ones. Exit status
75 means "preempted, checkpoint written: requeue" (launchers/README.md lists the others).
"""
from __future__ import annotations

import sys
from pathlib import Path

from _bootstrap import ensure_importable

ensure_importable()
from bsynth_hpc.engine.registry import get_recipe  # noqa: E402  (after the checkout is importable)
from bsynth_hpc.engine.run import train_main  # noqa: E402
from bsynth_hpc.errors import ConfigError  # noqa: E402


def main(argv: list[str] | None = None, recipe: str | None = None) -> int:
    """Run one training job; with ``recipe``, STAGE defaults to that recipe's default stage."""
    prog = Path(sys.argv[0]).name or "train.py"
    try:
        default_stage = get_recipe(recipe).default_stage if recipe else None
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    return train_main(argv, default_stage=default_stage, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
