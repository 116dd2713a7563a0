"""Issue-14 acceptance record of a finished `bsynth demo`: wall time and sample fidelity -> results JSON/MD.

    bsynth demo --out /tmp/wfdm_demo                       # or: make demo (demo_run/)
    python -m benchmarks.demo_fidelity --demo-dir /tmp/wfdm_demo --out-dir benchmarks/results
    bsynth demo --recipe dit3d --out /tmp/dit3d_demo
    python -m benchmarks.demo_fidelity --demo-dir /tmp/dit3d_demo --out-dir benchmarks/results

Reads ``DEMO/demo_summary.json`` (per-step wall seconds, options) and ``DEMO/eval/fidelity/fidelity.json``
(written by the demo's fidelity step, i.e. `bsynth eval fidelity`), and writes
``fidelity_<recipe>_demo.json`` / ``.md``: the headline numbers of samples and real held-out volumes, the
issue's targets (wall <= 600 s on 2 CPU cores; median correlation with the own-modality real mean >= 0.90,
median brain-mask Dice >= 0.90, requested contrast identified >= 0.9 where the recipe has several contrasts, no
sample flagged as a copy of a training volume, and none closer to a training volume than every real held-out
volume is by raw correlation or SSIM) each marked met or not, and the environment.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import LOCAL_RESULTS_DIR, environment_info

WALL_TARGET_S = 600.0
CORR_TARGET = DICE_TARGET = 0.90
CONTRAST_TARGET = 0.9


def _median(block: dict[str, Any], key: str) -> float | None:
    v = block.get(key) or {}
    return float(v["median"]) if v.get("n") else None


def _ci(block: dict[str, Any], key: str) -> list[float] | None:
    v = block.get(key) or {}
    return v.get("median_ci95") if v.get("n") else None


def _fraction(block: dict[str, Any], key: str) -> float | None:
    v = (block.get(key) or {}).get("fraction_passing")
    return None if v is None else float(v)


def nearest_subjects(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many training subjects the rows' nearest training volumes/slices come from, and the top one's share.

    A model that collapses onto one average-looking brain scores a high correlation with the real mean while its
    samples all sit nearest the same training subject; real held-out scans of the same cohort show the spread to
    expect. Volume ids are ``dataset__subject__...``.
    """
    subjects = Counter(str(r["nearest_train_by_corr"]).split("__")[:2][-1] for r in rows
                       if r.get("nearest_train_by_corr"))
    n = sum(subjects.values())
    return {"n": n, "distinct": len(subjects), "top_share": subjects.most_common(1)[0][1] / n if n else None}


def collect(demo_dir: Path) -> dict[str, Any]:
    """The acceptance record of one finished demo folder."""
    summary = json.loads((demo_dir / "demo_summary.json").read_text(encoding="utf-8"))
    fidelity = json.loads((demo_dir / "eval" / "fidelity" / "fidelity.json").read_text(encoding="utf-8"))
    samples = fidelity["summary"]["samples"]["pooled"]
    real = fidelity["summary"].get("real_heldout", {}).get("pooled", {})
    copies = samples.get("copies", {})
    measured = {
        "wall_s": float(summary["total_seconds"]),
        "corr_own_modality_median": _median(samples, "corr_modality"),
        "dice_median": _median(samples, "dice"),
        "corr_median_ci95": _ci(samples, "corr_modality"), "dice_median_ci95": _ci(samples, "dice"),
        "contrast_identified": _fraction(samples, "contrast_identified"),
        "tissue_order": _fraction(samples, "tissue_order"),
        "copies_flagged": copies.get("n_flagged"),
        "copies_judged": copies.get("n_judged"),
        "closer_than_heldout": copies.get("n_closer_than_heldout"),
        "subject_specific_r_median": _median(samples, "nearest_train_residual_corr"),
        "n_samples": samples.get("n"),
        "nearest_training_subjects": nearest_subjects(fidelity.get("samples", [])),
    }
    reference = {"corr_own_modality_median": _median(real, "corr_modality"), "dice_median": _median(real, "dice"),
                 "corr_median_ci95": _ci(real, "corr_modality"), "dice_median_ci95": _ci(real, "dice"),
                 "contrast_identified": _fraction(real, "contrast_identified"),
                 "tissue_order": _fraction(real, "tissue_order"),
                 "subject_specific_r_median": _median(real, "nearest_train_residual_corr"), "n": real.get("n"),
                 "nearest_training_subjects": nearest_subjects(fidelity.get("real_heldout", []))}
    targets = {
        "wall_s <= 600": measured["wall_s"] <= WALL_TARGET_S,
        "corr >= 0.90": (measured["corr_own_modality_median"] or 0.0) >= CORR_TARGET,
        "dice >= 0.90": (measured["dice_median"] or 0.0) >= DICE_TARGET,
        "no copies": measured["copies_flagged"] == 0,
        "none closer than held-out": measured["closer_than_heldout"] == 0,
    }
    if measured["contrast_identified"] is not None:
        targets["contrast identified >= 0.9"] = measured["contrast_identified"] >= CONTRAST_TARGET
    levels = {m: {"gap_corr": g["gap"]["corr_modality"]["mean_difference"],
                  "gap_dice": g["gap"]["dice"]["mean_difference"], "levels": g["gap"]["corr_modality"]["levels"],
                  "coverage_total_variation": g["coverage"]["total_variation"]}
              for m, g in (fidelity.get("by_level") or {}).items()}
    spread = {m: {"deviation_ratio": s["deviation_ratio"], "pairwise_ratio": s["pairwise_ratio"]}
              for m, s in (fidelity.get("spread") or {}).items()}
    return {"benchmark": "demo_fidelity", "recipe": summary.get("recipe"), "demo_dir": str(demo_dir),
            "level_matched": levels or None, "spread": spread or None,
            "step_seconds": summary.get("step_seconds"), "options": summary.get("options"),
            "measured": measured, "real_heldout": reference, "targets_met": targets,
            "all_targets_met": all(targets.values()), "copy_rule": fidelity.get("memorization", {}).get("copy_rule"),
            "fidelity_inputs": fidelity.get("inputs", {}).get("generated"), "environment": environment_info("cpu")}


