"""Decoder memory and time: whole-volume decode vs tiled (sliding-window) decode (issue #6 item 5).

The question this answers: does ``bsynth sample --tile T`` keep a full 192x224x160 decode within a
small card's memory, what does it cost in time, and how far is the tiled volume from the whole one?

Each mode (``whole``, then ``tile=T`` for every ``--tiles`` entry) runs in a fresh Python process
(so one mode's allocator high-water mark cannot hide another's), builds the compressor of
``--config`` at random init with a fixed seed, decodes the same N(0, I) latent ``--runs`` times after
one warm-up, and reports the median seconds and the peak memory of the decode:

* GPU: ``torch.cuda.max_memory_allocated`` during the decodes, minus the resident weights + latent;
* CPU: the growth of the process's peak RSS (``ru_maxrss``) over its value before the first decode
  (a high-water mark of the whole process: allocator caching and fragmentation included).

The tiled volumes are compared with the whole decode (max / mean absolute difference, PSNR in the
[0, 1] output range). With ``--run RUN --store STORE`` the compressor is the trained export of a
stage-A run and the latent is the posterior mean of the store's first test volume (what a sampler
decodes looks like that); without them the decoder is random-init and the latent N(0, I), which is
right for memory and time but says little about the difference (a random decoder's per-tile
GroupNorm statistics are not those of a trained one).

    python -m benchmarks.tiled_decode                              # full size, tiles 16 and 24 (GPU or CPU)
    python -m benchmarks.tiled_decode --size tiny --tiles 4 6      # seconds on a CPU
    python -m benchmarks.tiled_decode --run demo_run/runs/wfdm-vae --store demo_run/store.zarr --tiles 6 8
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
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

from benchmarks.common import environment_info, synchronize, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"full": ((192, 224, 160), "wfdm-vae.yaml"), "tiny": ((48, 56, 40), "wfdm-vae_tiny.yaml")}


PROG = "bsynth bench decode"  # also `python -m benchmarks.tiled_decode`

def _rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024.0


def build_decoder(size: str, device: torch.device, run: str | None = None
                  ) -> tuple[torch.nn.Module, tuple[int, ...], tuple[int, ...]]:
    """The compressor (``run``'s trained export, else the size's config at random init, seed 0), its
    volume shape and latent shape."""
    from bsynth_hpc.models.autoencoder import build_compressor

    if run:
        from bsynth_hpc.engine.export import load_exported

        vae, meta = load_exported(run, "vae", device)
        vol = tuple(int(v) for v in meta["volume_shape"])
        return vae, vol, tuple(int(s) for s in vae.latent_shape(vol))
    vol, cfg_name = SIZES[size]
    recipe = yaml.safe_load((ROOT / "configs" / cfg_name).read_text())["recipe"]
    torch.manual_seed(0)
    vae = build_compressor(recipe.get("compressor", "wf-vae"), **dict(recipe.get("compressor_kwargs") or {}))
    return vae.to(device).eval(), vol, tuple(int(s) for s in vae.latent_shape(vol))


def latent_to_decode(vae: torch.nn.Module, latent: Sequence[int], store: str | None, device: torch.device) -> torch.Tensor:
    """The posterior mean of the store's first test (else any) volume, or N(0, I) without a store."""
    if not store:
        return torch.randn((1, *latent), generator=torch.Generator().manual_seed(1)).to(device)
    from bsynth_hpc.data.store import VolumeStore
    from bsynth_hpc.data.summary import split_of

    vs = VolumeStore(store)
    recs = list(vs.records())
    rec = next((r for r in recs if split_of(vs.info, r) == "test"), recs[0])
    x = torch.from_numpy(np.asarray(vs.read_volume(rec["volume_id"]), dtype=np.float32))[None, None].to(device)
    with torch.inference_mode():
        return vae.encode_latent(x)


