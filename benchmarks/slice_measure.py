"""3D and 2D demo samples on one slice measure: the fidelity of each demo's samples against real slice means.

    for s in 0 1 2; do bsynth demo --recipe slice2d --seed $s --out /tmp/sd_s$s; done   # and wfdm, dit3d
    python -m benchmarks.slice_measure --demo-dir /tmp/sd_s0 ... --demo-dir /tmp/wf_s0 ... --demo-dir /tmp/dt_s0 \\
        --out benchmarks/results/slice_measure_3d_vs_2d_cpu

A slice2d demo is already scored on slices (its ``eval/fidelity``). A 3D demo's store is cut into axial slices of
the slice2d demo's size, as ``bsynth prep --slices-from STORE --axis axial --size N`` cuts it, into
``--work/<demo>/slices.zarr``. Its 3D samples are then scored against that slice store by ``bsynth eval fidelity``,
which cuts them as the store was cut. Each model is scored against its own cohort. Per demo and contrast, the
table gives:

* the median r and Dice with the real slice means;
* the same medians for the real held-out slices;
* the level-matched gap (samples minus real at the same slice level);
* the spread against real anatomy (:mod:`bsynth_hpc.eval.fidelity_spread`): deviation from the real mean, and
  distance between samples, each as a ratio to real slices;
* the copy audit.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import environment_info, write_stem
from bsynth_hpc.eval.fidelity import run_fidelity
from bsynth_hpc.prep.slices_from import SliceConfig, slices_from_store

DEFAULT_SIZE = 64   # the slice2d demo's --slice-size


def _median(block: dict[str, Any] | None, key: str) -> float | None:
    v = (block or {}).get(key) or {}
    return float(v["median"]) if v.get("n") else None


def score_demo(demo_dir: Path, work: Path, size: int = DEFAULT_SIZE) -> tuple[str, dict[str, Any], str]:
    """(recipe, fidelity.json of its samples on the slice measure, how it was scored) for one finished demo."""
    summary = json.loads((demo_dir / "demo_summary.json").read_text(encoding="utf-8"))
    recipe = str(summary.get("recipe"))
    if (demo_dir / "slices.zarr").exists():   # a slice recipe: its own fidelity is on slices already
        path = demo_dir / "eval" / "fidelity" / "fidelity.json"
        return recipe, json.loads(path.read_text(encoding="utf-8")), f"its demo's fidelity ({path})"
    slices = work / demo_dir.name / "slices.zarr"
    shutil.rmtree(slices, ignore_errors=True)
    slices_from_store(demo_dir / "store.zarr", slices, SliceConfig(axis="axial", size=size))
    result, _ = run_fidelity(slices, demo_dir / "samples", work / demo_dir.name / "fidelity")
    return recipe, result, f"3D samples cut as {slices} ({size}^2 axial) was cut"


def rows_of(demo_dir: Path, recipe: str, seed: Any, fidelity: dict[str, Any], how: str) -> list[dict[str, Any]]:
    """One row per contrast of one demo's slice-measure result."""
    samples, real = fidelity["summary"]["samples"], fidelity["summary"].get("real_heldout") or {}
    copies = samples["pooled"].get("copies", {})
    out = []
    for modality, block in (samples.get("by_modality") or {}).items():
        ref = (real.get("by_modality") or {}).get(modality)
        gap = ((fidelity.get("by_level") or {}).get(modality) or {}).get("gap", {})
        spread = (fidelity.get("spread") or {}).get(modality) or {}
        out.append({"recipe": recipe, "seed": seed, "demo_dir": str(demo_dir), "scored": how, "modality": modality,
                    "n": block.get("n"), "corr": _median(block, "corr_modality"), "dice": _median(block, "dice"),
                    "real_corr": _median(ref, "corr_modality"), "real_dice": _median(ref, "dice"),
                    "gap_corr": (gap.get("corr_modality") or {}).get("mean_difference"),
                    "gap_dice": (gap.get("dice") or {}).get("mean_difference"),
                    "deviation_ratio": spread.get("deviation_ratio"), "pairwise_ratio": spread.get("pairwise_ratio"),
                    "copies": copies.get("n_flagged"), "closer_than_heldout": copies.get("n_closer_than_heldout"),
                    "judged": copies.get("n_judged")})
    return out


