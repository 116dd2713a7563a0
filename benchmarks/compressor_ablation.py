"""Compressor ablation at equal training steps (seed 003 Table 3), tiny CPU scale.

WF-SA-VAE, WF-VAE, VAE-GAN and Wavelet VAE (``build_compressor`` presets, tiny widths from
configs/wfdm-vae_tiny.yaml) are trained with one plain torch loop each: same seed, same data order,
same number of Adam steps (``--steps``), loss = L1 + kl_weight * KL only (no LPIPS, no adversarial term,
so "VAE-GAN" here is its architecture without its discriminator; the full recipe adds 0.3 LPIPS +
0.1 adversarial). Evaluation on the held-out (val + test) volumes: PSNR, SSIM (3D), MS-SSIM (3D)
from ``bsynth_hpc.eval`` and tri-planar LPIPS with ``allow_random`` (a *random* AlexNet trunk unless
$BSYNTH_WEIGHTS_DIR holds the torchvision weights; the output records which).

Data: ``--store`` (a prepared VolumeStore), or a demo cohort built and prepped on the fly
(``--n-subjects`` subjects at 8 mm, 24x28x20 volumes).

    python -m benchmarks.compressor_ablation --steps 100
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPRESSORS = ("wf-sa-vae", "wf-vae", "vae-gan", "wavelet-vae")
LABELS = {"wf-sa-vae": "WF-SA-VAE", "wf-vae": "WF-VAE", "vae-gan": "VAE-GAN", "wavelet-vae": "Wavelet VAE"}


PROG = "bsynth bench ablation"  # also `python -m benchmarks.compressor_ablation`

def prepare_store(work: Path, n_subjects: int, seed: int = 0) -> Path:
    from bsynth_hpc.prep.demo import build_demo_cohort
    from bsynth_hpc.prep.ingest import PrepSource
    from bsynth_hpc.prep.pipeline import PrepConfig, run_prep

    manifest = build_demo_cohort(work / "cohort", n_subjects=n_subjects, spacing_mm=8.0, seed=seed)
    out = work / "store.zarr"
    run_prep(PrepSource.manifest(manifest), out, PrepConfig(shape=(24, 28, 20), spacing=(8.0,) * 3, workers=1,
             cluster="sync", progress=False))
    return out


def load_splits(store_path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(train volumes, held-out volumes, counts); held-out = val + test subjects."""
    from bsynth_hpc.data.splits import split_subjects, subject_key
    from bsynth_hpc.data.store import VolumeStore
    from bsynth_hpc.data.summary import split_of

    store = VolumeStore(store_path)
    recs = list(store.records())
    splits = [split_of(store.info, r) for r in recs]
    if any(s not in ("train", "val", "test") for s in splits):  # unfinalised store: subject-aware hash split
        keys = sorted({subject_key(r.get("dataset"), r.get("subject")) for r in recs})
        assign = split_subjects(keys, seed=0)
        splits = [assign[subject_key(r.get("dataset"), r.get("subject"))] for r in recs]
    train = [store.read_volume(r["volume_id"]) for r, s in zip(recs, splits) if s == "train"]
    held = [store.read_volume(r["volume_id"]) for r, s in zip(recs, splits) if s != "train"]
    if not held:  # degenerate tiny store: hold out the last volume
        held = train[-1:]
        train = train[:-1]
    counts = {"train": len(train), "heldout": len(held),
              "val": splits.count("val"), "test": splits.count("test")}
    return np.stack(train).astype(np.float32), np.stack(held).astype(np.float32), counts


def train_one(name: str, kw: dict[str, Any], train: np.ndarray, steps: int, batch: int, lr: float,
              kl_weight: float, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from bsynth_hpc.models.autoencoder import build_compressor

    torch.manual_seed(seed)
    model = build_compressor(name, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.from_numpy(train)[:, None]
    rng = np.random.default_rng(seed)  # same data order for every compressor
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(data), size=min(batch, len(data)), replace=False))
        x = data[idx]
        recon, post = model(x, sample_posterior=True, generator=gen)
        l1 = (recon - x).abs().mean()
        kl = post.kl().mean()
        loss = l1 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(l1.detach()))
    model.eval()
    return model, {"train_s": time.perf_counter() - t0, "final_l1": losses[-1] if losses else math.nan,
                   "l1_last10": statistics.fmean(losses[-10:]) if losses else math.nan,
                   "parameters": sum(p.numel() for p in model.parameters())}


