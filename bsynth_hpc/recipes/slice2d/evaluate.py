"""``bsynth eval slice2d``: seed 001's evaluation of a slice recipe (§IV), plus 004's per-class FID and CFG sweep.

    bsynth eval slice2d --store SLICES.zarr --vae-run RUN_VAE --samples SAMPLES/ --out eval/
    bsynth eval slice2d --store SLICES.zarr --samples SAMPLES/ --ldm-run RUN_LDM --cfg-scales 0 1 3 5 --out eval/

Real slices: up to ``--max-real`` slices of ``--split`` (default test) of the slice store, in [0, 1].

* ``--vae-run``: SSIM / PSNR of the posterior-mean reconstructions (per slice), the reconstruction error
  heatmaps (001 Fig. 4, recon_heatmaps.png) and the latent channel statistics of the posterior means
  (001 Fig. 6, latent_channels.png).
* ``--samples`` (a ``bsynth sample slice2d`` folder): for each generated slice the most similar real slice
  (SSIM, and the PSNR of that pair: "N vs N" against the real set), 2D Inception FID (pool3, local weights
  ``--inception-weights`` or $BSYNTH_WEIGHTS_DIR; ``--allow-random-features`` for a random network, stamped
  in the report) overall and per class, radially averaged power spectra real vs generated (001 Fig. 7,
  power_spectra.png) and pairwise-distance diversity of generated and of as many real slices.
* ``--ldm-run`` of a conditional (004) run: a small CNN trained on the store's training slices classifies
  generated slices sampled at each ``--cfg-scales`` value; conditioning accuracy = the fraction classified as
  the requested class (its accuracy on real held-out slices is reported next to it).

Writes OUT/slice2d_eval.json and OUT/slice2d_eval.md (and the figures).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...engine.export import load_exported
from ...eval.fid import fid_from_features
from ...eval.features_inception import extract_inception_features, load_inception
from ...eval.fidelity_slices import open_slice_samples, open_slice_store_set
from ...eval.report import provenance, write_json
from ...errors import InputError
from .classifier import predict, train_classifier
from .figures import bar_chart, heatmap_figure, spectrum_chart
from .ldm import load_slice2d_info
from .metrics import (channel_statistics, nearest_real, paired_ssim_psnr, pairwise_diversity, radial_power_spectrum,
                      spectrum_distance, summary)
from .ranges import store_value_range
from .sampling import Slice2dSampleConfig, generate

__all__ = ["Slice2dEvalConfig", "run_slice2d_eval", "cmd_eval_slice2d", "fid_2d", "real_slices"]

FIGURE_ROWS = 6


@dataclass
class Slice2dEvalConfig:
    """What ``bsynth eval slice2d`` evaluates (recorded in the JSON)."""

    store: str
    out: str
    vae_run: str | None = None
    samples: str | None = None
    ldm_run: str | None = None
    split: str = "test"
    max_real: int = 200
    inception_weights: str | None = None
    allow_random_features: bool = False
    cfg_scales: tuple[float, ...] = (0.0, 1.0, 3.0)
    sweep_n: int = 16
    sweep_steps: int | None = None
    classifier_epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    device: str | None = None


def _log(msg: str) -> None:
    print(f"[eval slice2d] {msg}", flush=True)


def real_slices(config: Slice2dEvalConfig, split: str,
                limit: int | None) -> tuple[list[np.ndarray], list[str | None]]:
    """Up to ``limit`` (seeded subset) slices of one split of the store in [0, 1], and their labels."""
    vs = open_slice_store_set(Path(config.store), split=split)
    idx = np.arange(len(vs))
    if limit is not None and len(vs) > limit:
        idx = np.sort(np.random.default_rng(config.seed).choice(len(vs), size=limit, replace=False))
    return [vs.load(int(i)) for i in idx], [vs.refs[int(i)].label for i in idx]


def evaluate_reconstruction(config: Slice2dEvalConfig, real: list[np.ndarray], out: Path,
                            device: torch.device) -> dict[str, Any]:
    """SSIM / PSNR of the VAE's posterior-mean reconstructions, Fig. 4 heatmaps, Fig. 6 channel statistics."""
    vae, meta = load_exported(config.vae_run, "vae", device)
    lo, hi = meta.get("value_range") or store_value_range(config.store)
    dtype = next(vae.parameters()).dtype
    recons, means = [], []
    with torch.no_grad():
        for k in range(0, len(real), config.batch_size):
            x = torch.as_tensor(np.stack(real[k:k + config.batch_size]))[:, None] * (hi - lo) + lo
            posterior = vae.encode(x.to(device, dtype))
            means.append(posterior.mean.float().cpu().numpy())
            y = vae.decode(posterior.mean, x.shape[2:]).float().cpu()
            recons += list(((y[:, 0] - lo) / (hi - lo)).clamp(0, 1).numpy())
    ssim, psnr = paired_ssim_psnr(real, recons)
    stats = channel_statistics(np.concatenate(means))
    figures = [str(heatmap_figure([(f"slice {i}", real[i], recons[i]) for i in range(min(FIGURE_ROWS, len(real)))],
                                  out / "recon_heatmaps.png", "VAE reconstructions and |error| (001 Fig. 4)")),
               str(bar_chart({"mean": stats["mean"]}, {"mean": stats["std"]}, out / "latent_channels.png",
                             "latent channels: mean +- std of the posterior means (001 Fig. 6)"))]
    return {"vae_run": str(config.vae_run), "n": len(real), "ssim": summary(ssim), "psnr_db": summary(psnr),
            "latent_channels": stats, "figures": figures}


