"""Recipe and stage registry: the engine's only view of the recipes (register / get, nothing else).

The engine never imports a recipe. Recipes register themselves: each recipe package declares one
:class:`Recipe` (``bsynth_hpc/recipes/<name>/__init__.py``) and is found through the
``bsynth_hpc.recipes`` entry-point group (setup.py), or through modules named in
``$BSYNTH_PLUGINS`` (comma-separated import names, e.g. a user's own recipe or a test fixture),
or by calling :func:`register_recipe` / :func:`register_stage` in code. Discovery runs once, on
the first lookup; stage classes stay ``"module:Class"`` strings until a stage is asked for, so the
CLI starts fast and a recipe's heavy dependencies load only when that recipe runs.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError

if TYPE_CHECKING:
    from .stage import Stage

ENTRY_POINT_GROUP = "bsynth_hpc.recipes"
PLUGINS_ENV = "BSYNTH_PLUGINS"

Target = Any  # a "module:attr" string or the object itself


@dataclass(frozen=True)
class PipelineStep:
    """One job of a recipe's SLURM chain: ``kind`` is ``train`` (``stage`` names the stage),
    ``encode``, or a recipe-defined finishing step (e.g. ``sample-eval``)."""

    name: str
    kind: str = "train"
    stage: str | None = None


@dataclass(frozen=True)
class Recipe:
    """Everything the product knows about one recipe, registered once.

    ``stages``          stage name -> Stage class or ``"module:Class"`` (first = stage A)
    ``default_stage``   what ``launchers/train_<name>.py`` trains when no STAGE is given
    ``sampler``         ``"module:function"``: ``function(config)`` taking a ``sample_config``, writing
                        the samples and returning their paths
    ``sample_config``   ``"module:Class"``: the sampler's typed config (a dataclass)
    ``sample_options``  ``"module:function"``: ``function(parser)`` adds the recipe's own
                        ``bsynth sample <name>`` flags (the shared ones are added by the CLI)
    ``demo``            ``"module:function"``: the recipe's ``bsynth demo --recipe <name>`` chain
    ``configs``         stage name -> default config file names in ``bsynth_hpc.configs``
                        (``{"full": ..., "tiny": ...}``)
    ``pipeline``        the SLURM chain's jobs in order (``launchers/<name>.slurm``)
    """

    name: str
    description: str
    stages: Mapping[str, Target]
    default_stage: str
    sampler: Target | None = None
    sample_config: Target | None = None
    sample_options: Target | None = None
    demo: Target | None = None
    configs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    pipeline: tuple[PipelineStep, ...] = ()

    def __post_init__(self) -> None:
        if self.default_stage not in self.stages:
            raise ValueError(f"recipe {self.name!r}: default_stage {self.default_stage!r} is not one of its "
                             f"stages ({', '.join(self.stages)})")

    def load(self, attr: str) -> Any:
        """The object behind field ``attr`` (imported now if it is a ``"module:attr"`` string)."""
        target = getattr(self, attr)
        if target is None:
            raise ConfigError(f"recipe {self.name!r} has no {attr}")
        return resolve_target(target, f"recipe {self.name!r} {attr}")


_recipes: dict[str, Recipe] = {}
_stages: dict[str, Target] = {}
_stage_recipe: dict[str, str] = {}
_discovered = False

PLANNED: dict[str, str] = {}
"""Stage names that are announced but not built yet -> where they arrive (named in the error)."""


def resolve_target(target: Target, what: str) -> Any:
    """Import a ``"module:attr"`` target (objects pass through); ConfigError names ``what``."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} is registered as {target!r} but cannot be loaded ({exc}); check the "
                          "installation (`pip install -e .`) or the registration") from exc


def register_recipe(recipe: Recipe) -> Recipe:
    """Register ``recipe`` and its stages (re-registering the same name replaces it)."""
    for stage in recipe.stages:
        owner = _stage_recipe.get(stage)
        if owner is not None and owner != recipe.name:
            raise ValueError(f"stage {stage!r} of recipe {recipe.name!r} is already registered by recipe {owner!r}")
    _recipes[recipe.name] = recipe
    for stage, target in recipe.stages.items():
        _stages[stage] = target
        _stage_recipe[stage] = recipe.name
    return recipe


def register_stage(name: str, target: Target) -> None:
    """Register one stage outside any recipe (a Stage class or ``"module:Class"``)."""
    if not name or not isinstance(name, str):
        raise ValueError("a stage name must be a non-empty string")
    _stages[name] = target


def _discover() -> None:
    """Load the installed recipes (entry points) and ``$BSYNTH_PLUGINS`` once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            recipe = ep.load()
        except Exception as exc:  # a broken plug-in must not take the other recipes down
            raise ConfigError(f"recipe entry point {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
        if isinstance(recipe, Recipe) and recipe.name not in _recipes:
            register_recipe(recipe)
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)  # the module registers its recipe/stages on import
        except ImportError as exc:
            raise ConfigError(f"${PLUGINS_ENV} names {module!r}, which cannot be imported ({exc}); fix "
                              f"${PLUGINS_ENV} or PYTHONPATH") from exc


def recipe_names() -> list[str]:
    """Registered recipe names, sorted."""
    _discover()
    return sorted(_recipes)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; ConfigError lists the registered ones."""
    _discover()
    try:
        return _recipes[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; registered recipes: {', '.join(sorted(_recipes))}") from None


def recipe_of_stage(stage: str) -> Recipe | None:
    """The recipe a stage belongs to (None for a stage registered on its own)."""
    _discover()
    owner = _stage_recipe.get(stage)
    return _recipes.get(owner) if owner else None


def stage_names() -> list[str]:
    """Registered stage names, sorted."""
    _discover()
    return sorted(_stages)


def get_stage_class(name: str) -> "type[Stage]":
    """The Stage class registered as ``name``; ConfigError lists the registered names."""
    _discover()
    target = _stages.get(name)
    if target is None:
        later = f" ({name} arrives with {PLANNED[name]})" if name in PLANNED else ""
        raise ConfigError(f"unknown stage {name!r}{later}; registered stages: {', '.join(stage_names())}")
    cls = resolve_target(target, f"stage {name!r}")
    _stages[name] = cls
    return cls

