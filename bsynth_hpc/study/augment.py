"""Synthetic-augmentation classifier study (seed 000 §5.3; the papers are listed in docs/references.md).

A 2D CNN (EfficientNet-V2-S whose first convolution takes ``n_slices`` coronal slices around the
volume centre as channels; one sigmoid output, BCE loss; Adam with cosine annealing and warm
restarts, the last epoch's weights evaluated) is trained under four conditions:

* ``real``: the store's train split, volumes of ``modality`` (default T1w) labelled with one of ``classes``;
* ``synthetic``: every synthetic volume of those classes listed in ``<synthetic>/samples.csv``;
* ``real+synthetic 1:r`` for each r in ``ratios``: the real set plus ``round(r * n_real)``
  synthetic volumes drawn (without replacement, with ``seed``, each class its share) from the synthetic pool.

Every condition is evaluated on the store's test split (the same subject-aware split as the
generators); when the test split is tiny (fewer than 4 volumes or a class missing) val + test is
used instead and ``metrics.json`` says so. Metrics: F1, precision, recall, accuracy (threshold 0.5),
AUC-ROC (Mann-Whitney rank formula, ties averaged) and AUCPR (average precision, as sklearn's
``average_precision_score``). ``classes[1]`` is the positive class.

Outputs: ``<out>/metrics.json`` and ``<out>/metrics.md``.

    bsynth study augment --store STORE --synthetic SYNTH_DIR --out study/ [--epochs 30 --n-slices 16]
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from ..argtypes import device_name, float_at_least, int_at_least, output_folder
from ..data.dataset import VolumeDataset
from ..data.finalize import load_index
from ..data.store import VolumeStore
from ..errors import ConfigError, InputError, StoreError

METRICS = ("f1", "precision", "recall", "accuracy", "auc_roc", "aucpr")
SEED000_CORONAL_MM = 136.0   # 000 §5.3.1: 136 coronal slices at 1 mm as the classifier's channels
CORONAL_AXIS = 1  # the store is RAS: (X = left-right, Y = posterior-anterior, Z = inferior-superior)


# ---------------------------------------------------------------------------------------------- metrics
def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """AUC-ROC = Mann-Whitney U / (n_pos * n_neg), ties given their average rank
    (``scipy.stats.rankdata``); NaN when only one class is present."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """AUCPR as average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int((y == 1).sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys == 1)
    fp = np.cumsum(ys == 0)
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # last index of each distinct score
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def binary_metrics(y_true: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """F1, precision, recall, accuracy at ``threshold`` (0 where undefined), AUC-ROC and AUCPR."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"binary_metrics: {y.size} labels vs {s.size} scores")
    pred = (s >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "accuracy": float((pred == y).mean()), "auc_roc": roc_auc(y, s), "aucpr": average_precision(y, s)}


# ---------------------------------------------------------------------------------------------- data
def coronal_stack(volume: np.ndarray, n_slices: int) -> np.ndarray:
    """(X, Y, Z) volume -> (n_slices, X, Z): n coronal slices around the centre, as channels."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {vol.shape}")
    depth = vol.shape[CORONAL_AXIS]
    start = depth // 2 - n_slices // 2
    idx = np.clip(np.arange(start, start + n_slices), 0, depth - 1)  # repeats edge slices if n > depth
    return np.ascontiguousarray(np.moveaxis(vol.take(idx, axis=CORONAL_AXIS), CORONAL_AXIS, 0))