def fid_2d(real: Sequence[np.ndarray], fake: Sequence[np.ndarray], extractor: Any, device: torch.device,
           standardize: bool = False) -> float:
    """2D Inception FID of two slice lists in [0, 1] (NaN with fewer than two slices on a side);
    ``standardize`` for a random network (:func:`~bsynth_hpc.eval.fid.fid_from_features`)."""
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    return fid_from_features(extract_inception_features(extractor, real, device=device),
                             extract_inception_features(extractor, fake, device=device), standardize=standardize)


def evaluate_samples(config: Slice2dEvalConfig, real: list[np.ndarray], real_labels: list[str | None], out: Path,
                     device: torch.device) -> dict[str, Any]:
    """Nearest-real SSIM/PSNR, FID (overall, per class), power spectra, diversity of a sample folder."""
    fake_set = open_slice_samples(Path(config.samples), real[0].shape)
    fake = [fake_set.load(i) for i in range(len(fake_set))]
    labels = [r.label for r in fake_set.refs]
    ssim, psnr, _ = nearest_real(fake, real)
    extractor, weights = load_inception(config.inception_weights, allow_random=config.allow_random_features,
                                        device=device)
    fid = {"all": fid_2d(real, fake, extractor, device, weights.random)}
    for c in sorted({lab for lab in labels if lab}):
        fid[c] = fid_2d([r for r, lab in zip(real, real_labels) if lab == c],
                        [f for f, lab in zip(fake, labels) if lab == c], extractor, device, weights.random)
    p_real, p_fake = radial_power_spectrum(real), radial_power_spectrum(fake)
    n = min(len(real), len(fake))
    figure = spectrum_chart({"real": p_real[1:], "generated": p_fake[1:]}, out / "power_spectra.png",
                            "radially averaged power spectrum, frequencies 1..N/2 (001 Fig. 7)")
    return {"samples": str(config.samples), "n": len(fake), "nearest_real_ssim": summary(ssim),
            "nearest_real_psnr_db": summary(psnr), "fid": fid,
            "inception": {"network": weights.network, "path": weights.path, "sha256": weights.sha256,
                          "random_features": weights.random},
            "power_spectrum": {"real": p_real.tolist(), "generated": p_fake.tolist(),
                               "mean_abs_log10_ratio": spectrum_distance(p_real, p_fake)},
            "diversity": {"generated": pairwise_diversity(fake, seed=config.seed),
                          "real": pairwise_diversity(real[:n], seed=config.seed)},
            "figures": [str(figure)]}


def evaluate_cfg_sweep(config: Slice2dEvalConfig, real: list[np.ndarray], real_labels: list[str | None], out: Path,
                       device: torch.device) -> dict[str, Any]:
    """004's CFG sweep: conditioning accuracy of generated slices per guidance scale (module docstring)."""
    classes = load_slice2d_info(config.ldm_run)["classes"]
    if not classes:
        raise InputError(f"--ldm-run {config.ldm_run} is unconditional: the CFG sweep needs a conditional (004) run")
    train, train_labels = real_slices(config, "train", None)
    keep = [i for i, lab in enumerate(train_labels) if lab in classes]
    _log(f"training the slice classifier on {len(keep)} real training slices ({config.classifier_epochs} epochs)")
    model = train_classifier([train[i] for i in keep], [classes.index(train_labels[i]) for i in keep], len(classes),
                             epochs=config.classifier_epochs, seed=config.seed, device=device)
    held = [i for i, lab in enumerate(real_labels) if lab in classes]
    real_acc = float(np.mean(predict(model, [real[i] for i in held], device=device)
                             == np.asarray([classes.index(real_labels[i]) for i in held]))) if held else float("nan")
    rows = []
    for scale in config.cfg_scales:
        folder = out / "cfg_sweep" / f"cfg_{scale:g}"
        generate(Slice2dSampleConfig(run=str(config.ldm_run), out=str(folder), n=config.sweep_n, cfg=float(scale),
                                     steps=config.sweep_steps, batch_size=config.batch_size, seed=config.seed,
                                     overwrite=True, trajectory=0, device=config.device))
        fake_set = open_slice_samples(folder, real[0].shape)
        fake = [fake_set.load(i) for i in range(len(fake_set))]
        want = np.asarray([classes.index(r.label) for r in fake_set.refs])
        got = predict(model, fake, device=device)
        rows.append({"cfg": float(scale), "n": len(fake), "accuracy": float(np.mean(got == want)),
                     "per_class": {c: float(np.mean(got[want == k] == k)) for k, c in enumerate(classes)}})
    return {"ldm_run": str(config.ldm_run), "classes": classes, "classifier_real_accuracy": real_acc,
            "classifier_train_slices": len(keep), "sweep": rows}


