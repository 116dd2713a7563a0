"""DiT-3D training step time and memory: window vs global attention, DDP vs DeepSpeed ZeRO-1/2 (seed 000).

For each latent size (000's 4x28x34x28 and 4x48x56x40), each attention mode and each backend, the
``dit3d`` stage trains on a synthetic labelled latent cache (healthy / TLE, random latents) at the
same global batch through the real engine and launchers, via the training-throughput benchmark's
``run_engine`` (``torchrun`` with ``--world-size`` ranks; gloo on CPU, NCCL on GPU). Numbers come
from the run's own metrics.jsonl:

* ``step_time_s``: median optimizer-step wall time after the warm-up steps; ``volumes_per_s``;
* ``cpu_s_per_step_all_ranks``: median CPU seconds per step summed over ranks (less sensitive than
  wall time to other jobs on a shared machine);
* ``peak_mem_mb_per_rank``: CUDA allocator peak on GPU; on CPU the process's peak RSS, which includes
  the interpreter, torch and DeepSpeed (about 1.2 GB) - compare differences, not absolute values;
* ``train_state_mb_per_rank``: weights + optimizer bytes a rank holds (what ZeRO shards);
* ``attention.<latent>.<mode>.fwd_bwd_probe``: one forward + backward of the DiT alone at the micro batch
  in a fresh process (CUDA allocator peak growth; CPU: VmHWM growth) - the activation memory that the
  whole-process CPU peak above hides.

On one GPU the default variants are single / ZeRO-1 / ZeRO-2 (DDP needs 2 ranks; ZeRO on one rank shards
nothing, so those rows show the wrapper's cost).

Attention modes (``recipe.window_blocks``): ``global`` (no window block: every block attends over
all tokens), ``interleave`` (the config's blocks 0, 3, 6, 9 that exist; shifted every second one),
``window`` (every block windowed). ``attention`` in the JSON gives the shape facts to read the
numbers with: token grid, tokens per volume, window (clipped to the grid), padded grid, windows and
tokens per window, and the attention-matmul FLOPs/score elements per volume of one forward.

Models: ``--size full`` is configs/dit3d_tle.yaml's model (depth 12, hidden 384, 6 heads, patch
(4, 2, 4), window (4, 4, 4); bf16 on GPU); ``--size tiny`` keeps patch/window/latents but is depth 4,
hidden 96, 4 heads (fp32) so that it runs on 2 CPU cores. Ratios (window/global per backend,
ZeRO/DDP per attention mode) come from rows measured in the same run.

    python -m benchmarks.dit3d_training                       # GPU: full size; CPU: tiny
    python -m benchmarks.dit3d_training --size tiny --modes global window --steps 4
    bsynth bench dit3d training -- --latents 4x28x34x28 --variants ddp zero2
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, write_results  # noqa: E402
from benchmarks.synthetic import CLASSES, build_latent_cache  # noqa: E402
from bsynth_hpc.engine.config import packaged_config  # noqa: E402
from benchmarks.training_throughput import VARIANTS, child_env, keep_fastest, print_engine_row, run_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LATENTS = {"4x28x34x28": (4, 28, 34, 28), "4x48x56x40": (4, 48, 56, 40)}
"""000's VAE-GAN latents of 112x136x112 volumes, and the f = 4 latents of 192x224x160 volumes."""
TINY = {"depth": 4, "hidden_size": 96, "num_heads": 4}
MODES = ("global", "interleave", "window")
BACKENDS = ("ddp", "zero1", "zero2")


def _tle_recipe() -> dict[str, Any]:
    return yaml.safe_load(packaged_config("dit3d_tle.yaml").read_text())["recipe"]


def model_settings(size: str) -> dict[str, Any]:
    """The DiT-3D fields of configs/dit3d_tle.yaml (``full``) or the tiny CPU model (``tiny``)."""
    r = _tle_recipe()
    out = {k: r[k] for k in ("depth", "hidden_size", "num_heads", "patch_size", "window_size", "window_blocks")}
    out.update(mlp_ratio=float(r.get("mlp_ratio", 4.0)), class_conditioning=r.get("class_conditioning", "token"))
    if size == "tiny":
        out.update(TINY)
    out["window_blocks"] = [i for i in out["window_blocks"] if i < out["depth"]]
    return out


