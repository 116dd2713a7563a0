"""``bsynth eval clinical``: seed 002's evaluation of a trained ``clinical`` recipe (§3), into OUT/clinical.json +
OUT/clinical.md + figures.

* **Table 4, clinical consistency**: the frozen ``clinical-aux`` heads on the real volumes of a split (against
  their own labels / ROI ratios) and on generated volumes (against the requested c): balanced accuracy of AD/CN
  and the MSE of the six ROI ratios (raw units, reported x 1e-5 as 002); ``--ablation-run`` adds the column of
  a run trained without the cls/reg losses (same conditions, same seeds).
* **Independent ROI check** (``--labels``: the cohort's label maps; :mod:`.clinical_roi`): CSF volume in the
  ventricle region and tissue volume in the hippocampal region of generated volumes vs the requested ratios
  (Pearson r, 002 Fig. 4), with the same measurement on real volumes as the reference.
* **Controllability**: one noise draw ε decoded (z = μ_p(c) + σ_p(c) ε, Algorithm 3) with the ventricle ratio
  swept from the 5th to the 95th percentile of each class's training volumes, for CN and AD
  (``controllability.png``); with ``--labels`` the measured CSF volume per step and whether it rises monotonically.
* **Prior fidelity** (``--prior-run``; :mod:`.clinical_prior`): KDE overlap per feature, PCA (002 Fig. 5).
* **Image quality**: FID on 3D ResNet-18 (MedicalNet) features of generated vs real volumes, tri-planar SSIM
  and LPIPS (32 slices per plane, capped by the cube side) of posterior-mean reconstructions of the real ones.
* **Timing** per sample: c given (decode only) vs c drawn from the prior (002: 0.16 s / 0.61 s on a V100).

Generated conditions: ``--n`` draws from the prior when ``--prior-run`` is given (002 samples its 1,000 vectors
this way), else the split's real vectors in turn.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..weights import WeightsError
from ..models.clinical.config import ClinicalModelConfig
from ..models.clinical.model import parameter_counts
from ..nn.lpips import load_lpips
from ..recipes.clinical.ablation import ablation_parameters
from ..recipes.clinical.aux import load_aux_heads
from ..recipes.clinical.data import ClinicalVolumeDataset
from ..recipes.clinical.sampling import ClinicalGenerator, decode_clinical
from .clinical_prior import prior_fidelity
from .clinical_roi import build_roi_atlas, measure_rois, roi_agreement
from .features_medicalnet import extract_medicalnet_features, load_medicalnet
from .fid import fid_from_features
from .figures import trajectory_figure
from .lpips_slices import triplanar_lpips
from .report import RANDOM_WARNING, jsonable, provenance, weights_block, write_json
from .ssim import triplanar_ssim

__all__ = ["cmd_eval_clinical", "balanced_accuracy", "head_scores", "ventricle_sweep", "consistency_table"]

MSE_SCALE = 1e-5


def _log(msg: str) -> None:
    print(f"[eval clinical] {msg}", flush=True)


# ---------------------------------------------------------------------------- metrics
def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean per-class recall over the classes present in ``truth``."""
    classes = np.unique(truth)
    if len(classes) == 0:
        return None
    return float(np.mean([(pred[truth == k] == k).mean() for k in classes]))


def head_scores(heads: torch.nn.Module, aux_norm: Any, volumes: np.ndarray, raw: np.ndarray,
                device: torch.device, batch: int = 4) -> dict[str, Any]:
    """BAC (%) and ROI MSE (raw ratios, x 1e-5) of the frozen heads on volumes (N, S, S, S) against raw (N, 7)."""
    preds, rois = [], []
    with torch.inference_mode():
        for s in range(0, len(volumes), batch):
            x = torch.from_numpy(np.ascontiguousarray(volumes[s:s + batch])).float()[:, None].to(device)
            logits, r = heads(x)
            preds.append(logits.argmax(1).cpu().numpy())
            rois.append(aux_norm.denormalize_rois(r.float()).cpu().numpy())
    pred, roi = np.concatenate(preds), np.concatenate(rois)
    truth = (raw[:, 6] > 0.5).astype(np.int64)
    bac = balanced_accuracy(pred, truth)
    mse = float(((roi - raw[:, :6]) ** 2).mean())
    return {"n": int(len(volumes)), "bac_percent": None if bac is None else 100.0 * bac,
            "roi_mse_x1e-5": mse / MSE_SCALE}


