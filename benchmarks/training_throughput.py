"""Training throughput and memory: one process vs DDP vs DeepSpeed ZeRO-1/2/3 (+- CPU offload).

Every variant trains the same real recipe stage at the same global batch through the real engine
and launchers (``python -m bsynth_hpc.engine.run`` for one process, ``torchrun`` for several), and
the numbers come from the run's own metrics.jsonl. Stages (``--stages``), each from its packaged tiny
config (``bsynth_hpc.configs``) with only the benchmark's engine settings changed:

* ``wfdm-vae`` (configs/wfdm-vae_tiny.yaml): the WF-VAE + PatchGAN of stage A, two optimizers (two
  DeepSpeed engines), the discriminator on from step 0, on a synthetic volume store (``--shape``);
* ``dit3d`` (configs/dit3d_tiny.yaml): the class-conditional DiT-3D of stage B, one optimizer, on a
  synthetic labelled latent cache (``--latent``);
* ``wfdm-ldm`` (configs/wfdm-ldm_tiny.yaml, not in the default set): the conditional 3D U-Net of stage B
  on the same latent cache.

Per row:

* ``step_time_s``: median wall time of an optimizer step after the warm-up steps;
* ``volumes_per_s``: global batch / step time;
* ``cpu_s_per_step_all_ranks``: median CPU seconds one step costs, summed over ranks - the work a
  variant does, much less sensitive than wall time to other jobs on a shared machine;
* ``peak_mem_mb`` per rank: CUDA allocator peak on GPU, peak RSS on CPU (on CPU this includes
  the interpreter, torch and - for ZeRO - DeepSpeed itself, a few hundred MB);
* ``train_state_mb`` per rank: bytes of weights + optimizer (fp32 masters and Adam moments)
  the rank holds on its training device - what ZeRO shards, measured from the tensors
  themselves; ``train_state_host_mb``: what offload moved to CPU memory (on a CPU-only run the
  device is the CPU, so offload moves nothing and costs only copies).

On a single GPU it also runs the memory planner for 6/8/12/16/24 GB budgets and records its
predicted peak against the measured one (``--planner-shape`` volumes, ``--planner-latent`` latents).
Results: benchmarks/results/local/training_throughput_<device>.json (``--out benchmarks/results`` to
publish).

    python -m benchmarks.training_throughput [--world-size 2] [--steps 10] [--shape 32 32 32]
    bsynth bench training -- --variants ddp zero2 --stages dit3d
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import yaml

from benchmarks.common import environment_info, write_results
from benchmarks.synthetic import CLASSES, build_latent_cache, build_store
from bsynth_hpc.engine.config import packaged_config
from bsynth_hpc.engine.planner import STANDARD_BUDGETS

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "single": ["engine.backend=single"],
    "ddp": ["engine.backend=ddp"],
    "zero1": ["engine.backend=deepspeed", "engine.zero_stage=1"],
    "zero2": ["engine.backend=deepspeed", "engine.zero_stage=2"],
    "zero3": ["engine.backend=deepspeed", "engine.zero_stage=3"],
    "zero2-offload": ["engine.backend=deepspeed", "engine.zero_stage=2", "engine.offload_optimizer=cpu"],
    "zero3-offload": ["engine.backend=deepspeed", "engine.zero_stage=3", "engine.offload_optimizer=cpu",
                      "engine.offload_param=cpu"],
}
STAGES: dict[str, dict[str, Any]] = {
    # stage -> its packaged tiny config, the input it trains on, and the recipe fields the benchmark changes
    "wfdm-vae": {"config": "wfdm-vae_tiny.yaml", "input": "volumes", "recipe": {"disc_start": 0}},
    "dit3d": {"config": "dit3d_tiny.yaml", "input": "latents", "recipe": {"classes": CLASSES}},
    "wfdm-ldm": {"config": "wfdm-ldm_tiny.yaml", "input": "latents", "recipe": {}},
}
DEFAULT_STAGES = ("wfdm-vae", "dit3d")
BENCH_ENGINE = {"val_every": 0, "ckpt_every": 0, "log_every": 1, "progress": False, "tensorboard": False,
                "export_at_end": False, "seed": 0, "schedule": {"name": "constant"}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bsynth bench training", description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=list(STAGES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--world-size", type=int, default=None, help="ranks for the distributed variants "
                                                                  "(default: GPUs, or 2 on CPU)")
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], help="volume shape of the synthetic store")
    p.add_argument("--latent", type=int, nargs=4, default=[4, 8, 8, 8], metavar=("C", "X", "Y", "Z"),
                   help="latent shape of the synthetic latent cache (stage-B stages)")
    p.add_argument("--steps", type=int, default=10, help="measured steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1,
                   help="run the variants round-robin this many times and keep each one's fastest run (shared "
                        "machines: the least disturbed measurement)")
    p.add_argument("--planner-shape", type=int, nargs=3, default=[96, 112, 80],
                   help="volume shape for the single-GPU memory-planner runs")
    p.add_argument("--planner-latent", type=int, nargs=4, default=[4, 24, 28, 20], metavar=("C", "X", "Y", "Z"),
                   help="latent shape for the planner runs of the stage-B stages (the f = 4 latents of 96x112x80)")
    p.add_argument("--no-planner", action="store_true")
    p.add_argument("--cpu", action="store_true", help="benchmark on CPU even when a GPU is present")
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--keep", help="keep the store and run folders here")
    return p.parse_args(list(argv) if argv is not None else None)


# ---------------------------------------------------------------------------- inputs
def build_inputs(work: Path, stages: Sequence[str], shape: Sequence[int], latent: Sequence[int], tag: str = "",
                 n_subjects: int = 16) -> dict[str, Path]:
    """The synthetic input each kind of stage needs (built once per kind): ``volumes`` a store, ``latents`` a cache."""
    kinds = {STAGES[s]["input"] for s in stages}
    out: dict[str, Path] = {}
    if "volumes" in kinds:
        out["volumes"] = build_store(work / f"store{tag}.zarr", shape, n_subjects=n_subjects)
    if "latents" in kinds:
        out["latents"] = build_latent_cache(work / f"latents{tag}.zarr", latent, n=max(8, n_subjects // 2))
    return out


def write_config(path: Path, stage: str, max_steps: int, inputs: dict[str, Path]) -> Path:
    """The stage's packaged tiny config with the benchmark's engine settings (no validation, checkpoints,
    export or schedule) and its synthetic input."""
    spec = STAGES[stage]
    cfg = yaml.safe_load(packaged_config(spec["config"]).read_text())
    cfg["engine"] = {**cfg.get("engine", {}), **BENCH_ENGINE, "max_steps": max_steps}
    cfg["data"] = {**cfg.get("data", {}), "num_workers": 1, "val_split": None}
    cfg["recipe"] = {**cfg.get("recipe", {}), **spec["recipe"]}
    if spec["input"] == "latents":
        cfg["recipe"]["latents"] = str(inputs["latents"])
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def store_for(stage: str, inputs: dict[str, Path]) -> Path | None:
    """The ``--store`` of a stage (stage-B stages read their latent cache from the config instead)."""
    return inputs["volumes"] if STAGES[stage]["input"] == "volumes" else None


def child_env(device: str, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "BSYNTH_FAULTS")}
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
                "TRITON_INTERPRET": "0"})
    if device == "cpu":
        env["BSYNTH_DISABLE_TRITON"] = "1"  # the Triton kernels run on GPUs; the CPU uses the references
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- one variant
def run_engine(stage: str, config: Path, run_dir: Path, variant: str, world: int, global_batch: int, warmup: int,
               device: str, timeout: float, store: Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``stage`` from ``config`` with ``variant``'s backend through the real engine (one process, or
    ``world`` ranks under torchrun) and read step time, CPU time, peak memory and train-state bytes per rank
    from the run's metrics.jsonl (steps after ``warmup``). Shared by the other training benchmarks
    (benchmarks/dit3d_training.py)."""
    ranks = 1 if variant == "single" else world
    micro = global_batch // ranks
    shutil.rmtree(run_dir, ignore_errors=True)
    train = ["-m", "bsynth_hpc.engine.run", stage, "--config", str(config), *(["--store", str(store)] if store else []),
             "--run-dir", str(run_dir), f"engine.micro_batch={micro}", f"engine.device={device}", *VARIANTS[variant],
             *overrides]
    if ranks == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
               str(_free_port()), *train]
    threads = max(1, (os.cpu_count() or 1) // ranks) if device == "cpu" else 4
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(device, threads), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    result: dict[str, Any] = {"stage": stage, "variant": variant, "world_size": ranks, "micro_batch": micro,
                              "global_batch": micro * ranks, "wall_s": round(time.perf_counter() - t0, 1),
                              "threads_per_rank": threads}
    if proc.returncode != 0:
        result.update(status="failed", exit_code=proc.returncode, error=(proc.stderr or proc.stdout)[-2000:])
        return result
    records = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "step_time_s" in r]
    timed = [r["step_time_s"] for r in train_records if r["step"] > warmup]
    loss_key = next(k for k in train_records[-1] if k.startswith("loss/") and k.count("/") == 1)
    median = statistics.median(timed)
    cpu = [sum(r["cpu_s_per_step"]) for r in train_records if r["step"] > warmup and "cpu_s_per_step" in r]
    result.update(
        status="ok", steps_timed=len(timed), step_time_s=round(median, 4),
        step_time_mean_s=round(statistics.fmean(timed), 4), volumes_per_s=round(micro * ranks / median, 3),
        cpu_s_per_step_all_ranks=round(statistics.median(cpu), 4) if cpu else None,
        peak_mem_mb_per_rank=[round(x, 1) for x in train_records[-1]["peak_mem_mb"]],
        train_state_mb_per_rank=[round(x, 3) for x in train_records[0].get("train_state_mb", [])],
        train_state_host_mb_per_rank=[round(x, 3) for x in train_records[0].get("train_state_host_mb", [])],
        final_loss=train_records[-1][loss_key], loss_key=loss_key)
    return result


