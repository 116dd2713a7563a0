"""The seed-000 classifier study on the demo cohort: `bsynth demo --recipe dit3d` -> results/augment_study_demo.*

    python -m benchmarks.augment_study_demo --demo-dir /tmp/tle_demo            # collect a finished demo
    python -m benchmarks.augment_study_demo --demo-dir /tmp/tle_demo --run      # run the demo first
    python -m benchmarks.augment_study_demo --demo-dir /tmp/tle_demo --extra-study /tmp/tle_demo/study_effnet

Writes ``benchmarks/results/augment_study_demo.json`` and ``.md``: the study table (real / synthetic /
real+synthetic 1:0.25 and 1:0.5), per-step wall times, the cohort and its splits (per label), the training
lengths, the sampling settings, the classifier settings and the environment. ``--extra-study`` adds the
table of another ``bsynth study augment`` run on the same store and samples (e.g. EfficientNet-V2-S).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import LOCAL_RESULTS_DIR, environment_info

METRICS = ("f1", "precision", "recall", "accuracy", "auc_roc", "aucpr")
CAVEAT = (
    "What this can and cannot show: it proves the seed-000 pipeline runs end to end on one command "
    "(cohort -> VAE-GAN -> DiT-3D -> per-class samples -> four-condition classifier study) and that the "
    "study's bookkeeping (label-stratified subject-aware splits, mixing ratios, metrics) works. It says "
    "nothing about whether synthetic TLE scans help a classifier: the test split holds {n_test} scans, so "
    "one scan moves accuracy by {step:.0%} and AUC-ROC comes in steps of {auc_step:.2f} (no confidence "
    "interval is meaningful at that size); the generators are trained for minutes on CPU (the VAE-GAN's "
    "reconstructions are blurred brains, the DiT's samples brain-shaped blobs without hippocampal detail, "
    "and the demo's TLE signal is a unilateral hippocampal volume loss of a few 4-mm voxels), and one seed "
    "was run, so differences between the rows are noise, not an augmentation effect. Table 4 of 000 rests on "
    "3540 real scans (about 300 in its test split), full-size generators and 100 classifier epochs on a GPU."
)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _run_settings(run: Path) -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    eng = cfg.get("engine", {})
    last_val: dict[str, Any] = {}
    log = run / "logs" / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            vals = {k: v for k, v in rec.items() if k.startswith("val/")}
            if vals:
                last_val = {"step": rec.get("step"), **vals}
    return {"max_steps": eng.get("max_steps"), "micro_batch": eng.get("micro_batch"), "last_validation": last_val,
            "recipe": {k: v for k, v in (cfg.get("recipe") or {}).items() if not isinstance(v, dict)}}


def _cohort(demo: Path) -> dict[str, Any]:
    from bsynth_hpc.data.store import VolumeStore

    store = demo / "store.zarr"
    info = VolumeStore(store).info
    splits = info["splits"]
    with (store / "table.csv").open(newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    per = Counter((splits["assignment"][f"{r['dataset']}/{r['subject']}"], r["label"]) for r in table)
    desc = _read_json(demo / "cohort" / "dataset_description.json")["BsynthDemoCohort"]
    return {"n_subjects": desc["n_subjects"], "datasets": desc.get("datasets", "all"), "seed": desc["seed"],
            "spacing_mm": desc["spacing_mm"], "store_shape": list(info.get("shape") or []),
            "modalities": sorted({r["modality"] for r in table}), "n_volumes": len(table),
            "splits": {"method": splits["method"], "stratify": splits.get("stratify"),
                       "fractions": splits["fractions"],
                       "volumes_per_label": {s: {lab: per[(s, lab)] for lab in sorted({r["label"] for r in table})}
                                             for s in ("train", "val", "test")}}}


def _samples(demo: Path) -> dict[str, Any]:
    with (demo / "samples" / "samples.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0] if rows else {}
    return {"per_class": dict(Counter(r["label"] for r in rows)), "guidance": first.get("guidance"),
            "solver": first.get("solver"), "steps": first.get("steps")}


def _table(report: dict[str, Any]) -> list[str]:
    ev = report["eval"]
    cfg = report["config"]
    lines = [f"classifier {cfg['arch']}, {cfg['epochs']} epochs, {cfg['n_slices']} coronal slices of "
             f"{cfg.get('modality', 'all')} volumes as channels, {cfg.get('optimizer', '')}; evaluated on the "
             f"{ev['split']} split (n = {ev['n']}, {ev['n_positive']} TLE); study wall time {report['seconds']:.0f} s.",
             "", "| train set | n real | n synthetic | F1 | precision | recall | accuracy | AUC-ROC | AUCPR | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["conditions"].items():
        lines.append(f"| {name} | {r['n_real']} | {r['n_synthetic']} | "
                     + " | ".join(f"{r[m]:.3f}" for m in METRICS) + f" | {r['train_seconds']:.0f} |")
    return lines


def _timing_run(spec: str, study: dict[str, Any]) -> dict[str, Any]:
    """``DIR=NOTE``: another run of the demo (its step times, whether its study table is identical)."""
    folder, _, note = spec.partition("=")
    other = _read_json(Path(folder) / "demo_summary.json")
    other_study = _read_json(Path(folder) / "study" / "metrics.json")
    same = all(other_study["conditions"].get(k, {}).get(m) == v[m]
               for k, v in study["conditions"].items() for m in METRICS)
    opts = other["options"]
    return {"command": f"bsynth demo --recipe dit3d --out {opts['out']} --arch {opts.get('arch')}", "note": note,
            "step_seconds": other["step_seconds"], "total_seconds": other["total_seconds"],
            "study_table_identical": same}


def collect(demo: Path, extra: Sequence[Path] = (), load: str | None = None,
            timing_runs: Sequence[str] = ()) -> dict[str, Any]:
    summary = _read_json(demo / "demo_summary.json")
    study = _read_json(demo / "study" / "metrics.json")
    n_test = int(study["eval"]["n"])
    pos = int(study["eval"]["n_positive"])
    result: dict[str, Any] = {
        "benchmark": "augment_study_demo",
        "command": (f"bsynth demo --recipe dit3d --out {summary['options']['out']} "
                    f"--arch {summary['options'].get('arch')}"),
        "protocol": "seed 000 §5.3 on the embedded demo cohort (demo-epilepsy healthy / TLE, T1w), CPU",
        "environment": environment_info("cpu"),
        "host_load": load,
        "cohort": _cohort(demo),
        "training": {"dit3d-vae": _run_settings(demo / "runs" / "dit3d-vae"),
                     "dit3d": _run_settings(demo / "runs" / "dit3d")},
        "sampling": _samples(demo),
        "study": study,
        "extra_studies": [_read_json(p / "metrics.json") for p in extra],
        "step_seconds": summary["step_seconds"],
        "total_seconds": summary["total_seconds"],
        "other_runs": [_timing_run(t, study) for t in timing_runs],
        "arch_note": (summary.get("study") or {}).get("note", ""),
        "caveat": CAVEAT.format(n_test=n_test, step=1.0 / max(n_test, 1),
                                auc_step=1.0 / max(pos * (n_test - pos), 1)),
    }
    return result


def markdown(r: dict[str, Any]) -> str:
    c, env = r["cohort"], r["environment"]
    sp = c["splits"]
    tr = r["training"]
    lines = ["# Synthetic-augmentation classifier study on the demo cohort (seed 000 §5.3)", "",
             f"`{r['command']}` on {env['cpu_count']} CPU cores ({env['device_name']}, torch {env['torch']}, "
             f"Python {env['python']}, commit {env['git_commit']} plus the working tree at collection)"
             f"{'; host: ' + r['host_load'] if r['host_load'] else ''}.",
             "",
             f"Cohort: {c['n_subjects']} subjects of {', '.join(c['datasets']) if isinstance(c['datasets'], list) else c['datasets']} "
             f"({', '.join(c['modalities'])}, {c['n_volumes']} volumes) at {c['spacing_mm']:g} mm, store shape "
             f"{'x'.join(map(str, c['store_shape']))}; splits {sp['method']} by {sp['stratify']} at "
             f"{'/'.join(f'{f:.3f}' for f in sp['fractions'])} (train/val/test: 80 % train, the rest 37:63 val:test as in 000):",
             "", "| split | " + " | ".join(sorted(next(iter(sp["volumes_per_label"].values())))) + " |",
             "|---|" + "---|" * len(next(iter(sp["volumes_per_label"].values())))]
    for s, per in sp["volumes_per_label"].items():
        lines.append(f"| {s} | " + " | ".join(str(v) for _, v in sorted(per.items())) + " |")
    smp = r["sampling"]
    def _val(run: dict[str, Any]) -> str:
        v = run.get("last_validation") or {}
        return ", ".join(f"{k} {x:.4g}" for k, x in v.items() if k != "step") or "no validation"

    lines += ["", f"Generators: dit3d-vae (tiny VAE-GAN) {tr['dit3d-vae']['max_steps']} steps ({_val(tr['dit3d-vae'])}), "
                  f"dit3d (tiny DiT-3D) {tr['dit3d']['max_steps']} steps ({_val(tr['dit3d'])}), batch "
                  f"{tr['dit3d']['micro_batch']}; samples: "
                  + ", ".join(f"{n} {k}" for k, n in sorted(smp["per_class"].items()))
                  + f" ({smp['solver']} {smp['steps']} steps, CFG {smp['guidance']}).", "",
              "## Study table", ""]
    lines += _table(r["study"])
    if r["arch_note"]:
        lines += ["", f"Note: {r['arch_note']}."]
    for extra in r["extra_studies"]:
        lines += ["", f"## Same store and samples, `bsynth study augment --arch {extra['config']['arch']}`", ""]
        lines += _table(extra)
    runs = [("this run", r["step_seconds"], r["total_seconds"])]
    runs += [(f"run {i + 2}", o["step_seconds"], o["total_seconds"]) for i, o in enumerate(r["other_runs"])]
    lines += ["", "## Wall time per step (seconds)", "", "| step | " + " | ".join(n for n, _, _ in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines += [f"| {k} | " + " | ".join(f"{t.get(k, float('nan')):.0f}" for _, t, _ in runs) + " |"
              for k in r["step_seconds"]]
    lines += ["| **total** | " + " | ".join(f"**{tot:.0f}**" for _, _, tot in runs) + " |", ""]
    for i, o in enumerate(r["other_runs"]):
        lines.append(f"Run {i + 2}: `{o['command']}`; {o['note']}; its study table is "
                     f"{'identical' if o['study_table_identical'] else 'different'}.")
    lines += ["", "## Caveat", "", r["caveat"], ""]
    return "\n".join(lines)


def run_demo(demo: Path) -> int:
    """Run the user's command, ``bsynth demo --recipe dit3d --out DEMO``, in a child process: the benchmark
    measures that command as typed, and benchmarks never import the CLI (the CLI imports them for
    ``bsynth bench``)."""
    return subprocess.run([sys.executable, "-m", "bsynth_hpc.cli", "demo", "--recipe", "dit3d", "--out", str(demo)],
                          check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="augment_study_demo", description=__doc__.split("\n")[0])
    p.add_argument("--demo-dir", default="tle_demo", help="the demo's --out folder")
    p.add_argument("--run", action="store_true", help="run `bsynth demo --recipe dit3d` into --demo-dir first")
    p.add_argument("--extra-study", action="append", default=[], help="another study folder (metrics.json) to add")
    p.add_argument("--load", default=None, help="host load note to record (e.g. uptime's load averages)")
    p.add_argument("--timing-run", action="append", default=[], metavar="DIR=NOTE",
                   help="another finished demo folder whose step times are listed too (with a note)")
    p.add_argument("--out", default=str(LOCAL_RESULTS_DIR / "augment_study_demo"), help="output path without suffix")
    args = p.parse_args(argv)
    demo = Path(args.demo_dir)
    if args.run:
        code = run_demo(demo)
        if code:
            return code
    load = args.load or (" ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1/5/15 min, at collection)")
    result = collect(demo, [Path(e) for e in args.extra_study], load, args.timing_run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
