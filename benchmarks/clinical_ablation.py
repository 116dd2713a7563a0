"""Seed 002's Table 2 ablation (and Table 4's "without cls/reg" column) at equal budget on the demo cohort.

Each row of ``configs/clinical_ablation.yaml`` (3D VAE, 3D VAE-GAN, Xception VAE-GAN, + clinical conditions,
+ perceptual loss) is one ``clinical`` run from ``configs/clinical_tiny.yaml`` with the demo's training length
(``CLINICAL_TRAINING["clinical"]`` of the clinical demo, its perceptual switch left to the row), the same seed and
data order, on one store and one frozen ``clinical-aux`` run; an extra arm "w/o cls/reg" is the + clinical
conditions row with ``cls_weight = reg_weight = 0``, scored as Table 4's ablation column of that row. Every run
is scored by ``bsynth eval clinical`` (c of the real ``--split`` volumes, ``--n`` volumes, the cohort's label maps):

=====================  ==========================================================================================
parameters             at the tiny size trained here and at 002's 128^3 size (002: 24.6/35.7/7.9/8.1/13.2 M)
val L1                 the run's best validation L1 of posterior-mean reconstructions
SSIM                   tri-planar SSIM of reconstructions of the ``--split`` volumes (weight-free)
bal. acc / ROI MSE     frozen aux heads on generated volumes against the requested c (Table 4)
r(ventricles)          independent ROI check: CSF volume in the template's ventricle region vs the requested ratio
sweep Spearman         controllability: measured CSF along the per-class ventricle sweep, CN and AD (and whether
                       it rises: never falling, ending higher)
=====================  ==========================================================================================

FID and LPIPS use networks that must come from local weight files (``--weights``, ``--lpips-weights``); without
them they are computed on random networks (``--allow-random-features``, stamped) and left out of the table.

    python -m benchmarks.clinical_ablation --demo-out out/demo-clinical    # reuse a finished clinical demo's store
    bsynth bench clinical-ablation --subjects 32                            # or build cohort, store and aux heads
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, write_results_and_report  # noqa: E402
from bsynth_hpc.engine.config import packaged_config  # noqa: E402
from bsynth_hpc.engine.run import train_main  # noqa: E402
from bsynth_hpc.eval.cli import main as eval_main  # noqa: E402
from bsynth_hpc.eval.clinical import rises  # noqa: E402
from bsynth_hpc.prep.demo import LABEL_DIR  # noqa: E402
from bsynth_hpc.recipes.clinical.ablation import ablation_parameters, ablation_rows  # noqa: E402
from bsynth_hpc.recipes.clinical.demo import CLINICAL_TRAINING, DEMO  # noqa: E402
from bsynth_hpc.recipes.common.demo import Demo  # noqa: E402

PROG = "bsynth bench clinical-ablation"
NO_CLS_REG = "w/o cls/reg"
CONDITIONED_ROW = "3D Xception-based VAE-GAN + Clinical conditions"


def arms() -> list[dict[str, Any]]:
    """Table 2's rows, then the + clinical conditions row without the frozen heads' losses."""
    rows = ablation_rows()
    base = next(r for r in rows if r["name"] == CONDITIONED_ROW)
    return rows + [{"name": NO_CLS_REG, "overrides": [*base["overrides"], "recipe.cls_weight=0",
                                                       "recipe.reg_weight=0"]}]


def demo_training(steps: int | None) -> list[str]:
    """The clinical demo's training settings without its perceptual switch (each row sets its own)."""
    out = [o for o in CLINICAL_TRAINING["clinical"] if not o.startswith("recipe.perceptual_weight")]
    if steps is not None:
        out = [o for o in out if not o.startswith(("engine.max_steps", "engine.val_every", "engine.ckpt_every"))]
        out += [f"engine.max_steps={steps}", f"engine.val_every={steps}", f"engine.ckpt_every={steps}"]
    return out


