"""The `bsynth` command: the user's surface (shared/DESIGN.md, "CLI").

The parser is built from the registered recipes (``bsynth sample <recipe>`` flags, ``bsynth demo``
choices and options); optional dependencies (DeepSpeed, torchvision, LPIPS, Triton) are imported by the
code that needs them, so a missing one only affects the command that uses it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from .argtypes import device_name, int_at_least
from .constants import DEFAULT_SHAPE, DEFAULT_SPACING
from .data.summary import format_store_summary
from .demo import add_demo_parser, run_demo
from .engine.registry import get_recipe, recipe_names
from .engine.run import train_main
from .errors import BsynthError, ConfigError, NotYetAvailableError
from .eval.cli import add_eval_parser
from .prep.demo import build_demo_cohort
from .prep.manifest_writer import format_draft, manifest_from_folder
from .recipes.common.sampling import add_sample_options
from .recipes.encode import encode_from_args
from .study.augment import add_study_parser

DEMO_DIR = Path("demo_run")


# ---------------------------------------------------------------------------- commands
def cmd_demo_cohort(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest = build_demo_cohort(args.out, n_subjects=args.subjects, shape=tuple(args.shape) if args.shape else None,
                                 spacing_mm=args.spacing, seed=args.seed, workers=args.workers,
                                 datasets=args.datasets)
    print(f"demo cohort: {manifest} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_prep(args: argparse.Namespace) -> int:
    if args.slices_from:
        return cmd_slices_from(args)
    from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep  # lazy: Dask/nibabel, only for prep

    if args.manifest:
        source = PrepSource.manifest(args.manifest)
    elif args.bids:
        source = PrepSource.bids(args.bids, subjects_table=args.subjects_table, label_column=args.label_column)
    elif args.brats:
        source = PrepSource.brats(args.brats, subjects_table=args.subjects_table, label_column=args.label_column)
    else:
        source = PrepSource.slices(args.slices, modality=args.slice_modality, subject_pattern=args.subject_pattern)
    if (args.subjects_table or args.label_column) and not (args.bids or args.brats):
        raise ConfigError("--subjects-table/--labels and --label-column apply to --bids and --brats: for "
                          "--manifest put label and metadata columns in the manifest itself")
    mask: bool | str = args.mask_column if args.mask_column else bool(args.mask)
    cluster_options = _load_yaml(args.cluster_config) if args.cluster_config else None
    config = PrepConfig(
        shape=args.shape, spacing=args.spacing, workers=args.workers, normalize=args.normalize,
        clip_percentiles=args.clip_percentiles, mask=mask, allow_outside_root=args.allow_outside_root,
        cluster=args.cluster, cluster_options=cluster_options, chunks=args.chunks, dtype=args.dtype,
        splits=args.splits, seed=args.seed, progress=not args.quiet, stratify=args.stratify,
        max_volume_mb=args.max_volume_mb,
    )
    result = run_prep(source, args.out, config)
    return int(result.exit_code)


def cmd_slices_from(args: argparse.Namespace) -> int:
    """``bsynth prep --slices-from STORE --out SLICES``: 2D slices cut from a finalized 3D store."""
    from bsynth_hpc.prep.slices_from import slice_config_from_args, slices_from_store  # lazy: prep-only imports

    config = slice_config_from_args(args.axis, args.size, args.modalities, args.min_brain_fraction, args.slice_fit,
                                    args.interpolation, args.value_range, args.dtype, args.quiet)
    return int(slices_from_store(args.slices_from, args.out, config).exit_code)


def cmd_manifest(args: argparse.Namespace) -> int:
    draft = manifest_from_folder(args.from_dir, args.out, pattern=args.pattern, dataset=args.dataset,
                                 overwrite=args.force)
    print(format_draft(draft))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    return int(encode_from_args(args) or 0)


def cmd_sample(args: argparse.Namespace) -> int:
    """``bsynth sample RECIPE``: the parsed flags -> the recipe's typed sample config -> its sampler."""
    recipe = get_recipe(args.recipe)
    config = recipe.load("sample_config").from_namespace(args)
    recipe.load("sampler")(config)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(format_store_summary(args.store))
    return 0


