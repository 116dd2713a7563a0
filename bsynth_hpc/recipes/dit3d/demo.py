"""``bsynth demo --recipe dit3d`` (seed 000): demo-epilepsy only (healthy / TLE, 40 subjects, T1w) at
4 mm -> prep with label-stratified splits (80 % train, the held-out 20 % cut 37 : 63 into val : test,
as in 000 §5.3.1) -> tiny VAE-GAN (dit3d-vae, configs/dit3d-vae_demo.yaml) -> encode -> tiny
class-conditional DiT-3D (dit3d, configs/dit3d_demo.yaml: v prediction, chosen by measurement) ->
``--n-per-class`` samples per class (CFG 3) into OUT/samples (one samples.csv) -> sample fidelity and
memorization audit (OUT/eval/fidelity) -> the synthetic-augmentation classifier study (real /
synthetic / real + synthetic 1:0.25 and 1:0.5; 000's EfficientNet-V2-S on 34 coronal slices, or
``--arch tiny`` for a seconds-long CNN) into OUT/study (metrics.md, metrics.json).

Writes ``OUT/demo_summary.json``; a rerun resumes finished training and encoding, the samples,
fidelity and the study are redone.
"""
from __future__ import annotations

import argparse
import math
import shutil
from typing import Any

import yaml

from ...engine.config import packaged_config
from ...errors import ConfigError
from ...eval.fidelity import headline, run_fidelity
from ...study.augment import SEED000_CORONAL_MM, run_augment_study
from ..common.demo import Demo, RecipeDemo, demo_shape
from ..encode import encode_store
from .sampling import DiT3dSampleConfig, generate

__all__ = ["DEMO", "run_dit3d_demo", "fit_latent_grid", "study_slices", "add_dit3d_demo_options", "DIT3D_SPLITS",
           "DIT3D_CLASSES", "DIT3D_CONFIGS"]

# 000 §5.3.1: an 80 / 20 split of the real scans; the 20 % is cut into validation (37 %) and test (63 %)
DIT3D_SPLITS: tuple[float, float, float] = (0.8, 0.2 * 0.37, 0.2 * 0.63)
DIT3D_CLASSES: tuple[str, str] = ("healthy", "TLE")
# the demo's packaged configs (steps, batch, EMA and the DiT's v prediction measured: see their headers)
DIT3D_CONFIGS: dict[str, str] = {"dit3d-vae": "dit3d-vae_demo.yaml", "dit3d": "dit3d_demo.yaml"}
TINY_NOTE = ("the classifier is a tiny CNN (--arch tiny), not 000's EfficientNet-V2-S (the default): faster on CPU "
             "(about 10 s against about 4 minutes for the four conditions on 2 idle cores), but not the seed's network")


def study_slices(spacing_mm: float) -> int:
    """000's 136 coronal 1-mm slices as the same span of the demo grid (34 at 4 mm), within its depth."""
    return max(1, min(demo_shape(spacing_mm)[1], int(round(SEED000_CORONAL_MM / spacing_mm))))


def fit_latent_grid(spacing_mm: float, vae_config: str = DIT3D_CONFIGS["dit3d-vae"],
                    dit_config: str = DIT3D_CONFIGS["dit3d"]) -> list[str]:
    """dit3d-vae overrides so the latent grid of the demo shape divides into DiT patches: the configs' factor
    (4) fits 2 and 4 mm; coarser grids (8 mm: 24x28x20 -> 6x7x5) get the largest factor that fits."""
    factor = int(yaml.safe_load(packaged_config(vae_config).read_text())["recipe"]["downsample_factor"])
    patch = yaml.safe_load(packaged_config(dit_config).read_text())["recipe"]["patch_size"]
    shape = demo_shape(spacing_mm)
    for f in [factor] + [f for f in (8, 4, 2, 1) if f < factor]:
        if all(math.ceil(n / f) % p == 0 for n, p in zip(shape, patch)):
            return [] if f == factor else [f"recipe.downsample_factor={f}"]
    raise ConfigError(f"--spacing {spacing_mm:g}: no VAE downsampling factor gives a latent grid of {shape} that "
                      f"the DiT patch {patch} divides; use --spacing 4")