def _generate(gen: Any, raw: np.ndarray, seed: int, batch: int) -> np.ndarray:
    vols = []
    for s in range(0, len(raw), batch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + s)
        vols.append(gen.volumes(torch.from_numpy(raw[s:s + batch]), g)[:, 0])
    return np.concatenate(vols)


def ventricle_sweep(gen: Any, train_raw: np.ndarray, steps: int, seed: int, atlas: Any = None
                    ) -> tuple[dict[str, Any], list[tuple[str, list[tuple[str, np.ndarray]]]]]:
    """Both ventricle ratios set to evenly spaced quantiles (5 % -> 95 %) of the training volumes of the row's own
    class, the other features at that class's mean, for CN and AD: the sweep stays inside the joint support the
    model was trained on (pooled quantiles put the CN row's top steps at AD-sized ventricles no CN volume has, where
    a conditional decoder extrapolates). Each step is decoded as Algorithm 3 does it with one fixed noise draw ε
    shared by every step: z_k = μ_p(c_k) + σ_p(c_k) ε, x_k = g(z_k, c_k). "The same z" of 002's figure is the
    same ε; a z frozen at one c would cut the path by which the learned prior carries c into the latent. Returns
    the requested totals, measured CSF (with an atlas; ``monotonic`` = :func:`rises`) and the figure rows."""

    qs = np.linspace(0.05, 0.95, steps)
    eps = torch.randn((1, gen.model.config.latent_dim), generator=torch.Generator().manual_seed(seed))
    result: dict[str, Any] = {"quantiles": qs.tolist()}
    rows = []
    for label in (0.0, 1.0):
        own = train_raw[train_raw[:, 6] == label]
        own = own if len(own) >= 2 else train_raw   # a class with < 2 training volumes has no range of its own
        raw = np.repeat(np.asarray([*own[:, :6].mean(0), label], dtype=np.float32)[None], steps, axis=0)
        raw[:, 4], raw[:, 5] = np.quantile(own[:, 4], qs), np.quantile(own[:, 5], qs)
        vols = decode_clinical(gen.model, gen.normalizer, torch.from_numpy(raw), eps=eps).cpu().numpy()
        name = "AD" if label else "CN"
        entry: dict[str, Any] = {"requested_ventricles": (raw[:, 4] + raw[:, 5]).tolist()}
        if atlas is not None:
            measured = [measure_rois(v[0], atlas)["ventricles"] for v in vols]
            entry["measured_csf"] = measured
            entry["monotonic"] = rises(measured)
            entry["spearman"] = _spearman(raw[:, 4] + raw[:, 5], np.asarray(measured))
        result[name] = entry
        # column headers are shared by both rows: the quantile (each row's requested totals differ; see the JSON)
        rows.append((name, [(f"{qs[k]:.0%} quantile", vols[k, 0]) for k in range(steps)]))
    return result, rows


def rises(values: Sequence[float]) -> bool:
    """Never falling and ending higher: a decoder that ignores c draws a flat line, which is not control."""
    v = np.asarray(values, dtype=np.float64)
    return bool(v.size >= 2 and np.all(np.diff(v) >= 0) and v[-1] > v[0])


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _timing(gen: Any, raw: np.ndarray, k: int, steps: int | None, solver: str | None) -> dict[str, Any]:
    """Seconds per sample (batch 1): decode with c given, and prior draw + decode."""
    manual, prior = [], []
    for i in range(k):
        g = torch.Generator().manual_seed(i)
        t = time.perf_counter()
        gen.volumes(torch.from_numpy(raw[i % len(raw)][None]), g)
        manual.append(time.perf_counter() - t)
        if gen.prior is not None:
            t = time.perf_counter()
            c = gen.draw(1, g, steps=steps, solver=solver)
            gen.volumes(c, g)
            prior.append(time.perf_counter() - t)
    out = {"samples": k, "manual_c_seconds": float(np.median(manual))}
    if prior:
        out["from_prior_seconds"] = float(np.median(prior))
        out["prior_steps"] = steps or gen.prior[2].sampling.steps
    return out