BENCHMARKS = {  # `bsynth bench NAME [options]` -> the module whose main(argv) runs it
    "kernels": "benchmarks.kernels.run_all",            # Triton kernels vs eager / compile / references
    "compile": "benchmarks.kernels_compile",            # AOT compile of every Triton kernel for sm_90/sm_80
    "data": "benchmarks.data_throughput",               # preprocessing (Dask) and loader throughput
    "training": "benchmarks.training_throughput",       # single vs DDP vs ZeRO-1/2/3 (+ offload)
    "sampling": "benchmarks.e2e_sampling",              # WFDM seconds per volume (003 Table 6 protocol)
    "decode": "benchmarks.tiled_decode",                # whole vs tiled decode memory/time
    "ablation": "benchmarks.compressor_ablation",       # 003 Table 3 compressors at equal steps
    "dit3d": "benchmarks.dit3d",                        # DiT-3D window vs global, ZeRO vs DDP, DDPM vs DDIM
    "dwconv": "benchmarks.depthwise_conv3d",            # csrc depthwise 3D conv extension vs F.conv3d(groups=C)
    "gpu": "benchmarks.gpu_suite",                      # the one prepared GPU suite (<= 8 min on one H100/H200)
    "slice2d-ablation": "benchmarks.slice2d_ablation",  # 001 FFT / CutMix / adaptive stop, 004 CFG at equal budget
    "slice2d-throughput": "benchmarks.slice2d_throughput",  # slices/s, s per DDIM-50 sample, 6 GB memory proof
    "clinical-ablation": "benchmarks.clinical_ablation",  # 002 Table 2 rows + Table 4 w/o cls/reg, equal budget
}