def per_recipe(rows: Sequence[dict[str, Any]], modality: str | None = None) -> dict[str, dict[str, Any]]:
    """Seed means per recipe, of one contrast (or of every row when ``modality`` is None)."""
    keys = ("corr", "dice", "real_corr", "real_dice", "gap_corr", "gap_dice", "deviation_ratio", "pairwise_ratio")
    out: dict[str, dict[str, Any]] = {}
    for recipe in sorted({r["recipe"] for r in rows}):
        mine = [r for r in rows if r["recipe"] == recipe and (modality is None or r["modality"] == modality)]
        if mine:
            out[recipe] = {"rows": len(mine), **{f"{k}_mean": float(np.mean(v)) if v else None for k in keys
                                                 for v in [[r[k] for r in mine if r[k] is not None]]}}
    return out


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict[str, Any]) -> str:
    lines = ["# 3D and 2D demo samples on one slice measure (CPU)", "",
             "Each demo's samples against the real slice means of its own cohort. A slice2d demo's samples are "
             "its own slices. A 3D demo's samples are cut into axial slices as its store was cut "
             f"(`bsynth prep --slices-from --axis axial --size {result['size']}`). Gap = samples minus real held-out "
             "slices at the same level. Spread: the deviation from the real mean as a ratio to the held-out slices', "
             "and the distance between samples as a ratio to that between training slices. 1 means as varied as "
             "real anatomy; under 1 means mean-like.", "",
             "| recipe | seed | contrast | slices | r | Dice | real held-out r / Dice | level-matched gap r / Dice | "
             "spread: deviation / between samples | copies (closer than held-out) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['modality']} | {r['n']} | {_f(r['corr'])} | "
                     f"{_f(r['dice'])} | "
                     f"{_f(r['real_corr'])} / {_f(r['real_dice'])} | {_f(r['gap_corr'], '+.3f')} / "
                     f"{_f(r['gap_dice'], '+.3f')} | {_f(r['deviation_ratio'], '.2f')} / "
                     f"{_f(r['pairwise_ratio'], '.2f')} | {r['copies']} ({r['closer_than_heldout']}) |")
    for title, table in (("all contrasts", result["per_recipe"]), ("FLAIR (slice2d's contrast)", result["flair"]),
                         ("T1w", result["t1w"])):
        if not table:
            continue
        lines += ["", f"Seed means, {title}:", "",
                  "| recipe | rows | r | Dice | real r / Dice | gap r / Dice | spread: deviation / between samples |",
                  "|---|---|---|---|---|---|---|"]
        for recipe, s in table.items():
            lines.append(f"| {recipe} | {s['rows']} | {_f(s['corr_mean'])} | {_f(s['dice_mean'])} | "
                         f"{_f(s['real_corr_mean'])} / {_f(s['real_dice_mean'])} | {_f(s['gap_corr_mean'], '+.3f')} / "
                         f"{_f(s['gap_dice_mean'], '+.3f')} | {_f(s['deviation_ratio_mean'], '.2f')} / "
                         f"{_f(s['pairwise_ratio_mean'], '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slice_measure", description=__doc__.split("\n")[0])
    p.add_argument("--demo-dir", action="append", required=True, type=Path, help="a finished `bsynth demo --out`")
    p.add_argument("--out", required=True, type=Path, help="output stem: STEM.json and STEM.md")
    p.add_argument("--work", type=Path, default=None, help="where 3D demos' slice stores and scores go "
                                                           "(default: STEM_work next to --out)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"slice size (default {DEFAULT_SIZE}, the "
                                                                  "slice2d demo's)")
    args = p.parse_args(argv)
    work = args.work or args.out.with_name(args.out.name + "_work")
    rows: list[dict[str, Any]] = []
    for d in args.demo_dir:
        recipe, fidelity, how = score_demo(d, work, args.size)
        seed = (json.loads((d / "demo_summary.json").read_text(encoding="utf-8")).get("options") or {}).get("seed")
        rows += rows_of(d, recipe, seed, fidelity, how)
    result = {"benchmark": "slice_measure_3d_vs_2d", "size": args.size, "rows": rows,
              "per_recipe": per_recipe(rows), "flair": per_recipe(rows, "FLAIR"), "t1w": per_recipe(rows, "T1w"),
              "environment": environment_info("cpu")}
    write_stem(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