def evaluate(model: torch.nn.Module, held: np.ndarray, lpips_model, per_plane: int) -> dict[str, float]:
    from bsynth_hpc.eval.lpips_slices import triplanar_lpips
    from bsynth_hpc.eval.paired import paired_metrics
    from bsynth_hpc.eval.ssim import ms_ssim_settings, ssim_settings

    shape = held.shape[1:]
    ss, ms = ssim_settings(shape), ms_ssim_settings(shape)
    rows = []
    with torch.inference_mode():
        for v in held:
            rec = model.reconstruct(torch.from_numpy(v)[None, None]).float().clamp(0, 1)[0, 0].numpy()
            rows.append(paired_metrics(v, rec, ssim_settings=ss, ms_ssim_settings=ms, per_plane=per_plane,
                                       lpips_fn=lambda a, b: triplanar_lpips(lpips_model, a, b, per_plane)))
    keys = ("psnr", "ssim", "ms_ssim", "lpips")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out.update({f"{k}_std": float(np.std([r[k] for r in rows])) for k in keys})
    out["n_volumes"] = len(rows)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="prepared store (default: build + prep a demo cohort)")
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--work-dir", default=None, help="where the demo cohort/store go (default: a temp dir)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-plane", type=int, default=4, help="slices per plane for tri-planar LPIPS / SSIM")
    p.add_argument("--compressors", default=",".join(COMPRESSORS))
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    tmp = None
    if a.store:
        store = Path(a.store)
    else:
        work = Path(a.work_dir) if a.work_dir else Path(tmp := tempfile.mkdtemp(prefix="bsynth_ablation_"))
        store = prepare_store(work, a.n_subjects, a.seed)
    t_data = time.perf_counter() - t_start
    train, held, counts = load_splits(store)
    print(f"[ablation] store {store}: {counts}, volume {tuple(train.shape[1:])}, data {t_data:.1f} s", flush=True)

    recipe = yaml.safe_load((ROOT / "configs" / "wfdm-vae_tiny.yaml").read_text())["recipe"]
    kw = dict(recipe.get("compressor_kwargs") or {})
    from bsynth_hpc.nn.lpips import load_lpips

    lpips_model, lpips_info = load_lpips(None, allow_random=True)
    lpips_random = getattr(lpips_info, "verified", None) == "random-init"
    lpips_label = "random AlexNet (allow_random; not comparable to published LPIPS)" if lpips_random \
        else f"AlexNet weights {getattr(lpips_info, 'path', None)}"
    results = []
    for name in [c.strip() for c in a.compressors.split(",") if c.strip()]:
        model, tr = train_one(name, kw, train, a.steps, a.batch, a.lr, a.kl_weight, a.seed)
        ev = evaluate(model, held, lpips_model, a.per_plane)
        row = {"compressor": name, "label": LABELS.get(name, name), **tr, **ev}
        results.append(row)
        print(f"[ablation] {row['label']:12s} PSNR {ev['psnr']:.3f}  SSIM {ev['ssim']:.4f}  MS-SSIM "
              f"{ev['ms_ssim']:.4f}  LPIPS {ev['lpips']:.4f}  ({tr['train_s']:.1f} s train)", flush=True)
    by = {r["compressor"]: r for r in results}
    ordering = None
    if all(c in by for c in ("wf-sa-vae", "wf-vae", "vae-gan")):
        sa, wf, gan = by["wf-sa-vae"], by["wf-vae"], by["vae-gan"]
        checks = {m: {"wf_sa_vae_ge_wf_vae": sa[m] >= wf[m], "wf_vae_gt_vae_gan": wf[m] > gan[m]}
                  for m in ("psnr", "ssim")}
        ordering = {"claim": "seed 003 Table 3: WF-SA-VAE >= WF-VAE > VAE-GAN on PSNR and SSIM",
                    "checks": checks, "holds": all(all(v.values()) for v in checks.values())}
    payload = {
        "benchmark": "compressor_ablation",
        "protocol": "seed 003 Table 3 at equal steps, tiny CPU scale: same seed, same data order, same Adam steps; "
                    "loss L1 + kl_weight*KL only (no LPIPS / adversarial terms on CPU; VAE-GAN trained without "
                    "its discriminator); metrics on held-out (val+test) volumes",
        "store": str(store), "volume_shape": list(train.shape[1:]), "splits": counts,
        "compressor_kwargs": kw, "steps": a.steps, "batch": a.batch, "lr": a.lr, "kl_weight": a.kl_weight,
        "seed": a.seed, "lpips": lpips_label, "lpips_random_alexnet": lpips_random, "per_plane": a.per_plane,
        "environment": environment_info("cpu"), "results": results, "ordering": ordering,
        "data_s": t_data, "wall_s": time.perf_counter() - t_start,
    }
    path = write_results("compressor_ablation", payload, a.out_dir)
    print(f"\n| compressor | params | PSNR dB | SSIM | MS-SSIM | LPIPS ({'random AlexNet' if lpips_random else 'AlexNet'}) "
          f"| train s |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['parameters']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['ms_ssim']:.4f} | "
              f"{r['lpips']:.4f} | {r['train_s']:.1f} |")
    if ordering is not None:
        print(f"\n003 ordering (WF-SA-VAE >= WF-VAE > VAE-GAN on PSNR/SSIM) at {a.steps} steps, tiny scale: "
              f"{'holds' if ordering['holds'] else 'does NOT hold'} ({ordering['checks']})")
    print(f"wrote {path} ({payload['wall_s']:.1f} s)")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
