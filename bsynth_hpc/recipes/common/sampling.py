"""What every recipe's sampler shares: the typed config base (:class:`SampleConfig`) and its
``bsynth sample <recipe>`` flags (:func:`add_sample_options`).

A recipe subclasses :class:`SampleConfig` with its own conditioning fields and registers, in its
:class:`~bsynth_hpc.engine.registry.Recipe`, the sampler (``function(config)``), the config class and
a ``function(parser)`` adding its own flags. The CLI adds the shared flags once, then the recipe's,
and maps the parsed flags onto the config with :meth:`SampleConfig.from_namespace` (flag dest =
field name), so the sampler never sees argparse and programs call it with the dataclass directly.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ...argtypes import device_name, existing_file, float_at_least, int_at_least, output_folder, tile_size
from ...configtools import from_mapping, require
from ...errors import ConfigError

__all__ = ["SampleConfig", "add_sample_options", "requested_classes", "Solver", "Space", "Intensity"]

Solver = Literal["euler", "ddpm", "ddim"]
Space = Literal["store", "native"]
Intensity = Literal["unit", "scanner"]
C = TypeVar("C", bound="SampleConfig")


@dataclass
class SampleConfig:
    """Options every sampler takes (``None`` = the run's own setting); see :func:`add_sample_options`."""

    run: str
    out: str
    n: int = 4
    steps: int | None = None
    solver: Solver | None = None
    cfg: float | None = None
    conditions: str | None = None
    compressor_run: str | None = None
    tile: int | None = None
    batch_size: int = 1
    seed: int = 0
    overwrite: bool = False
    space: Space = "store"
    intensity: Intensity = "unit"
    reference: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("run", "out", "conditions", "compressor_run", "reference"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        require(self.n >= 1, f"sample n={self.n} must be >= 1 (volumes per condition)")
        require(self.batch_size >= 1, f"sample batch_size={self.batch_size} must be >= 1")
        require(self.steps is None or self.steps >= 1, f"sample steps={self.steps} must be >= 1 (or None: the run's)")
        require(self.cfg is None or (math.isfinite(self.cfg) and self.cfg >= 0),
                f"sample cfg={self.cfg} must be a finite number >= 0 (0 unconditional, 1 conditional, >1 guided)")
        require(self.tile is None or self.tile >= 2, f"sample tile={self.tile} must be >= 2 latent voxels (or None)")
        require(self.seed >= 0, f"sample seed={self.seed} must be >= 0")

    @classmethod
    def from_namespace(cls: type[C], args: Any) -> C:
        """The config from parsed flags (or any object with these attributes; others are ignored)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}
        return from_mapping(cls, values, "sample")


def add_sample_options(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`SampleConfig` on ``parser`` (``bsynth sample <recipe>``; dest = field name)."""
    p = parser
    p.add_argument("--run", required=True, help="the denoiser's run directory")
    p.add_argument("--out", required=True, type=output_folder, help="output folder for NIfTI volumes and previews")
    p.add_argument("--n", type=int_at_least(1, "volumes per condition"), default=4, help="volumes per condition")
    p.add_argument("--steps", type=int_at_least(1), default=None, help="sampling steps (default: the run's config)")
    p.add_argument("--solver", choices=["euler", "ddpm", "ddim"], default=None, help="default: the run's config")
    p.add_argument("--cfg", type=float_at_least(0.0, "0 = unconditional, 1 = conditional, >1 = guided"), default=None,
                   help="classifier-free guidance scale (>= 0)")
    p.add_argument("--conditions", type=existing_file, default=None,
                   help="CSV of conditions, one row per sample (a synthetic cohort)")
    p.add_argument("--compressor-run", default=None, help="stage-A run (default: the one recorded in --run)")
    p.add_argument("--tile", type=tile_size, default=None,
                   help="decode in overlapping latent tiles of this many voxels per axis (bounds decoder memory: "
                        "e.g. 16 for 192x224x160 on a 6 GB card; default $BSYNTH_DECODE_TILE or a whole-volume decode)")
    p.add_argument("--batch-size", type=int_at_least(1), default=1)
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="first seed; into a folder that already holds samples, numbering and seeds continue after "
                        "them unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="write over the samples already in --out (same names, seeds from --seed)")
    p.add_argument("--space", choices=["store", "native"], default="store",
                   help="store: the preprocessed RAS grid (default); native: resampled onto a scanner grid "
                        "(--reference) so samples overlay scans in world coordinates")
    p.add_argument("--intensity", choices=["unit", "scanner"], default="unit",
                   help="unit: [0, 1] as trained (default); scanner: the --reference volume's recorded prep "
                        "normalisation inverted (needs a volume id of the training store)")
    p.add_argument("--reference", default=None,
                   help="--space native grid: a NIfTI scan, or a volume id of the training store (its source "
                        "scan's grid as prep recorded it; default the store's first volume)")
    p.add_argument("--device", type=device_name, default=None, help="auto | cpu | cuda | cuda:N")


def requested_classes(conditions: str | None, class_label: str | None, n: int, classes: list[str]) -> list[str]:
    """The class of each sample of a class-conditional sampler: one per row of the ``--conditions`` CSV (its
    ``class`` or ``label`` column), else ``n`` of ``--class``, else ``n`` of every class; matched to the
    model's class names case-insensitively."""
    if conditions:
        with open(conditions, newline="", encoding="utf-8") as fh:
            labels = [(r.get("class") or r.get("label") or "").strip() for r in csv.DictReader(fh)]
        if not labels or any(not lab for lab in labels):
            raise ConfigError(f"{conditions}: every row needs a 'class' (or 'label') column value")
    elif class_label:
        labels = [str(class_label)] * n
    else:
        labels = [c for c in classes for _ in range(n)]
    lower = {c.lower(): c for c in classes}
    bad = [lab for lab in labels if lab.lower() not in lower]
    if bad:
        raise ConfigError(f"class {bad[0]!r} is not one of the model's classes {classes}: use --class "
                          f"{' or '.join(classes)}")
    return [lower[lab.lower()] for lab in labels]
