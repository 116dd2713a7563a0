"""``bsynth eval fidelity``: weight-free sample fidelity and memorization audit against a real store.

Needs no pretrained network (so it never runs on random features). Inputs: a bsynth store (its
TRAINING split gives the reference means, tissue masks and memorization neighbours; its HELD-OUT
splits, val and test by default, give the real-volume reference column and the copy threshold) and a
``bsynth sample`` folder (NIfTI + samples.csv naming each sample's modality and, for DiT-3D, class).
Samples must lie on the store grid (same shape and voxel spacing); others are refused.

Per volume (samples, and held-out reals for reference), see :mod:`.fidelity_metrics`:
  * ``corr_modality``: Pearson correlation with the training mean of its modality;
  * ``corr_class``: with the training mean of its (modality, class) when it has a class;
  * ``dice``: Otsu brain mask vs the own-modality training mean's Otsu brain mask;
  * ``identified``: modality whose training mean it correlates with most; ``contrast_ok`` when that is
    the requested modality's family (T1w and T1Gd count as one); not judged (None) when the store holds
    one contrast family only;
  * ``tissue_ok``: the modality's tissue-contrast order inside CSF/GM/WM masks of the T1-family mean;
  * memorization (:mod:`.memorization`): nearest training volume by correlation and SSIM, ``copy`` flag;
  * ``deviation_rms``: RMS distance from that real mean inside its brain mask; the spread of the samples
    (:mod:`.fidelity_spread`) sets it against the held-out volumes', and the samples' distances from each other
    against those between training volumes. High r with a spread far under 1 means mean-like samples, not
    realistic ones.
Summaries: median, IQR and fraction passing (correlation and Dice >= :data:`PASS_CORR` /
:data:`PASS_DICE`, the issue-14 targets) pooled and per modality / class. Outputs: fidelity.json,
fidelity.md and nearest_training.png (see :mod:`.fidelity_figure`). The training volumes are held in
memory (the audit compares every sample with each of them): fine for demo-sized stores; at 1 mm about
27 MB per volume.

2D: with a slice store (``bsynth prep --slices-from``) as ``--real`` the same measures run on slices
(:mod:`.fidelity_slices`): real slices mapped from the store's value range to [0, 1], the samples of a
``bsynth sample slice2d`` folder (PNG or 2D NIfTI listed in samples.csv), the means over the training slices
(pixel for pixel: slices keep the store's image order), 2D SSIM in the memorization audit. Slices at different
levels share no mean, so ``corr_modality`` and ``dice`` use the per-level training mean (slices grouped by their
``slice_index``) that the slice correlates with best, for samples and held-out real slices alike (``matched_level``).
A folder of 3D samples against a slice store is cut into the slices the store's own cut would keep, so a 3D
model is scored on the same slice measure as a 2D one.

Other commands (``bsynth demo``) call :func:`run_fidelity` and print :func:`headline`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.store import VolumeStore
from ..errors import InputError, StoreError
from .fidelity_figure import neighbour_grid
from .fidelity_levels import level_markdown, levels_by_modality
from .fidelity_spread import deviation_rms, spread_by_modality, spread_headline, spread_markdown
from .fidelity_slices import (cut_into_slices, is_slice_store, lists_volumes, open_slice_samples, open_slice_store_set,
                              slice_cut_of_store)
from .fidelity_metrics import (EDGE_MM, FAMILY, REFERENCE_CONTRASTS, brain_mask, dice, identify_contrast, median_ci,
                               pearson, same_family, tissue_masks, tissue_means, tissue_order_check)
from .io import SIDECAR_NAMES, VolumeSet, open_nifti_set, open_store_set
from .memorization import (DEFAULT_SSIM_CANDIDATES, Neighbour, audit, closer_than_heldout, copy_rule, flag_copies,
                           percentile_within)
from .report import provenance, write_json

PASS_CORR = 0.90
PASS_DICE = 0.90
SPACING_TOLERANCE = 1e-3
SAMPLES_CSV = SIDECAR_NAMES[0]
Log = Callable[[str], None]


@dataclass(frozen=True)
class FidelityConfig:
    """What ``bsynth eval fidelity`` compares (recorded in the JSON)."""

    train_split: str = "train"
    heldout_splits: tuple[str, ...] = ("val", "test")
    ssim_candidates: int = DEFAULT_SSIM_CANDIDATES
    grid_max: int = 16
    pass_corr: float = PASS_CORR
    pass_dice: float = PASS_DICE


# ---------------------------------------------------------------------------------------- inputs
def _store_spacing(path: Path) -> tuple[float, ...]:
    return tuple(float(s) for s in VolumeStore(path).info.get("spacing") or ())


def open_samples(folder: Path, shape: Sequence[int], spacing: Sequence[float]) -> VolumeSet:
    """The samples of a ``bsynth sample`` folder, refused unless every one is on the store grid and
    samples.csv names its modality."""
    if not folder.is_dir():
        raise InputError(f"--fake {folder} is not a folder: give the output folder of `bsynth sample`")
    if not any(p.name.endswith((".nii", ".nii.gz")) for p in folder.iterdir()):
        raise InputError(f"--fake {folder} holds no NIfTI samples (*.nii, *.nii.gz): run "
                         f"`bsynth sample --out {folder}` "
                         "first")
    if not (folder / SAMPLES_CSV).is_file():
        raise InputError(f"--fake {folder} has no {SAMPLES_CSV}: fidelity needs each sample's requested modality "
                         "(and class), which `bsynth sample` records there")
    try:
        samples = open_nifti_set(folder, target_shape=tuple(shape), fit="refuse")
    except InputError as exc:
        raise InputError(f"samples are not on the store grid: {exc}") from None
    import nibabel as nib  # lazy: optional NIfTI reader, only needed when samples are read

    for ref in samples.refs:
        zooms = tuple(float(z) for z in nib.as_closest_canonical(nib.load(ref.source)).header.get_zooms()[:3])
        if spacing and not np.allclose(zooms, spacing, rtol=SPACING_TOLERANCE):
            raise InputError(f"{ref.source} has voxel spacing {zooms} mm, the store grid {tuple(spacing)} mm: samples "
                             "must be written on the store grid (`bsynth sample` without a native output space)")
        if ref.modality is None:
            raise InputError(f"{folder / SAMPLES_CSV}: {Path(ref.source).name} has no modality: fidelity compares "
                             "each sample with the real volumes of its requested modality")
    return samples


def open_samples_against_slices(store: Path, samples_dir: Path, shape: Sequence[int]) -> VolumeSet:
    """The samples scored against a slice store: generated slices as they are, or 3D volumes (``bsynth sample``)
    checked on the store's source grid and cut as the store was cut (module docstring)."""
    if not lists_volumes(samples_dir):
        return open_slice_samples(samples_dir, shape)
    config, source = slice_cut_of_store(store)
    return cut_into_slices(open_samples(samples_dir, VolumeStore(source).shape, _store_spacing(source)), config)