def markdown(result: dict[str, Any]) -> str:
    """slice2d_eval.md: one table per evaluated part."""
    def f(s: dict[str, Any], key: str = "mean") -> str:
        return "-" if not s.get("n") else f"{s[key]:.4f} ± {s['std']:.4f}"

    lines = ["# Slice evaluation (seed 001 §IV; 004 CFG sweep)", "", f"Real: `{result['config']['store']}` split "
             f"{result['config']['split']} ({result['real_slices']} slices).", ""]
    rec = result.get("reconstruction")
    if rec:
        lines += ["## VAE reconstruction", "", "| SSIM | PSNR (dB) |", "|---|---|",
                  f"| {f(rec['ssim'])} | {f(rec['psnr_db'])} |", ""]
    gen = result.get("generated")
    if gen:
        random = gen["inception"]["random_features"]
        stamp = " (RANDOM Inception features: smoke mode, not comparable)" if random else ""
        lines += ["## Generated slices", "", f"{gen['n']} samples. FID{stamp}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in gen["fid"].items() if math.isfinite(v)), "",
                  "| measure | value |", "|---|---|",
                  f"| nearest-real SSIM | {f(gen['nearest_real_ssim'])} |",
                  f"| nearest-real PSNR (dB) | {f(gen['nearest_real_psnr_db'])} |",
                  f"| power spectrum mean abs log10 ratio | {gen['power_spectrum']['mean_abs_log10_ratio']:.4f} |",
                  f"| diversity, RMS distance generated / real | {gen['diversity']['generated']['rms_distance']:.4f} / "
                  f"{gen['diversity']['real']['rms_distance']:.4f} |",
                  f"| diversity, 1 - SSIM generated / real | {gen['diversity']['generated']['one_minus_ssim']:.4f} / "
                  f"{gen['diversity']['real']['one_minus_ssim']:.4f} |", ""]
    sweep = result.get("cfg_sweep")
    if sweep:
        lines += ["## CFG sweep (conditioning accuracy)", "",
                  f"Classifier accuracy on real held-out slices: {sweep['classifier_real_accuracy']:.3f}.", "",
                  "| CFG | accuracy | " + " | ".join(sweep["classes"]) + " |",
                  "|---|---|" + "---|" * len(sweep["classes"])]
        for r in sweep["sweep"]:
            lines.append(f"| {r['cfg']:g} | {r['accuracy']:.3f} | "
                         + " | ".join(f"{r['per_class'][c]:.3f}" for c in sweep["classes"]) + " |")
    return "\n".join(lines) + "\n"


def run_slice2d_eval(config: Slice2dEvalConfig, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate what ``config`` names (module docstring) and write the report; returns the JSON-ready result."""
    if not (config.vae_run or config.samples or config.ldm_run):
        raise InputError("nothing to evaluate: give --vae-run, --samples and/or --ldm-run")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    real, labels = real_slices(config, config.split, config.max_real)
    if not real:
        raise InputError(f"{config.store} has no slices in split {config.split}")
    _log(f"{len(real)} real {config.split} slices of {config.store}")
    result: dict[str, Any] = {"protocol": "slice2d", "config": asdict(config), "real_slices": len(real)}
    if config.vae_run:
        result["reconstruction"] = evaluate_reconstruction(config, real, out, device)
    if config.samples:
        result["generated"] = evaluate_samples(config, real, labels, out, device)
    if config.ldm_run:
        result["cfg_sweep"] = evaluate_cfg_sweep(config, real, labels, out, device)
    write_json({"provenance": provenance(arguments, str(device)), **result}, out / "slice2d_eval.json")
    (out / "slice2d_eval.md").write_text(markdown(result), encoding="utf-8")
    _log(f"wrote {out / 'slice2d_eval.json'} and {out / 'slice2d_eval.md'}")
    return result


def cmd_eval_slice2d(args: argparse.Namespace) -> int:
    """``bsynth eval slice2d`` (parser: :mod:`.evaluate_cli`)."""
    fields = Slice2dEvalConfig.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k)}
    values["cfg_scales"] = tuple(float(s) for s in values.get("cfg_scales") or ())
    run_slice2d_eval(Slice2dEvalConfig(**values), arguments=vars(args))
    return 0