def _fit_shape(vol: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample (trilinear) a synthetic volume to the store's shape when it differs."""
    if tuple(vol.shape) == tuple(shape):
        return vol.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def _load_real(store: Path, split: str, classes: Sequence[str], n_slices: int,
               modality: str | None = "T1w") -> tuple[list[np.ndarray], list[int], tuple[int, ...]]:
    try:
        ds = VolumeDataset(store, split=split, modalities=[modality] if modality else None)
    except StoreError:  # no volume of that modality in the split
        return [], [], tuple(VolumeDataset(store, split=None).shape)
    xs, ys = [], []
    for i, e in enumerate(ds.entries):
        if e.label in classes:
            xs.append(coronal_stack(ds.read_image(i), n_slices))
            ys.append(classes.index(e.label))
    return xs, ys, ds.shape


def _load_synthetic(folder: Path, classes: Sequence[str], shape: Sequence[int], n_slices: int,
                    modality: str | None = "T1w") -> tuple[list[np.ndarray], list[int], int]:
    import nibabel as nib

    table = folder / "samples.csv"
    if not table.is_file():
        raise InputError(f"{table} not found: point --synthetic at a `bsynth sample` output folder")
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    xs, ys, resampled = [], [], 0
    for row in rows:
        label = (row.get("label") or "").strip()
        if label not in classes or (modality and (row.get("modality") or modality) != modality):
            continue
        path = Path(row["path"])
        path = path if path.is_absolute() else folder / path
        vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
        if vol.ndim == 4 and vol.shape[-1] == 1:
            vol = vol[..., 0]
        resampled += tuple(vol.shape) != tuple(shape)
        xs.append(coronal_stack(_fit_shape(vol, shape), n_slices))
        ys.append(classes.index(label))
    if not xs:
        raise InputError(f"{table} lists no {modality or ''} volumes labelled {list(classes)}")
    return xs, ys, resampled


# ---------------------------------------------------------------------------------------------- models
def build_classifier(arch: str, n_slices: int) -> nn.Module:
    """EfficientNet-V2-S (first conv -> n_slices channels, one logit) or a tiny CNN for CPU tests."""
    if arch == "efficientnet_v2_s":
        from torchvision.models import efficientnet_v2_s

        model = efficientnet_v2_s(weights=None, num_classes=1)
        old = model.features[0][0]
        model.features[0][0] = nn.Conv2d(n_slices, old.out_channels, kernel_size=old.kernel_size,
                                         stride=old.stride, padding=old.padding, bias=False)
        return model
    if arch == "tiny":
        return nn.Sequential(
            nn.Conv2d(n_slices, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))
    raise ConfigError(f"unknown arch {arch!r}; expected 'efficientnet_v2_s' or 'tiny'")


def restart_period(epochs: int) -> int:
    """Epochs per cosine cycle of the warm-restart schedule: three cycles over the run (000 §5.3.1 names
    the schedule, not its period)."""
    return max(1, -(-int(epochs) // 3))


def _train_eval(x_tr: torch.Tensor, y_tr: torch.Tensor, x_ev: torch.Tensor, arch: str, n_slices: int,
                epochs: int, batch_size: int, lr: float, seed: int, device: torch.device) -> np.ndarray:
    torch.manual_seed(seed)
    model = build_classifier(arch, n_slices).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=restart_period(epochs))
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    n = len(x_tr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(0, n, batch_size):
            idx = perm[b:b + batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs > 1 sample per batch
                idx = torch.cat([idx, perm[:1]])
            xb, yb = x_tr[idx].to(device), y_tr[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb).view(-1), yb)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        probs = [torch.sigmoid(model(x_ev[b:b + batch_size].to(device)).view(-1)).cpu()
                 for b in range(0, len(x_ev), batch_size)]
    return torch.cat(probs).numpy()


# ---------------------------------------------------------------------------------------------- study
def _stack(xs: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(xs).astype(np.float32))


def run_augment_study(store: str | Path, synthetic_dir: str | Path, out_dir: str | Path,
                      classes: Sequence[str] = ("healthy", "TLE"), ratios: Sequence[float] = (0.25, 0.5),
                      epochs: int = 30, batch_size: int = 16, n_slices: int = 16,
                      arch: str = "efficientnet_v2_s", seed: int = 0, lr: float = 1e-3,
                      device: str | None = None, modality: str | None = "T1w",
                      allow_short_mix: bool = False) -> dict[str, Any]:
    """Run the four-condition study; writes out_dir/metrics.json + metrics.md and returns the json dict.

    ``n_slices`` 0 means seed 000's span: 136 mm of coronal slices at the store's spacing. A synthetic
    pool that lacks a class or holds fewer volumes than a mix asks for is refused (the conditions would
    silently be other mixes than asked) unless ``allow_short_mix``; then each shortfall is warned
    about on stderr and recorded (requested and actual counts per condition)."""
    classes = tuple(classes)
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ConfigError(f"classes must be two distinct labels (negative, positive), got {classes}")
    if n_slices < 0 or epochs < 1 or batch_size < 1:
        raise ConfigError("n_slices must be >= 0 (0: seed 000's 136 mm span), epochs and batch_size >= 1")
    if n_slices == 0:
        n_slices = seed000_slices(Path(store))
    build_classifier(arch, n_slices)  # validate arch early
    t0 = time.perf_counter()
    store, synthetic_dir, out = Path(store), Path(synthetic_dir), Path(out_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    x_real, y_real, shape = _load_real(store, "train", classes, n_slices, modality)
    if not x_real or len(set(y_real)) < 2:
        raise InputError(f"the train split of {store} needs volumes of both {classes} "
                         f"(found {np.bincount(y_real, minlength=2).tolist() if y_real else [0, 0]})")
    x_syn, y_syn, n_resampled = _load_synthetic(synthetic_dir, classes, shape, n_slices, modality)

    x_ev, y_ev, _ = _load_real(store, "test", classes, n_slices, modality) if _has_split(store, "test") else ([], [], shape)
    eval_split, note = "test", ""
    if len(x_ev) < 4 or len(set(y_ev)) < 2:
        xv, yv, _ = _load_real(store, "val", classes, n_slices, modality) if _has_split(store, "val") else ([], [], shape)
        note = (f"test split too small ({len(x_ev)} volume(s) of {classes}, classes present {sorted(set(y_ev))}): "
                "evaluated on val + test")
        x_ev, y_ev, eval_split = xv + x_ev, yv + y_ev, "val+test"
    if not x_ev:
        raise InputError(f"no volumes of {classes} in the test or val split of {store}")

    wanted = {r: int(round(float(r) * len(x_real))) for r in ratios}
    shortfalls = check_synthetic_pool(y_syn, classes, wanted, synthetic_dir, allow_short_mix)
    rng = np.random.default_rng(seed)
    conditions: list[tuple[str, list[np.ndarray], list[int], int, int, int]] = [
        ("real", x_real, y_real, len(x_real), 0, 0),
        ("synthetic", x_syn, y_syn, 0, len(x_syn), len(x_syn)),
    ]
    for r in ratios:
        k = min(wanted[r], len(x_syn))
        pick = stratified_pick(y_syn, k, rng)
        conditions.append((f"real+synthetic 1:{r:g}", x_real + [x_syn[i] for i in pick],
                           y_real + [y_syn[i] for i in pick], len(x_real), k, wanted[r]))

    x_ev_t = _stack(x_ev)
    results: dict[str, Any] = {}
    for name, xs, ys, n_r, n_s, n_wanted in conditions:
        tc = time.perf_counter()
        probs = _train_eval(_stack(xs), torch.tensor(ys, dtype=torch.float32), x_ev_t, arch, n_slices,
                            epochs, batch_size, lr, seed, dev)
        m = binary_metrics(y_ev, probs)
        results[name] = {**m, "n_train": len(xs), "n_real": n_r, "n_synthetic": n_s,
                         "n_synthetic_requested": n_wanted,
                         "n_synthetic_per_class": np.bincount(ys[n_r:], minlength=2).tolist() if n_s else [0, 0],
                         "n_train_positive": int(sum(ys)), "train_seconds": round(time.perf_counter() - tc, 2)}

    report = {
        "study": "synthetic augmentation (seed 000 §5.3)",
        "store": str(store), "synthetic_dir": str(synthetic_dir),
        "classes": {"negative": classes[0], "positive": classes[1]},
        "config": {"arch": arch, "epochs": epochs, "batch_size": batch_size, "n_slices": n_slices,
                   "ratios": [float(r) for r in ratios], "seed": seed, "lr": lr, "threshold": 0.5,
                   "modality": modality or "all",
                   "optimizer": f"Adam, cosine annealing with warm restarts (T_0 = {restart_period(epochs)} epochs)",
                   "input": f"{n_slices} coronal slices around the centre (axis {CORONAL_AXIS} of the RAS store) as channels"},
        "shortfalls": shortfalls,
        "data": {"n_real_train": len(x_real), "n_synthetic_pool": len(x_syn),
                 "n_synthetic_pool_per_class": np.bincount(y_syn, minlength=2).tolist(),
                 "n_synthetic_resampled": int(n_resampled), "store_shape": list(shape)},
        "eval": {"split": eval_split, "n": len(y_ev), "n_positive": int(sum(y_ev)), "note": note},
        "conditions": results,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(dev)},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(_markdown(report), encoding="utf-8")
    return report


def seed000_slices(store: Path) -> int:
    """Seed 000's 136 coronal 1-mm slices as the same span of the store's grid (34 at 4 mm)."""
    info = VolumeStore(store).info
    spacing = float((info.get("spacing") or (1.0, 1.0, 1.0))[CORONAL_AXIS])
    depth = int(info["shape"][CORONAL_AXIS])
    return max(1, min(depth, int(round(SEED000_CORONAL_MM / spacing))))


def check_synthetic_pool(y_syn: Sequence[int], classes: Sequence[str], wanted: dict[float, int],
                         synthetic_dir: Path, allow_short: bool) -> list[str]:
    """The ways the synthetic pool cannot give the asked-for conditions (raises unless ``allow_short``)."""
    counts = np.bincount(np.asarray(y_syn, dtype=int), minlength=2).tolist()
    problems = [f"the synthetic pool has no {c!r} volumes ({counts[0]} {classes[0]}, {counts[1]} {classes[1]}), so "
                "the 'synthetic' condition cannot train a classifier" for k, c in enumerate(classes) if counts[k] == 0]
    problems += [f"mix 1:{r:g} needs {n} synthetic volumes, the pool has {len(y_syn)}"
                 for r, n in wanted.items() if n > len(y_syn)]
    if problems and not allow_short:
        per_class = -(-max([*wanted.values(), 1]) // len(classes))
        raise InputError(f"{synthetic_dir}: " + "; ".join(problems) + ". Sample more (e.g. `bsynth sample dit3d "
                         f"--n {per_class}` samples that many of every class), or pass --allow-short-mix to run "
                         "with what there is (the report then records the shortfall)")
    for p in problems:
        print(f"[study] WARNING: {p}", file=sys.stderr, flush=True)
    return problems


def stratified_pick(labels: Sequence[int], k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices drawn without replacement, each class getting its share of the pool (largest remainder),
    so a mixed condition keeps the synthetic pool's class balance."""
    y = np.asarray(labels)
    if k <= 0:
        return np.zeros(0, dtype=int)
    classes = np.unique(y)
    exact = np.array([k * float((y == c).sum()) / len(y) for c in classes])
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: k - int(quota.sum())]:
        quota[i] += 1
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)])


def _has_split(store: Path, split: str) -> bool:
    info, _ = load_index(store)
    return split in set(info["splits"]["assignment"].values())


def _markdown(report: dict[str, Any]) -> str:
    ev = report["eval"]
    lines = [f"# Synthetic-augmentation study ({report['classes']['positive']} vs {report['classes']['negative']})", "",
             f"arch {report['config']['arch']}, {report['config']['epochs']} epoch(s), {report['config']['n_slices']} "
             f"coronal slices of {report['config'].get('modality', 'all')} volumes; evaluated on {ev['split']} "
             f"(n = {ev['n']}, {ev['n_positive']} positive)."]
    if ev["note"]:
        lines += ["", f"Note: {ev['note']}."]
    for problem in report.get("shortfalls", []):
        lines += ["", f"**Warning: {problem}** (run with --allow-short-mix)."]
    lines += ["", "| condition | n real | n synthetic (requested) | F1 | precision | recall | accuracy | AUC-ROC | AUCPR |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["conditions"].items():
        requested = r.get("n_synthetic_requested", r["n_synthetic"])
        lines.append(f"| {name} | {r['n_real']} | {r['n_synthetic']} ({requested}) | "
                     + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_augment(args: argparse.Namespace) -> int:
    report = run_augment_study(
        args.store, args.synthetic, args.out, classes=tuple(c.strip() for c in args.classes.split(",")),
        ratios=tuple(float(r) for r in args.ratios.split(",") if r.strip()), epochs=args.epochs,
        batch_size=args.batch_size, n_slices=args.n_slices, arch=args.arch, seed=args.seed, lr=args.lr,
        device=args.device, modality=None if args.modality == "all" else args.modality,
        allow_short_mix=args.allow_short_mix)
    print(_markdown(report))
    print(f"wrote {Path(args.out) / 'metrics.json'} and metrics.md")
    return 0


def add_study_parser(subparsers: Any) -> None:
    """Register ``bsynth study augment``."""
    p = subparsers.add_parser("study", help="downstream studies on synthetic cohorts")
    ss = p.add_subparsers(dest="study_command", required=True, metavar="STUDY")
    a = ss.add_parser("augment", help="classifier trained on real / synthetic / real+synthetic (seed 000 §5.3)")
    a.add_argument("--store", required=True, help="finalized labelled store (its subject-aware splits are used)")
    a.add_argument("--synthetic", required=True, help="folder with samples.csv (path, label) + NIfTI")
    a.add_argument("--out", required=True, type=output_folder, help="output folder (metrics.json, metrics.md)")
    a.add_argument("--classes", default="healthy,TLE", help="negative,positive labels (default healthy,TLE)")
    a.add_argument("--ratios", default="0.25,0.5", help="synthetic:real ratios of the mixed conditions")
    a.add_argument("--epochs", type=int_at_least(1), default=30)
    a.add_argument("--batch-size", type=int_at_least(1), default=16)
    a.add_argument("--n-slices", type=int_at_least(0), default=0,
                   help="coronal slices around the centre, as channels (default 0: seed 000's 136 mm span at the "
                        "store's spacing, e.g. 34 at 4 mm)")
    a.add_argument("--allow-short-mix", action="store_true",
                   help="run even when the synthetic pool lacks a class or is smaller than a mix asks for (each "
                        "shortfall is warned about and recorded); default: refuse")
    a.add_argument("--arch", default="efficientnet_v2_s", choices=("efficientnet_v2_s", "tiny"))
    a.add_argument("--lr", type=float_at_least(1e-12, "a positive learning rate"), default=1e-3)
    a.add_argument("--modality", default="T1w", help="volumes of this modality only, real and synthetic (default "
                                                     "T1w, as 000; 'all' mixes every modality)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", type=device_name, default=None, help="auto | cpu | cuda | cuda:N")
    a.set_defaults(func=_cmd_augment)
