"""DiT-3D sampling seconds per generated volume: DDPM ancestral (1000 steps) vs DDIM (50 steps) (seed 000).

Protocol (as benchmarks/e2e_sampling.py): batch 1, ``--warmup`` warm-up generations (DDIM, the same
network and decoder), then timed generations, each synchronised; DDPM and DDIM runs alternate
round-robin so both see the same machine load. One generation = the full denoising loop of the
class-conditional DiT-3D with classifier-free guidance (scale from configs/dit3d_tle.yaml, 3.0:
conditional + null branch in **one batched forward of 2 latents per step**, ``guided_output``) on
the latent, then the VAE-GAN decode of that latent to a volume (``tle-vaegan``). Loop and decode are
timed separately per run; ``total`` = loop + decode. Diffusion: configs/dit3d_tle.yaml's DDPM (linear
beta 1e-4 -> 2e-2, T = 1000, epsilon). Models are random-init at config sizes (timing does not depend
on the weights):

* ``--size full``: configs/dit3d_tle.yaml DiT-3D (depth 12, hidden 384) + configs/dit3d-vae.yaml
  decoder (widths 64/128/256); GPU, bf16 autocast unless ``--fp32``.
* ``--size tiny``: DiT depth 4, hidden 96, 4 heads (same patch/window/interleave rule) + the
  configs/dit3d-vae_tiny.yaml decoder (width 8); CPU, fp32.

Attention modes as in benchmarks/dit3d_training.py (default: the config's ``interleave``). Peak
memory: ``torch.cuda.max_memory_allocated`` per solver on GPU; on CPU the largest growth of the resident
set during one run (VmHWM reset through /proc/self/clear_refs before the run, minus VmRSS before it).

    python -m benchmarks.dit3d_sampling                              # GPU: full size, both latent sizes
    python -m benchmarks.dit3d_sampling --size tiny --ddpm-runs 1    # CPU
    bsynth bench dit3d sampling -- --modes interleave global
"""
from __future__ import annotations

import argparse
import contextlib
import os
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
from bsynth_hpc.engine.config import packaged_config  # noqa: E402
from benchmarks.dit3d_training import LATENTS, MODES, _parse_latent, _vm_kib, attention_facts, model_settings, \
    reset_cpu_peak, window_blocks  # noqa: E402

DECODER_FIELDS = ("base_channels", "latent_channels", "downsample_factor", "num_res_blocks", "norm_groups",
                  "pad_input", "channel_mult")


def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load(packaged_config(name).read_text())["recipe"]


def build_models(size: str, latent: Sequence[int], mode: str, device: torch.device):
    """(DiT-3D, decoder, volume shape, model settings) at random init for ``latent`` (C, X, Y, Z)."""
    from bsynth_hpc.models.autoencoder import build_compressor
    from bsynth_hpc.models.dit3d import build_dit3d

    model = model_settings(size)
    torch.manual_seed(0)
    dit = build_dit3d("dit3d-tle", input_size=list(latent[1:]), in_channels=latent[0],
                      **{**model, "window_blocks": window_blocks(mode, model)})
    rv = _recipe("dit3d-vae.yaml" if size == "full" else "dit3d-vae_tiny.yaml")
    kw = {k: rv[k] for k in DECODER_FIELDS if k in rv}
    kw["latent_channels"] = latent[0]
    vae = build_compressor("tle-vaegan", **kw)
    vol = tuple(int(s) * int(vae.downsample_factor) for s in latent[1:])
    return dit.to(device).eval(), vae.to(device).eval(), vol, model


class SolverTimer:
    """Timed generations of one solver: loop and decode seconds per run, and peak memory."""

    def __init__(self, name: str, solver: str, steps: int, device: torch.device):
        self.name, self.solver, self.steps, self.device = name, solver, int(steps), device
        self.loop: list[float] = []
        self.decode: list[float] = []
        self.peak_mib = 0.0

    def row(self, runs_requested: int, warmup: int) -> dict[str, Any]:
        total = [a + b for a, b in zip(self.loop, self.decode)]
        med = statistics.median(total)
        row: dict[str, Any] = {
            "name": self.name, "solver": self.solver, "steps": self.steps, "runs": len(total),
            "runs_requested": runs_requested, "warmup": warmup,
            "s_per_volume_median": med, "s_per_volume_mean": statistics.fmean(total),
            "s_per_volume_std": statistics.stdev(total) if len(total) > 1 else 0.0,
            "s_per_volume_min": min(total), "s_per_volume_max": max(total),
            "loop_s_median": statistics.median(self.loop), "decode_s_median": statistics.median(self.decode),
            "loop_s_per_step": statistics.median(self.loop) / self.steps, "run_seconds": [round(t, 4) for t in total],
            "peak_memory_mib": self.peak_mib,
            "memory_metric": ("cuda_max_memory_allocated" if self.device.type == "cuda" else
                              "cpu_vmhwm_minus_rss_before (peak resident-set growth of a run, lower bound)"),
        }
        return row


