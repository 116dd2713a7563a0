"""slice2d throughput and the 6 GB memory proof (issue 17 Deliver 6; seed 001 reports ~5 s per DDIM-50 image on
an RTX 3060 6 GB).

For each seed's full configuration (001: slice001 VAE 128^2 batch 32, slice001_unet on 8x16^2 batch 16;
004: slice004 VAE 256^2 batch 16, slice004_unet on 8x32^2 batch 16), from the packaged configs:

* training throughput (slices/s) of one step of the real stage (``Slice2dVAEStage`` / ``Slice2dLDMStage``
  loss + backward + AdamW step, AMP in the config's precision on CUDA, fp32 on CPU), synthetic inputs;
* seconds per DDIM-50 sample (batch 1: the latent loop + decoding, as a user samples one slice);
* memory: the engine planner's estimate (``bsynth_hpc.engine.planner``: static 16 P bytes for fp32 weights,
  gradients and Adam moments + micro_batch x the activation peak of one slice, measured by the planner's
  MemTracker on the stage's real loss and backward) against its 6 GB usable budget, and on CUDA the measured
  peak (``torch.cuda.max_memory_allocated``) of a training step at the full micro-batch.

    python -m benchmarks.slice2d_throughput                 # CUDA if present, else CPU
    bsynth bench slice2d-throughput --seeds 001 --iters 5

Timings measured on a loaded CPU mean nothing: the result file records the device; run on an idle machine.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment_info, synchronize, time_fn, write_results  # noqa: E402
from bsynth_hpc.data.latent_cache import LatentCache  # noqa: E402
from bsynth_hpc.data.metadata import NUM_FIELDS  # noqa: E402
from bsynth_hpc.diffusion import sample  # noqa: E402
from bsynth_hpc.engine.config import load_run_config  # noqa: E402
from bsynth_hpc.engine.planner import GIB, RESERVE_GIB, USABLE_FRACTION, static_bytes  # noqa: E402
from bsynth_hpc.engine.planner import _memory_tracker  # noqa: E402  (the planner's frozen-safe MemTracker)
from bsynth_hpc.engine.registry import get_stage_class  # noqa: E402
from bsynth_hpc.engine.stage import StageInfo, StepContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROG = "bsynth bench slice2d-throughput"
SEEDS: dict[str, dict[str, str]] = {
    "001": {"vae": "slice2d-vae_001.yaml", "ldm": "slice2d-ldm_001.yaml"},
    "004": {"vae": "slice2d-vae_004.yaml", "ldm": "slice2d-ldm_004.yaml"},
}
BUDGET_GB = 6.0


def _stage(config_name: str, overrides: Sequence[str], latents: Path | None = None) -> tuple[Any, Any]:
    """(run config, stage) of a packaged config; the LDM stage gets a two-item latent cache of its geometry."""
    extra = [f"recipe.latents={latents}"] if latents is not None else []
    cfg = load_run_config(ROOT / "configs" / config_name, overrides=[*overrides, *extra])
    stage = get_stage_class(cfg.stage)(cfg.recipe, StageInfo(None, None, cfg.data, cfg.engine))
    return cfg, stage


def _fake_cache(path: Path, latent_shape: Sequence[int], labels: Sequence[str]) -> Path:
    """A written two-item latent cache (labels 0 and 1) so the LDM stage can be built without data."""
    cache = LatentCache.create(path, n=2, latent_shape=latent_shape, scale_factor=1.0, label_names=list(labels),
                               modalities=["FLAIR"], volume_shape=None)
    for i in range(2):
        cache.write(i, np.zeros(latent_shape, np.float32), volume_id=f"fake{i}", modality_id=3,
                    metadata=np.zeros(NUM_FIELDS), metadata_mask=np.zeros(NUM_FIELDS), label=i, split="train")
    return path


def _batch(stage: Any, shape: Sequence[int], m: int, device: torch.device, key: str) -> dict[str, Any]:
    x = torch.randn(m, *shape, device=device).clamp(-1, 1)
    return {key: x, "label": torch.arange(m, device=device) % 2, "sample_seed": torch.arange(m, device=device)}


def _ctx(models: dict[str, Any], phase: str, batch: dict[str, Any], device: torch.device, step: int = 10**6) -> Any:
    return StepContext(step, phase, models, device, batch["sample_seed"], {}, True, torch.float32)


def _amp(precision: str, device: torch.device) -> Any:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None and device.type == "cuda" \
        else contextlib.nullcontext()


def activation_bytes(stage: Any, shape: Sequence[int], key: str, device: torch.device, precision: str) -> int:
    """The planner's activation measure of one slice: peak ACT + TEMP bytes of the stage's loss and backward
    (torch MemTracker, as :func:`bsynth_hpc.engine.planner.measure_activation_bytes` does for 3D stages)."""
    phase = stage.phases()[0]
    models = {k: m.to(device).train() for k, m in stage.build_models().items()}
    for m in models.values():
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
    batch = _batch(stage, shape, 1, device, key)
    tracker = _memory_tracker()
    tracker.track_external(*models.values())
    with tracker:
        with _amp(precision, device):
            loss = stage.loss(phase.name, batch, _ctx(models, phase.name, batch, device))["loss"]
        loss.backward()
    peak = tracker.get_tracker_snapshot("peak")
    per_device = peak.get(device, next(iter(peak.values()))) if peak else {}
    return sum(int(v) for k, v in per_device.items() if getattr(k, "name", "") in ("ACT", "TEMP", "OTH"))


def memory_estimate(stage: Any, shape: Sequence[int], key: str, micro_batch: int, device: torch.device,
                    precision: str) -> dict[str, Any]:
    """The planner's prediction at the full micro-batch against the 6 GB card's usable budget."""
    params = sum(p.numel() for m in stage.build_models().values() for p in m.parameters())
    act = activation_bytes(stage, shape, key, device, precision)
    static = static_bytes(params, "none")
    predicted = static + micro_batch * act
    usable = int((BUDGET_GB * USABLE_FRACTION - RESERVE_GIB) * GIB)
    return {"params": params, "static_bytes": static, "activation_bytes_per_slice": act, "micro_batch": micro_batch,
            "predicted_peak_gib": round(predicted / GIB, 3), "budget_gb": BUDGET_GB,
            "usable_gib": round(usable / GIB, 3), "fits": bool(predicted <= usable),
            "measured_on": str(device), "precision": precision if device.type == "cuda" else "fp32"}


def train_step_rate(stage: Any, cfg: Any, shape: Sequence[int], key: str, device: torch.device, iters: int,
                    warmup: int) -> dict[str, Any]:
    """Slices/s of one optimizer step of the stage (AdamW, grad clip), and the CUDA peak at that batch."""
    phase = stage.phases()[0]
    torch.manual_seed(0)
    models = {k: m.to(device).train() for k, m in stage.build_models().items()}
    opt = phase.optimizer.build(models[phase.model].parameters())
    m = cfg.engine.micro_batch
    batch = _batch(stage, shape, m, device, key)
    step = {"k": 0}

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with _amp(cfg.engine.precision, device):
            loss = stage.loss(phase.name, batch, _ctx(models, phase.name, batch, device, step["k"]))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[phase.model].parameters(), cfg.engine.clip_grad)
        opt.step()
        step["k"] += 1

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time_fn(one, device, warmup=warmup, iters=iters)
    out = {"micro_batch": m, "ms_per_step": t["median_ms"], "slices_per_s": round(m / (t["median_ms"] / 1e3), 2)}
    if device.type == "cuda":
        out["measured_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def ddim_seconds_per_sample(vae_stage: Any, ldm_stage: Any, latent_shape: Sequence[int], image_shape: Sequence[int],
                            device: torch.device, steps: int, repeats: int) -> dict[str, Any]:
    """Seconds per DDIM sample at batch 1: the latent loop (``bsynth_hpc.diffusion.sample``) + decoding."""
    torch.manual_seed(0)
    unet = ldm_stage.build_denoiser().to(device).eval()
    vae = vae_stage.build_vae().to(device).eval()
    cond = {"class": torch.zeros(1, dtype=torch.long, device=device)} if ldm_stage.conditional else None
    uncond = unet.null_condition(1, device) if ldm_stage.conditional else None
    scale = 3.0 if ldm_stage.conditional else 1.0
    times = []
    with torch.inference_mode():
        for r in range(repeats + 1):
            synchronize(device)
            t0 = time.perf_counter()
            out = sample(lambda x, t, c: unet(x, t, c), (1, *latent_shape), ldm_stage.process, steps, solver="ddim",
                         generator=torch.Generator(device="cpu").manual_seed(r), cond=cond, uncond=uncond,
                         guidance_scale=scale, device=device)
            vae.decode(out.sample, tuple(image_shape))
            synchronize(device)
            if r:   # the first run warms up
                times.append(time.perf_counter() - t0)
    return {"steps": steps, "guidance": scale, "seconds_per_sample": round(float(np.median(times)), 4),
            "repeats": repeats}


def bench_seed(seed: str, device: torch.device, iters: int, warmup: int, steps: int, repeats: int,
               work: Path) -> dict[str, Any]:
    names = SEEDS[seed]
    vcfg, vae_stage = _stage(names["vae"], [])
    vae = vae_stage.build_vae()
    size = 128 if vae_stage.config.compressor == "slice001" else 256
    image = (1, size, size)
    latent = tuple(int(s) for s in vae.latent_shape((size, size)))
    cache = _fake_cache(work / f"latents_{seed}.zarr", latent, ("normal", "tumour"))
    lcfg, ldm_stage = _stage(names["ldm"], [], latents=cache)
    prec = lambda c: c.engine.precision if device.type == "cuda" else "fp32"  # noqa: E731
    print(f"[{PROG}] seed {seed}: VAE {image} -> latents {latent}", flush=True)
    return {
        "image_shape": list(image), "latent_shape": list(latent),
        "vae": {"config": names["vae"],
                "train": train_step_rate(vae_stage, vcfg, image, "image", device, iters, warmup),
                "memory_6gb": memory_estimate(vae_stage, image, "image", vcfg.engine.micro_batch, device, prec(vcfg))},
        "ldm": {"config": names["ldm"], "mode": ldm_stage.config.mode,
                "train": train_step_rate(ldm_stage, lcfg, latent, "latent", device, iters, warmup),
                "memory_6gb": memory_estimate(ldm_stage, latent, "latent", lcfg.engine.micro_batch, device,
                                              prec(lcfg))},
        "ddim": ddim_seconds_per_sample(vae_stage, ldm_stage, latent, (size, size), device, steps, repeats),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", choices=sorted(SEEDS), default=sorted(SEEDS))
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3, help="timed DDIM samples (after one warm-up)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(list(argv) if argv is not None else None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results: dict[str, Any] = {"benchmark": "slice2d_throughput", "environment": environment_info(device),
                               "note": "CPU timings are only meaningful on idle cores; the memory estimate is the "
                                       "engine planner's model (static 16 P + micro_batch x activation peak)"}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            results[f"seed_{seed}"] = bench_seed(seed, device, args.iters, args.warmup, args.ddim_steps, args.repeats,
                                                 Path(tmp))
    path = write_results("slice2d_throughput", results, args.out)
    for seed in args.seeds:
        r = results[f"seed_{seed}"]
        print(f"seed {seed}: VAE {r['vae']['train']['slices_per_s']} slices/s, LDM {r['ldm']['train']['slices_per_s']} "
              f"slices/s, DDIM-{args.ddim_steps} {r['ddim']['seconds_per_sample']} s/sample; 6 GB estimate VAE "
              f"{r['vae']['memory_6gb']['predicted_peak_gib']} GiB, LDM {r['ldm']['memory_6gb']['predicted_peak_gib']} "
              f"GiB (usable {r['vae']['memory_6gb']['usable_gib']} GiB)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
