"""`bsynth demo`: a recipe's main job end to end on the embedded demo cohort, on CPU.

The chains live in the recipes (``recipes/<name>/demo.py``, registered as ``Recipe.demo``: a
:class:`~bsynth_hpc.recipes.common.demo.RecipeDemo`); this module builds the ``bsynth demo`` parser
from the registered demos (shared options + each recipe's own group) and dispatches
``--recipe NAME`` to ``get_recipe(NAME).demo``. Every run writes ``OUT/demo_summary.json``.
"""
from __future__ import annotations

import argparse
from typing import Any

from .engine.registry import get_recipe, recipe_names
from .errors import ConfigError
from .recipes.common.demo import RecipeDemo

DEFAULT_RECIPE = "wfdm"


def recipe_demos() -> dict[str, RecipeDemo]:
    """Registered recipe name -> its demo, for the recipes that have one."""
    return {name: get_recipe(name).load("demo") for name in recipe_names() if get_recipe(name).demo is not None}


def check_overrides(overrides: list[str]) -> None:
    """``--override STAGE:key=value`` items are well formed (ConfigError otherwise)."""
    for o in overrides:
        if ":" not in o or "=" not in o.split(":", 1)[1]:
            raise ConfigError(f"--override {o!r}: write STAGE:key=value, e.g. dit3d-vae:engine.max_steps=4")


def run_demo(args: argparse.Namespace) -> int:
    """Dispatch ``bsynth demo --recipe R`` to R's demo (fills in its default subject count)."""
    recipe = get_recipe(args.recipe)
    if recipe.demo is None:
        raise ConfigError(f"--recipe {args.recipe!r} has no demo; recipes with one: {', '.join(recipe_demos())}")
    demo = recipe.load("demo")
    if getattr(args, "subjects", None) is None:
        args.subjects = demo.default_subjects
    check_overrides(getattr(args, "override", None) or [])
    return demo(args)


def add_demo_parser(sub: Any, default_out: str) -> argparse.ArgumentParser:
    """Register ``bsynth demo`` (its ``--recipe`` choices and option groups come from the registered demos)."""
    demos = recipe_demos()
    default = DEFAULT_RECIPE if DEFAULT_RECIPE in demos else next(iter(demos), None)
    p = sub.add_parser("demo", help=f"the main job end to end on the embedded demo cohort (--recipe "
                                    f"{' | '.join(demos)})")
    p.add_argument("--recipe", choices=list(demos), default=default,
                   help="; ".join(f"{name}: {d.summary}" for name, d in demos.items()))
    p.add_argument("--out", default=default_out, help=f"working folder (default ./{default_out})")
    p.add_argument("--subjects", type=int, default=None,
                   help="cohort size (default " + ", ".join(f"{d.default_subjects} for {name}"
                                                          for name, d in demos.items()) + ")")
    p.add_argument("--spacing", type=float, default=4.0,
                   help="demo grid spacing in mm (4 = the whole pipeline in minutes on 2 CPU cores)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="training override for one stage, repeatable (e.g. dit3d:engine.max_steps=10)")
    for name, d in demos.items():
        if d.add_options is not None:
            d.add_options(p.add_argument_group(f"{name} recipe"))
    return p
