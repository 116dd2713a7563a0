"""`bsynth demo`: a recipe's main job end to end on the embedded demo cohort, on CPU.

One function per recipe; both share the step/timing bookkeeping, the cohort build and the
preprocessing (:class:`Demo`):

* ``--recipe wfdm`` (default, seed 003): all three demo datasets (16 subjects) at 4 mm -> prep ->
  tiny WF-VAE -> encode -> tiny conditional latent-diffusion U-Net -> samples of all four modalities
  with metadata -> ``eval synth`` + ``eval recon`` (random-feature smoke mode).
* ``--recipe dit3d`` (seed 000): demo-epilepsy only (healthy / TLE, 40 subjects, T1w) at 4 mm ->
  prep with label-stratified splits (80 % train, the held-out 20 % cut 37 : 63 into val : test,
  as in 000 §5.3.1) -> tiny VAE-GAN (dit3d-vae) -> encode -> tiny class-conditional DiT-3D ->
  ``--n-per-class`` samples per class (CFG 3) into OUT/samples (one samples.csv) -> the
  synthetic-augmentation classifier study (real / synthetic / real + synthetic 1:0.25 and 1:0.5;
  EfficientNet-V2-S on 34 coronal slices, ``--arch tiny`` for a seconds-long CNN) into OUT/study
  (metrics.md, metrics.json). About 10 minutes on 2 idle CPU cores.

Every run writes ``OUT/demo_summary.json`` (recipe, options, seconds per step). A rerun resumes
finished training and encoding; the cohort, samples and study are redone.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES: tuple[str, ...] = ("wfdm", "dit3d")
DEFAULT_SUBJECTS: dict[str, int] = {"wfdm": 16, "dit3d": 40}
SUMMARY_NAME = "demo_summary.json"
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


def demo_shape(spacing_mm: float) -> tuple[int, int, int]:
    """The seed-003 field of view (192x224x160 mm) on a grid of the given spacing."""
    return tuple(int(round(fov / spacing_mm)) for fov in (192, 224, 160))  # type: ignore[return-value]


class Demo:
    """Shared machinery: numbered, timed steps, the cohort + store, training calls, the summary."""

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
        from bsynth_hpc.prep.demo_cohort import build_demo_cohort
        from bsynth_hpc.prep.pipeline import PrepSource, run_prep

        from .data.summary import format_store_summary

        a = self.args
        which = f", {'+'.join(datasets)}" if datasets else ""
        with self.step("cohort", f"building the demo cohort ({a.subjects} subjects{which}, {a.spacing:g} mm) "
                                 f"in {self.out / 'cohort'}"):
            manifest = build_demo_cohort(self.out / "cohort", n_subjects=a.subjects, spacing_mm=a.spacing,
                                         seed=a.seed, workers=a.workers, datasets=datasets)
            if modalities:
                manifest = _filter_manifest(manifest, modalities)
        shape = demo_shape(a.spacing)
        how = f", {stratify}-stratified splits {'/'.join(f'{f:.3g}' for f in splits)}" if stratify else ""
        with self.step("prep", f"preprocessing {manifest.name} into {self.store} (shape {shape}, {a.spacing:g} mm, "
                               f"{a.workers} Dask workers{how})"):
            result = run_prep(PrepSource.manifest(manifest), self.store, shape=shape, spacing=(a.spacing,) * 3,
                              workers=a.workers, seed=a.seed, progress=True, splits=tuple(splits), stratify=stratify)
            print()
            print(format_store_summary(self.store))
        if result.exit_code:
            print(f"\ndemo stopped: preprocessing failed (exit status {result.exit_code})")
        return int(result.exit_code)

    def train(self, stage: str, config: str, *extra: str) -> int:
        """``bsynth train STAGE --config configs/CONFIG`` into OUT/runs/STAGE (resumes a finished run),
        plus the user's ``--override STAGE:key=value`` settings."""
        from .engine.run import train_main

        overrides = [o.split(":", 1)[1] for o in (getattr(self.args, "override", None) or [])
                     if o.split(":", 1)[0] == stage]
        return int(train_main([stage, "--config", str(REPO / "configs" / config), "--run-dir", str(self.runs / stage),
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


def _filter_manifest(manifest: Path, modalities: Sequence[str]) -> Path:
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


# ------------------------------------------------------------------------------------------ recipes
def run_wfdm(args: argparse.Namespace) -> int:
    """Seed 003 (WFDM): cohort -> prep -> wfdm-vae -> encode -> wfdm-ldm -> sample -> eval."""
    from .eval.cli import main as eval_main
    from .recipes.encode import encode_store
    from .recipes.wfdm.sampling import sample_wfdm

    demo = Demo(args, 7)
    code = demo.cohort_and_store()
    if code:
        return code
    runs, store = demo.runs, demo.store
    with demo.step("wfdm-vae", "stage A: training the tiny WF-VAE (wfdm-vae, configs/wfdm-vae_tiny.yaml)"):
        code = demo.train("wfdm-vae", "wfdm-vae_tiny.yaml")
    if code:
        return code
    latents = demo.out / "latents.zarr"
    with demo.step("encode", f"encoding the store into {latents} (posterior means, scaled by s_z)"):
        encode_store(runs / "wfdm-vae", store, latents, batch_size=4)
    with demo.step("wfdm-ldm", "stage B: training the tiny latent diffusion U-Net (wfdm-ldm, configs/wfdm-ldm_tiny.yaml)"):
        code = demo.train("wfdm-ldm", "wfdm-ldm_tiny.yaml", f"recipe.latents={latents}")
    if code:
        return code
    samples = demo.out / "samples"
    with demo.step("sample", f"sampling T1w, T2w, T1Gd and FLAIR (age=60, sex=F, CFG 2) into {samples}"):
        sample_wfdm(runs / "wfdm-ldm", samples, n=2, modality="all", meta="age=60,sex=F", cfg=2.0, batch_size=4,
                    seed=args.seed, overwrite=True)  # a demo rerun rewrites its own samples
    evaluation = demo.out / "eval"
    with demo.step("eval", f"evaluating into {evaluation} (random features: smoke mode, not comparable to "
                           "published numbers)"):
        codes = [
            eval_main(["synth", "--real", str(store), "--real-split", "all", "--fake", str(samples),
                       "--out", str(evaluation / "synth"), "--allow-random-features", "--pairs", "20",
                       "--depth", "10", "--max-volumes", "24", "--device", "cpu"]),
            eval_main(["recon", "--run", str(runs / "wfdm-vae"), "--store", str(store), "--split", "test",
                       "--out", str(evaluation / "recon"), "--allow-random-features", "--per-plane", "4",
                       "--device", "cpu"]),
        ]
    return demo.finish(max(codes), [
        ("store", str(store)),
        ("WF-VAE run", f"{runs / 'wfdm-vae'}   (export/vae.safetensors + .json with s_z)"),
        ("latents", str(latents)),
        ("LDM run", f"{runs / 'wfdm-ldm'}   (export/unet.safetensors + .json)"),
        ("samples", f"{samples}   (NIfTI + previews/*.png + samples.csv)"),
        ("evaluation", f"{evaluation}   (synth/ and recon/: metrics.json, metrics.md, figures)"),
    ])


def study_slices(spacing_mm: float) -> int:
    """000's 136 coronal 1-mm slices as the same span of the demo grid (34 at 4 mm), within its depth."""
    from .study.augment import SEED000_CORONAL_MM

    return max(1, min(demo_shape(spacing_mm)[1], int(round(SEED000_CORONAL_MM / spacing_mm))))


def fit_latent_grid(spacing_mm: float, vae_config: str = "dit3d-vae_tiny.yaml",
                    dit_config: str = "dit3d_tiny.yaml") -> list[str]:
    """dit3d-vae overrides so the latent grid of the demo shape divides into DiT patches: the configs' factor
    (4) fits 2 and 4 mm; coarser grids (8 mm: 24x28x20 -> 6x7x5) get the largest factor that fits."""
    import math

    import yaml

    factor = int(yaml.safe_load((REPO / "configs" / vae_config).read_text())["recipe"]["downsample_factor"])
    patch = yaml.safe_load((REPO / "configs" / dit_config).read_text())["recipe"]["patch_size"]
    shape = demo_shape(spacing_mm)
    for f in [factor] + [f for f in (8, 4, 2, 1) if f < factor]:
        if all(math.ceil(n / f) % p == 0 for n, p in zip(shape, patch)):
            return [] if f == factor else [f"recipe.downsample_factor={f}"]
    raise ConfigError(f"--spacing {spacing_mm:g}: no VAE downsampling factor gives a latent grid of {shape} that "
                      f"the DiT patch {patch} divides; use --spacing 4")


def run_dit3d(args: argparse.Namespace) -> int:
    """Seed 000 (TLE): epilepsy cohort -> prep -> dit3d-vae -> encode -> dit3d -> samples per class -> study."""
    from .cli import build_parser
    from .recipes.dit3d.sampling import sample_from_args
    from .recipes.encode import encode_store
    from .study.augment import run_augment_study

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
        argv = ["sample", "dit3d", "--run", str(runs / "dit3d"), "--out", str(samples), "--n", str(n),
                "--cfg", str(args.cfg), "--batch-size", "8", "--seed", str(args.seed)]
        if args.sample_steps:
            argv += ["--steps", str(args.sample_steps)]
        code = int(sample_from_args(build_parser().parse_args(argv)) or 0)
    if code:
        return code
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


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"wfdm": run_wfdm, "dit3d": run_dit3d}


def run_demo(args: argparse.Namespace) -> int:
    """Dispatch ``bsynth demo --recipe R`` (fills in the recipe's default subject count)."""
    if args.recipe not in RUNNERS:
        raise ConfigError(f"--recipe {args.recipe!r}: use one of {', '.join(RECIPES)}")
    if getattr(args, "subjects", None) is None:
        args.subjects = DEFAULT_SUBJECTS[args.recipe]
    for o in getattr(args, "override", None) or []:
        if ":" not in o or "=" not in o.split(":", 1)[1]:
            raise ConfigError(f"--override {o!r}: write STAGE:key=value, e.g. dit3d-vae:engine.max_steps=4")
    return RUNNERS[args.recipe](args)


def add_demo_parser(sub: Any, default_out: str) -> None:
    """Register ``bsynth demo``."""
    p = sub.add_parser("demo", help="the main job end to end on the embedded demo cohort (--recipe wfdm | dit3d)")
    p.add_argument("--recipe", choices=RECIPES, default="wfdm",
                   help="wfdm (seed 003, default) or dit3d (seed 000: healthy/TLE synthesis + classifier study)")
    p.add_argument("--out", default=default_out, help=f"working folder (default ./{default_out})")
    p.add_argument("--subjects", type=int, default=None,
                   help=f"cohort size (default {DEFAULT_SUBJECTS['wfdm']} for wfdm, {DEFAULT_SUBJECTS['dit3d']} "
                        "demo-epilepsy subjects for dit3d)")
    p.add_argument("--spacing", type=float, default=4.0,
                   help="demo grid spacing in mm (4 = the whole pipeline in minutes on 2 CPU cores)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="training override for one stage, repeatable (e.g. dit3d:engine.max_steps=10)")
    d = p.add_argument_group("dit3d recipe")
    d.add_argument("--n-per-class", type=int, default=16, help="synthetic volumes per class (default 16)")
    d.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    d.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the run's config)")
    d.add_argument("--arch", choices=("efficientnet_v2_s", "tiny"), default="efficientnet_v2_s",
                   help="classifier of the study: 000's EfficientNet-V2-S (default, ~4 min on 2 CPU cores) or a "
                        "tiny CNN (seconds)")
    d.add_argument("--study-epochs", type=int, default=30, help="classifier epochs per condition (default 30)")