def _open_split(path: Path, split: str) -> VolumeSet:
    """One split of a volume store, or of a slice store (mapped to [0, 1])."""
    return open_slice_store_set(path, split=split) if is_slice_store(path) else open_store_set(path, split=split)


def _open_splits(path: Path, splits: Sequence[str]) -> list[tuple[str, VolumeSet]]:
    """Each named split of the store that has volumes (a split without any is skipped)."""
    out = []
    for split in splits:
        try:
            out.append((split, _open_split(path, split)))
        except StoreError as exc:
            if "no volumes" not in str(exc):
                raise
    return out


@dataclass
class RealReference:
    """Training volumes per modality and what is derived from them on the store grid."""

    volumes: dict[str, list[np.ndarray]]
    ids: dict[str, list[str]]
    means: dict[str, np.ndarray]
    class_means: dict[tuple[str, str], np.ndarray]
    masks: dict[str, np.ndarray]
    tissues: dict[str, np.ndarray] | None
    tissue_source: str | None
    spacing: tuple[float, ...]
    level_means: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    """Slice stores: per modality, the mean of the training slices at each slice level (index along the axis)."""
    level_masks: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    levels: dict[str, list[int | None]] = field(default_factory=dict)
    """Per modality, the slice level of each training volume in ``volumes`` (None for 3D volumes)."""

    @classmethod
    def from_set(cls, train: VolumeSet, spacing: Sequence[float]) -> "RealReference":
        volumes: dict[str, list[np.ndarray]] = defaultdict(list)
        ids: dict[str, list[str]] = defaultdict(list)
        levels: dict[str, list[int | None]] = defaultdict(list)
        by_class: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        by_level: dict[str, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        for i, ref in enumerate(train.refs):
            if ref.modality is None:
                continue
            v = train.load(i)
            volumes[ref.modality].append(v)
            ids[ref.modality].append(ref.volume_id)
            levels[ref.modality].append(ref.level)
            if ref.label is not None:
                by_class[(ref.modality, ref.label)].append(v)
            if ref.level is not None:
                by_level[ref.modality][ref.level].append(v)
        level_means = {m: {k: np.mean(vs, axis=0) for k, vs in sorted(lv.items())}
                       for m, lv in by_level.items()}
        means = {m: np.mean(vs, axis=0) for m, vs in volumes.items()}
        source = next((m for m in REFERENCE_CONTRASTS if m in means), None)
        tissues = tissue_masks(means[source], spacing) if source else None
        return cls(volumes=dict(volumes), ids=dict(ids), means=means,
                   class_means={k: np.mean(vs, axis=0) for k, vs in by_class.items()},
                   masks={m: brain_mask(v) for m, v in means.items()}, tissues=tissues, tissue_source=source,
                   spacing=tuple(spacing), level_means=level_means,
                   level_masks={m: {k: brain_mask(v) for k, v in lv.items()} for m, lv in level_means.items()},
                   levels=dict(levels))

    def own_mean(self, volume: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray, int | None]:
        """The real mean a volume of ``modality`` is compared with, its brain mask and (slices) its level.

        Volumes: the training mean of the modality (the volumes are aligned). Slices: the training slices are
        aligned only level by level (an axial slice through the ventricles and one through the cerebellum share
        no mean), so a slice is compared with the per-level mean it correlates with best, the level a real slice
        of unknown position would be placed at."""
        levels = self.level_means.get(modality)
        if not levels:
            return self.means[modality], self.masks[modality], None
        best = max(levels, key=lambda k: pearson(volume, levels[k]))
        return levels[best], self.level_masks[modality][best], int(best)

    def training_rows(self) -> list[dict[str, Any]]:
        """One row per training volume (modality and, for slices, its level as ``matched_level``), in the order
        of ``volumes``: the real reference of the spread between volumes."""
        return [{"modality": m, "matched_level": level} for m in self.volumes
                for level in self.levels.get(m, [None] * len(self.volumes[m]))]

    def mask_for(self, modality: str, level: int | None) -> np.ndarray:
        """The brain mask of the real mean of ``modality`` (of its slice ``level`` when given)."""
        return self.masks[modality] if level is None else self.level_masks[modality][level]

    def describe(self) -> dict[str, Any]:
        levels = ({"slice_levels": {m: len(v) for m, v in self.level_means.items()},
                   "slice_reference": "each slice is compared with the mean (and its Otsu mask) of the training "
                                      "slices at the level it correlates with best"} if self.level_means else {})
        return {**levels, "train_volumes": {m: len(v) for m, v in self.volumes.items()},
                "classes": sorted({f"{m}/{c}" for m, c in self.class_means}),
                "tissue_masks": None if self.tissues is None else {
                    "method": f"3-class 1D k-means of the training {self.tissue_source} mean inside its Otsu brain "
                              f"mask eroded by {EDGE_MM} mm (CSF darkest, WM brightest)",
                    "voxels": {k: int(v.sum()) for k, v in self.tissues.items()}},
                "brain_mask": "Otsu threshold (256 bins on [0, 1]) of each volume, holes filled"}


# ---------------------------------------------------------------------------------------- per volume
def volume_row(volume: np.ndarray, modality: str, label: str | None, real: RealReference) -> dict[str, Any]:
    """The fidelity measures of one volume (module docstring)."""
    if modality not in real.means:
        raise InputError(f"the store's training split has no {modality} volume to compare a {modality} sample with "
                         f"(it has {sorted(real.means)})")
    identified, corrs = identify_contrast(volume, real.means)
    if len({FAMILY.get(m, m) for m in real.means}) < 2:  # one contrast family only: nothing to tell apart
        identified = None
    own, own_mask, level = real.own_mean(volume, modality)
    row: dict[str, Any] = {
        "modality": modality, "label": label,
        "corr_modality": pearson(volume, own),
        "corr_class": pearson(volume, real.class_means[(modality, label)]) if (modality, label) in real.class_means
        else None,
        "dice": dice(brain_mask(volume), own_mask),
        "deviation_rms": deviation_rms(volume, own, own_mask),
        "identified": identified, "contrast_ok": None if identified is None else same_family(identified, modality),
        "corr_by_modality": corrs,
    }
    if level is not None:
        row["matched_level"] = level
    if real.tissues is not None:
        means = tissue_means(volume, real.tissues)
        rule, ok = tissue_order_check(modality, means)
        row.update({"tissue_means": means, "tissue_rule": rule, "tissue_ok": ok})
    return row


def _memorization(rows: list[dict[str, Any]], volumes: Sequence[np.ndarray], real: RealReference,
                  ssim_candidates: int, log: Log | None, what: str) -> list[Neighbour]:
    """Nearest training volume of each row's volume (same modality), written into the rows."""
    neighbours: list[Neighbour] = []
    for modality in sorted({r["modality"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["modality"] == modality]
        found = audit([volumes[i] for i in idx], real.volumes[modality], ssim_candidates, log, f"{modality} {what}",
                      mean=np.asarray(real.means[modality], dtype=np.float64))
        for i, n in zip(idx, found):
            rows[i].update(n.as_dict(real.ids[modality]))
            rows[i]["_neighbour"] = n
    for r in rows:
        neighbours.append(r.pop("_neighbour"))
    return neighbours


# ---------------------------------------------------------------------------------------- summaries
def _stats(values: Sequence[float | None], threshold: float | None = None) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": int(v.size), "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                           "q75": float(np.quantile(v, 0.75)), "median_ci95": list(median_ci(v))}
    if threshold is not None:
        out.update({"threshold": threshold, "fraction_passing": float((v >= threshold).mean())})
    return out


def _fraction(values: Sequence[bool | None]) -> dict[str, Any]:
    v = [bool(x) for x in values if x is not None]
    return {"n": len(v), "fraction_passing": float(np.mean(v)) if v else None}


def summarize(rows: Sequence[Mapping[str, Any]], config: FidelityConfig) -> dict[str, Any]:
    """Median / IQR / fraction passing of every measure over ``rows``."""
    out = {"n": len(rows),
           "corr_modality": _stats([r["corr_modality"] for r in rows], config.pass_corr),
           "corr_class": _stats([r.get("corr_class") for r in rows], config.pass_corr),
           "dice": _stats([r["dice"] for r in rows], config.pass_dice),
           "deviation_rms": _stats([r.get("deviation_rms") for r in rows]),
           "contrast_identified": _fraction([r["contrast_ok"] for r in rows]),
           "tissue_order": _fraction([r.get("tissue_ok") for r in rows]),
           "nearest_train_corr": _stats([r.get("nearest_train_corr") for r in rows]),
           "nearest_train_ssim": _stats([r.get("nearest_train_ssim") for r in rows]),
           "nearest_train_residual_corr": _stats([r.get("nearest_train_residual_corr") for r in rows])}
    flags = [r.get("copy") for r in rows if "copy" in r]
    if flags:
        known = [f for f in flags if f is not None]
        close = [c for c in (r.get("closer_than_heldout") for r in rows) if c is not None]
        out["copies"] = {"n_flagged": int(sum(known)), "n_judged": len(known),
                         "n_closer_than_heldout": int(sum(close))}
    return out


def grouped_summaries(rows: Sequence[Mapping[str, Any]], config: FidelityConfig) -> dict[str, Any]:
    """Pooled, per-modality and per-class summaries."""
    groups: dict[str, Any] = {"pooled": summarize(rows, config)}
    for key, word in (("modality", "modality"), ("label", "class")):
        names = sorted({r[key] for r in rows if r.get(key)})
        if names:
            groups[f"by_{word}"] = {n: summarize([r for r in rows if r.get(key) == n], config) for n in names}
    return groups


# ---------------------------------------------------------------------------------------- protocol
@dataclass
class FidelityResult:
    """The JSON-ready result plus the in-memory volumes the figure needs."""

    result: dict[str, Any]
    figure_rows: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


def evaluate_fidelity(store: Path, samples_dir: Path, config: FidelityConfig, log: Log | None = None) -> FidelityResult:
    """Fidelity and memorization of the samples in ``samples_dir`` against ``store`` (module docstring)."""
    say = log or (lambda _msg: None)
    spacing = _store_spacing(store)
    train = _open_split(store, config.train_split)
    slices = is_slice_store(store)
    fake = open_samples_against_slices(store, samples_dir, train.shape) if slices else \
        open_samples(samples_dir, train.shape, spacing)
    heldout = _open_splits(store, config.heldout_splits)
    say(f"real: {len(train)} {config.train_split} volumes, "
        f"{sum(len(s) for _, s in heldout)} held-out ({', '.join(n for n, _ in heldout) or 'none'}); "
        f"samples: {len(fake)} in {samples_dir}")
    real = RealReference.from_set(train, spacing)

    fake_vols = [fake.load(i) for i in range(len(fake))]
    sample_rows = [{"sample": r.volume_id, "path": r.source, **volume_row(v, r.modality, r.label, real)}
                   for r, v in zip(fake.refs, fake_vols)]
    held_vols: list[np.ndarray] = []
    held_rows: list[dict[str, Any]] = []
    for split, vs in heldout:
        for i, ref in enumerate(vs.refs):
            if ref.modality in real.means:
                v = vs.load(i)
                held_vols.append(v)
                held_rows.append({"volume_id": ref.volume_id, "split": split,
                                  **volume_row(v, ref.modality, ref.label, real)})

    say("memorization audit (nearest training volume by correlation and SSIM)")
    held_nn = _memorization(held_rows, held_vols, real, config.ssim_candidates, log, "held-out volumes")
    sample_nn = _memorization(sample_rows, fake_vols, real, config.ssim_candidates, log, "samples")
    rule = copy_rule(held_nn)
    ref_corr, ref_ssim = [n.corr for n in held_nn], [n.ssim for n in held_nn]
    for row, n, flag, close in zip(sample_rows, sample_nn, flag_copies(sample_nn, rule),
                                   closer_than_heldout(sample_nn, rule)):
        row["copy"] = flag
        row["closer_than_heldout"] = close
        row["nearest_train_corr_percentile_of_heldout"] = percentile_within(n.corr, ref_corr)
        row["nearest_train_ssim_percentile_of_heldout"] = percentile_within(n.ssim, ref_ssim)

    result = {
        "protocol": "fidelity", "random_features": False, "weights": [],
        "config": asdict(config),
        "inputs": {"real": {"path": str(store), "spacing": list(spacing), "shape": list(train.shape),
                            "train": train.describe(),
                            "heldout": {n: s.describe() for n, s in heldout}, **real.describe()},
                   "generated": fake.describe()},
        "memorization": {"copy_rule": rule.as_dict() if rule else None,
                         "ssim": f"{2 if slices else 3}D SSIM (MONAI), Gaussian window sigma 1.5, data range 1; "
                                 "against the "
                                 + ("all training volumes" if config.ssim_candidates <= 0 else
                                    f"{config.ssim_candidates} best-correlated training volumes") + " of the modality",
                         "heldout_nearest_train": [{"volume_id": r["volume_id"], "split": r["split"],
                                                    "modality": r["modality"], "corr": r["nearest_train_corr"],
                                                    "ssim": r["nearest_train_ssim"],
                                                    "residual_corr": r.get("nearest_train_residual_corr")}
                                                   for r in held_rows]},
        "summary": {"samples": grouped_summaries(sample_rows, config),
                    "real_heldout": grouped_summaries(held_rows, config) if held_rows else None},
        "by_level": levels_by_modality(sample_rows, held_rows) if slices else None,
        "spread": spread_by_modality(sample_rows, fake_vols, held_rows, held_vols, real.training_rows(),
                                     [v for m in real.volumes for v in real.volumes[m]], real.mask_for),
        "samples": sample_rows,
        "real_heldout": held_rows,
    }
    figure_rows = []
    for row, v, n in list(zip(sample_rows, fake_vols, sample_nn))[:config.grid_max]:
        flag = " COPY?" if row["copy"] else ""
        label = (f"{row['sample']} ({row['modality']}{'/' + row['label'] if row['label'] else ''}) | nearest train "
                 f"{row['nearest_train_by_corr']}: r={n.corr:.3f}, SSIM={row['nearest_train_ssim']:.3f}{flag}")
        figure_rows.append((label, v, real.volumes[row["modality"]][n.corr_index]))
    return FidelityResult(result=result, figure_rows=figure_rows)


# ---------------------------------------------------------------------------------------- report
def _cell(stats: Mapping[str, Any] | None, key: str = "median") -> str:
    if not stats or not stats.get("n"):
        return "-"
    if "median" in stats and key == "median":
        text = f"{stats['median']:.3f} [{stats['q25']:.3f}, {stats['q75']:.3f}]"
        if "median_ci95" in stats:
            text += f" (median 95% CI {stats['median_ci95'][0]:.3f}-{stats['median_ci95'][1]:.3f})"
        return text + (f", {stats['fraction_passing']:.2f} pass" if "fraction_passing" in stats else "")
    value = stats.get("fraction_passing")
    return "-" if value is None else f"{value:.2f} (n={stats['n']})"


HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("corr_modality", "median", "correlation with own-modality real mean: median [IQR] (bootstrap CI of the "
                                "median), fraction >= threshold"),
    ("corr_class", "median", "correlation with own-class real mean"),
    ("dice", "median", "brain-mask Dice vs real mean mask"),
    ("deviation_rms", "median", "RMS deviation from the real mean inside its brain mask (spread: see below)"),
    ("contrast_identified", "fraction", "requested contrast identified (T1w = T1Gd family)"),
    ("tissue_order", "fraction", "tissue-contrast order holds"),
    ("nearest_train_corr", "median", "nearest training volume: correlation"),
    ("nearest_train_ssim", "median", "nearest training volume: SSIM"),
    ("nearest_train_residual_corr", "median", "nearest training volume: subject-specific r (deviations from the mean)"),
)


def fidelity_markdown(result: Mapping[str, Any], figure: str | None) -> str:
    """fidelity.md: the headline table (samples vs real held-out), the copy rule and per-sample rows."""
    s, h = result["summary"]["samples"]["pooled"], (result["summary"]["real_heldout"] or {}).get("pooled")
    lines = ["# Sample fidelity and memorization audit", "",
             f"Real store: `{result['inputs']['real']['path']}`; samples: `{result['inputs']['generated']['path']}` "
             f"({s['n']} samples). No pretrained weights are used.", "",
             "| measure | samples | real held-out |", "|---|---|---|"]
    for key, kind, text in HEADLINE:
        lines.append(f"| {text} | {_cell(s.get(key), kind)} | {_cell((h or {}).get(key), kind)} |")
    for modality, levels in (result.get("by_level") or {}).items():
        lines += level_markdown(levels, modality)
    lines += spread_markdown(result.get("spread") or {})
    rule = result["memorization"]["copy_rule"]
    copies = s.get("copies", {})
    lines += ["", "## Memorization", ""]
    if rule:
        residual = "" if rule.get("max_residual") is None else f", max_residual {rule['max_residual']:.4f}"
        lines.append(f"Rule: {rule['rule']} (max_corr {rule['max_corr']:.4f}, max_ssim {rule['max_ssim']:.4f}"
                     f"{residual}, {rule['n_reference']} held-out volumes). Flagged: **{copies.get('n_flagged', 0)} of "
                     f"{copies.get('n_judged', 0)}** samples; closer to a training volume than any held-out volume "
                     f"(correlation or SSIM alone, which an average brain also is): "
                     f"{copies.get('n_closer_than_heldout', 0)}.")
    else:
        lines.append("No held-out real volumes: copies cannot be judged.")
    lines += ["", "## Per sample", "",
              "| sample | modality | class | r(modality) | r(class) | Dice | identified | tissue | nearest train (r) | "
              "r | SSIM | residual r | copy |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["samples"]:
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.3f}"
        lines.append(f"| {r['sample']} | {r['modality']} | {r['label'] or '-'} | {f(r['corr_modality'])} | "
                     f"{f(r['corr_class'])} | {f(r['dice'])} | {r['identified']} | "
                     f"{'ok' if r.get('tissue_ok') else 'no' if 'tissue_ok' in r else '-'} | "
                     f"{r['nearest_train_by_corr']} | {f(r['nearest_train_corr'])} | {f(r['nearest_train_ssim'])} | "
                     f"{f(r.get('nearest_train_residual_corr'))} | "
                     f"{'-' if r['copy'] is None else 'YES' if r['copy'] else 'no'} |")
    if figure:
        lines += ["", f"![samples next to their nearest training volume]({Path(figure).name})"]
    return "\n".join(lines) + "\n"


def headline(result: Mapping[str, Any]) -> str:
    """One line of the headline numbers (printed by the CLI and the demo)."""
    s = result["summary"]["samples"]["pooled"]

    def med(key: str) -> str:
        return f"{s[key]['median']:.3f}" if s.get(key, {}).get("n") else "-"

    def frac(key: str) -> str:
        v = s.get(key, {}).get("fraction_passing")
        return "-" if v is None else f"{v:.2f}"

    c = s.get("copies", {})
    gaps = "".join(f" | {m} level-matched gap to real r {g['gap']['corr_modality']['mean_difference']:+.3f} / Dice "
                   f"{g['gap']['dice']['mean_difference']:+.3f}"
                   for m, g in (result.get("by_level") or {}).items()
                   if g["gap"]["corr_modality"]["mean_difference"] is not None)
    return (f"fidelity: {s['n']} samples | corr(own-modality mean) median {med('corr_modality')} | Dice median "
            f"{med('dice')} | contrast identified {frac('contrast_identified')} | "
            f"tissue order {frac('tissue_order')} | "
            f"likely copies {c.get('n_flagged', '-')}/{c.get('n_judged', '-')}{gaps}"
            f"{spread_headline(result.get('spread'))}")


def write_fidelity(outcome: FidelityResult, out: Path, arguments: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """fidelity.json, fidelity.md and nearest_training.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figure = None
    if outcome.figure_rows:
        figure = neighbour_grid(outcome.figure_rows, out / "nearest_training.png",
                                ("Samples (left) | nearest training slice by correlation (right)"
                                 if outcome.figure_rows[0][1].ndim == 2 else
                                 "Samples (left: axial, coronal, sagittal) | "
                                 "nearest training volume by correlation (right)"))
    full = {"provenance": provenance(arguments), **outcome.result,
            "figures": [str(figure)] if figure else []}
    paths = {"json": write_json(full, out / "fidelity.json")}
    (out / "fidelity.md").write_text(fidelity_markdown(full, str(figure) if figure else None), encoding="utf-8")
    paths["markdown"] = out / "fidelity.md"
    if figure:
        paths["figure"] = figure
    return paths


def run_fidelity(store: Path, samples_dir: Path, out: Path, config: FidelityConfig | None = None,
                 log: Log | None = None,
                 arguments: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate and write the report in one call: (JSON-ready result, written paths)."""
    outcome = evaluate_fidelity(Path(store), Path(samples_dir), config or FidelityConfig(), log)
    return outcome.result, write_fidelity(outcome, Path(out), arguments)