def bench_latent(size: str, latent: Sequence[int], mode: str, device: torch.device, ddpm_steps: int, ddim_steps: int,
                 ddpm_runs: int, ddim_runs: int, warmup: int, guidance: float, autocast: bool) -> dict[str, Any]:
    from bsynth_hpc.diffusion import DiffusionConfig, build_process, sample

    dit, vae, vol, model = build_models(size, latent, mode, device)
    dcfg = DiffusionConfig.from_dict({k: v for k, v in _recipe("dit3d_tle.yaml")["diffusion"].items()
                                      if k != "sampling"})
    process = build_process(dcfg)
    y = torch.tensor([1], device=device)                 # TLE; the class does not change the cost
    null = torch.full_like(y, dit.null_id)
    gen = torch.Generator(device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def generate(solver: str, steps: int, seed: int) -> tuple[float, float]:
        gen.manual_seed(seed)
        with torch.inference_mode(), amp:
            synchronize(device)
            t0 = time.perf_counter()
            res = sample(lambda x, t, c: dit(x, t, c), (1, *latent), process, steps, solver=solver, generator=gen,
                         cond=y, uncond=null, guidance_scale=guidance, device=device)
            synchronize(device)
            t1 = time.perf_counter()
            out = vae.decode(res.sample, vol)
            synchronize(device)
            t2 = time.perf_counter()
        assert tuple(out.shape[2:]) == tuple(vol), out.shape
        return t1 - t0, t2 - t1

    for i in range(warmup):
        generate("ddim", ddim_steps, i)
    timers = [SolverTimer("ddpm_ancestral", "ddpm", ddpm_steps, device), SolverTimer("ddim", "ddim", ddim_steps, device)]
    runs = {"ddpm": ddpm_runs, "ddim": ddim_runs}
    for i in range(max(runs.values())):
        for tm in timers:
            if i >= runs[tm.solver]:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            else:
                reset_cpu_peak()
            rss0 = (_vm_kib("VmRSS") or 0) / 1024.0
            loop_s, dec_s = generate(tm.solver, tm.steps, 1000 + i)
            tm.loop.append(loop_s)
            tm.decode.append(dec_s)
            if device.type == "cuda":
                tm.peak_mib = max(tm.peak_mib, torch.cuda.max_memory_allocated(device) / 2**20)
            else:
                tm.peak_mib = max(tm.peak_mib, (_vm_kib("VmHWM") or 0) / 1024.0 - rss0)
            print(f"[dit3d-sampling] {'x'.join(map(str, latent))} {mode} {tm.name} run {i}: loop {loop_s:.3f} s "
                  f"decode {dec_s:.3f} s", flush=True)
    rows = [tm.row(runs[tm.solver], warmup) for tm in timers]
    by = {r["solver"]: r for r in rows}
    blocks = window_blocks(mode, model)
    return {
        "latent": "x".join(map(str, latent)), "latent_shape": list(latent), "volume_shape": list(vol), "mode": mode,
        "window_blocks": blocks, "parameters": {"dit": sum(p.numel() for p in dit.parameters()),
                                                "decoder": sum(p.numel() for p in vae.decoder.parameters())},
        "attention": attention_facts(latent, model, blocks),
        "results": rows,
        "ratios": {
            "ddpm_over_ddim_s_per_volume": by["ddpm"]["s_per_volume_median"] / by["ddim"]["s_per_volume_median"],
            "ddpm_over_ddim_loop": by["ddpm"]["loop_s_median"] / by["ddim"]["loop_s_median"],
            "ddpm_over_ddim_loop_s_per_step": by["ddpm"]["loop_s_per_step"] / by["ddim"]["loop_s_per_step"],
            "decode_share_ddim": by["ddim"]["decode_s_median"] / by["ddim"]["s_per_volume_median"],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bsynth bench dit3d sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "full"], default=None, help="default: full on CUDA, tiny on CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--latents", nargs="+", default=None,
                   help="latent sizes CxXxYxZ (default: both of " + ", ".join(LATENTS) + " on GPU, 4x28x34x28 on CPU)")
    p.add_argument("--modes", nargs="+", default=["interleave"], choices=MODES)
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--ddpm-runs", type=int, default=None, help="timed DDPM generations (default 5 GPU, 1 CPU)")
    p.add_argument("--ddim-runs", type=int, default=None, help="timed DDIM generations (default 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up DDIM generations (default 3 GPU, 1 CPU)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: configs/dit3d_tle.yaml's)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on CPU: 1, as one rank of the training benchmark; shared "
                        "2-core machines slow down badly with 2)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="dit3d_sampling", help="results file stem")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    size = a.size or ("full" if gpu else "tiny")
    latents = [_parse_latent(s) for s in (a.latents or (list(LATENTS) if gpu else ["4x28x34x28"]))]
    ddpm_runs = a.ddpm_runs or (5 if gpu else 1)
    ddim_runs = a.ddim_runs or (10 if gpu else 3)
    warmup = a.warmup if a.warmup is not None else (3 if gpu else 1)
    guidance = a.guidance if a.guidance is not None else float(
        _recipe("dit3d_tle.yaml")["diffusion"]["sampling"]["guidance_scale"])
    autocast = gpu and not a.fp32
    threads = a.threads or (None if gpu else 1)
    if threads:
        torch.set_num_threads(threads)
    if not gpu:
        os.environ.setdefault("BSYNTH_DISABLE_TRITON", "1")
    if gpu:
        torch.backends.cudnn.benchmark = True
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    print(f"[dit3d-sampling] size={size} device={device} latents={latents} modes={a.modes} guidance={guidance} "
          f"ddpm {a.ddpm_steps} steps x {ddpm_runs} runs, ddim {a.ddim_steps} steps x {ddim_runs} runs; "
          f"load {load_before}", flush=True)
    entries = []
    for latent in latents:
        for mode in a.modes:
            entries.append(bench_latent(size, latent, mode, device, a.ddpm_steps, a.ddim_steps, ddpm_runs,
                                        ddim_runs, warmup, guidance, autocast))
    payload = {
        "benchmark": "dit3d_sampling",
        "protocol": ("batch 1; warm-up DDIM generations, then DDPM and DDIM generations alternating round-robin, "
                     "each synchronised; seconds per volume = denoising loop + VAE-GAN decode (timed separately: "
                     "loop_s_median, decode_s_median); CFG on: conditional + null branch in one batched forward "
                     "of 2 latents per step; random-init models at config sizes"),
        "size": size, "model": model_settings(size), "guidance_scale": guidance,
        "precision": "bf16 autocast" if autocast else "fp32",
        "decoder": ("configs/dit3d-vae.yaml" if size == "full" else "configs/dit3d-vae_tiny.yaml") + " (tle-vaegan)",
        "kernels": "Triton window attention" if gpu else "PyTorch reference window attention (BSYNTH_DISABLE_TRITON)",
        "notes": ("" if gpu else f"CPU run: {ddpm_runs} timed DDPM generation(s) and {ddim_runs} DDIM; the tiny model "
                  "and decoder, not the full size; ") + "peak_memory_mib: see memory_metric (GPU: allocator peak "
                  "over the solver's runs, weights included; CPU: the largest growth of the resident set during "
                  "one run - VmHWM reset before the run minus VmRSS before it)",
        "environment": environment_info(device),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "entries": entries,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    path = write_results(a.name, payload, a.out)
    print("\n| latent | mode | solver | steps | runs | s/volume median | std | loop s | decode s | peak MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for e in entries:
        for r in e["results"]:
            print(f"| {e['latent']} | {e['mode']} | {r['name']} | {r['steps']} | {r['runs']} | "
                  f"{r['s_per_volume_median']:.3f} | {r['s_per_volume_std']:.3f} | {r['loop_s_median']:.3f} | "
                  f"{r['decode_s_median']:.3f} | {r['peak_memory_mib']:.1f} |")
        print(f"| {e['latent']} | {e['mode']} | DDPM/DDIM | | | {e['ratios']['ddpm_over_ddim_s_per_volume']:.2f}x | | "
              f"{e['ratios']['ddpm_over_ddim_loop']:.2f}x | | |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