def prepare(work: Path, subjects: int, seed: int) -> tuple[Path, Path, Path]:
    """The clinical demo's steps 1-3: cohort (demo-dementia, T1w, 4 mm) -> label-stratified store -> aux heads."""
    args = argparse.Namespace(out=str(work), subjects=subjects, spacing=4.0, workers=1, seed=seed, override=[],
                              recipe="clinical")
    demo = Demo(args, 3)
    if demo.cohort_and_store(datasets=["demo-dementia"], modalities=["T1w"], stratify="label"):
        raise SystemExit("preprocessing failed")
    with demo.step("clinical-aux", "training the frozen AD/CN + ROI heads"):
        if demo.train("clinical-aux", "clinical-aux_tiny.yaml", *CLINICAL_TRAINING["clinical-aux"]):
            raise SystemExit("clinical-aux training failed")
    return demo.store, work / "cohort" / LABEL_DIR, demo.runs / "clinical-aux"


def best_validation(run: Path, metric: str = "l1") -> float | None:
    """The smallest validation ``metric`` in RUN/logs/metrics.jsonl (None when never validated)."""
    best = None
    for line in (run / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key.startswith("val") and key.endswith(metric) and isinstance(value, (int, float)):
                best = value if best is None else min(best, value)
    return best


def score(result: dict[str, Any]) -> dict[str, Any]:
    """The table's cells from one clinical.json (module docstring)."""
    gen = result["consistency"]["generated"]
    roi = result.get("roi_check", {}).get("generated", {})
    sweep = result["controllability"]
    row = {"ssim_triplanar": result["image_quality"].get("ssim_triplanar"),
           "balanced_accuracy": gen.get("bac_percent"), "roi_mse_1e5": gen.get("roi_mse_x1e-5"),
           "r_ventricles": roi.get("ventricles", {}).get("pearson_r"),
           "r_hippocampus": roi.get("hippocampus", {}).get("pearson_r"),
           "sweep_spearman": {k: sweep.get(k, {}).get("spearman") for k in ("CN", "AD")},
           "sweep_rises": {k: rises(sweep[k]["measured_csf"]) if "measured_csf" in sweep.get(k, {}) else None
                           for k in ("CN", "AD")},
           "seconds_per_sample": result["timing"]["manual_c_seconds"],
           "fid_resnet18": result["image_quality"].get("fid_resnet18"),
           "lpips_triplanar": result["image_quality"].get("lpips_triplanar"),
           "random_features": result["random_features"]}
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = [("params tiny (M)", "parameters_tiny_m"), ("params 128^3 (M)", "parameters_full_m"),
            ("val L1", "val_l1"), ("SSIM", "ssim_triplanar"), ("bal. acc", "balanced_accuracy"),
            ("ROI MSE x1e-5", "roi_mse_1e5"), ("r(ventricles)", "r_ventricles"), ("r(hippocampus)", "r_hippocampus"),
            ("train s", "train_seconds")]
    lines = ["# Seed 002 Table 2 ablation at equal budget", "",
             f"{meta['training']}, {meta['n']} generated volumes per row (c of the real {meta['split']} volumes), "
             f"device {meta['device']}, {meta['seconds']:.0f} s in all. FID/LPIPS need local weights"
             f"{' (random here: left out)' if meta['random_features'] else ''}.", "",
             "| row | " + " | ".join(c for c, _ in cols) + " | sweep Spearman CN / AD |",
             "|---|" + "---|" * (len(cols) + 1)]
    for name, r in rows.items():
        sp = r["sweep_spearman"]
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for _, k in cols)
                     + f" | {_fmt(sp['CN'])} / {_fmt(sp['AD'])} |")
    with_, without = rows.get(CONDITIONED_ROW), rows.get(NO_CLS_REG)
    if with_ and without:
        lines += ["", "## Table 4: clinical consistency of generated volumes, with and without L_cls / L_reg", "",
                  "| | balanced accuracy | ROI MSE x1e-5 |", "|---|---|---|",
                  f"| with | {_fmt(with_['balanced_accuracy'])} | {_fmt(with_['roi_mse_1e5'])} |",
                  f"| without | {_fmt(without['balanced_accuracy'])} | {_fmt(without['roi_mse_1e5'])} |"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-out", default=None,
                   help="a finished `bsynth demo --recipe clinical` folder: reuse its store, label maps and aux run")
    p.add_argument("--store", default=None, help="or a store of CN/AD T1w volumes with clinical vectors ...")
    p.add_argument("--labels", default=None, help="... the label maps of its cohort ...")
    p.add_argument("--aux-run", default=None, help="... and a clinical-aux run trained on it at the same size")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--subjects", type=int, default=DEMO.default_subjects,
                   help="demo-dementia subjects when building the store (default: the demo's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per row (default: the demo's)")
    p.add_argument("--rows", nargs="+", default=None, help="row names to run (default: all, then w/o cls/reg)")
    p.add_argument("--n", type=int, default=16, help="generated volumes per row")
    p.add_argument("--split", default="test", help="real volumes whose c the rows are scored with")
    p.add_argument("--weights", default=None, help="MedicalNet ResNet-18 checkpoint (FID)")
    p.add_argument("--lpips-weights", default=None, help="torchvision AlexNet state dict (LPIPS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(list(argv) if argv is not None else None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = [a for a in arms() if args.rows is None or a["name"] in args.rows]
    if not chosen:
        raise SystemExit(f"--rows matched none of: {', '.join(a['name'] for a in arms())}")
    training = demo_training(args.steps)
    full = {r["name"]: r["parameters"] for r in ablation_parameters("full")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.demo_out:
            d = Path(args.demo_out)
            store, labels, aux = d / "store.zarr", d / "cohort" / LABEL_DIR, d / "runs" / "clinical-aux"
        elif args.store:
            if not (args.labels and args.aux_run):
                raise SystemExit("--store needs --labels and --aux-run")
            store, labels, aux = Path(args.store), Path(args.labels), Path(args.aux_run)
        else:
            store, labels, aux = prepare(work / "demo", args.subjects, args.seed)
        rows: dict[str, dict[str, Any]] = {}
        for arm in chosen:
            name = arm["name"]
            slug = name.replace(" ", "_").replace("+", "plus").replace("/", "_")
            run, evaluation = work / "runs" / slug, work / "eval" / slug
            t = time.perf_counter()
            code = train_main(["clinical", "--config", str(packaged_config("clinical_tiny.yaml")), "--store",
                               str(store), "--run-dir", str(run), "--resume", "auto", "engine.progress=false",
                               "engine.tensorboard=false", f"engine.seed={args.seed}", f"recipe.aux_run={aux}",
                               *training, *arm["overrides"]])
            if code:
                raise SystemExit(f"{name}: training failed (exit {code})")
            train_seconds = time.perf_counter() - t
            eval_args = ["clinical", "--run", str(run), "--aux-run", str(aux), "--store", str(store), "--split",
                         args.split, "--labels", str(labels), "--n", str(args.n), "--sweep", "5",
                         "--timing-samples", "3", "--per-plane", "8", "--device", str(device), "--seed",
                         str(args.seed), "--out", str(evaluation)]
            eval_args += (["--weights", args.weights] if args.weights else []) + \
                         (["--lpips-weights", args.lpips_weights] if args.lpips_weights else [])
            if not (args.weights and args.lpips_weights):
                eval_args.append("--allow-random-features")
            if eval_main(eval_args):
                raise SystemExit(f"{name}: bsynth eval clinical failed")
            result = json.loads((evaluation / "clinical.json").read_text())
            tiny = result["parameters"]
            rows[name] = {"overrides": arm["overrides"], "parameters_full_m": full.get(name, 0) / 1e6 or None,
                          "parameters_tiny_m": (tiny["vae_gan"] + (tiny["discriminator"]
                                                if "recipe.adv_weight=0" not in arm["overrides"] else 0)) / 1e6,
                          "val_l1": best_validation(run), "train_seconds": round(train_seconds, 1),
                          **score(result)}
            print(f"[{PROG}] {name}: {rows[name]}", flush=True)
    random = any(r["random_features"] for r in rows.values())
    meta = {"training": "clinical_tiny.yaml + " + " ".join(training), "n": args.n, "split": args.split,
            "device": str(device), "random_features": random, "seconds": round(time.perf_counter() - t0, 1)}
    out = {"benchmark": "clinical_ablation", "environment": environment_info(device), "settings": vars(args),
           **meta, "rows": rows}
    write_results_and_report("clinical_ablation", out, markdown(rows, meta), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