def measure_mode(size: str, tile: int, runs: int, device_name: str, out_npy: str, threads: int | None,
                 run: str | None = None, store: str | None = None) -> dict[str, Any]:
    """Decode (tile 0 = whole) in this process; write the last volume to ``out_npy``; return the row."""
    from bsynth_hpc.recipes.common.outputs import decode_latents

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    vae, vol, latent = build_decoder(size, device, run)
    z = latent_to_decode(vae, latent, store, device)
    with torch.inference_mode():
        decode_latents(vae, z, vol, tile or None)  # warm-up (cuDNN autotuning, allocator growth on GPU)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times: list[float] = []
    y = None
    with torch.inference_mode():
        for _ in range(runs):
            synchronize(device)
            t0 = time.perf_counter()
            y = decode_latents(vae, z, vol, tile or None)
            synchronize(device)
            times.append(time.perf_counter() - t0)
    assert y is not None and tuple(y.shape[2:]) == tuple(vol)
    row: dict[str, Any] = {"mode": f"tile={tile}" if tile else "whole", "tile": tile or None,
                           "overlap": max(1, tile // 4) if tile else None, "runs": runs,
                           "median_s": statistics.median(times), "min_s": min(times)}
    if device.type == "cuda":
        row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        row["memory_metric"] = "cuda_max_memory_allocated minus resident weights+latent"
    else:
        # the warm-up already reached this process's high-water mark: report it relative to the
        # state after the model was built (measured in the parent from a fresh process per mode)
        row["peak_rss_mib"] = _rss_mib()
        row["memory_metric"] = "cpu process peak RSS (ru_maxrss), fresh process per mode"
    np.save(out_npy, y.float().clamp(0, 1).cpu().numpy()[0, 0])
    return row


def _baseline_rss(size: str, threads: int | None, run: str | None, store: str | None) -> float:
    """Peak RSS of a process that only builds the model and the latent (what every mode pays anyway)."""
    code = ("import sys, json; sys.path.insert(0, %r); import torch\n"
            "from benchmarks.tiled_decode import build_decoder, latent_to_decode, _rss_mib\n"
            "%s"
            "vae, vol, lat = build_decoder(%r, torch.device('cpu'), %r)\n"
            "z = latent_to_decode(vae, lat, %r, torch.device('cpu'))\n"
            "print(json.dumps(_rss_mib()))\n") % (str(ROOT), f"torch.set_num_threads({threads})\n" if threads else "",
                                                  size, run, store)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _compare(whole: np.ndarray, tiled: np.ndarray) -> dict[str, float]:
    diff = np.abs(whole.astype(np.float64) - tiled.astype(np.float64))
    mse = float((diff ** 2).mean())
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "psnr_vs_whole_db": float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--tiles", type=int, nargs="*", default=[16, 24], help="latent tile edges (overlap = tile // 4)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--run", default=None, help="a trained stage-A run (its export 'vae'); default random init")
    p.add_argument("--store", default=None, help="with --run: decode the latent of this store's first test volume")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--_worker", nargs=2, metavar=("TILE", "NPY"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a._worker:
        print(json.dumps(measure_mode(a.size, int(a._worker[0]), a.runs, device, a._worker[1], a.threads,
                                      a.run, a.store)))
        return 0
    if a.store and not a.run:
        p.error("--store needs --run (a trained compressor to encode it with)")
    t_start = time.perf_counter()
    _, vol, latent = build_decoder(a.size, torch.device("cpu"), a.run)
    base_rss = _baseline_rss(a.size, a.threads, a.run, a.store) if device == "cpu" else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bsynth_tiles_") as tmp:
        for tile in [0, *a.tiles]:
            npy = str(Path(tmp) / f"tile{tile}.npy")
            cmd = [sys.executable, "-m", "benchmarks.tiled_decode", "--size", a.size, "--runs", str(a.runs),
                   "--device", device, "--_worker", str(tile), npy]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            for flag, value in (("--run", a.run), ("--store", a.store)):
                if value:
                    cmd += [flag, str(Path(value).resolve())]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
            if out.returncode:
                raise RuntimeError(f"mode tile={tile} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if base_rss is not None:
                row["peak_mib"] = max(0.0, row["peak_rss_mib"] - base_rss)
            if tile:
                row.update(_compare(np.load(str(Path(tmp) / "tile0.npy")), np.load(npy)))
            rows.append(row)
            print(f"[tiled-decode] {row['mode']:8s} median {row['median_s']:.3f} s  peak {row['peak_mib']:.0f} MiB"
                  + (f"  max|diff| {row['max_abs_diff']:.4f}  PSNR vs whole {row['psnr_vs_whole_db']:.1f} dB"
                     if tile else ""), flush=True)
    whole = rows[0]
    for r in rows[1:]:
        r["memory_ratio_vs_whole"] = r["peak_mib"] / whole["peak_mib"] if whole["peak_mib"] else None
        r["time_ratio_vs_whole"] = r["median_s"] / whole["median_s"]
    name = "trained" if a.run else a.size
    payload = {"benchmark": "tiled_decode", "size": name, "volume_shape": list(vol), "latent_shape": list(latent),
               "decoder": f"trained export of {a.run}" if a.run else f"configs/{SIZES[a.size][1]} at random init",
               "latent": f"posterior mean of a test volume of {a.store}" if a.store else "N(0, I)",
               "baseline_rss_mib": base_rss, "environment": environment_info(device), "results": rows,
               "wall_s": time.perf_counter() - t_start,
               "note": "peak = decode memory above the loaded model and latent (see the module docstring)"}
    path = write_results(f"tiled_decode_{name}", payload, a.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