def run_dit3d_demo(args: argparse.Namespace) -> int:
    """Seed 000 (TLE): epilepsy cohort -> prep -> dit3d-vae -> encode -> dit3d -> samples per class -> study."""
    fit = fit_latent_grid(args.spacing)   # fail before any work on a grid the DiT cannot patch
    demo = Demo(args, 8)
    code = demo.cohort_and_store(datasets=["demo-epilepsy"], modalities=["T1w"], splits=DIT3D_SPLITS,
                                 stratify="label")
    if code:
        return code
    runs, store = demo.runs, demo.store
    with demo.step("dit3d-vae", f"stage A: training the tiny VAE-GAN (dit3d-vae, configs/{DIT3D_CONFIGS['dit3d-vae']})"):
        if fit:
            print(f"{args.spacing:g} mm grid {demo_shape(args.spacing)}: {fit[0]} so the DiT patches tile the latents")
        code = demo.train("dit3d-vae", DIT3D_CONFIGS["dit3d-vae"], *fit)
    if code:
        return code
    latents = demo.out / "latents.zarr"
    with demo.step("encode", f"encoding the store into {latents} (posterior means, scaled by s_z)"):
        encode_store(runs / "dit3d-vae", store, latents, batch_size=4)
    with demo.step("dit3d", "stage B: training the tiny class-conditional DiT-3D "
                            f"(dit3d, configs/{DIT3D_CONFIGS['dit3d']})"):
        code = demo.train("dit3d", DIT3D_CONFIGS["dit3d"], f"recipe.latents={latents}")
    if code:
        return code
    samples = demo.out / "samples"
    n = int(args.n_per_class)
    with demo.step("sample", f"sampling {n} volumes per class ({' and '.join(DIT3D_CLASSES)}, CFG {args.cfg:g}) "
                             f"into {samples}"):
        shutil.rmtree(samples, ignore_errors=True)   # the sampler appends; a rerun starts the cohort afresh
        generate(DiT3dSampleConfig(run=str(runs / "dit3d"), out=str(samples), n=n, cfg=float(args.cfg),
                                   batch_size=8, seed=int(args.seed), steps=args.sample_steps or None))
    fidelity = demo.out / "eval" / "fidelity"
    with demo.step("fidelity", f"sample fidelity + memorization audit into {fidelity} (no weights)"):
        result, _ = run_fidelity(store, samples, fidelity)
        print(f"[fidelity] {headline(result)}", flush=True)
    study = demo.out / "study"
    n_slices = study_slices(args.spacing)
    if args.arch == "tiny":
        print(f"\nnote: {TINY_NOTE}", flush=True)
    with demo.step("study", f"classifier study ({args.arch}, {args.study_epochs} epochs, {n_slices} coronal slices): "
                            f"real / synthetic / real+synthetic 1:0.25 and 1:0.5 into {study}"):
        run_augment_study(store, samples, study, classes=DIT3D_CLASSES, ratios=(0.25, 0.5),
                          epochs=args.study_epochs, batch_size=16, n_slices=n_slices, arch=args.arch,
                          seed=args.seed, device="cpu")
    print()
    print((study / "metrics.md").read_text(encoding="utf-8"))
    demo.extra = {"study": {"arch": args.arch, "epochs": args.study_epochs, "n_slices": n_slices,
                            "note": TINY_NOTE if args.arch == "tiny" else "",
                            "metrics_json": str(study / "metrics.json")},
                  "splits": list(DIT3D_SPLITS)}
    return demo.finish(0, [
        ("store", f"{store}   (demo-epilepsy T1w, label-stratified splits)"),
        ("VAE-GAN run", f"{runs / 'dit3d-vae'}   (export/vae.safetensors + .json with s_z)"),
        ("latents", str(latents)),
        ("DiT-3D run", f"{runs / 'dit3d'}   (export/dit.safetensors + dit.json)"),
        ("samples", f"{samples}   (NIfTI + previews/*.png + samples.csv, {n} per class)"),
        ("fidelity", f"{fidelity}   (fidelity.json, fidelity.md, nearest_training.png)"),
        ("study", f"{study}   (metrics.md, metrics.json)"),
    ])


def add_dit3d_demo_options(group: Any) -> None:
    """The dit3d-only ``bsynth demo`` flags (an argparse argument group)."""
    group.add_argument("--n-per-class", type=int, default=16, help="synthetic volumes per class (default 16)")
    group.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    group.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the run's config)")
    group.add_argument("--arch", choices=("efficientnet_v2_s", "tiny"), default="efficientnet_v2_s",
                       help="classifier of the study: 000's EfficientNet-V2-S (default, ~4 min on 2 CPU cores) or a "
                            "tiny CNN (seconds)")
    group.add_argument("--study-epochs", type=int, default=30, help="classifier epochs per condition (default 30)")


DEMO = RecipeDemo(run=run_dit3d_demo, default_subjects=40, add_options=add_dit3d_demo_options,
                  summary="seed 000: healthy/TLE synthesis + classifier study")