def _image_quality(args: argparse.Namespace, gen: Any, real: np.ndarray, real_raw: np.ndarray, fake: np.ndarray,
                   device: torch.device) -> tuple[dict[str, Any], list[Any]]:
    out: dict[str, Any] = {}
    infos: list[Any] = []
    try:
        ext, info = load_medicalnet(args.weights, depth=18, allow_random=args.allow_random_features, device=device)
        infos.append(info)
        fr = extract_medicalnet_features(ext, list(real), device=device)
        ff = extract_medicalnet_features(ext, list(fake), device=device)
        out["fid_resnet18"] = (fid_from_features(fr, ff, standardize=info.random)
                               if min(len(fr), len(ff)) >= 2 else None)
    except WeightsError as exc:
        out["fid_resnet18"] = None
        out["fid_note"] = str(exc).splitlines()[0]
    per_plane = min(args.per_plane, real.shape[-1])
    recon = []
    with torch.inference_mode():
        for i in range(len(real)):
            x = torch.from_numpy(real[i][None, None]).float().to(device)
            c = gen.normalizer.normalize(torch.from_numpy(real_raw[i][None]).to(device))
            mu, _ = gen.model.encode(x, c)
            recon.append(gen.model.decode(mu, c).float().clamp(0, 1)[0, 0].cpu().numpy())
    out["ssim_triplanar"] = float(np.mean([triplanar_ssim(a, b, per_plane) for a, b in zip(real, recon)]))
    try:

        lp, info = load_lpips(args.lpips_weights, allow_random=args.allow_random_features, device=device)
        infos.append(info)
        out["lpips_triplanar"] = float(np.mean([triplanar_lpips(lp, a, b, per_plane, device)
                                               for a, b in zip(real, recon)]))
    except WeightsError as exc:
        out["lpips_triplanar"] = None
        out["lpips_note"] = str(exc).splitlines()[0]
    out["slices_per_plane"] = per_plane
    return out, infos


