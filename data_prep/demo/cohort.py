"""Cohort assembly: check the arguments, plan, render (optionally in a process pool), write the
BIDS sidecars and ``manifest.csv``."""
from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from bsynth_hpc.constants import DEFAULT_SHAPE, DEFAULT_SPACING
from bsynth_hpc.errors import ConfigError

from .labels import DSEG_LABELS
from .manifest import GENERATOR, LABEL_DIR, MANIFEST_COLUMNS, check_datasets
from .plan import plan_cohort
from .render import Geometry, render_subject
from .template import load_template, prime_template


def _check_args(n_subjects: int, shape: tuple[int, int, int] | None, spacing_mm: float,
                workers: int) -> Geometry:
    if not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise ConfigError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if not (isinstance(spacing_mm, (int, float)) and 0.5 <= float(spacing_mm) <= 8.0):
        raise ConfigError(f"spacing_mm must be a number in [0.5, 8] mm, got {spacing_mm!r}")
    if shape is None:
        fov = np.asarray(DEFAULT_SHAPE) * np.asarray(DEFAULT_SPACING)
        shape = tuple(int(round(f / spacing_mm)) for f in fov)   # type: ignore[assignment]
    else:
        shape = tuple(shape)   # type: ignore[assignment]
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and 8 <= s <= 1024
                                      for s in shape):
            raise ConfigError(f"shape must be three integers in [8, 1024] (X Y Z), got {shape!r}")
    x, y, z = (int(s) for s in shape)
    return Geometry(shape=(x, y, z), spacing_mm=float(spacing_mm))


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``; clear a previous demo cohort there; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        desc = out / "dataset_description.json"
        try:
            ours = any(g.get("Name") == GENERATOR
                       for g in json.loads(desc.read_text()).get("GeneratedBy", []))
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ConfigError(f"{out} is not empty and holds no previous demo cohort; "
                              "choose an empty or new folder")
        for child in out.iterdir():
            if child.name.startswith("sub-") or child.name == "derivatives":
                shutil.rmtree(child)
            elif child.name in ("manifest.csv", "dataset_description.json"):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_sidecars(out: Path, n_subjects: int, geom: Geometry, seed: int,
                    datasets: tuple[str, ...] | None = None) -> None:
    """BIDS dataset descriptions and the label-map lookup table."""
    params: dict[str, object] = {"n_subjects": n_subjects, "seed": seed,
                                 "shape": list(geom.shape), "spacing_mm": geom.spacing_mm}
    if datasets is not None:
        params["datasets"] = list(datasets)
    desc = {"Name": "bsynth demo cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
            "GeneratedBy": [{"Name": GENERATOR, "Description":
                             "synthetic subjects warped from MNI152 2009 (nilearn)"}],
            "BsynthDemoCohort": params}
    (out / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")
    labels = out / LABEL_DIR
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "dataset_description.json").write_text(json.dumps(
        {"Name": "bsynth demo cohort ground-truth labels", "BIDSVersion": "1.9.0",
         "DatasetType": "derivative", "GeneratedBy": [{"Name": GENERATOR}]}, indent=2) + "\n")
    lines = ["index\tname"] + [f"{k}\t{v}" for k, v in DSEG_LABELS.items()]
    (labels / "dseg.tsv").write_text("\n".join(lines) + "\n")


def build_demo_cohort(out_dir: str | Path, n_subjects: int = 16,
                      shape: tuple[int, int, int] | None = None, spacing_mm: float = 2.0,
                      seed: int = 0, workers: int = 1,
                      datasets: Sequence[str] | None = None) -> Path:
    """Build the demo cohort under ``out_dir`` and return the path of its ``manifest.csv``.

    ``shape`` is the scanner grid in RAS axis order at ``spacing_mm`` (default: the project's
    192x224x160 mm field of view at that spacing), centred on the brain; series stored in another
    orientation or with anisotropic voxels cover the same field of view.  Subject ``i`` depends
    only on ``(seed, i)``, so ``workers`` (a process pool) never changes the output.
    ``datasets`` (e.g. ``["demo-epilepsy"]``) keeps ``n_subjects`` subjects of those datasets
    only (labels still alternate, so the classes stay balanced); they keep their ids from the
    unfiltered cohort (``sub-0001, sub-0004, ...`` for demo-epilepsy) and their bytes.
    """
    geom = _check_args(n_subjects, shape, spacing_mm, workers)
    chosen = check_datasets(datasets)
    out = Path(out_dir)
    _prepare_out_dir(out)
    plans = plan_cohort(int(n_subjects), int(seed), chosen)
    if workers > 1 and n_subjects > 1:
        ctx = multiprocessing.get_context("spawn")   # safe even if the caller holds threads
        sp = geom.subject_spacing
        with ProcessPoolExecutor(max_workers=min(int(workers), int(n_subjects)), mp_context=ctx,
                                 initializer=prime_template,
                                 initargs=(sp, load_template(sp))) as pool:
            per_subject = list(pool.map(render_subject, plans, [out] * len(plans),
                                        [geom] * len(plans)))
    else:
        per_subject = [render_subject(p, out, geom) for p in plans]
    _write_sidecars(out, int(n_subjects), geom, int(seed), chosen)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    return manifest