def window_blocks(mode: str, model: dict[str, Any]) -> list[int]:
    if mode == "global":
        return []
    if mode == "interleave":
        return list(model["window_blocks"])
    if mode == "window":
        return list(range(model["depth"]))
    raise ValueError(f"unknown attention mode {mode!r}: use one of {', '.join(MODES)}")


def attention_facts(latent: Sequence[int], model: dict[str, Any], blocks: Sequence[int]) -> dict[str, Any]:
    """Token/window geometry and attention-matmul cost (QK^T + AV, one forward, one volume) of a mode."""
    grid = [s // p for s, p in zip(latent[1:], model["patch_size"])]
    n_tok = math.prod(grid)
    extra = 1 if model["class_conditioning"] == "token" else 0
    dim, depth = int(model["hidden_size"]), int(model["depth"])
    window = [min(w, g) for w, g in zip(model["window_size"], grid)]   # clipped like WindowedAttention
    padded = [-(-g // w) * w for g, w in zip(grid, window)]
    n_win = math.prod(p // w for p, w in zip(padded, window))
    tpw = math.prod(window)
    heads = int(model["num_heads"])
    # score elements per head: global = (L + K)^2; window = windows x tpw^2 (padding included, masked) + the
    # class-token rows/columns (each patch token reads the K appended tokens, the K tokens read all L + K)
    global_scores = (n_tok + extra) ** 2
    window_scores = n_win * tpw ** 2 + n_tok * extra + extra * (n_tok + extra)
    n_window_blocks = len(blocks)
    scores = n_window_blocks * window_scores + (depth - n_window_blocks) * global_scores
    # linear layers per block: qkv 3D^2 + proj D^2 + MLP 2 * r * D^2 (+ adaLN, per sample not per token)
    linear_flops = 2 * (n_tok + extra) * depth * (4 + 2 * float(model["mlp_ratio"])) * dim * dim
    attn_flops = 4 * scores * dim   # QK^T and AV: 2 FLOPs x head_dim per score element, summed over heads
    return {
        "token_grid": grid, "tokens_per_volume": n_tok, "appended_tokens": extra, "window_size": window,
        "padded_grid": padded, "windows_per_volume": n_win, "tokens_per_window": tpw,
        "window_blocks": list(blocks), "global_blocks": depth - n_window_blocks, "heads": heads,
        "score_elements_per_head_global_block": global_scores,
        "score_elements_per_head_window_block": window_scores,
        "attention_matmul_gflop_fwd_per_volume": round(attn_flops / 1e9, 4),
        "linear_gflop_fwd_per_volume": round(linear_flops / 1e9, 4),
        "attention_share_of_fwd_flops": round(attn_flops / (attn_flops + linear_flops), 4),
        "score_bytes_per_global_block_fp32": 4 * heads * global_scores,
    }


def count_parameters(latent: Sequence[int], model: dict[str, Any], blocks: Sequence[int]) -> int:
    from bsynth_hpc.models.dit3d import build_dit3d

    with torch.device("meta"):
        net = build_dit3d("dit3d-tle", input_size=list(latent[1:]), in_channels=latent[0],
                          **{**model, "window_blocks": list(blocks)})
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------- inputs
def write_config(path: Path, latents: Path, model: dict[str, Any], blocks: Sequence[int], max_steps: int,
                 device: str) -> Path:
    r = _tle_recipe()
    cfg = {"stage": "dit3d",
           "engine": {"max_steps": max_steps, "val_every": 0, "ckpt_every": 0, "log_every": 1, "progress": False,
                      "tensorboard": False, "export_at_end": False, "ema_decay": 0.9999, "seed": 0,
                      "clip_grad": 1.0, "precision": "bf16" if device == "cuda" else "fp32",
                      "schedule": {"name": "constant"}},
           "data": {"num_workers": 2 if device == "cuda" else 0, "train_split": "train", "val_split": None},
           "recipe": {"latents": str(latents), "classes": CLASSES, "balanced": True, "preset": "dit3d-tle",
                      **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in model.items()
                         if k != "window_blocks"},
                      "window_blocks": list(blocks), "cfg_dropout_prob": 0.1, "lr": float(r["lr"]),
                      "diffusion": r["diffusion"]}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- activation-memory probe
def _vm_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_cpu_peak() -> bool:
    """Reset this process's peak resident set (VmHWM) to its current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _probe_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One forward + backward of the DiT alone (no optimizer, no engine) in a fresh process: the memory the
    step's activations (attention scores included) add on top of the weights. CUDA: allocator peak minus
    what was allocated before. CPU (Linux): the peak resident set during the step (VmHWM, reset just before
    through /proc/self/clear_refs) minus the resident set before it; glibc may serve part of the step from
    memory freed earlier, so it is a lower bound. (ru_maxrss would not do: a child inherits its parent's.)"""
    from bsynth_hpc.models.dit3d import build_dit3d

    device = torch.device(spec["device"])
    latent = spec["latent"]
    torch.manual_seed(0)
    net = build_dit3d("dit3d-tle", input_size=list(latent[1:]), in_channels=latent[0],
                      **{**spec["model"], "window_blocks": spec["blocks"]}).to(device)
    x = torch.randn(spec["micro_batch"], *latent, device=device)
    t = torch.randint(0, 1000, (spec["micro_batch"],), device=device)
    y = torch.zeros(spec["micro_batch"], dtype=torch.long, device=device)
    gpu = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)
    reset = False
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset = reset_cpu_peak()
        base = (_vm_kib("VmRSS") or 0) * 1024
    t0 = time.perf_counter()
    with amp:
        out = net(x, t, y)
    out.float().square().mean().backward()
    if gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"fwd_bwd_s": round(seconds, 4), "micro_batch": spec["micro_batch"],
                           "weights_mb": round(sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20, 2)}
    if gpu:
        row.update(fwd_bwd_peak_mb=round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1),
                   memory_metric="cuda_max_memory_allocated_minus_before")
    elif reset and base:
        row.update(fwd_bwd_peak_mb=round(((_vm_kib("VmHWM") or 0) * 1024 - base) / 2**20, 1),
                   memory_metric="cpu_vmhwm_minus_rss_before (lower bound)", rss_before_mb=round(base / 2**20, 1))
    else:
        row.update(fwd_bwd_peak_mb=None, memory_metric="unavailable (no /proc/self/clear_refs)")
    return row


def probe_fwd_bwd(latent: Sequence[int], model: dict[str, Any], blocks: Sequence[int], micro_batch: int, device: str,
                  timeout: float) -> dict[str, Any]:
    """:func:`_probe_main` in a fresh process (CPU: one thread, the PyTorch reference kernels)."""
    import json
    import subprocess

    spec = {"latent": list(latent), "model": model, "blocks": list(blocks), "micro_batch": micro_batch,
            "device": device}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.dit3d_training", "--_probe", json.dumps(spec)],
                          env=child_env(device, 1), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"status": "failed", "error": (proc.stderr or proc.stdout)[-1000:]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------------------- ratios
def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Side-by-side ratios from rows of the same run: each mode vs global (per size and backend) and each
    ZeRO stage vs DDP, or vs one process where no DDP row exists (per size and mode). Each entry names its
    numerator and baseline rows."""
    ok = {(r["latent"], r["mode"], r["variant"]): r for r in results if r.get("status") == "ok"}
    out: list[dict[str, Any]] = []

    def add(kind: str, num: tuple, base: tuple) -> None:
        a, b = ok[num], ok[base]
        out.append({
            "kind": kind, "latent": num[0], "numerator": {"mode": num[1], "variant": num[2]},
            "baseline": {"mode": base[1], "variant": base[2]},
            "step_time": _ratio(a["step_time_s"], b["step_time_s"]),
            "cpu_per_step": _ratio(a.get("cpu_s_per_step_all_ranks"), b.get("cpu_s_per_step_all_ranks")),
            "peak_mem": _ratio(max(a["peak_mem_mb_per_rank"]), max(b["peak_mem_mb_per_rank"])),
            "train_state": _ratio(max(a["train_state_mb_per_rank"] or [0]), max(b["train_state_mb_per_rank"] or [0])),
        })

    for (lat, mode, var) in ok:
        if mode != "global" and (lat, "global", var) in ok:
            add("attention_vs_global", (lat, mode, var), (lat, "global", var))
        base = "ddp" if (lat, mode, "ddp") in ok else "single"   # one GPU: ZeRO vs one process
        if var not in ("ddp", base) and (lat, mode, base) in ok:
            add(f"backend_vs_{base}", (lat, mode, var), (lat, mode, base))
    return out


# ---------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bsynth bench dit3d training", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "full"], default=None, help="model size (default: full on GPU, "
                                                                          "tiny on CPU)")
    p.add_argument("--latents", nargs="+", default=list(LATENTS), help="latent sizes CxXxYxZ (default: "
                                                                       + " and ".join(LATENTS) + ")")
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="attention modes (default: all three on GPU; global and window on CPU)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: ddp zero1 zero2 with 2+ ranks; single zero1 zero2 on one GPU (DDP needs 2 ranks, "
                        "and ZeRO on one rank shards nothing: its rows show the wrapper's overhead)")
    p.add_argument("--world-size", type=int, default=None, help="ranks (default: GPUs, or 2 on CPU)")
    p.add_argument("--global-batch", type=int, default=None, help="default: 4 x ranks on GPU, 2 on CPU")
    p.add_argument("--steps", type=int, default=None, help="measured steps after --warmup (default 20 GPU, 4 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="default 5 GPU, 2 CPU")
    p.add_argument("--repeats", type=int, default=1, help="round-robin repeats; each row keeps its fastest run")
    p.add_argument("--cpu", action="store_true", help="benchmark on CPU even when a GPU is present")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="dit3d_training", help="results file stem")
    p.add_argument("--keep", help="keep the latent caches and run folders here")
    p.add_argument("--no-probe", action="store_true", help="skip the forward+backward activation-memory probe")
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    return p.parse_args(list(argv) if argv is not None else None)


def _parse_latent(text: str) -> tuple[int, ...]:
    dims = tuple(int(v) for v in text.lower().split("x"))
    if len(dims) != 4 or min(dims) < 1:
        raise SystemExit(f"--latents {text}: expected CxXxYxZ, e.g. 4x28x34x28")
    return dims


def _print_row(r: dict[str, Any], repeat: int) -> None:
    print_engine_row(r, f"  [{repeat}] {r['latent']:11s} {r['mode']:10s} {r['variant']:6s}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._probe:
        import json

        print(json.dumps(_probe_main(json.loads(args._probe))), flush=True)
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    gpu = device == "cuda"
    size = args.size or ("full" if gpu else "tiny")
    modes = args.modes or (list(MODES) if gpu else ["global", "window"])
    world = args.world_size or (torch.cuda.device_count() if gpu else 2)
    global_batch = args.global_batch or (4 * world if gpu else 2)
    steps = args.steps if args.steps is not None else (20 if gpu else 4)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    args.variants = args.variants or (list(BACKENDS) if world >= 2 else ["single", "zero1", "zero2"])
    if global_batch % world:
        print(f"--global-batch {global_batch} must be a multiple of the world size {world}", file=sys.stderr)
        return 2
    latents = {name: _parse_latent(name) for name in args.latents}
    model = model_settings(size)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="bsynth-bench-dit3d-") if not args.keep else None
    work = Path(args.keep or work_ctx.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    print(f"dit3d training on {device}: size {size} ({model['depth']} blocks, hidden {model['hidden_size']}), "
          f"{world} ranks, global batch {global_batch}, latents {', '.join(latents)}, modes {modes}, "
          f"variants {args.variants}; load {load_before}", flush=True)
    results: list[dict[str, Any]] = []
    attention: dict[str, dict[str, Any]] = {}
    env = environment_info(device)

    def save_partial(rows: list[dict[str, Any]]) -> None:
        """The rows and probes so far (``complete: false``): a run killed by a time budget keeps them."""
        write_results(args.name, {"benchmark": "dit3d_training", "complete": False, "environment": env,
                                  "attention": attention, "results": rows}, args.out)

    try:
        for lat_name, latent in latents.items():
            cache = build_latent_cache(work / f"latents_{lat_name}.zarr", latent)
            attention[lat_name] = {}
            for mode in modes:
                blocks = window_blocks(mode, model)
                attention[lat_name][mode] = {**attention_facts(latent, model, blocks),
                                             "parameters": count_parameters(latent, model, blocks)}
                if not args.no_probe:
                    probe = probe_fwd_bwd(latent, model, blocks, global_batch // world, device, args.timeout)
                    attention[lat_name][mode]["fwd_bwd_probe"] = probe
                    print(f"  probe {lat_name} {mode}: fwd+bwd {probe.get('fwd_bwd_peak_mb')} MB in "
                          f"{probe.get('fwd_bwd_s')} s ({probe.get('memory_metric', probe.get('error'))})", flush=True)
                    save_partial(results)
            best: dict[str, dict[str, Any]] = {}
            for repeat in range(args.repeats):
                for mode in modes:          # modes and backends round-robin inside one latent size
                    blocks = window_blocks(mode, model)
                    config = write_config(work / f"dit3d_{lat_name}_{mode}.yaml", cache, model, blocks,
                                          warmup + steps, device)
                    for variant in args.variants:
                        r = run_engine("dit3d", config, work / f"run_{lat_name}_{mode}_{variant}", variant, world,
                                       global_batch, warmup, device, args.timeout)
                        r.update(latent=lat_name, latent_shape=list(latent), mode=mode, window_blocks=blocks)
                        _print_row(r, repeat)
                        keep_fastest(best, f"{mode}/{variant}", r)
                        save_partial(results + list(best.values()))
            results.extend(best.values())
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    table = ratios(results)
    for lat_name, by_mode in attention.items():
        base = (by_mode.get("global") or {}).get("fwd_bwd_probe") or {}
        for mode, facts in by_mode.items():
            probe = facts.get("fwd_bwd_probe") or {}
            if mode != "global" and probe.get("status") == "ok" and base.get("status") == "ok":
                table.append({"kind": "probe_attention_vs_global", "latent": lat_name,
                              "numerator": {"mode": mode, "variant": "probe"},
                              "baseline": {"mode": "global", "variant": "probe"},
                              "step_time": _ratio(probe["fwd_bwd_s"], base["fwd_bwd_s"]), "cpu_per_step": None,
                              "peak_mem": _ratio(probe["fwd_bwd_peak_mb"], base["fwd_bwd_peak_mb"]),
                              "train_state": None})
    payload = {
        "benchmark": "dit3d_training",
        "complete": True,
        "environment": env,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {"size": size, "model": model, "modes": {m: window_blocks(m, model) for m in modes},
                     "latents": {k: list(v) for k, v in latents.items()}, "variants": {v: VARIANTS[v]
                                                                                       for v in args.variants},
                     "world_size": world, "global_batch": global_batch, "steps": steps, "warmup": warmup,
                     "repeats": args.repeats, "precision": "bf16" if gpu else "fp32",
                     "data": "synthetic labelled latent cache (8 random N(0,1) latents, healthy/TLE)",
                     "kernels": "Triton window attention" if gpu else "PyTorch reference window attention "
                                                                       "(BSYNTH_DISABLE_TRITON=1)"},
        "notes": ("step_time_s: median over the measured steps (fastest of the repeats); cpu_s_per_step_all_ranks: "
                  "median CPU seconds per step summed over ranks; peak_mem_mb_per_rank: "
                  + ("CUDA allocator peak (torch.cuda.max_memory_allocated)" if gpu else
                     "process peak RSS (ru_maxrss) - includes the interpreter, torch and DeepSpeed, ~1.2 GB; "
                     "read differences") +
                  "; train_state_mb: weights + optimizer bytes per rank (what ZeRO shards). Ratios: numerator row / "
                  "baseline row of this run. attention: shape facts and attention-matmul cost per volume and "
                  "forward (window blocks: windows x tokens_per_window^2 score elements, padding included); "
                  "attention.<latent>.<mode>.fwd_bwd_probe: one forward + backward of the DiT alone at the micro "
                  "batch in a fresh process - the activation memory the engine's whole-process peak hides on CPU "
                  "(kind probe_attention_vs_global in ratios)."),
        "attention": attention,
        "results": results,
        "ratios": table,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    path = write_results(args.name, payload, args.out)
    print("\n| latent | mode | backend | step ms | vol/s | CPU s/step | peak MB/rank | state MB/rank |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["status"] == "ok":
            print(f"| {r['latent']} | {r['mode']} | {r['variant']} | {r['step_time_s'] * 1e3:.1f} | "
                  f"{r['volumes_per_s']:.2f} | {r['cpu_s_per_step_all_ranks'] or 0:.3f} | "
                  f"{max(r['peak_mem_mb_per_rank']):.0f} | {max(r['train_state_mb_per_rank'] or [0]):.2f} |")
    print("\n| latent | ratio | numerator | baseline | step time | CPU/step | peak mem | train state |\n"
          "|---|---|---|---|---|---|---|---|")
    for e in table:
        print(f"| {e['latent']} | {e['kind']} | {e['numerator']['mode']}/{e['numerator']['variant']} | "
              f"{e['baseline']['mode']}/{e['baseline']['variant']} | {e['step_time']} | {e['cpu_per_step']} | "
              f"{e['peak_mem']} | {e['train_state']} |")
    print(f"results: {path}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
