"""End-to-end WFDM sampling cost per generated volume (seed 003 Table 6 protocol).

Batch 1, ``--warmup`` (3) warm-up generations, ``--runs`` (30) timed generations, each synchronised;
one generation = the full denoising loop of the conditional 3D U-Net on the latent + the compressor
decode to a volume. Solvers: RFlow Euler (50 steps), DDPM ancestral (1000 steps) and DDIM (50 steps).
Models are built at random init (timing does not depend on the weights) from the config sizes:

* ``--size full``: configs/wfdm-vae.yaml + configs/wfdm-ldm.yaml, 192x224x160 volumes -> 4x48x56x40 latents (GPU)
* ``--size tiny``: configs/wfdm-vae_tiny.yaml + configs/wfdm-ldm_tiny.yaml widths, 48x56x40 volumes -> 4x12x14x10

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU (reset per solver); on CPU the increase of the
process's ``ru_maxrss`` during that solver's runs (a high-water mark, so only growth beyond earlier peaks
shows; labelled ``cpu_ru_maxrss_delta_mib``).

    python -m benchmarks.e2e_sampling --size full --runs 30           # GPU, Table 6
    python -m benchmarks.e2e_sampling --size tiny --runs 5            # CPU smoke numbers
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, synchronize, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"full": ((192, 224, 160), "wfdm-vae.yaml", "wfdm-ldm.yaml"),
         "tiny": ((48, 56, 40), "wfdm-vae_tiny.yaml", "wfdm-ldm_tiny.yaml")}


PROG = "bsynth bench sampling"  # also `python -m benchmarks.e2e_sampling`

def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / name).read_text())["recipe"]


def build_models(size: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, ...], tuple[int, ...]]:
    from bsynth_hpc.models.autoencoder import build_compressor
    from bsynth_hpc.models.unet3d import build_unet3d

    vol, vae_cfg, ldm_cfg = SIZES[size]
    rv, rl = _recipe(vae_cfg), _recipe(ldm_cfg)
    torch.manual_seed(0)
    vae = build_compressor(rv.get("compressor", "wf-vae"), **dict(rv.get("compressor_kwargs") or {}))
    latent = tuple(int(s) for s in vae.latent_shape(vol))
    ukw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(rl.get("unet") or {}).items()}
    ukw.setdefault("in_channels", latent[0])
    unet = build_unet3d(rl.get("unet_preset", "unet3d-wfdm"), **ukw)
    return vae.to(device).eval(), unet.to(device).eval(), vol, latent


def _rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024.0


def bench_solver(name: str, dcfg: dict[str, Any], steps: int, vae, unet, vol, latent, device, warmup: int,
                 runs: int) -> dict[str, Any]:
    from bsynth_hpc.diffusion import DiffusionConfig, build_process, sample

    cfg = DiffusionConfig.from_dict(dcfg)
    process = build_process(cfg)
    kwargs = cfg.sampling_kwargs()
    kwargs.pop("guidance_scale", None)
    kwargs["steps"] = int(steps)
    cond = unet.null_condition(1, device)  # batch 1; the condition values do not change the cost
    gen = torch.Generator(device=device)

    def one(seed: int) -> torch.Tensor:
        gen.manual_seed(seed)
        with torch.inference_mode():
            res = sample(lambda x, t, c: unet(x, t, c), (1, *latent), process, generator=gen, cond=cond,
                         device=device, **kwargs)
            return vae.decode(res.sample.float(), vol)

    for i in range(warmup):
        one(i)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss0 = _rss_mib()
    times: list[float] = []
    for i in range(runs):
        synchronize(device)
        t0 = time.perf_counter()
        out = one(1000 + i)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    assert tuple(out.shape[2:]) == tuple(vol), out.shape
    row: dict[str, Any] = {
        "name": name, "scheduler": cfg.scheduler, "solver": kwargs["solver"], "steps": int(steps),
        "runs": runs, "warmup": warmup, "mean_s": statistics.fmean(times), "median_s": statistics.median(times),
        "std_s": statistics.stdev(times) if len(times) > 1 else 0.0, "min_s": min(times), "max_s": max(times),
        "s_per_step": statistics.median(times) / steps,
    }
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["memory_metric"] = "cuda_max_memory_allocated"
        row["resident_before_mib"] = base / 2**20
    else:
        row["peak_memory_mib"] = max(0.0, _rss_mib() - rss0)
        row["memory_metric"] = "cpu_ru_maxrss_delta_mib"
        row["process_ru_maxrss_mib"] = _rss_mib()
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on CUDA, tiny on CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps-rflow", type=int, default=50)
    p.add_argument("--steps-ddpm", type=int, default=1000, help="0 skips the DDPM arm (e.g. the GPU suite's RFlow run)")
    p.add_argument("--steps-ddim", type=int, default=50, help="0 skips DDIM")
    p.add_argument("--runs-ddpm", type=int, default=None,
                   help="timed runs of the 1000-step DDPM arm (default --runs; a CPU may afford only 1-2)")
    p.add_argument("--warmup-ddpm", type=int, default=None, help="warm-ups of the DDPM arm (default --warmup)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = a.size or ("full" if device.type == "cuda" else "tiny")
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    vae, unet, vol, latent = build_models(size, device)
    params = {"unet": sum(p.numel() for p in unet.parameters()), "compressor": sum(p.numel() for p in vae.parameters())}
    print(f"[e2e] size={size} device={device} volume={vol} latent={latent} params={params}", flush=True)
    # DDPM arm: the config's DDPM ablation (v-prediction, cosine β, 1000 train steps)
    ddpm = {"scheduler": "ddpm", "beta_schedule": "cosine", "prediction": "v_prediction", "num_train_timesteps": 1000}
    solvers = [("rflow_euler", {"scheduler": "rflow", "time_sampling": "logit-normal", "num_train_timesteps": 1000,
                                "sampling": {"solver": "euler", "steps": a.steps_rflow}}, a.steps_rflow)]
    if a.steps_ddpm > 0:
        solvers.append(("ddpm_ancestral", {**ddpm, "sampling": {"solver": "ddpm", "steps": a.steps_ddpm}},
                        a.steps_ddpm))
    if a.steps_ddim > 0:
        solvers.append(("ddim", {**ddpm, "sampling": {"solver": "ddim", "steps": a.steps_ddim}}, a.steps_ddim))
    rows = []
    for name, dcfg, steps in solvers:
        ddpm_arm = name == "ddpm_ancestral"
        warmup = a.warmup_ddpm if ddpm_arm and a.warmup_ddpm is not None else a.warmup
        runs = a.runs_ddpm if ddpm_arm and a.runs_ddpm is not None else a.runs
        row = bench_solver(name, dcfg, steps, vae, unet, vol, latent, device, warmup, runs)
        rows.append(row)
        print(f"[e2e] {name:15s} {steps:5d} steps: mean {row['mean_s']:.4f} s  median {row['median_s']:.4f} s  "
              f"std {row['std_s']:.4f} s  peak {row['peak_memory_mib']:.1f} MiB ({row['memory_metric']})", flush=True)
    # decode-only cost (same protocol), to split loop vs decode and project to the Table 6 step counts
    z = torch.randn(1, *latent, device=device)
    dec: list[float] = []
    with torch.inference_mode():
        for i in range(a.warmup + max(1, a.runs)):
            synchronize(device)
            t0 = time.perf_counter()
            vae.decode(z, vol)
            synchronize(device)
            if i >= a.warmup:
                dec.append(time.perf_counter() - t0)
    decode_s = statistics.median(dec)
    for r in rows:
        r["decode_median_s"] = decode_s
        r["loop_s_per_step"] = max(0.0, r["median_s"] - decode_s) / r["steps"]
    by = {r["name"]: r for r in rows}
    table6 = {"rflow_euler": 50, "ddpm_ancestral": 1000, "ddim": 50}
    projected = {n: decode_s + by[n]["loop_s_per_step"] * k for n, k in table6.items() if n in by}
    ratios: dict[str, float] = {}
    if "ddpm_ancestral" in by:
        ratios.update(rflow_over_ddpm_time=by["rflow_euler"]["mean_s"] / by["ddpm_ancestral"]["mean_s"],
                      ddpm_over_rflow_time=by["ddpm_ancestral"]["mean_s"] / by["rflow_euler"]["mean_s"])
    if "ddim" in by:
        ratios["rflow_over_ddim_time"] = by["rflow_euler"]["mean_s"] / by["ddim"]["mean_s"]
    payload = {
        "benchmark": "e2e_sampling",
        "protocol": "seed 003 Table 6: batch 1, warm-ups then timed runs, synchronised; seconds per generated "
                    "volume = denoising loop + compressor decode; random-init models at config sizes",
        "size": size, "volume_shape": list(vol), "latent_shape": list(latent), "parameters": params,
        "guidance_scale": 1.0, "environment": environment_info(device), "results": rows, "ratios": ratios,
        "decode_median_s": decode_s,
        "projected_table6_s": {"note": "decode + measured per-step loop cost x (50 RFlow / 1000 DDPM / 50 DDIM) "
                                       "steps; only differs from results when fewer steps were run",
                               **projected,
                               **({"rflow_over_ddpm_time": projected["rflow_euler"] / projected["ddpm_ancestral"]}
                                  if "ddpm_ancestral" in projected else {})},
        "wall_s": time.perf_counter() - t_start,
    }
    path = write_results("e2e_sampling", payload, a.out_dir)
    print("\n| solver | steps | mean s | median s | std s | peak MiB | memory metric |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['steps']} | {r['mean_s']:.4f} | {r['median_s']:.4f} | {r['std_s']:.4f} | "
              f"{r['peak_memory_mib']:.1f} | {r['memory_metric']} |")
    if "rflow_over_ddpm_time" in ratios:
        print(f"\nRFlow/DDPM time ratio: {ratios['rflow_over_ddpm_time']:.4f} "
              f"(DDPM is {ratios['ddpm_over_rflow_time']:.1f}x slower) at the steps run; decode {decode_s:.4f} s; "
              f"projected to 50/1000 steps: "
              f"{payload['projected_table6_s'].get('rflow_over_ddpm_time', float('nan')):.4f}")
    else:
        print(f"\nRFlow {by['rflow_euler']['steps']} steps: median {by['rflow_euler']['median_s']:.4f} s per volume, "
              f"peak {by['rflow_euler']['peak_memory_mib']:.1f} MiB; decode {decode_s:.4f} s (DDPM arm skipped)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
