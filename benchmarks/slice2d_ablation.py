"""slice2d ablation at equal budget (issue 17 Deliver 7): seed 001's baseline vs + FFT loss vs + latent CutMix vs
+ adaptive DDIM stop, and seed 004's classifier-free guidance off vs on.

One slice store (the demo cohort's glioma FLAIR at 4 mm, ``--size`` px axial slices, or ``--slices``), one
tiny slice VAE and one latent cache shared by every arm; each arm's LDM (configs/slice2d-ldm_tiny.yaml) is
trained for the same ``--ldm-steps`` from the same seed and data order; only the arm's change differs:

=================  =================================================================================
baseline           denoising MSE (the tiny config's v prediction), no CutMix, DDIM without early stop
+fft               + 0.1 · FFT loss on the prediction (|FFT| amplitudes: 001's complex Eq. 4 equals the MSE by
                   Parseval)
+cutmix            + latent CutMix p = 0.25
+adaptive-stop     the baseline model sampled with the early stop at ‖ε̂‖ < ``--early-stop`` (001: 0.05)
004 cfg-off        class-conditional model (label dropout 0.1, balanced batches), guidance 1
004 cfg-on         the same model, guidance ``--cfg`` (default 3)
=================  =================================================================================

Scores per arm (``--n`` samples, per class for 004, against the test-split slices): 2D Inception FID
(``--inception-weights`` / $BSYNTH_WEIGHTS_DIR, or a random network with ``--allow-random-features``, stamped),
nearest-real SSIM, inter-sample pixel variance and pairwise RMS distance (001 claims +8 % variance for CutMix),
power-spectrum distance to the real slices, DDIM steps actually taken, the weight-free fidelity (correlation and
Dice against the real slice mean), and for 004 the conditioning accuracy of a classifier trained on real slices.

    python -m benchmarks.slice2d_ablation --allow-random-features           # about 9 min on 2 CPU cores (497 s measured)
    bsynth bench slice2d-ablation --ldm-steps 3000 --n 64 --inception-weights pt_inception-2015-12-05.pth
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, write_results_and_report  # noqa: E402
from bsynth_hpc.engine.config import packaged_config  # noqa: E402
from bsynth_hpc.engine.run import train_main  # noqa: E402
from bsynth_hpc.eval.features_inception import load_inception  # noqa: E402
from bsynth_hpc.eval.fidelity import run_fidelity  # noqa: E402
from bsynth_hpc.eval.fidelity_slices import open_slice_samples  # noqa: E402
from bsynth_hpc.prep.demo import build_demo_cohort  # noqa: E402
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep  # noqa: E402
from bsynth_hpc.prep.slices_from import SliceConfig, slices_from_store  # noqa: E402
from bsynth_hpc.recipes.common.demo import demo_shape, filter_manifest  # noqa: E402
from bsynth_hpc.recipes.encode import encode_store  # noqa: E402
from bsynth_hpc.recipes.slice2d.classifier import predict, train_classifier  # noqa: E402
from bsynth_hpc.recipes.slice2d.evaluate import Slice2dEvalConfig, fid_2d, real_slices  # noqa: E402
from bsynth_hpc.recipes.slice2d.metrics import (nearest_real, pairwise_diversity, radial_power_spectrum,  # noqa: E402
                                                spectrum_distance)
from bsynth_hpc.recipes.slice2d.sampling import Slice2dSampleConfig, generate  # noqa: E402

PROG = "bsynth bench slice2d-ablation"
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"train": ["recipe.lambda_freq=0", "recipe.cutmix_prob=0"], "sample": {}},
    "+fft": {"train": ["recipe.lambda_freq=0.1", "recipe.fft_mode=amplitude", "recipe.cutmix_prob=0"], "sample": {}},
    "+cutmix": {"train": ["recipe.lambda_freq=0", "recipe.cutmix_prob=0.25"], "sample": {}},
    "+adaptive-stop": {"reuse": "baseline", "sample": {"early_stop": "EARLY"}},
    "004 cfg-off": {"train": ["recipe.mode=conditional", "recipe.lambda_freq=0", "recipe.cutmix_prob=0"],
                    "sample": {"cfg": 1.0}},
    "004 cfg-on": {"reuse": "004 cfg-off", "sample": {"cfg": "CFG"}},
}


def build_slices(work: Path, subjects: int, size: int, seed: int) -> Path:
    """Demo cohort (glioma, FLAIR, 4 mm) -> 3D store -> axial slice store."""
    manifest = filter_manifest(build_demo_cohort(work / "cohort", n_subjects=subjects, spacing_mm=4.0, seed=seed,
                                                 workers=1, datasets=["demo-glioma"]), ["FLAIR"])
    run_prep(PrepSource.manifest(manifest), work / "volumes.zarr",
             PrepConfig(shape=demo_shape(4.0), spacing=(4.0,) * 3, cluster="sync", seed=seed, progress=False))
    return slices_from_store(work / "volumes.zarr", work / "slices.zarr", SliceConfig(size=size, progress=False)
                             ).store_path


def _train(stage: str, config: str, store: Path, run_dir: Path, *overrides: str) -> None:
    code = train_main([stage, "--config", str(packaged_config(config)), "--store", str(store), "--run-dir",
                       str(run_dir), "engine.progress=false", "engine.tensorboard=false", *overrides])
    if code:
        raise SystemExit(f"{stage} training failed (exit {code})")


def score(samples: Path, slices: Path, real: list[np.ndarray], real_labels: list[str | None], extractor: Any,
          classifier: Any, classes: list[str], device: torch.device, out: Path,
          standardize: bool = False) -> dict[str, Any]:
    """Every ablation measure of one sample folder (module docstring)."""
    vs = open_slice_samples(samples, real[0].shape)
    fake = [vs.load(i) for i in range(len(vs))]
    labels = [r.label for r in vs.refs]
    ssim, _, _ = nearest_real(fake, real)
    fid, _ = run_fidelity(slices, samples, out / "fidelity")
    pooled = fid["summary"]["samples"]["pooled"]
    summary = json.loads((samples / "sampling.json").read_text())
    row = {"n": len(fake), "fid": fid_2d(real, fake, extractor, device, standardize),
           "nearest_real_ssim": float(np.mean(ssim)),
           "inter_sample_variance": float(np.var(np.stack(fake), axis=0).mean()),
           "pairwise_rms": pairwise_diversity(fake)["rms_distance"],
           "spectrum_distance": spectrum_distance(radial_power_spectrum(real), radial_power_spectrum(fake)),
           "mean_steps_taken": summary["mean_steps_taken"], "sampling_seconds": summary["seconds"],
           "fidelity_corr_median": pooled["corr_modality"].get("median"),
           "fidelity_dice_median": pooled["dice"].get("median")}
    if classes and all(lab in classes for lab in labels):
        want = np.asarray([classes.index(lab) for lab in labels])
        row["conditioning_accuracy"] = float(np.mean(predict(classifier, fake, device=device) == want))
        row["fid_per_class"] = {c: fid_2d([r for r, lab in zip(real, real_labels) if lab == c],
                                          [f for f, lab in zip(fake, labels) if lab == c], extractor, device,
                                          standardize)
                                for c in classes}
    return row


def markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = [("FID", "fid"), ("NN-SSIM", "nearest_real_ssim"), ("variance", "inter_sample_variance"),
            ("pair RMS", "pairwise_rms"), ("spectrum", "spectrum_distance"), ("steps", "mean_steps_taken"),
            ("fid. r", "fidelity_corr_median"), ("fid. Dice", "fidelity_dice_median"),
            ("cond. acc", "conditioning_accuracy")]
    stamp = (" (RANDOM Inception features, standardised by the real features: FID compares arms only, not "
             "comparable to published FIDs)") if meta["random_features"] else ""
    lines = [f"# slice2d ablation at equal budget{stamp}", "",
             f"{meta['ldm_steps']} LDM steps per arm, {meta['n']} samples, slices {meta['size']}^2, device "
             f"{meta['device']}.", "", "| arm | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for arm, r in rows.items():
        cells = []
        for _, key in cols:
            v = r.get(key)
            cells.append("-" if v is None else f"{v:.4g}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--slices", default=None, help="an existing slice store (default: built from the demo cohort)")
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="slice size of the built store (multiple of 8)")
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--ldm-steps", type=int, default=1500)
    p.add_argument("--n", type=int, default=32, help="samples per arm (per class for 004)")
    p.add_argument("--early-stop", type=float, default=0.05)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--allow-random-features", action="store_true")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(list(argv) if argv is not None else None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        slices = Path(args.slices) if args.slices else build_slices(work, args.subjects, args.size, args.seed)
        _train("slice2d-vae", "slice2d-vae_tiny.yaml", slices, work / "vae", f"engine.max_steps={args.vae_steps}",
               f"engine.val_every={args.vae_steps}", f"engine.ckpt_every={args.vae_steps}", f"engine.seed={args.seed}")
        latents = encode_store(work / "vae", slices, work / "latents.zarr", batch_size=32)
        ecfg = Slice2dEvalConfig(store=str(slices), out=str(work), seed=args.seed)
        real, real_labels = real_slices(ecfg, "test", 200)
        train, train_labels = real_slices(ecfg, "train", None)
        classes = ["normal", "tumour"]
        keep = [i for i, lab in enumerate(train_labels) if lab in classes]
        classifier = train_classifier([train[i] for i in keep], [classes.index(train_labels[i]) for i in keep], 2,
                                      epochs=args.classifier_epochs, seed=args.seed, device=device)
        extractor, weights = load_inception(args.inception_weights, allow_random=args.allow_random_features,
                                            device=device)
        rows: dict[str, dict[str, Any]] = {}
        for arm in args.arms:
            spec = ARMS[arm]
            run = work / "ldm" / (spec.get("reuse") or arm).replace(" ", "_").replace("+", "plus_")
            if not (run / "export" / "unet.json").is_file():
                _train("slice2d-ldm", "slice2d-ldm_tiny.yaml", slices, run, f"recipe.latents={latents}",
                       f"engine.max_steps={args.ldm_steps}", f"engine.val_every={args.ldm_steps}",
                       f"engine.ckpt_every={args.ldm_steps}", f"engine.seed={args.seed}",
                       *ARMS[spec.get("reuse") or arm]["train"])
            extra = {k: {"EARLY": args.early_stop, "CFG": args.cfg}.get(v, v) for k, v in spec["sample"].items()}
            out = work / "samples" / run.name / arm.replace(" ", "_").replace("+", "plus_")
            generate(Slice2dSampleConfig(run=str(run), out=str(out), n=args.n, batch_size=16, seed=args.seed,
                                         overwrite=True, trajectory=0, device=str(device), **extra))
            rows[arm] = {"sampling": extra, **score(out, slices, real, real_labels, extractor, classifier,
                                                    classes if "004" in arm else [], device, out,
                                                    weights.random)}
            print(f"[{PROG}] {arm}: {rows[arm]}", flush=True)
    meta = {"ldm_steps": args.ldm_steps, "vae_steps": args.vae_steps, "n": args.n, "size": args.size,
            "device": str(device), "random_features": weights.random, "seconds": round(time.perf_counter() - t0, 1)}
    results = {"benchmark": "slice2d_ablation", "environment": environment_info(device), "settings": vars(args),
               "inception": {"network": weights.network, "path": weights.path, "random": weights.random},
               **meta, "arms": rows}
    write_results_and_report("slice2d_ablation", results, markdown(rows, meta), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
