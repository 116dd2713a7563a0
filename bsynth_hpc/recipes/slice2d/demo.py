"""``bsynth demo --recipe slice2d`` (seeds 001 / 004): the demo cohort's glioma dataset (FLAIR, normal and
tumour subjects) at 4 mm -> prep -> ``--slices-from`` (non-empty axial slices, ``--slice-size`` px, [-1, 1],
the subject splits kept) -> tiny slice VAE (slice2d-vae) -> encode -> tiny latent U-Net (slice2d-ldm,
``--slice-mode unconditional`` = 001 with FFT loss and CutMix, ``conditional`` = 004 with class embedding,
label dropout and class-balanced batches) -> DDIM samples (grid, trajectory) -> ``eval fidelity``
(correlation / Dice against the real slice means).

Writes ``OUT/demo_summary.json``; a rerun resumes finished training and encoding, the samples and the
fidelity report are redone.
"""
from __future__ import annotations

import argparse
import shutil
from typing import Any

from ...eval.fidelity import headline, run_fidelity
from ...prep.slices_from import SliceConfig, slices_from_store
from ..common.demo import Demo, RecipeDemo
from ..encode import encode_store
from .ldm import MODES
from .sampling import Slice2dSampleConfig, generate

__all__ = ["DEMO", "run_slice2d_demo", "add_slice2d_demo_options", "SLICE2D_TRAINING", "DEMO_DATASET"]

DEMO_DATASET = "demo-glioma"   # labels normal / tumour (004's classes); FLAIR is one of 001's contrasts
DEMO_MODALITY = "FLAIR"
SLICE2D_TRAINING: dict[str, tuple[str, ...]] = {
    "slice2d-vae": ("engine.max_steps=1000", "engine.val_every=250", "engine.ckpt_every=250"),
    "slice2d-ldm": ("engine.max_steps=6000", "engine.val_every=2000", "engine.ckpt_every=1000",
                    "recipe.cutmix_prob=0"),
}
"""Demo training lengths on top of the tiny configs (before ``--override``). Fidelity of 64 001-mode samples
against the per-level real slice means (real held-out slices: r 0.961 / Dice 0.955): VAE 300 + LDM 3000 steps
r 0.952 / Dice 0.913 (16 samples), VAE 300 + LDM 6000 r 0.950 / 0.909, VAE 1000 + LDM 6000 r 0.956 / 0.917
(VAE val PSNR 28.2, SSIM 0.81); an LDM EMA of 0.995 instead of the tiny config's 0.9 gave 0.954 / 0.913.
Those samples took DDIM 20 (leading); with the tiny config's DDIM 50 (trailing) the demo measures r 0.947 /
Dice 0.929 (64 samples; the VAE's reconstructions of held-out slices: 0.964 / 0.956). 32 subjects instead of 16
lowered it (0.931 / 0.889 at DDIM 20). Latent CutMix (the tiny config's p = 0.25, 001's value) is off here: it
cost fidelity in the equal-budget ablation (Dice 0.914 vs 0.941 at 1500 steps,
benchmarks/results/slice2d_ablation_cpu.md), and without it the demo measures r 0.965 / Dice 0.955 (seed 0,
64 samples). The median of 64 samples moved by 0.006 between sample draws of one model, so the demo samples 200
(001's count): r 0.970 / 0.974 / 0.965 and Dice 0.958 / 0.964 / 0.944 on seeds 0 / 1 / 2, each at or above its
cohort's real held-out slices level by level (benchmarks/results/demo_fidelity_seeds_cpu.md). An EMA of 0.999 or
two residual blocks per level instead of one changed r by <= 0.001 (256 samples, seed 0), and a VAE of 2000 steps
(val PSNR 29.5 dB instead of 28.2) gave r 0.968 / Dice 0.958: the samples already sit at real anatomy's level.
``--slice-mode conditional`` (seed 0, 200 per class): guidance 1 / 2 / 3 gives r 0.968 / 0.963 / 0.951, Dice
0.954 / 0.947 / 0.932, spread (deviation / between samples, 1 = real) 0.84 / 0.76, 1.02 / 0.97, 1.24 / 1.06:
guidance 2 is as varied as real slices, 3 (the default, best class adherence in the ablation) overshoots.
256-400 s in all on 2 CPU cores."""


