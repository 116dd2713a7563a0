"""The two evaluation protocols of seed 003 §2.5.7, with the slice metrics of seeds 000-002.

* :func:`evaluate_recon` - a compressor on held-out volumes (Experiment A; Tables 3 and 8-11):
  paired PSNR / SSIM / MS-SSIM / LPIPS / MSE per volume, summarised per modality and pooled; plus
  tri-planar 2D SSIM (seed 002 §3) and, when extractors are given, MedicalNet FID/MMD and
  InceptionV3 slice FID between the originals and their reconstructions (seed 000 Table 1).
* :func:`evaluate_synth` - generated vs real volumes (Tables 4 and 12-15): FID and MMD on pooled
  MedicalNet features of z-scored volumes, MS-SSIM over K random generated pairs per modality or
  class (diversity; the same over real pairs as a reference), per modality, per class and pooled;
  optionally the InceptionV3 slice FID of seeds 000/001.

Pooling follows Table 4's note: pooled FID/MMD compare all generated volumes with the real volumes
*of the modalities that were generated* (a T1w-only generator is scored against real T1w only);
pooled MS-SSIM averages the within-modality pairs (a pair of two contrasts measures contrast, not
diversity). Both return plain dicts that :mod:`.report` writes as JSON and Markdown.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .features_inception import InceptionExtractor, extract_inception_features
from .features_medicalnet import MedicalNetExtractor, extract_medicalnet_features
from .fid import RunningStats, fid_from_features, fid_from_stats
from .io import VolumeSet
from .lpips_slices import triplanar_lpips
from .mmd import DEFAULT_SIGMA_RATIOS, mmd
from .paired import paired_metrics
from ..slicing import DEFAULT_PER_PLANE, plane_slices
from .ssim import ms_ssim_settings, pairwise_ms_ssim, ssim_settings

Log = Callable[[str], None]
RECON_METRICS: tuple[str, ...] = ("lpips", "ssim", "ms_ssim", "psnr", "mse", "ssim_triplanar")
"""Per-volume reconstruction metrics, in the column order of seed 003 Tables 3 and 8-11."""


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Slice2DConfig:
    """InceptionV3 slice FID settings (seed 000 §4: all slices of the volumes)."""

    plane: str = "axial"
    skip_empty: bool = False
    batch_size: int = 32


@dataclass(frozen=True)
class SynthConfig:
    """Settings of :func:`evaluate_synth` (recorded in metrics.json under settings.config). Every group
    draws its MS-SSIM pairs with the same ``seed``."""

    n_pairs: int = 1000
    seed: int = 0
    batch_size: int = 1
    mmd_ratios: tuple[float, ...] = DEFAULT_SIGMA_RATIOS
    mmd_sigmas: tuple[float, ...] | None = None
    mmd_weights: tuple[float, ...] | None = None
    real_pairs: bool = True
    slice2d: Slice2DConfig = field(default_factory=Slice2DConfig)


@dataclass(frozen=True)
class ReconConfig:
    """Settings of :func:`evaluate_recon` (recorded in metrics.json under settings.config)."""

    per_plane: int = DEFAULT_PER_PLANE
    mmd_ratios: tuple[float, ...] = DEFAULT_SIGMA_RATIOS
    slice2d: Slice2DConfig = field(default_factory=Slice2DConfig)
    examples_per_modality: int = 1


# ---------------------------------------------------------------------------------------- helpers
def _finite_or_none(value: float) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """mean / std / n of per-volume values (+inf propagates to the mean, e.g. PSNR of exact copies)."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    if np.isinf(arr).any():
        return {"mean": _finite_or_none(float(arr.mean())), "std": None, "n": int(arr.size)}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def _feature_metrics(real: np.ndarray, fake: np.ndarray, ratios: Sequence[float],
                     sigmas: Sequence[float] | None = None, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """FID and MMD between two feature sets, or the reason they cannot be computed."""
    n_r, n_f = int(real.shape[0]), int(fake.shape[0])
    if n_r < 2 or n_f < 2:
        return {"fid": None, "mmd": None, "mmd2": None, "n_real": n_r, "n_fake": n_f,
                "note": "FID/MMD need at least 2 volumes per set"}
    result = mmd(real, fake, sigmas=sigmas, ratios=ratios, weights=weights)
    return {"fid": fid_from_features(real, fake), "mmd": result.mmd, "mmd2": result.mmd2, "n_real": n_r,
            "n_fake": n_f, "mmd_sigmas": list(result.sigmas), "mmd_weights": list(result.weights)}


class _Slice2DStats:
    """Streaming InceptionV3 statistics per group of volumes (pooled, per modality, per class)."""

    def __init__(self, extractor: InceptionExtractor, config: Slice2DConfig, device: torch.device | str):
        self.extractor, self.config, self.device = extractor, config, device
        self.stats: dict[str, RunningStats] = {}

    def add(self, volume: np.ndarray, groups: Sequence[str]) -> None:
        slices = list(plane_slices(volume, self.config.plane, self.config.skip_empty))
        feats = extract_inception_features(self.extractor, slices, self.config.batch_size, self.device)
        for g in groups:
            self.stats.setdefault(g, RunningStats(self.extractor.feature_dim)).update(feats)

    def fid(self, other: "_Slice2DStats", group: str) -> dict[str, Any]:
        a, b = self.stats.get(group), other.stats.get(group)
        if a is None or b is None or a.n < 2 or b.n < 2:
            return {"fid2d": None, "n_slices_real": a.n if a else 0, "n_slices_fake": b.n if b else 0}
        return {"fid2d": fid_from_stats(a.stats(), b.stats()), "n_slices_real": a.n, "n_slices_fake": b.n}


def _diversity(vs: VolumeSet, idx: Sequence[int], n_pairs: int, seed: int,
               device: torch.device | str) -> dict[str, Any]:
    """MS-SSIM_ff (seed 003 §2.5.7) of the volumes ``idx``: up to ``n_pairs`` random pairs within each
    modality (a cross-contrast pair measures contrast, not diversity), averaged over all pairs."""
    by_modality: dict[str, list[int]] = {}
    for i in idx:
        by_modality.setdefault(vs.refs[i].modality or "unknown", []).append(i)
    parts = {}
    for m, sub in by_modality.items():
        d = pairwise_ms_ssim(lambda j, sub=sub: vs.load(sub[j]), len(sub), n_pairs, seed, device)
        parts[m] = {**d.as_dict(), "value": _finite_or_none(d.mean)}
    return _merge_diversity(parts.values(), parts)


def _merge_diversity(parts: Any, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pair-weighted mean of several MS-SSIM_ff results."""
    parts = list(parts)
    n = sum(p["n_pairs"] for p in parts)
    value = sum(p["value"] * p["n_pairs"] for p in parts if p["n_pairs"]) / n if n else None
    return {"value": value, "n_pairs": n, "groups": detail if detail is not None else None}


def _group_keys(ref_modality: str | None, ref_label: str | None) -> list[str]:
    keys = ["pooled"]
    if ref_modality:
        keys.append(f"modality:{ref_modality}")
    if ref_label:
        keys.append(f"class:{ref_label}")
    return keys


# ---------------------------------------------------------------------------------------- synth
def evaluate_synth(real: VolumeSet, fake: VolumeSet, extractor: MedicalNetExtractor,
                   config: SynthConfig = SynthConfig(), *, inception: InceptionExtractor | None = None,
                   device: torch.device | str = "cpu", log: Log = _quiet) -> dict[str, Any]:
    """Generated vs real: FID / MMD (MedicalNet features) and MS-SSIM diversity per modality, per
    class and pooled (seed 003 §2.5.7, Tables 4 and 12-15); InceptionV3 slice FID with ``inception``."""
    fake_mods = fake.groups("modality")
    real_mods = real.groups("modality")
    # Real volumes that enter the pooled comparison: those of the generated modalities (Table 4 note).
    if fake_mods:
        missing = [m for m in fake_mods if m not in real_mods]
        real_pool = [i for m, idx in real_mods.items() if m in fake_mods for i in idx]
    else:
        missing, real_pool = [], list(range(len(real)))

    log(f"MedicalNet features: {len(real_pool)} real, {len(fake)} generated volumes")
    slice_real = _Slice2DStats(inception, config.slice2d, device) if inception is not None else None
    slice_fake = _Slice2DStats(inception, config.slice2d, device) if inception is not None else None

    def features(vs: VolumeSet, indices: Sequence[int], slices: _Slice2DStats | None, name: str) -> np.ndarray:
        def volumes():
            for n, i in enumerate(indices):
                v = vs.load(i)
                if slices is not None:
                    slices.add(v, _group_keys(vs.refs[i].modality, vs.refs[i].label))
                if (n + 1) % 10 == 0 or n + 1 == len(indices):
                    log(f"  {name}: {n + 1}/{len(indices)}")
                yield v
        return extract_medicalnet_features(extractor, volumes(), config.batch_size, device)

    f_real = np.zeros((len(real), extractor.feature_dim))
    f_real[real_pool] = features(real, real_pool, slice_real, "real")
    f_fake = features(fake, list(range(len(fake))), slice_fake, "generated")

    def group_result(r_idx: Sequence[int], f_idx: Sequence[int], key: str) -> dict[str, Any]:
        out = _feature_metrics(f_real[list(r_idx)], f_fake[list(f_idx)], config.mmd_ratios, config.mmd_sigmas,
                               config.mmd_weights)
        if slice_real is not None and slice_fake is not None:
            out.update(slice_real.fid(slice_fake, key))
        return out

    def diversity(vs: VolumeSet, idx: Sequence[int]) -> dict[str, Any]:
        return _diversity(vs, idx, config.n_pairs, config.seed, device)

    by_modality: dict[str, Any] = {}
    fake_div: dict[str, dict[str, Any]] = {}
    real_div: dict[str, dict[str, Any]] = {}
    for m, f_idx in fake_mods.items():
        r_idx = real_mods.get(m, [])
        log(f"{m}: FID/MMD and MS-SSIM over up to {config.n_pairs} pairs")
        res = group_result(r_idx, f_idx, f"modality:{m}")
        fake_div[m] = diversity(fake, f_idx)
        res["ms_ssim"], res["ms_ssim_pairs"] = fake_div[m]["value"], fake_div[m]["n_pairs"]
        if config.real_pairs and r_idx:
            real_div[m] = diversity(real, r_idx)
            res["ms_ssim_real"], res["ms_ssim_real_pairs"] = real_div[m]["value"], real_div[m]["n_pairs"]
        by_modality[m] = res

    log("pooled FID/MMD")
    pooled = group_result(real_pool, range(len(fake)), "pooled")
    pooled["modalities"] = list(fake_mods) or None
    if not fake_mods:  # modality unknown: one group
        fake_div["all"] = diversity(fake, list(range(len(fake))))
        if config.real_pairs:
            real_div["all"] = diversity(real, real_pool)
    pooled_fake = _merge_diversity(fake_div.values())
    pooled["ms_ssim"], pooled["ms_ssim_pairs"] = pooled_fake["value"], pooled_fake["n_pairs"]
    if config.real_pairs:
        pooled_real = _merge_diversity(real_div.values())
        pooled["ms_ssim_real"], pooled["ms_ssim_real_pairs"] = pooled_real["value"], pooled_real["n_pairs"]

    by_class: dict[str, Any] = {}
    fake_cls = fake.groups("label")
    in_pool = set(real_pool)
    real_cls = {c: [i for i in idx if i in in_pool] for c, idx in real.groups("label").items()}
    for c, f_idx in fake_cls.items():
        r_idx = real_cls.get(c, [])
        log(f"class {c}: FID/MMD and MS-SSIM over up to {config.n_pairs} pairs per modality")
        res = group_result(r_idx, f_idx, f"class:{c}")
        d = diversity(fake, f_idx)
        res["ms_ssim"], res["ms_ssim_pairs"] = d["value"], d["n_pairs"]
        if config.real_pairs and r_idx:
            rd = diversity(real, r_idx)
            res["ms_ssim_real"], res["ms_ssim_real_pairs"] = rd["value"], rd["n_pairs"]
        by_class[c] = res

    notes = []
    if missing:
        notes.append(f"no real volumes of the generated modalities {missing}: their FID/MMD are empty")
    if fake_cls and not real_cls:
        notes.append("generated volumes carry classes but the real set does not: per-class FID/MMD are empty")
    return {
        "protocol": "synth",
        "fid": pooled["fid"], "mmd": pooled["mmd"], "ms_ssim": pooled["ms_ssim"],
        "pooled": pooled, "by_modality": by_modality, "by_class": by_class,
        "settings": {
            "config": asdict(config),
            "n_pairs_requested": config.n_pairs, "seed": config.seed, "batch_size": config.batch_size,
            "mmd": {"estimator": "unbiased MMD^2, reported sqrt(max(MMD^2, 0))", "kernel": "Gaussian mixture",
                    "sigma": "median heuristic x ratios" if config.mmd_sigmas is None else "explicit",
                    "ratios": list(config.mmd_ratios), "sigmas": config.mmd_sigmas,
                    "weights": list(config.mmd_weights) if config.mmd_weights else "uniform"},
            "features": {"network": f"MedicalNet ResNet-{extractor.depth} (shortcut {extractor.shortcut})",
                         "dim": extractor.feature_dim, "input": "per-volume z-score", "pooling": "global average"},
            "ms_ssim": {"pairs": "K distinct unordered pairs a != b per modality/class, uniform, seeded",
                        "data_range": 1.0, "space": "image ([0, 1])",
                        "settings": ms_ssim_settings(fake.shape).as_dict()},
            "slice2d": asdict(config.slice2d) if inception is not None else None,
        },
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------- recon
Reconstruct = Callable[[torch.Tensor], torch.Tensor]


def evaluate_recon(volumes: VolumeSet, reconstruct: Reconstruct, config: ReconConfig = ReconConfig(), *,
                   lpips_model: torch.nn.Module | None = None, medicalnet: MedicalNetExtractor | None = None,
                   inception: InceptionExtractor | None = None, device: torch.device | str = "cpu",
                   log: Log = _quiet) -> dict[str, Any]:
    """A compressor on held-out volumes (seed 003 Experiment A): per-volume paired metrics, summaries
    per modality and pooled (Tables 3, 8-11); ``reconstruct`` maps (1, 1, X, Y, Z) to the same shape.

    The result carries ``examples``: {modality: [(volume_id, real, recon), ...]} for the figures
    (removed by the report writer before JSON)."""
    ssim_s, ms_s = ssim_settings(volumes.shape), ms_ssim_settings(volumes.shape)
    lpips_fn = None
    if lpips_model is not None:
        def lpips_fn(a: np.ndarray, b: np.ndarray) -> float:
            return triplanar_lpips(lpips_model, a, b, config.per_plane, device)

    rows: list[dict[str, Any]] = []
    feats_real: list[np.ndarray] = []
    feats_recon: list[np.ndarray] = []
    slice_real = _Slice2DStats(inception, config.slice2d, device) if inception is not None else None
    slice_recon = _Slice2DStats(inception, config.slice2d, device) if inception is not None else None
    examples: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for i, ref in enumerate(volumes.refs):
        real = volumes.load(i)
        x = torch.from_numpy(real).to(device=device, dtype=torch.float32)[None, None]
        with torch.inference_mode():
            y = reconstruct(x)
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"the compressor returned shape {tuple(y.shape)} for input {tuple(x.shape)} "
                             f"({ref.source}): reconstructions must match their input")
        recon = y.detach().float().cpu().numpy()[0, 0]
        row: dict[str, Any] = {"volume_id": ref.volume_id, "subject": ref.subject, "modality": ref.modality,
                               "label": ref.label}
        row.update(paired_metrics(real, recon, ssim_settings=ssim_s, ms_ssim_settings=ms_s,
                                  per_plane=config.per_plane, lpips_fn=lpips_fn, device=device))
        rows.append(row)
        if medicalnet is not None:
            feats_real.append(extract_medicalnet_features(medicalnet, [real], 1, device))
            feats_recon.append(extract_medicalnet_features(medicalnet, [recon], 1, device))
        if slice_real is not None and slice_recon is not None:
            keys = _group_keys(ref.modality, None)
            slice_real.add(real, keys)
            slice_recon.add(np.clip(recon, 0.0, 1.0), keys)
        key = ref.modality or "unknown"
        if len(examples.setdefault(key, [])) < config.examples_per_modality:
            examples[key].append((ref.volume_id, real, recon))
        log(f"  {i + 1}/{len(volumes)} {ref.volume_id}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}")

    metrics = [m for m in RECON_METRICS if any(m in r for r in rows)]

    def summary(idx: Sequence[int], key: str) -> dict[str, Any]:
        out: dict[str, Any] = {m: summarise([rows[i][m] for i in idx]) for m in metrics}
        out["n"] = len(idx)
        if medicalnet is not None:
            out.update({k: v for k, v in _feature_metrics(
                np.concatenate([feats_real[i] for i in idx]) if idx else np.zeros((0, medicalnet.feature_dim)),
                np.concatenate([feats_recon[i] for i in idx]) if idx else np.zeros((0, medicalnet.feature_dim)),
                config.mmd_ratios).items() if k in ("fid", "mmd", "mmd2")})
        if slice_real is not None and slice_recon is not None:
            out.update(slice_real.fid(slice_recon, key))
        return out

    by_modality = {m: summary(idx, f"modality:{m}") for m, idx in volumes.groups("modality").items()}
    pooled = summary(list(range(len(rows))), "pooled")
    for r in rows:
        r["psnr"] = _finite_or_none(r["psnr"])
    top = {m: pooled[m]["mean"] for m in ("psnr", "ssim", "ms_ssim", "lpips", "mse") if m in pooled}
    return {
        "protocol": "recon",
        **top,
        "pooled": pooled, "by_modality": by_modality, "per_volume": rows,
        "settings": {
            "config": asdict(config),
            "data_range": 1.0, "space": "preprocessed image space ([0, 1])",
            "ssim": ssim_s.as_dict(), "ms_ssim": ms_s.as_dict(),
            "triplanar": {"per_plane": config.per_plane, "planes": ["sagittal", "coronal", "axial"],
                          "slices": "evenly spaced, end slices excluded"},
            "lpips": "LPIPS v0.1 (AlexNet) on tri-planar slices, mean per volume" if lpips_model is not None else None,
            "feature_metrics": (f"MedicalNet ResNet-{medicalnet.depth} FID/MMD, originals vs reconstructions"
                                if medicalnet is not None else None),
            "slice2d": asdict(config.slice2d) if inception is not None else None,
        },
        "examples": examples,
    }
