"""Several finished `bsynth demo` folders (recipes x seeds) side by side: one fidelity table -> JSON/MD.

    for s in 0 1 2; do bsynth demo --recipe slice2d --seed $s --out /tmp/slice2d_s$s; done   # and wfdm, dit3d
    python -m benchmarks.demo_seeds --demo-dir /tmp/slice2d_s0 --demo-dir /tmp/wfdm_s0 ... \\
        --out benchmarks/results/demo_fidelity_seeds_cpu

A demo's seed draws its cohort as well as its training, so the real held-out medians move with it; each row
therefore gives the samples next to their own cohort's real held-out volumes or slices, the bootstrap 95% CI
of each median, (slice recipes) the level-matched gap to real slices, and the spread of the samples against real
anatomy (deviation from the real mean and distance between samples, each as a ratio to real volumes; the mean
over a recipe's modalities), which tells realistic samples from mean-like ones at the same r. Built on
:func:`benchmarks.demo_fidelity.collect`, so the numbers are exactly that record's.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import environment_info, write_stem
from benchmarks.demo_fidelity import collect


def row(demo_dir: Path) -> dict[str, Any]:
    """One table row of a finished demo folder."""
    record = collect(demo_dir)
    m, r = record["measured"], record["real_heldout"]
    levels = record.get("level_matched") or {}
    spread = record.get("spread") or {}
    return {"recipe": record["recipe"], "seed": (record["options"] or {}).get("seed"), "demo_dir": str(demo_dir),
            "wall_s": m["wall_s"], "n_samples": m["n_samples"],
            "corr": m["corr_own_modality_median"], "corr_ci95": m["corr_median_ci95"],
            "dice": m["dice_median"], "dice_ci95": m["dice_median_ci95"],
            "real_corr": r["corr_own_modality_median"], "real_dice": r["dice_median"], "n_real": r["n"],
            "excess_corr": m["corr_own_modality_median"] - r["corr_own_modality_median"],
            "excess_dice": m["dice_median"] - r["dice_median"],
            "nearest_subjects": m["nearest_training_subjects"],
            "nearest_subjects_real": r["nearest_training_subjects"],
            "copies": m["copies_flagged"], "closer_than_heldout": m["closer_than_heldout"],
            "level_gap_corr": {k: v["gap_corr"] for k, v in levels.items()} or None,
            "level_gap_dice": {k: v["gap_dice"] for k, v in levels.items()} or None,
            "spread": spread or None, "deviation_ratio": _mean_over(spread, "deviation_ratio"),
            "pairwise_ratio": _mean_over(spread, "pairwise_ratio")}


def _mean_over(spread: dict[str, dict[str, float | None]], key: str) -> float | None:
    """The mean of one spread ratio over the modalities that have it (None when none does)."""
    values = [v[key] for v in spread.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


def per_recipe(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and range over seeds of each recipe's medians."""
    out: dict[str, dict[str, Any]] = {}
    for recipe in sorted({x["recipe"] for x in rows}):
        mine = [x for x in rows if x["recipe"] == recipe]
        out[recipe] = {"seeds": [x["seed"] for x in mine],
                       **{f"{k}_{stat}": float(fn([x[k] for x in mine]))
                          for k in ("corr", "dice", "real_corr", "real_dice", "excess_corr", "excess_dice")
                          for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))},
                       **{f"{k}_mean": float(np.mean(v)) if v else None
                          for k in ("deviation_ratio", "pairwise_ratio")
                          for v in [[x[k] for x in mine if x.get(k) is not None]]}}
    return out


def markdown(result: dict[str, Any]) -> str:
    def ci(v: Sequence[float] | None) -> str:
        return "" if not v else f" ({v[0]:.3f}-{v[1]:.3f})"

    def gap(v: dict[str, float] | None) -> str:
        return "-" if not v else ", ".join(f"{k} {x:+.3f}" for k, x in v.items())

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def near(v: dict[str, Any]) -> str:
        return "-" if not v["n"] else f"{v['distinct']} / {v['top_share']:.0%}"

    lines = ["# Demo fidelity across seeds (CPU)", "",
             "Each row: one `bsynth demo` run; the seed draws the cohort and the training. Medians with their "
             "bootstrap 95% CI; real held-out of the same run's cohort; samples - real = the samples' median minus "
             "that real held-out median; level-matched gap = samples minus real held-out slices at the same slice "
             "level (slice recipes); nearest training subjects = distinct subjects among the samples' (real "
             "held-out's) nearest training volumes or slices / the share of the most common one; spread = the "
             "samples' deviation from the real mean / the held-out volumes', and their distance from each other / "
             "that between training volumes (1: as varied as real anatomy; under 1: mean-like or collapsed).", "",
             "| recipe | seed | samples | r | Dice | real held-out r / Dice | samples - real r / Dice | "
             "level-matched gap r / Dice | spread: deviation / between samples | nearest training subjects: "
             "samples; real | copies | closer than held-out | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in result["rows"]:
        lines.append(f"| {x['recipe']} | {x['seed']} | {x['n_samples']} | {x['corr']:.3f}{ci(x['corr_ci95'])} | "
                     f"{x['dice']:.3f}{ci(x['dice_ci95'])} | {x['real_corr']:.3f} / {x['real_dice']:.3f} | "
                     f"{x['excess_corr']:+.3f} / {x['excess_dice']:+.3f} | "
                     f"{gap(x['level_gap_corr'])} / {gap(x['level_gap_dice'])} | "
                     f"{ratio(x.get('deviation_ratio'))} / {ratio(x.get('pairwise_ratio'))} | "
                     f"{near(x['nearest_subjects'])}; {near(x['nearest_subjects_real'])} | {x['copies']} | "
                     f"{x['closer_than_heldout']} | {x['wall_s']:.0f} s |")
    lines += ["", "| recipe | seeds | r mean [min, max] | Dice mean [min, max] | real r / Dice mean | "
              "samples - real r / Dice mean | spread: deviation / between samples mean |",
              "|---|---|---|---|---|---|---|"]
    for recipe, s in result["per_recipe"].items():
        lines.append(f"| {recipe} | {', '.join(str(v) for v in s['seeds'])} | {s['corr_mean']:.3f} "
                     f"[{s['corr_min']:.3f}, {s['corr_max']:.3f}] | {s['dice_mean']:.3f} [{s['dice_min']:.3f}, "
                     f"{s['dice_max']:.3f}] | {s['real_corr_mean']:.3f} / {s['real_dice_mean']:.3f} | "
                     f"{s['excess_corr_mean']:+.3f} / {s['excess_dice_mean']:+.3f} | "
                     f"{ratio(s.get('deviation_ratio_mean'))} / {ratio(s.get('pairwise_ratio_mean'))} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_seeds", description=__doc__.split("\n")[0])
    p.add_argument("--demo-dir", action="append", required=True, type=Path, help="a finished `bsynth demo --out`")
    p.add_argument("--out", required=True, type=Path, help="output stem: STEM.json and STEM.md")
    args = p.parse_args(argv)
    rows = [row(d) for d in args.demo_dir]
    result = {"benchmark": "demo_fidelity_seeds", "rows": rows, "per_recipe": per_recipe(rows),
              "environment": environment_info("cpu")}
    write_stem(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
