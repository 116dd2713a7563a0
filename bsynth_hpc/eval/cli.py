"""``bsynth eval recon``, ``synth`` and ``fidelity``: argument parsing and the command handlers.

Only argparse is imported at parser-build time; torch, MONAI and the networks load when a
command runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..argtypes import device_name, int_at_least, output_folder
from ..errors import ConfigError
from ..recipes.slice2d.evaluate_cli import add_slice2d_eval_parser
from .clinical_cli import add_clinical_eval_parser

DEPTHS = (10, 18, 34, 50)


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA, but torch sees no GPU: use --device cpu")
    return name


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights (local files only; default: $BSYNTH_WEIGHTS_DIR)")
    g.add_argument("--depth", type=int, choices=DEPTHS, default=50, help="MedicalNet ResNet depth (default 50)")
    g.add_argument("--shortcut", choices=["A", "B"], default=None,
                   help="MedicalNet shortcut type (default: the release's, B for 10/50, A for 18/34)")
    g.add_argument("--weights-sha256", default=None, help="expected SHA-256 of --weights")
    g.add_argument("--fid2d", action="store_true",
                   help="add the InceptionV3 2D-slice FID of seeds 000/001 (needs --inception-weights)")
    g.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or inception_v3_google-0cc3c7bd.pth")
    g.add_argument("--inception-sha256", default=None)
    g.add_argument("--fid2d-plane", choices=["axial", "coronal", "sagittal"], default="axial")
    g.add_argument("--fid2d-skip-empty", action="store_true", help="leave all-background slices out of the slice FID")
    g.add_argument("--allow-random-features", action="store_true",
                   help="smoke tests: use random-initialised networks where no weights are found (every output "
                        "then says so)")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, type=output_folder,
                   help="output folder for metrics.json, metrics.md and the figures")
    r.add_argument("--modality", nargs="+", default=None, help="only these modalities")
    r.add_argument("--max-volumes", type=int_at_least(1), default=None, help="evaluate a seeded random subset of this size")
    r.add_argument("--fit-shape", choices=["refuse", "crop-pad"], default="refuse",
                   help="NIfTI volumes of another shape: refuse (default) or center-crop/zero-pad")
    r.add_argument("--rescale", choices=["none", "minmax"], default="none",
                   help="intensities outside [0, 1]: refuse (none) or min-max scale each volume")
    r.add_argument("--seed", type=int, default=0, help="seed of pair sampling and subsets (recorded)")
    r.add_argument("--batch-size", type=int_at_least(1), default=1, help="volumes per MedicalNet batch")
    r.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N")


def add_eval_parser(sub: Any) -> None:
    """Register ``bsynth eval {recon,synth}`` on the top-level subparsers."""
    p = sub.add_parser("eval", help="evaluation metrics, tables and figures (recon | synth | fidelity)")
    ev = p.add_subparsers(dest="eval_command", required=True, metavar="PROTOCOL")

    s = ev.add_parser("synth", help="generated vs real volumes: MedicalNet FID/MMD, MS-SSIM diversity (seed 003)",
                      description="Generated vs real: FID and MMD on MedicalNet features of z-scored volumes and "
                                  "MS-SSIM over random generated pairs, per modality, per class and pooled "
                                  "(seed 003 §2.5.7, Tables 4, 12-15).")
    s.add_argument("--real", required=True, help="real volumes: a bsynth Zarr store or a NIfTI folder")
    s.add_argument("--real-split", default="test", help="split of a real store (default test; 'all' for every volume)")
    s.add_argument("--fake", required=True, help="generated volumes: a NIfTI folder (bsynth sample) or a Zarr store")
    s.add_argument("--weights", default=None, help="MedicalNet checkpoint (released .pth format or a state dict)")
    s.add_argument("--pairs", type=int_at_least(1), default=1000, help="K random pairs per group for MS-SSIM (default 1000)")
    s.add_argument("--no-real-pairs", action="store_true", help="skip the real-real MS-SSIM reference")
    s.add_argument("--mmd-ratios", type=_floats, default=None,
                   help="sigma bank as multiples of the median heuristic (default 0.125,...,8)")
    s.add_argument("--mmd-sigmas", type=_floats, default=None, help="explicit kernel bandwidths (overrides ratios)")
    s.add_argument("--mmd-weights", type=_floats, default=None, help="kernel weights (default uniform)")
    s.add_argument("--grid", type=int_at_least(1), default=4, help="real and generated samples per figure row")
    _add_common(s)
    s.set_defaults(func=cmd_eval_synth)

    _add_fidelity(ev)
    add_clinical_eval_parser(ev)
    add_slice2d_eval_parser(ev)

    r = ev.add_parser("recon", help="a compressor on held-out volumes: PSNR/SSIM/MS-SSIM/LPIPS/MSE (seed 003)",
                      description="Reconstruction fidelity of a compressor on a store split: per-volume PSNR, "
                                  "SSIM, MS-SSIM, LPIPS (tri-planar) and MSE, per modality and pooled "
                                  "(seed 003 §2.5.7, Tables 3, 8-11).")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run directory whose export holds the compressor")
    src.add_argument("--compressor", choices=["dwt1", "dwt2"], help="a fixed wavelet reference (seed 003 Table 3)")
    r.add_argument("--name", default=None, help="export name in RUN/export (default: the only one, else 'vae')")
    r.add_argument("--store", required=True, help="bsynth Zarr store (or NIfTI folder) with the volumes")
    r.add_argument("--split", default="test", help="split to evaluate (default test; 'all' for every volume)")
    r.add_argument("--weights", default=None,
                   help="MedicalNet checkpoint: adds FID/MMD between originals and reconstructions")
    r.add_argument("--lpips-weights", default=None, help="torchvision AlexNet state dict (alexnet-owt-7be5be79.pth)")
    r.add_argument("--lpips-sha256", default=None)
    r.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the outputs then say it was not computed)")
    r.add_argument("--per-plane", type=int_at_least(1), default=32, help="tri-planar slices per plane (seed 002: 32)")
    r.add_argument("--examples", type=int_at_least(0), default=1, help="figures per modality")
    _add_common(r)
    r.set_defaults(func=cmd_eval_recon)


def _add_fidelity(ev: Any) -> None:
    """``bsynth eval fidelity``: weight-free sample fidelity and memorization audit."""
    f = ev.add_parser("fidelity", help="samples vs a real store without pretrained weights: correlation, brain-mask "
                                       "Dice, contrast, tissue order, memorization audit",
                      description="Per sample: correlation with the real training mean of its modality (and class), "
                                  "Otsu brain-mask Dice, which contrast it resembles (T1w = T1Gd family), "
                                  "tissue-contrast order (WM > GM > CSF in T1w/T1Gd, CSF brightest in T2w, suppressed "
                                  "in FLAIR), and its nearest training volume (correlation, 3D SSIM) against the "
                                  "held-out real volumes' nearest-training similarity: a sample closer to a training "
                                  "volume than any held-out real volume is gets flagged as a likely copy. Writes "
                                  "fidelity.json, fidelity.md and nearest_training.png.")
    f.add_argument("--real", required=True, help="the bsynth Zarr store the model was trained on")
    f.add_argument("--fake", required=True, help="a `bsynth sample` output folder (NIfTI + samples.csv)")
    f.add_argument("--out", required=True, type=output_folder, help="output folder")
    f.add_argument("--train-split", default="train",
                   help="split holding the training volumes: reference means and memorization neighbours "
                        "(default train)")
    f.add_argument("--real-split", default="val,test",
                   help="comma-separated held-out split(s): the real reference column and copy threshold "
                        "(default val,test)")
    f.add_argument("--ssim-candidates", type=int_at_least(0), default=8,
                   help="SSIM against this many best-correlated training volumes per sample (0 = all; default 8)")
    f.add_argument("--grid", type=int_at_least(1), default=16, help="samples in nearest_training.png (default 16)")
    f.set_defaults(func=cmd_eval_fidelity)


# ---------------------------------------------------------------------------------------- handlers
def _split(value: str | None) -> str | None:
    return None if value in (None, "", "all") else value


def _inception(args: argparse.Namespace, device: str) -> tuple[Any, Any]:
    if not args.fid2d:
        return None, None
    from .features_inception import load_inception  # lazy: torch, MONAI (fast --help)

    return load_inception(args.inception_weights, sha256=args.inception_sha256,
                          allow_random=args.allow_random_features, device=device)


def _finish(args: argparse.Namespace, result: dict[str, Any], infos: Sequence[Any], out: Path,
            figures: Sequence[Path], device: str, inputs: dict[str, Any]) -> int:
    from .report import RANDOM_WARNING, provenance, weights_block, write_report  # lazy: torch, MONAI (fast --help)

    weights, random = weights_block([w for w in infos if w is not None])
    head: dict[str, Any] = {"protocol": result["protocol"], "random_features": random}
    if random:
        head["warning"] = RANDOM_WARNING
    head.update({"provenance": provenance(vars(args), device=device), "inputs": inputs, "weights": weights})
    full = {**head, **result}
    paths = write_report(full, out, [str(f) for f in figures])
    _log(f"wrote {paths['json']}, {paths['markdown']} and {len(figures)} figure(s) in {out}")
    return 0


def cmd_eval_synth(args: argparse.Namespace) -> int:
    """``bsynth eval synth``: generated vs real (see the subcommand description)."""
    from .features_medicalnet import load_medicalnet  # lazy: torch, MONAI (fast --help)
    from .io import open_volume_set  # lazy: torch, MONAI (fast --help)
    from .mmd import DEFAULT_SIGMA_RATIOS  # lazy: torch, MONAI (fast --help)
    from .protocols import Slice2DConfig, SynthConfig, evaluate_synth  # lazy: torch, MONAI (fast --help)

    device = _device(args.device)
    out = Path(args.out)
    extractor, mn_info = load_medicalnet(args.weights, args.depth, args.shortcut, sha256=args.weights_sha256,
                                         allow_random=args.allow_random_features, device=device)
    inception, inc_info = _inception(args, device)
    real = open_volume_set(args.real, split=_split(args.real_split), modalities=args.modality,
                           rescale=args.rescale, max_volumes=args.max_volumes, seed=args.seed)
    fake = open_volume_set(args.fake, split=None, modalities=args.modality, target_shape=real.shape,
                           fit=args.fit_shape, rescale=args.rescale, max_volumes=args.max_volumes, seed=args.seed)
    _log(f"real: {len(real)} volumes from {real.path}; generated: {len(fake)} from {fake.path}; device {device}")
    config = SynthConfig(n_pairs=args.pairs, seed=args.seed, batch_size=args.batch_size,
                         mmd_ratios=args.mmd_ratios or DEFAULT_SIGMA_RATIOS, mmd_sigmas=args.mmd_sigmas,
                         mmd_weights=args.mmd_weights, real_pairs=not args.no_real_pairs,
                         slice2d=Slice2DConfig(plane=args.fid2d_plane, skip_empty=args.fid2d_skip_empty))
    result = evaluate_synth(real, fake, extractor, config, inception=inception, device=device, log=_log)

    random = mn_info.random or (inc_info is not None and inc_info.random)
    figures = _synth_figures(real, fake, Path(args.fake), out, args.grid, random)
    inputs = {"real": real.describe(), "generated": fake.describe()}
    return _finish(args, result, [mn_info, inc_info], out, figures, device, inputs)


def _synth_figures(real: Any, fake: Any, fake_path: Path, out: Path, grid: int, random: bool) -> list[Path]:
    """Sample grids per modality and per class (or one grid when the modality is unknown), and the
    denoising trajectories the sampler saved in FAKE/trajectory/."""
    from .figures import find_trajectories, sample_grid_figure, trajectory_figure  # lazy: torch, MONAI (fast --help)
    from .io import read_nifti  # lazy: torch, MONAI (fast --help)

    tag = " [RANDOM FEATURES]" if random else ""
    figures = []
    for by, word, name in (("modality", "modality", "samples_by_modality.png"),
                           ("label", "class", "samples_by_class.png")):
        f_groups, r_groups = fake.groups(by), real.groups(by)
        if not f_groups:
            continue
        rows = [(g, [real.load(i) for i in r_groups.get(g, [])[:grid]], [fake.load(i) for i in idx[:grid]])
                for g, idx in f_groups.items()]
        figures.append(sample_grid_figure(rows, out / name, f"Generated vs real, by {word} (axial middle slices){tag}",
                                          random_features=random))
    if not fake.groups("modality") and len(fake):
        rows = [("all", [real.load(i) for i in range(min(grid, len(real)))],
                 [fake.load(i) for i in range(min(grid, len(fake)))])]
        figures.append(sample_grid_figure(rows, out / "samples.png", f"Generated vs real{tag}", random_features=random))
    traj = find_trajectories(fake_path / "trajectory") if fake_path.is_dir() else {}
    if traj:
        rows_t = [(sample, [(f"t={t}", read_nifti(str(p))) for t, p in steps])
                  for sample, steps in list(traj.items())[:4]]
        figures.append(trajectory_figure(rows_t, out / "trajectory.png", f"Denoising trajectories{tag}",
                                         random_features=random))
    return figures


def cmd_eval_fidelity(args: argparse.Namespace) -> int:
    """``bsynth eval fidelity``: see the subcommand description."""
    from .fidelity import FidelityConfig, headline, run_fidelity  # lazy: torch, MONAI (fast --help)

    splits = tuple(s.strip() for s in args.real_split.split(",") if s.strip())
    if args.train_split in splits:
        raise ConfigError(f"--real-split {args.real_split} includes the training split {args.train_split}: held-out "
                          "volumes must not be training volumes")
    config = FidelityConfig(train_split=args.train_split, heldout_splits=splits,
                            ssim_candidates=args.ssim_candidates, grid_max=args.grid)
    result, paths = run_fidelity(Path(args.real), Path(args.fake), Path(args.out), config, log=_log,
                                 arguments=vars(args))
    print(headline(result), flush=True)
    _log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_eval_recon(args: argparse.Namespace) -> int:
    """``bsynth eval recon``: a compressor on held-out volumes (see the subcommand description)."""
    from .compressors import (REFERENCE_COMPRESSORS, load_run_compressor,  # lazy: torch, MONAI (fast --help)
                              reference_compressor)
    from .figures import recon_figure  # lazy: torch, MONAI (fast --help)
    from .io import open_volume_set  # lazy: torch, MONAI (fast --help)
    from .protocols import ReconConfig, Slice2DConfig, evaluate_recon  # lazy: torch, MONAI (fast --help)

    device = _device(args.device)
    out = Path(args.out)
    volumes = open_volume_set(args.store, split=_split(args.split), modalities=args.modality, fit=args.fit_shape,
                              rescale=args.rescale, max_volumes=args.max_volumes, seed=args.seed)
    lpips_model, lp_info = None, None
    if not args.no_lpips:
        from ..nn.lpips import load_lpips  # lazy: torch, MONAI (fast --help)

        lpips_model, lp_info = load_lpips(args.lpips_weights, sha256=args.lpips_sha256,
                                          allow_random=args.allow_random_features, device=device)
    medicalnet, mn_info = None, None
    if args.weights is not None:
        from .features_medicalnet import load_medicalnet  # lazy: torch, MONAI (fast --help)

        medicalnet, mn_info = load_medicalnet(args.weights, args.depth, args.shortcut, sha256=args.weights_sha256,
                                              device=device)
    inception, inc_info = _inception(args, device)
    if args.compressor:
        reconstruct, compressor = reference_compressor(args.compressor), {
            "reference": args.compressor, "description": REFERENCE_COMPRESSORS[args.compressor]}
    else:
        reconstruct, compressor = load_run_compressor(args.run, args.name, device)
    _log(f"{len(volumes)} volumes from {volumes.path} (split {args.split}); compressor {compressor}; device {device}")
    config = ReconConfig(per_plane=args.per_plane, examples_per_modality=args.examples,
                         slice2d=Slice2DConfig(plane=args.fid2d_plane, skip_empty=args.fid2d_skip_empty))
    result = evaluate_recon(volumes, reconstruct, config, lpips_model=lpips_model, medicalnet=medicalnet,
                            inception=inception, device=device, log=_log)
    random = any(i is not None and i.random for i in (lp_info, inc_info))
    tag = " [RANDOM FEATURES]" if random else ""
    figures = []
    for modality, examples in result["examples"].items():
        for volume_id, real, recon in examples:
            figures.append(recon_figure(real, recon, out / f"recon_{modality}_{_safe(volume_id)}.png",
                                        f"{modality} {volume_id}: real vs reconstruction{tag}",
                                        random_features=random))
    inputs = {"volumes": volumes.describe(), "compressor": compressor}
    return _finish(args, result, [lp_info, mn_info, inc_info], out, figures, device, inputs)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bsynth_hpc.eval.cli recon|synth ...`` (the same as ``bsynth eval``)."""
    parser = argparse.ArgumentParser(prog="bsynth")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(argv if argv is not None else sys.argv[1:])])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