def markdown(record: dict[str, Any]) -> str:
    m, r = record["measured"], record["real_heldout"]

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    def ci(block: dict[str, Any], key: str) -> str:
        return "" if not block.get(key) else f" ({block[key][0]:.3f}-{block[key][1]:.3f})"

    steps = ", ".join(f"{k} {v:.0f} s" for k, v in (record["step_seconds"] or {}).items())
    lines = [f"# `bsynth demo --recipe {record['recipe']}`: time and sample fidelity", "",
             f"Wall {m['wall_s']:.0f} s ({steps}); {m['n_samples']} samples, measured with `bsynth eval fidelity`.", "",
             "| measure | samples | real held-out |", "|---|---|---|",
             f"| correlation with own-modality real mean (median, bootstrap 95% CI) | "
             f"{f(m['corr_own_modality_median'])}{ci(m, 'corr_median_ci95')} | "
             f"{f(r['corr_own_modality_median'])}{ci(r, 'corr_median_ci95')} |",
             f"| brain-mask Dice (median, bootstrap 95% CI) | {f(m['dice_median'])}{ci(m, 'dice_median_ci95')} | "
             f"{f(r['dice_median'])}{ci(r, 'dice_median_ci95')} |",
             f"| requested contrast identified | {f(m['contrast_identified'])} | {f(r['contrast_identified'])} |",
             f"| tissue-contrast order holds | {f(m['tissue_order'])} | {f(r['tissue_order'])} |",
             f"| subject-specific similarity to the nearest training volume (median) | "
             f"{f(m['subject_specific_r_median'])} | {f(r['subject_specific_r_median'])} |",
             f"| closer to a training volume than any held-out volume (raw r or SSIM) | {m['closer_than_heldout']}/"
             f"{m['copies_judged']} | - |",
             f"| flagged as copies of a training volume | {m['copies_flagged']}/{m['copies_judged']} | - |", "",
             *[f"Level-matched ({mod}, samples minus real held-out at the same slice level, weighted by the samples "
               f"per level): r {g['gap_corr']:+.3f}, Dice {g['gap_dice']:+.3f} over {g['levels']} levels; level "
               f"histogram total-variation distance {g['coverage_total_variation']:.3f}.\n"
               for mod, g in (record.get("level_matched") or {}).items()],
             *[f"Spread against real anatomy ({mod}; 1 = as varied as real scans, under 1 = mean-like): deviation "
               f"from the real mean {f(g['deviation_ratio'])}x the held-out volumes', distance between samples "
               f"{f(g['pairwise_ratio'])}x that between training volumes.\n"
               for mod, g in (record.get("spread") or {}).items()],
             "Targets (issue 14): " + "; ".join(f"{k}: {'met' if v else 'NOT met'}"
                                                for k, v in record["targets_met"].items()), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--demo-dir", required=True, type=Path, help="a finished `bsynth demo --out` folder")
    p.add_argument("--out-dir", type=Path, default=LOCAL_RESULTS_DIR,
                   help="where fidelity_<recipe>_demo.json/.md go (default benchmarks/results/local)")
    args = p.parse_args(argv)
    record = collect(args.demo_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"fidelity_{record['recipe']}_demo"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(record), encoding="utf-8")
    print(markdown(record))
    print(f"wrote {stem}.json and .md")
    return 0 if record["all_targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
