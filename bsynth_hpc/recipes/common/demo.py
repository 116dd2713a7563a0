"""The shared machinery of every recipe's ``bsynth demo`` chain: numbered, timed steps, the demo
cohort and its store, training a stage from a packaged config, and ``OUT/demo_summary.json``.

A recipe registers a :class:`RecipeDemo` as its ``Recipe.demo``: the chain (``run(args)``), its
default cohort size and its own ``bsynth demo`` options. ``bsynth_hpc.demo`` builds the parser from
the registered demos and dispatches; the chains live in ``recipes/<name>/demo.py``.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ...data.summary import format_store_summary
from ...engine.config import packaged_config
from ...engine.run import train_main
from ...errors import ConfigError
from ...prep.demo import build_demo_cohort
from ...prep.pipeline import PrepConfig, PrepSource, run_prep

__all__ = ["RecipeDemo", "Demo", "SUMMARY_NAME", "demo_shape", "filter_manifest"]

SUMMARY_NAME = "demo_summary.json"


@dataclass(frozen=True)
class RecipeDemo:
    """A recipe's ``bsynth demo --recipe NAME``: ``run(args) -> exit status`` on the parsed options,
    ``default_subjects`` when ``--subjects`` is not given, a one-line ``summary`` for the help, and
    ``add_options(group)`` for the recipe's own flags (an argparse argument group)."""

    run: Callable[[argparse.Namespace], int]
    default_subjects: int
    summary: str
    add_options: Callable[[Any], None] | None = None

    def __call__(self, args: argparse.Namespace) -> int:
        return int(self.run(args))


def demo_shape(spacing_mm: float) -> tuple[int, int, int]:
    """The seed-003 field of view (192x224x160 mm) on a grid of the given spacing."""
    return tuple(int(round(fov / spacing_mm)) for fov in (192, 224, 160))  # type: ignore[return-value]


class Demo:
    """One demo run: numbered, timed steps, the cohort + store, training calls, the summary.

    ``args`` holds the ``bsynth demo`` options (out, subjects, spacing, workers, seed, override, recipe)."""

    def __init__(self, args: argparse.Namespace, n_steps: int):
        self.args = args
        self.out = Path(args.out)
        self.n_steps = n_steps
        self.k = 0
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}
        self.store = self.out / "store.zarr"
        self.runs = self.out / "runs"
        self.extra: dict[str, Any] = {}

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        """``[k/n] text``, then time the block into ``times[key]``."""
        self.k += 1
        print(f"\n[{self.k}/{self.n_steps}] {text}", flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[key] = round(time.perf_counter() - t, 2)

    def cohort_and_store(self, datasets: Sequence[str] | None = None, modalities: Sequence[str] | None = None,
                         splits: Sequence[float] = (0.8, 0.1, 0.1), stratify: str | None = None) -> int:
        """Steps 1-2: the demo cohort (optionally some datasets / modalities only) -> OUT/store.zarr.
        Returns the prep exit status (0 = go on)."""
        a = self.args
        which = f", {'+'.join(datasets)}" if datasets else ""
        with self.step("cohort", f"building the demo cohort ({a.subjects} subjects{which}, {a.spacing:g} mm) "
                                 f"in {self.out / 'cohort'}"):
            manifest = build_demo_cohort(self.out / "cohort", n_subjects=a.subjects, spacing_mm=a.spacing,
                                         seed=a.seed, workers=a.workers, datasets=datasets)
            if modalities:
                manifest = filter_manifest(manifest, modalities)
        shape = demo_shape(a.spacing)
        how = f", {stratify}-stratified splits {'/'.join(f'{f:.3g}' for f in splits)}" if stratify else ""
        with self.step("prep", f"preprocessing {manifest.name} into {self.store} (shape {shape}, {a.spacing:g} mm, "
                               f"{a.workers} Dask workers{how})"):
            config = PrepConfig(shape=shape, spacing=(a.spacing,) * 3, workers=a.workers, seed=a.seed, progress=True,
                                splits=tuple(splits), stratify=stratify)
            result = run_prep(PrepSource.manifest(manifest), self.store, config)
            print()
            print(format_store_summary(self.store))
        if result.exit_code:
            print(f"\ndemo stopped: preprocessing failed (exit status {result.exit_code})")
        return int(result.exit_code)

    def train(self, stage: str, config: str, *extra: str) -> int:
        """``bsynth train STAGE --config <packaged CONFIG>`` into OUT/runs/STAGE (resumes a finished run),
        plus the user's ``--override STAGE:key=value`` settings."""
        overrides = [o.split(":", 1)[1] for o in (getattr(self.args, "override", None) or [])
                     if o.split(":", 1)[0] == stage]
        return int(train_main([stage, "--config", str(packaged_config(config)), "--run-dir", str(self.runs / stage),
                               "--store", str(self.store), "--resume", "auto", *extra, *overrides]))

    def finish(self, code: int, outputs: Sequence[tuple[str, str]]) -> int:
        """Print the timing line and the output list; write OUT/demo_summary.json."""
        total = time.perf_counter() - self.t0
        summary = {"recipe": self.args.recipe, "exit_code": int(code), "total_seconds": round(total, 2),
                   "step_seconds": self.times,
                   "options": {k: v for k, v in vars(self.args).items() if k != "func"}, **self.extra}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        print("\n" + "=" * 72)
        print(f"demo finished in {total:.1f} s  (" + ", ".join(f"{k} {v:.0f} s" for k, v in self.times.items()) + ")")
        width = max(len(name) for name, _ in outputs)
        for name, text in outputs:
            print(f"  {name:<{width}}  {text}")
        print("=" * 72)
        return int(code)


def filter_manifest(manifest: Path, modalities: Sequence[str]) -> Path:
    """manifest_<mods>.csv next to ``manifest`` with only the rows of ``modalities`` (same relative paths)."""
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), [r for r in reader if r["modality"] in modalities]
    if not rows:
        raise ConfigError(f"{manifest} has no {'/'.join(modalities)} rows")
    out = manifest.with_name(f"manifest_{'+'.join(modalities)}.csv")
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out
