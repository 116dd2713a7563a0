"""``bsynth demo --recipe dit3d`` (seed 000): demo-epilepsy only (healthy / TLE, 40 subjects, T1w) at
4 mm -> prep with label-stratified splits (80 % train, the held-out 20 % cut 37 : 63 into val : test,
as in 000 §5.3.1) -> tiny VAE-GAN (dit3d-vae) -> encode -> tiny class-conditional DiT-3D ->
``--n-per-class`` samples per class (CFG 3) into OUT/samples (one samples.csv) -> the
synthetic-augmentation classifier study (real / synthetic / real + synthetic 1:0.25 and 1:0.5;
EfficientNet-V2-S on 34 coronal slices, ``--arch tiny`` for a seconds-long CNN) into OUT/study
(metrics.md, metrics.json). About 10 minutes on 2 idle CPU cores.

Writes ``OUT/demo_summary.json``; a rerun resumes finished training and encoding, the samples and
the study are redone.
"""
from __future__ import annotations

import argparse
import math
import shutil
from typing import Any

import yaml

from ...engine.config import packaged_config
from ...errors import ConfigError
from ...study.augment import SEED000_CORONAL_MM, run_augment_study
from ..common.demo import Demo, RecipeDemo, demo_shape
from ..encode import encode_store
from .sampling import DiT3dSampleConfig, generate

__all__ = ["DEMO", "run_dit3d_demo", "fit_latent_grid", "study_slices", "add_dit3d_demo_options", "DIT3D_SPLITS",
           "DIT3D_CLASSES", "DIT3D_TRAINING"]

# 000 §5.3.1: an 80 / 20 split of the real scans; the 20 % is cut into validation (37 %) and test (63 %)
DIT3D_SPLITS: tuple[float, float, float] = (0.8, 0.2 * 0.37, 0.2 * 0.63)
DIT3D_CLASSES: tuple[str, str] = ("healthy", "TLE")
# demo training lengths on top of the tiny configs (before --override), about 3 + 2 minutes on 2 idle CPU cores:
# the VAE-GAN (~1 s a step) gets 200 steps (val PSNR 18.5 dB at its config's 40 steps, 21.5 dB at 200: brain
# outline and ventricles instead of a blob); the DiT (~0.03 s a step) 5000 (at 500 its samples are noise blobs)
DIT3D_TRAINING: dict[str, tuple[str, ...]] = {
    "dit3d-vae": ("engine.max_steps=200", "engine.val_every=50", "engine.ckpt_every=100"),
    "dit3d": ("engine.max_steps=5000", "engine.val_every=1000", "engine.ckpt_every=1000"),
}
TINY_NOTE = ("the classifier is a tiny CNN (--arch tiny), not 000's EfficientNet-V2-S (the default): faster on CPU "
             "(about 10 s against about 4 minutes for the four conditions on 2 idle cores), but not the seed's network")


def study_slices(spacing_mm: float) -> int:
    """000's 136 coronal 1-mm slices as the same span of the demo grid (34 at 4 mm), within its depth."""
    return max(1, min(demo_shape(spacing_mm)[1], int(round(SEED000_CORONAL_MM / spacing_mm))))


def fit_latent_grid(spacing_mm: float, vae_config: str = "dit3d-vae_tiny.yaml",
                    dit_config: str = "dit3d_tiny.yaml") -> list[str]:
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
    demo = Demo(args, 7)
    code = demo.cohort_and_store(datasets=["demo-epilepsy"], modalities=["T1w"], splits=DIT3D_SPLITS,
                                 stratify="label")
    if code:
        return code
    runs, store = demo.runs, demo.store
    with demo.step("dit3d-vae", "stage A: training the tiny VAE-GAN (dit3d-vae, configs/dit3d-vae_tiny.yaml, "
                                f"{' '.join(DIT3D_TRAINING['dit3d-vae'])})"):
        if fit:
            print(f"{args.spacing:g} mm grid {demo_shape(args.spacing)}: {fit[0]} so the DiT patches tile the latents")
        code = demo.train("dit3d-vae", "dit3d-vae_tiny.yaml", *DIT3D_TRAINING["dit3d-vae"], *fit)
    if code:
        return code
    latents = demo.out / "latents.zarr"
    with demo.step("encode", f"encoding the store into {latents} (posterior means, scaled by s_z)"):
        encode_store(runs / "dit3d-vae", store, latents, batch_size=4)
    with demo.step("dit3d", "stage B: training the tiny class-conditional DiT-3D (dit3d, configs/dit3d_tiny.yaml, "
                            f"{' '.join(DIT3D_TRAINING['dit3d'])})"):
        code = demo.train("dit3d", "dit3d_tiny.yaml", *DIT3D_TRAINING["dit3d"], f"recipe.latents={latents}")
    if code:
        return code
    samples = demo.out / "samples"
    n = int(args.n_per_class)
    with demo.step("sample", f"sampling {n} volumes per class ({' and '.join(DIT3D_CLASSES)}, CFG {args.cfg:g}) "
                             f"into {samples}"):
        shutil.rmtree(samples, ignore_errors=True)   # the sampler appends; a rerun starts the cohort afresh
        generate(DiT3dSampleConfig(run=str(runs / "dit3d"), out=str(samples), n=n, cfg=float(args.cfg),
                                   batch_size=8, seed=int(args.seed), steps=args.sample_steps or None))
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