def _import_benchmark(module: str):
    """Import a benchmark module from the source checkout: benchmarks/ is not part of the installed
    package (it measures the product, it is not the product), so it is found next to bsynth_hpc/."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        raise SystemExit("bsynth bench: the benchmarks live in the source checkout (benchmarks/), which this "
                         "installation does not have; clone the repository and run `bsynth bench` from an "
                         "editable install (`pip install -e .`)")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(module)


def cmd_bench(args: argparse.Namespace) -> int:
    return int(_import_benchmark(BENCHMARKS[args.what]).main(args.rest) or 0)


def cmd_train(args: argparse.Namespace) -> int:
    return train_main(args.rest)


def cmd_demo(args: argparse.Namespace) -> int:
    """The recipe's main job on the embedded demo cohort, end to end on CPU (``--recipe wfdm`` or ``dit3d``);
    see :mod:`bsynth_hpc.demo`."""
    return run_demo(args)


def _load_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh) or {})


# ---------------------------------------------------------------------------- parser
def add_sample_parser(sub: Any) -> None:
    """``bsynth sample RECIPE``: one sub-command per registered recipe with a sampler, each with the shared
    flags (:func:`add_sample_options`) and the recipe's own (``Recipe.sample_options``)."""
    p = sub.add_parser("sample", help="sample volumes from a trained recipe (NIfTI + PNG previews)")
    recipes = p.add_subparsers(dest="recipe", required=True, metavar="RECIPE", help="which recipe's sampler")
    for name in recipe_names():
        recipe = get_recipe(name)
        if recipe.sampler is None:
            continue
        q = recipes.add_parser(name, help=recipe.description, description=f"bsynth sample {name}: {recipe.description}")
        add_sample_options(q)
        if recipe.sample_options is not None:
            recipe.load("sample_options")(q)
        q.set_defaults(func=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsynth", description="Train and sample brain-MRI generative models at scale.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_demo_parser(sub, str(DEMO_DIR)).set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-cohort", help="write the embedded demo cohort (NIfTI + manifest.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="output grid (default: the brain field of view at --spacing)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (1 = full resolution)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                   help="only these datasets (demo-epilepsy, demo-glioma, demo-dementia); default all three")
    p.set_defaults(func=cmd_demo_cohort)

    p = sub.add_parser("prep", help="ingest + preprocess volumes into a Zarr store (Dask-parallel, resumable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest CSV (subject, session, dataset, modality, path, metadata...)")
    src.add_argument("--bids", metavar="DIR", help="raw BIDS dataset: sub-*/[ses-*/]anat/*_T1w|_T2w|_FLAIR.nii.gz "
                                                   "(ce-*_T1w -> T1Gd); labels/metadata from participants.tsv")
    src.add_argument("--brats", help="BraTS-layout folder (<case>/<case>_t1|_t1ce|_t2|_flair.nii.gz)")
    src.add_argument("--slices", help="2D slice image folders by class (ROOT/<class>/*.png)")
    src.add_argument("--slices-from", metavar="STORE",
                     help="finalized 3D store: cut its volumes into a 2D slice store (non-empty slices, the "
                          "store's subject splits kept; seeds 001/004)")
    p.add_argument("--out", required=True, help="output store, e.g. data/store.zarr")
    p.add_argument("--shape", type=int, nargs="+", default=None,
                   help=f"target shape: 3 ints (default {' '.join(map(str, DEFAULT_SHAPE))}), 2 for --slices (default 256 256)")
    p.add_argument("--spacing", type=float, nargs="+", default=None,
                   help=f"target spacing in mm (default {' '.join(f'{v:g}' for v in DEFAULT_SPACING)}; ignored for --slices)")
    p.add_argument("--workers", type=int, default=2, help="Dask workers (processes)")
    p.add_argument("--cluster", choices=["local", "slurm", "sync", "processes"], default="local")
    p.add_argument("--cluster-config", help="YAML of dask-jobqueue SLURMCluster options for --cluster slurm")
    p.add_argument("--normalize", choices=["minmax", "zscore"], default="minmax")
    p.add_argument("--clip-percentiles", type=float, nargs=2, default=[0.5, 99.5], metavar=("LO", "HI"))
    p.add_argument("--mask", action="store_true", help="mask the background with a foreground threshold")
    p.add_argument("--mask-column", default=None, help="manifest column holding brain-mask NIfTI paths (implies masking)")
    p.add_argument("--slice-modality", default="T1w", help="modality recorded for --slices images")
    p.add_argument("--subject-pattern", default=None,
                   help="regex whose first group extracts the subject id from a slice file name (subject-aware splits)")
    p.add_argument("--subjects-table", "--labels", dest="subjects_table", metavar="TABLE", default=None,
                   help="--bids/--brats: CSV/TSV with a subject (or participant_id) column, a label column and "
                        "metadata columns named as the 25 schema fields (--bids default: ROOT/participants.tsv)")
    p.add_argument("--label-column", metavar="COL", default=None,
                   help="--bids/--brats: the subject-table column that is each subject's label, e.g. group or "
                        "diagnosis (default: a column named label, if any)")
    p.add_argument("--allow-outside-root", action="store_true", help="allow manifest paths outside its folder")
    p.add_argument("--chunks", type=int, nargs="+", default=None,
                   help="Zarr chunk shape (default: octants, ceil(n/2) per axis = 8 chunks per volume, e.g. "
                        "96 112 80 for 192 224 160 or 24 28 20 for 48 56 40; --slices: the whole slice up to 256 256)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--splits", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--stratify", choices=["dataset", "modalities", "label"], default=None,
                   help="split each dataset / modality set / (dataset, label) class at the fractions "
                        "(default: the stable per-subject hash split)")
    p.add_argument("--max-volume-mb", type=float, default=None, metavar="MIB",
                   help="per-input memory limit, checked from the header before any voxel is read; larger or "
                        "lying files (gzip bombs) are reported as failed (default $BSYNTH_MAX_VOLUME_MB or 512 = "
                        "a 512^3 float32 volume)")
    sl = p.add_argument_group("--slices-from options")
    sl.add_argument("--axis", choices=["axial", "coronal", "sagittal"], default="axial", help="slice orientation")
    sl.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                    help="slice size: N (square) or H W (default 128: seed 001; 256 for seed 004)")
    sl.add_argument("--modalities", nargs="+", default=None, metavar="MOD",
                    help="only these modalities, e.g. FLAIR T1Gd (default all)")
    sl.add_argument("--min-brain-fraction", type=float, default=0.05, metavar="F",
                    help="keep a slice when at least this fraction of its pixels is brain (default 0.05)")
    sl.add_argument("--slice-fit", choices=["pad", "stretch"], default="pad",
                    help="pad: keep the aspect ratio and pad (default); stretch: resize to exactly the size")
    sl.add_argument("--interpolation", choices=["bicubic", "bilinear"], default="bicubic",
                    help="resize filter (001: bicubic, 004: bilinear)")
    sl.add_argument("--value-range", type=float, nargs=2, default=[-1.0, 1.0], metavar=("LO", "HI"),
                    help="stored intensity range (default -1 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("manifest",
                       help="write a manifest CSV for a folder of NIfTI files (for `bsynth prep --manifest`)")
    p.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="folder holding the NIfTI files")
    p.add_argument("--out", default=None, help="manifest to write (default DIR/manifest.csv; paths in it are relative "
                                              "to its folder)")
    p.add_argument("--pattern", default=None, metavar="REGEX",
                   help="regex searched in each path relative to DIR, with named groups (?P<subject>...) and "
                        "(?P<modality>...) (optional: session, dataset); default: BIDS-like or "
                        "<subject>_<modality> names")
    p.add_argument("--dataset", default=None, help="dataset column (default: BIDS dataset_description.json Name, else "
                                                   "the folder name)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("info", help="summarise a Zarr store (volumes per modality/split/label)")
    p.add_argument("store")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="benchmarks (JSON into benchmarks/results/): " + " | ".join(BENCHMARKS))
    p.add_argument("what", choices=list(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see its --help)")
    p.set_defaults(func=cmd_bench)

    # Everything after `train` goes to the engine's own parser (bsynth_hpc.engine.run), options included:
    # a prefix character no argument starts with makes argparse treat them all as the REMAINDER.
    p = sub.add_parser("train", help="train a recipe stage (single process, DDP or DeepSpeed; see `bsynth train -h`)",
                       add_help=False, prefix_chars="\x01")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="STAGE --config YAML --store STORE --run-dir RUN ...")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="encode a store into a latent cache with a trained compressor")
    p.add_argument("--run", required=True, help="the compressor's run directory (RUN/export/<name>.safetensors)")
    p.add_argument("--store", required=True, help="volume store to encode")
    p.add_argument("--out", required=True, help="latent cache to write, e.g. latents.zarr (resumable)")
    p.add_argument("--name", default=None, help="export name in RUN/export (default: the only one, or 'vae')")
    p.add_argument("--split", default=None, choices=["train", "val", "test"], help="encode one split (default all)")
    p.add_argument("--modality", nargs="+", default=None, metavar="M",
                   help="encode only these modalities (default: those the compressor was trained on, its run's "
                        "data.modalities; 'all' for every volume)")
    p.add_argument("--reencode", action="store_true",
                   help="replace an existing cache at --out (needed after retraining the compressor)")
    p.add_argument("--batch-size", type=int_at_least(1), default=1)
    p.add_argument("--device", type=device_name, default=None, help="auto | cpu | cuda | cuda:N (default: cuda when "
                                                                    "available)")
    p.set_defaults(func=cmd_encode)

    add_sample_parser(sub)

    add_study_parser(sub)

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NotYetAvailableError as exc:
        print(f"bsynth: {exc}", file=sys.stderr)
        return 2
    except BsynthError as exc:
        print(f"bsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bsynth: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