def keep_fastest(best: dict[str, dict[str, Any]], key: str, r: dict[str, Any]) -> None:
    """Round-robin repeats: keep each variant's fastest ok run in ``best[key]`` and every run's step time."""
    prev = best.get(key)
    times = (prev or {}).get("repeat_step_times_s", []) + [r.get("step_time_s")]
    if prev is None or (r["status"] == "ok" and (prev["status"] != "ok" or r["step_time_s"] < prev["step_time_s"])):
        best[key] = r
    best[key]["repeat_step_times_s"] = times


def run_variant(stage: str, variant: str, inputs: dict[str, Path], work: Path, world: int, global_batch: int,
                steps: int, warmup: int, device: str, timeout: float) -> dict[str, Any]:
    config = write_config(work / f"{stage}.yaml", stage, warmup + steps, inputs)
    return run_engine(stage, config, work / f"{stage}-{variant}", variant, world, global_batch, warmup, device,
                      timeout, store=store_for(stage, inputs))


# ---------------------------------------------------------------------------- memory planner (GPU)
def run_planner(stage: str, inputs: dict[str, Path], work: Path, budgets: Sequence[float],
                timeout: float) -> list[dict[str, Any]]:
    """Single-GPU runs with --gpu-mem-gb: the planner's predicted peak vs the measured allocator peak."""
    out = []
    config = write_config(work / f"{stage}-plan.yaml", stage, 4, inputs)
    store = store_for(stage, inputs)
    for budget in budgets:
        run_dir = work / f"{stage}-plan-{budget}"
        cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", stage, "--config", str(config),
               *(["--store", str(store)] if store else []), "--run-dir", str(run_dir), "--gpu-mem-gb", str(budget),
               "engine.micro_batch=4"]
        proc = subprocess.run(cmd, env=child_env("cuda", 4), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
        text = proc.stdout + proc.stderr
        entry: dict[str, Any] = {"stage": stage, "budget_gb": budget, "exit_code": proc.returncode}
        plan = re.findall(r"^\s+-> (.*)$", text, flags=re.M)
        match = re.search(r"predicted peak ([\d.]+) GiB, measured ([\d.]+) GiB", text)
        if plan:
            entry["plan"] = plan[0].strip()
        if match:
            entry.update(predicted_gib=float(match.group(1)), measured_gib=float(match.group(2)))
        if proc.returncode != 0:
            entry["message"] = text.strip().splitlines()[-1][:500] if text.strip() else ""
        out.append(entry)
        print(f"  planner {stage} {budget:>4} GB: {entry.get('plan', entry.get('message', ''))} "
              f"{'measured %.2f GiB' % entry['measured_gib'] if 'measured_gib' in entry else ''}", flush=True)
    return out


# ---------------------------------------------------------------------------- main
def print_engine_row(r: dict[str, Any], head: str) -> None:
    """One console line for a ``run_engine`` row (shared with the DiT-3D training benchmark)."""
    if r["status"] != "ok":
        print(f"{head} FAILED (exit {r['exit_code']}): {str(r.get('error') or '')[-400:]}", flush=True)
        return
    print(f"{head} step {r['step_time_s'] * 1e3:9.1f} ms  cpu {r['cpu_s_per_step_all_ranks'] or 0:7.3f} s  "
          f"{r['volumes_per_s']:7.2f} vol/s  peak "
          f"{max(r['peak_mem_mb_per_rank']):8.1f} MB/rank  state {max(r['train_state_mb_per_rank'] or [0]):7.3f} "
          "MB/rank", flush=True)


def _print_row(r: dict[str, Any], repeat: int) -> None:
    print_engine_row(r, f"  [{repeat}] {r['stage']:15s} {r['variant']:14s}")


def _ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage in {r["stage"] for r in results}:
        rows = {r["variant"]: r for r in results if r["stage"] == stage and r.get("status") == "ok"}
        if "ddp" not in rows:
            continue
        base = rows["ddp"]
        out[stage] = {f"{v}_step_time_vs_ddp": round(r["step_time_s"] / base["step_time_s"], 3)
                      for v, r in rows.items() if v != "ddp"}
        if base.get("cpu_s_per_step_all_ranks"):
            out[stage].update({f"{v}_cpu_per_step_vs_ddp": round(r["cpu_s_per_step_all_ranks"]
                                                                  / base["cpu_s_per_step_all_ranks"], 3)
                               for v, r in rows.items() if v != "ddp" and r.get("cpu_s_per_step_all_ranks")})
        for v, r in rows.items():
            if r.get("train_state_mb_per_rank") and base.get("train_state_mb_per_rank"):
                out[stage][f"{v}_train_state_vs_ddp"] = round(
                    max(r["train_state_mb_per_rank"]) / max(base["train_state_mb_per_rank"]), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    world = args.world_size or (torch.cuda.device_count() if device == "cuda" else 2)
    if args.global_batch % world:
        print(f"--global-batch {args.global_batch} must be a multiple of the world size {world}", file=sys.stderr)
        return 2
    work_ctx = tempfile.TemporaryDirectory(prefix="bsynth-bench-train-") if not args.keep else None
    work = Path(args.keep or work_ctx.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = build_inputs(work, args.stages, args.shape, args.latent)
        results = []
        print(f"training throughput on {device}: {world} ranks for distributed variants, global batch "
              f"{args.global_batch}, volumes {'x'.join(map(str, args.shape))}, latents "
              f"{'x'.join(map(str, args.latent))}", flush=True)
        for stage in args.stages:
            best: dict[str, dict[str, Any]] = {}
            for repeat in range(args.repeats):
                for variant in args.variants:
                    if variant == "ddp" and world < 2:
                        continue
                    r = run_variant(stage, variant, inputs, work, world, args.global_batch, args.steps, args.warmup,
                                    device, args.timeout)
                    keep_fastest(best, variant, r)
                    _print_row(r, repeat)
            results.extend(best.values())
        planner: list[dict[str, Any]] = []
        if device == "cuda" and not args.no_planner:
            plan_inputs = build_inputs(work, args.stages, args.planner_shape, args.planner_latent, tag="_plan",
                                       n_subjects=4)
            for stage in args.stages:
                planner += run_planner(stage, plan_inputs, work, STANDARD_BUDGETS, args.timeout)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    payload = {
        "benchmark": "training_throughput",
        "environment": environment_info(device),
        "settings": {"world_size": world, "global_batch": args.global_batch, "shape": args.shape,
                     "latent": args.latent, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                     "stages": {s: STAGES[s] for s in args.stages}, "engine": BENCH_ENGINE, "variants": VARIANTS},
        "notes": ("step_time_s: median over the measured steps (the fastest of the repeats); cpu_s_per_step_all_ranks: "
                  "median CPU seconds per step summed over ranks; peak_mem_mb: CUDA allocator peak on GPU, process "
                  "peak RSS on CPU (includes the interpreter, torch and DeepSpeed); train_state_mb: weights + "
                  "optimizer state bytes per rank (what ZeRO shards)."),
        "results": results,
        "ratios": _ratios(results),
        "planner": planner,
    }
    path = write_results("training_throughput", payload, args.out)
    print(f"results: {path}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