def run_slice2d_demo(args: argparse.Namespace) -> int:
    """Seeds 001 / 004: glioma FLAIR cohort -> prep -> slices -> slice2d-vae -> encode -> slice2d-ldm -> sample
    -> fidelity."""
    demo = Demo(args, 8)
    code = demo.cohort_and_store(datasets=[DEMO_DATASET], modalities=[DEMO_MODALITY])
    if code:
        return code
    runs, volumes = demo.runs, demo.store
    slices = demo.out / "slices.zarr"
    with demo.step("slices", f"cutting non-empty axial slices of {volumes} into {slices} ({args.slice_size}^2, "
                             "[-1, 1], subject splits kept)"):
        result = slices_from_store(volumes, slices, SliceConfig(axis="axial", size=int(args.slice_size)))
    if result.exit_code:
        print(f"\ndemo stopped: slice extraction failed (exit status {result.exit_code})")
        return int(result.exit_code)
    demo.store = slices   # the stages below train on the slice store
    with demo.step("slice2d-vae", "stage A: training the tiny slice VAE (slice2d-vae, configs/slice2d-vae_tiny.yaml, "
                                  f"{' '.join(SLICE2D_TRAINING['slice2d-vae'])})"):
        code = demo.train("slice2d-vae", "slice2d-vae_tiny.yaml", *SLICE2D_TRAINING["slice2d-vae"])
    if code:
        return code
    latents = demo.out / "latents.zarr"
    with demo.step("encode", f"encoding the slices into {latents} (posterior means, scaled by s_z)"):
        encode_store(runs / "slice2d-vae", slices, latents, batch_size=32)
    mode = str(args.slice_mode)
    with demo.step("slice2d-ldm", f"stage B: training the tiny {mode} latent U-Net (slice2d-ldm, "
                                  f"configs/slice2d-ldm_tiny.yaml, {' '.join(SLICE2D_TRAINING['slice2d-ldm'])})"):
        code = demo.train("slice2d-ldm", "slice2d-ldm_tiny.yaml", *SLICE2D_TRAINING["slice2d-ldm"],
                          f"recipe.latents={latents}", f"recipe.mode={mode}")
    if code:
        return code
    samples = demo.out / "samples"
    n = int(args.slice_n)
    how = f"{n} per class, CFG {args.slice_cfg:g}" if mode == "conditional" else f"{n}"
    with demo.step("sample", f"sampling {how} slices (DDIM, early stop {args.slice_early_stop:g}) into {samples}"):
        shutil.rmtree(samples, ignore_errors=True)   # a rerun starts the sample folder afresh
        generate(Slice2dSampleConfig(run=str(runs / "slice2d-ldm"), out=str(samples), n=n, batch_size=16,
                                     seed=int(args.seed), cfg=float(args.slice_cfg) if mode == "conditional" else None,
                                     early_stop=float(args.slice_early_stop) or None, overwrite=True))
    evaluation = demo.out / "eval" / "fidelity"
    with demo.step("fidelity", f"sample fidelity + memorization audit into {evaluation} (no weights)"):
        fidelity, _ = run_fidelity(slices, samples, evaluation)
        print(f"[fidelity] {headline(fidelity)}", flush=True)
    demo.extra = {"mode": mode, "slices": str(slices), "fidelity_json": str(evaluation / "fidelity.json")}
    return demo.finish(0, [
        ("volume store", f"{volumes}   ({DEMO_DATASET} {DEMO_MODALITY})"),
        ("slice store", f"{slices}   (axial, {args.slice_size}^2, [-1, 1])"),
        ("VAE run", f"{runs / 'slice2d-vae'}   (export/vae.safetensors + .json with s_z)"),
        ("latents", str(latents)),
        ("LDM run", f"{runs / 'slice2d-ldm'}   (export/unet.safetensors + .json, {mode})"),
        ("samples", f"{samples}   (PNG + grid.png + trajectory.png + samples.csv)"),
        ("fidelity", f"{evaluation}   (fidelity.json, fidelity.md, nearest_training.png)"),
    ])


def add_slice2d_demo_options(group: Any) -> None:
    """The slice2d-only ``bsynth demo`` flags (an argparse argument group)."""
    group.add_argument("--slice-mode", dest="slice_mode", choices=MODES, default="unconditional",
                       help="unconditional (001: FFT loss and adaptive stop, CutMix off; default) or conditional (004: "
                            "normal / tumour with classifier-free guidance)")
    group.add_argument("--slice-size", dest="slice_size", type=int, default=64,
                       help="slice size in pixels, a multiple of 8 (default 64)")
    group.add_argument("--slice-n", dest="slice_n", type=int, default=200,
                       help="samples (per class in the conditional mode; default 200, 001's 200 generated slices: "
                            "the median r of 64 samples moved by 0.006 between sample draws of one model)")
    group.add_argument("--slice-cfg", dest="slice_cfg", type=float, default=3.0,
                       help="guidance scale of the conditional mode (default 3)")
    group.add_argument("--slice-early-stop", dest="slice_early_stop", type=float, default=0.05,
                       help="DDIM adaptive early-stop threshold on ||eps_hat|| (001: 0.05; 0 = off)")


DEMO = RecipeDemo(run=run_slice2d_demo, default_subjects=16, add_options=add_slice2d_demo_options,
                  summary="seeds 001/004: 2D slice VAE + latent diffusion (unconditional or class-conditional)")