# ---------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _markdown(res: dict[str, Any]) -> str:
    t4 = res["consistency"]
    cols = [k for k in ("real", "generated", "generated_without_cls_reg") if k in t4]
    lines = ["# bsynth eval clinical (seed 002)", ""]
    if res.get("random_features"):
        lines += ["**Random FID/LPIPS networks (smoke mode): those numbers are not comparable to 002.**", ""]
    lines += ["## Clinical consistency (002 Table 4)", "", "| | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols),
              "| BAC for AD classification (%) | " + " | ".join(_fmt(t4[c]["bac_percent"], 1) for c in cols) + " |",
              "| MSE for volume regression (x1e-5) | " + " | ".join(_fmt(t4[c]["roi_mse_x1e-5"], 2) for c in cols) + " |",
              "| volumes | " + " | ".join(str(t4[c]["n"]) for c in cols) + " |", ""]
    roi = res.get("roi_check")
    if roi:
        lines += ["## Independent ROI check (002 Fig. 4; template regions, no frozen heads)", "",
                  "| structure | r generated vs requested | r real (all splits) vs true: the measurement's reference | n |", "|---|---|---|---|"]
        for s in ("ventricles", "hippocampus"):
            lines.append(f"| {s} | {_fmt(roi['generated'][s]['pearson_r'])} | {_fmt(roi['real'][s]['pearson_r'])} | "
                         f"{roi['generated'][s]['n']} |")
        lines.append("")
    sweep = res.get("controllability", {})
    if sweep:
        lines += ["## Controllability (same ε, ventricle ratio swept; controllability.png)", ""]
        for lab in ("CN", "AD"):
            e = sweep.get(lab, {})
            if "measured_csf" in e:
                lines.append(f"- {lab}: measured CSF {', '.join(f'{v:.4f}' for v in e['measured_csf'])} -> "
                             f"monotonic {e['monotonic']}, Spearman {_fmt(e['spearman'])}")
        lines.append("")
    pf = res.get("prior_fidelity")
    if pf:
        lines += ["## Prior fidelity (002 Fig. 5; prior_kde.png, prior_pca.png)", "",
                  "| feature | KDE overlap |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in pf["kde_overlap"].items()]
        lines += ["", f"AD rate: real {pf['ad_rate']['real']:.2f}, prior {pf['ad_rate']['prior']:.2f}", ""]
    q = res["image_quality"]
    lines += ["## Image quality", "", f"- FID (3D ResNet-18 features): {_fmt(q.get('fid_resnet18'), 2)}",
              f"- tri-planar SSIM / LPIPS of reconstructions ({q['slices_per_plane']} slices per plane): "
              f"{_fmt(q.get('ssim_triplanar'))} / {_fmt(q.get('lpips_triplanar'))}", ""]
    tm = res["timing"]
    lines += ["## Timing per sample", "", f"- c given: {tm['manual_c_seconds']:.3f} s"]
    if "from_prior_seconds" in tm:
        lines.append(f"- c from the prior ({tm['prior_steps']} steps): {tm['from_prior_seconds']:.3f} s")
    lines += [f"- device: {res['device']} (002: 0.16 s / 0.61 s on a V100)", "",
              f"Parameters: {res['parameters']}", "",
              "## Table 2 rows at this run's sizes (configs/clinical_ablation.yaml)", "",
              "| row | parameters (M) |", "|---|---|"]
    lines += [f"| {r['name']} | {r['parameters'] / 1e6:.2f} |" for r in res.get("ablation_parameters", [])]
    lines.append("")
    return "\n".join(lines)


def cmd_eval_clinical(args: argparse.Namespace) -> int:
    """The handler of ``bsynth eval clinical`` (module docstring)."""

    device = torch.device(args.device if args.device not in (None, "auto") else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = ClinicalGenerator(args.run, args.prior_run, device)
    heads, aux_norm, side = load_aux_heads(args.aux_run, device)
    if side != int(gen.meta["image_size"]):
        raise ConfigError(f"--aux-run heads read {side}^3 volumes, --run makes {gen.meta['image_size']}^3")
    real_ds = ClinicalVolumeDataset(args.store, None if args.split == "all" else args.split, side)
    train_raw = ClinicalVolumeDataset(args.store, "train", side).vectors
    real = np.stack([real_ds[i]["image"][0].numpy() for i in range(len(real_ds))])
    real_raw = real_ds.vectors
    g = torch.Generator().manual_seed(args.seed)
    if gen.prior is not None:
        raw = gen.draw(args.n, g, steps=args.steps, solver=args.solver).numpy()
    else:
        raw = real_raw[np.arange(args.n) % len(real_raw)]
    _log(f"{len(real)} real {args.split} volume(s); generating {args.n} with c "
         f"{'from the prior' if gen.prior is not None else 'of the real volumes'} on {device}")
    fake = _generate(gen, raw, args.seed, args.batch_size)
    consistency = {"real": head_scores(heads, aux_norm, real, real_raw, device),
                   "generated": head_scores(heads, aux_norm, fake, raw, device)}
    if args.ablation_run:
        ablation = ClinicalGenerator(args.ablation_run, None, device)
        consistency["generated_without_cls_reg"] = head_scores(heads, aux_norm,
                                                               _generate(ablation, raw, args.seed, args.batch_size),
                                                               raw, device)
    result: dict[str, Any] = {"protocol": "clinical", "device": str(device), "consistency": consistency}
    atlas = None
    if args.labels:
        atlas = build_roi_atlas(args.store, args.labels, side, "train")
        every = ClinicalVolumeDataset(args.store, None, side)  # the measurement's own check: every real volume
        result["roi_check"] = {
            "generated": roi_agreement(raw, [measure_rois(v, atlas) for v in fake]),
            "real": roi_agreement(every.vectors, [measure_rois(every[i]["image"][0].numpy(), atlas)
                                                  for i in range(len(every))]),
            "csf_threshold": atlas.csf_threshold, "atlas_subjects": atlas.subjects}
    sweep, rows = ventricle_sweep(gen, train_raw, args.sweep, args.seed, atlas)
    result["controllability"] = sweep
    figures = [trajectory_figure(rows, out / "controllability.png",
                                 "one noise draw (eps), ventricle ratio swept low -> high (rows: CN, AD)",
                                 plane="coronal")]
    if gen.prior is not None:
        draws = gen.draw(args.prior_samples, torch.Generator().manual_seed(args.seed + 1), steps=args.steps,
                         solver=args.solver).numpy()
        result["prior_fidelity"] = prior_fidelity(train_raw, draws, out)
        figures += [out / f for f in result["prior_fidelity"]["figures"]]
    quality, infos = _image_quality(args, gen, real, real_raw, fake, device)
    result["image_quality"] = quality
    result["timing"] = _timing(gen, raw, args.timing_samples, args.steps, args.solver)
    cfg = ClinicalModelConfig(**{k: v for k, v in gen.meta["factory_kwargs"].items()})
    result["parameters"] = parameter_counts(cfg)
    result["ablation_parameters"] = ablation_parameters("full", **gen.meta["factory_kwargs"])
    weights, random = weights_block(infos)
    result.update({"random_features": random, "weights": weights, "provenance": provenance(vars(args), str(device))})
    if random:
        result["warning"] = RANDOM_WARNING
    write_json(jsonable(result), out / "clinical.json")
    (out / "clinical.md").write_text(_markdown(result), encoding="utf-8")
    _log(f"wrote {out / 'clinical.json'}, {out / 'clinical.md'} and {len(figures)} figure(s)")
    return 0


def consistency_table(result: dict[str, Any]) -> str:
    """The Table 4 block of a clinical.json result (what the demo prints)."""
    return _markdown(result).split("## Independent")[0].split("## Controllability")[0].strip()

