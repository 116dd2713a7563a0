"""`bsynth bench dit3d [training|sampling|all] [options]`: the DiT-3D benchmarks (seed 000).

* ``training``: benchmarks/dit3d_training.py - step time and peak memory, window vs global attention,
  DDP vs ZeRO-1/2, at latents 4x28x34x28 and 4x48x56x40;
* ``sampling``: benchmarks/dit3d_sampling.py - seconds per volume, DDPM 1000 steps vs DDIM 50 steps;
* ``all`` (default): both, with their default settings (options are not passed on).

    bsynth bench dit3d training --variants ddp zero2 --modes global window
    bsynth bench dit3d sampling --ddpm-runs 1
"""
from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    while args and args[0] == "--":
        args = args[1:]
    what = args[0] if args and not args[0].startswith("-") else "all"
    rest = args[1:] if args and not args[0].startswith("-") else args
    while rest and rest[0] == "--":
        rest = rest[1:]
    if what == "all" and rest and rest[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if what == "training":
        from benchmarks.dit3d_training import main as run
        return int(run(rest) or 0)
    if what == "sampling":
        from benchmarks.dit3d_sampling import main as run
        return int(run(rest) or 0)
    if what == "all":
        if rest:
            print("bsynth bench dit3d: options need `training` or `sampling` first", file=sys.stderr)
            return 2
        from benchmarks.dit3d_sampling import main as sampling
        from benchmarks.dit3d_training import main as training
        return max(int(training([]) or 0), int(sampling([]) or 0))
    print(f"bsynth bench dit3d: unknown benchmark {what!r}; use training, sampling or all", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
