#!/usr/bin/env python
"""What launchers/slurm_recipe.sh asks bsynth_hpc, printed for the shell (so the batch scripts keep no second
copy of a recipe's chain or of the engine's batch arithmetic).

    python launchers/slurm_query.py chain RECIPE           # bash assignments, read with eval
    python launchers/slurm_query.py global-batch CONFIG N  # "B = micro x accum x N (...)" for N ranks

``chain`` prints the registered recipe's ``default_stage`` and its ``pipeline`` as parallel bash arrays, one
entry per job: ``CHAIN_NAMES``, ``CHAIN_KINDS`` (train / encode / finish), ``CHAIN_STAGES`` (the trained stage,
empty for other kinds) and ``CHAIN_CONFIGS`` (``configs/<the stage's default config>``, empty for other kinds).
A recipe that is not registered exits 2 with the registered names.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from _bootstrap import ensure_importable

ensure_importable()
from bsynth_hpc.configtools import from_mapping  # noqa: E402  (after the checkout is importable)
from bsynth_hpc.engine.config import EngineConfig, read_yaml  # noqa: E402
from bsynth_hpc.engine.registry import Recipe, get_recipe  # noqa: E402
from bsynth_hpc.errors import ConfigError  # noqa: E402

CONFIG_DIR = "configs"
"""Where the batch scripts find the default configs: the checkout's configs/ (package bsynth_hpc.configs)."""


def _array(name: str, values: list[str]) -> str:
    return f"{name}=({' '.join(shlex.quote(v) for v in values)})"


def chain_assignments(recipe: Recipe) -> str:
    """The recipe's default stage and SLURM chain as bash assignments."""
    steps = recipe.pipeline
    if not steps:
        raise ConfigError(f"recipe {recipe.name!r} declares no SLURM pipeline (Recipe.pipeline)")
    stages = [(step.stage or "") if step.kind == "train" else "" for step in steps]
    missing = [s for s in stages if s and "full" not in recipe.configs.get(s, {})]
    if missing:
        raise ConfigError(f"recipe {recipe.name!r}: no default config (Recipe.configs[stage]['full']) for "
                          f"{', '.join(missing)}")
    configs = [f"{CONFIG_DIR}/{recipe.configs[s]['full']}" if s else "" for s in stages]
    return "\n".join([f"DEFAULT_STAGE={shlex.quote(recipe.default_stage)}",
                      _array("CHAIN_NAMES", [step.name for step in steps]),
                      _array("CHAIN_KINDS", [step.kind for step in steps]),
                      _array("CHAIN_STAGES", stages), _array("CHAIN_CONFIGS", configs)])


def global_batch(config: str, world: int) -> str:
    """The optimizer-step batch ``config`` trains at on ``world`` ranks, as the engine lays it out."""
    engine = from_mapping(EngineConfig, dict(read_yaml(config).get("engine") or {}), "engine")
    layout = engine.batch_layout(world) or {"micro_batch": engine.micro_batch, "grad_accum": engine.grad_accum}
    micro, accum = layout["micro_batch"], layout["grad_accum"]
    stated = f"engine.global_batch {engine.global_batch}" if engine.global_batch else "engine.global_batch unset"
    return f"{micro * accum * world} = {micro} x {accum} x {world} ({stated})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_query.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="query", required=True)
    sub.add_parser("chain", help="a recipe's default stage and SLURM chain").add_argument("recipe")
    batch = sub.add_parser("global-batch", help="the global batch of a config on N ranks")
    batch.add_argument("config")
    batch.add_argument("world", type=int)
    args = parser.parse_args(argv)
    try:
        if args.query == "chain":
            print(chain_assignments(get_recipe(args.recipe)))
        else:
            print(global_batch(args.config, args.world))
    except ConfigError as exc:
        print(f"slurm_query.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
