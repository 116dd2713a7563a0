"""`bsynth sample slice2d`: DDIM sampling of slice latents -> slice VAE decoding -> PNG slices + samples.csv.

    bsynth sample slice2d --run RUN_LDM --n 16 --out synth/                         # 001: unconditional
    bsynth sample slice2d --run RUN_LDM --n 16 --early-stop 0.05 --out synth/       # 001: adaptive stop
    bsynth sample slice2d --run RUN_LDM --class tumour --cfg 3 --n 16 --out synth/  # 004: guided class
    bsynth sample slice2d --run RUN_LDM --n 8 --out synth/        # conditional run, no --class: n per class

Defaults (solver DDIM, 50 steps, η = 0, guidance, early-stop threshold) come from the run's
``recipe.diffusion.sampling`` and ``recipe.early_stop``. Latents are drawn at the trained scale s_z and
divided by it before decoding; slices are mapped from the store's value range to [0, 1].

Writes OUT/<name>.png per slice (8-bit, the sample itself; plus OUT/<name>.nii.gz with ``--nifti`` and
OUT/stack.nii.gz, all samples as one (H, W, N) volume), OUT/previews/ (legible previews + overview),
OUT/grid.png (every sample), OUT/trajectory.png (001 Fig. 5: the decoded state x_t at the sampling steps
nearest to t = 1000, 800, ..., 200, then the sample, of the first ``--trajectory`` samples), OUT/samples.csv (path, modality, label, seed, guidance, solver,
steps, steps_taken) and OUT/sampling.json (steps actually taken per batch when early stop is on).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...argtypes import float_at_least, int_at_least
from ...data.latent_cache import LatentCache
from ...data.store import VolumeStore
from ...diffusion import build_process, early_stop_callback, sample
from ...diffusion.sampling import StepInfo
from ...engine.export import load_exported
from ...errors import ConfigError
from ...eval.figures import write_overview
from ..common.outputs import continue_numbering, sample_title, write_nifti, write_samples, write_samples_csv
from ..common.provenance import load_compressor
from ..common.sampling import SampleConfig, requested_classes
from .figures import grid_figure, trajectory_grid
from .ldm import load_slice2d_info

__all__ = ["Slice2dSampleConfig", "add_slice2d_sample_options", "generate", "TrajectoryRecorder",
           "slice_affine", "PREFIX"]

PREFIX = "slice2d_"
TRAJECTORY_TIMES: tuple[int, ...] = (1000, 800, 600, 400, 200, 0)
"""001 Fig. 5's timesteps (t = 0 is the final sample)."""


@dataclass
class Slice2dSampleConfig(SampleConfig):
    """``bsynth sample slice2d``: the shared options + class, early stop, NIfTI output, trajectory rows."""

    class_label: str | None = None
    early_stop: float | None = None
    nifti: bool = False
    trajectory: int = 4


def add_slice2d_sample_options(parser: argparse.ArgumentParser) -> None:
    """The slice2d-only flags of ``bsynth sample slice2d`` (the shared ones come from the CLI)."""
    parser.add_argument("--class", dest="class_label", default=None,
                        help="class label of a conditional (004) run, e.g. tumour (default: --n of every class)")
    parser.add_argument("--early-stop", type=float_at_least(0.0, "the ||eps|| threshold"), default=None,
                        help="001's adaptive early stop: end DDIM once ||eps_hat|| < this (e.g. 0.05; default: the "
                             "run's recipe.early_stop)")
    parser.add_argument("--nifti", action="store_true",
                        help="also write each slice as 2D NIfTI and all of them as OUT/stack.nii.gz")
    parser.add_argument("--trajectory", type=int_at_least(0), default=4,
                        help="samples shown in OUT/trajectory.png (t = 1000, 800, ..., 0; default 4, 0 = none)")


def _log(msg: str) -> None:
    print(f"[sample slice2d] {msg}", flush=True)


def requested_labels(config: Slice2dSampleConfig, classes: list[str]) -> list[str | None]:
    """One entry per sample: the class (conditional run) or None (unconditional)."""
    if not classes:
        if config.class_label or config.conditions:
            raise ConfigError("this slice2d run is unconditional (001 mode): --class and --conditions do not apply")
        return [None] * config.n
    return list(requested_classes(config.conditions, config.class_label, config.n, classes))


def slice_affine(spacing: Sequence[float] | None) -> np.ndarray:
    """The 3x3 in-plane affine of a slice store's pixel spacing (mm; unit spacing when unknown)."""
    sy, sx = (float(s) for s in (spacing or (1.0, 1.0)))
    return np.diag([sy, sx, 1.0])


class TrajectoryRecorder:
    """A ``sample(callback=...)`` that keeps x_t at the steps nearest to :data:`TRAJECTORY_TIMES` and passes
    each step to an inner callback (the early stop), whose decision it returns."""

    def __init__(self, inner: Any = None, times: Sequence[int] = TRAJECTORY_TIMES[:-1]) -> None:
        self.inner, self.times = inner, [int(t) for t in times]
        self.frames: dict[int, tuple[float, torch.Tensor]] = {}

    def __call__(self, info: StepInfo) -> bool:
        t = float(info.t)
        for target in self.times:
            best = self.frames.get(target)
            if best is None or abs(t - target) < abs(best[0] - target):
                self.frames[target] = (t, info.x_t.detach().clone())
        return bool(self.inner(info)) if self.inner is not None else False


def _decode(vae: Any, z: torch.Tensor, shape: Sequence[int] | None, value_range: Sequence[float]) -> np.ndarray:
    """Unscaled latents -> (B, H, W) slices in [0, 1]."""
    x = vae.decode(z.to(next(vae.parameters()).dtype), tuple(shape) if shape else None).float()
    lo, hi = float(value_range[0]), float(value_range[1])
    return ((x - lo) / (hi - lo)).clamp(0, 1)[:, 0].cpu().numpy()


def generate(config: Slice2dSampleConfig) -> list[Path]:
    """Sample slices from a slice2d-ldm run (module docstring); returns the PNG paths."""
    opts = config
    t0 = time.perf_counter()
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = load_slice2d_info(opts.run)
    classes: list[str] = info["classes"]
    dcfg = info["diffusion"]
    labels = requested_labels(opts, classes)
    solver = opts.solver or dcfg.solver
    if solver not in ("ddpm", "ddim"):
        raise ConfigError(f"--solver {solver}: the slice2d model is a DDPM; use ddim (001/004) or ddpm")
    steps = opts.steps or dcfg.sampling.steps or (dcfg.num_train_timesteps if solver == "ddpm" else 50)
    scale = float(opts.cfg if opts.cfg is not None else dcfg.sampling.guidance_scale) if classes else 1.0
    threshold = opts.early_stop if opts.early_stop is not None else info.get("early_stop")
    threshold = threshold or None  # 0 = off
    model, _ = load_exported(opts.run, "unet", device)
    vae, vae_meta, compressor_run = load_compressor(info, f"{opts.run}/export/unet", opts.compressor_run, device,
                                                    "slice2d-vae")
    value_range = vae_meta.get("value_range") or (-1.0, 1.0)
    s_z = float(info.get("latent_scale") or vae_meta.get("latent_scale") or 1.0)
    slice_shape = info.get("slice_shape")
    spacing = _store_spacing(info)
    affine = slice_affine(spacing) if opts.nifti else None
    modality = "+".join(info["modalities"])
    process = build_process(dcfg)
    latent_shape = tuple(info["latent_shape"])

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        return model(x, t, y)

    out_dir = Path(opts.out)
    bs = opts.batch_size
    existing = continue_numbering(out_dir, 0, opts.overwrite, PREFIX, _log)
    rows: list[dict[str, Any]] = []
    paths: list[Path] = []
    all_slices: list[np.ndarray] = []
    trajectories: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    taken: list[int] = []
    what = f"{sorted(set(labels))} " if classes else ""
    _log(f"{len(labels)} slice(s) {what}with {solver} x {steps} steps"
         + (f", guidance {scale:g}" if classes else "")
         + (f", early stop at ||eps|| < {threshold:g}" if threshold else "") + f", on {device}")
    with torch.inference_mode():
        for start in range(0, len(labels), bs):
            chunk = labels[start:start + bs]
            seed = int(opts.seed) * 1_000_003 + existing + start
            gen = torch.Generator(device="cpu").manual_seed(seed)
            x_init = torch.randn((len(chunk), *latent_shape), generator=gen).to(device)
            cond: Any = None
            uncond: Any = None
            if classes:
                y = torch.tensor([classes.index(c) for c in chunk], dtype=torch.long, device=device)
                cond, uncond = {"class": y}, model.null_condition(len(chunk), device)
            stop = early_stop_callback(float(threshold), process) if threshold else None
            want_traj = len(trajectories) < opts.trajectory
            recorder = TrajectoryRecorder(stop) if want_traj else stop
            res = sample(model_fn, (len(chunk), *latent_shape), process, steps, solver=solver, generator=gen,
                         cond=cond, uncond=uncond, guidance_scale=scale, x_init=x_init, eta=dcfg.sampling.eta,
                         spacing=dcfg.sampling.timestep_spacing, device=device, callback=recorder)
            taken.append(int(res.steps_taken))
            slices = _decode(vae, res.sample.float() / s_z, slice_shape, value_range)
            names = [f"{PREFIX}{existing + start + i:04d}" + (f"_{c}" if c else "") for i, c in enumerate(chunk)]
            titles = [sample_title(n, {"modality": modality, "class": c, "steps": res.steps_taken})
                      for n, c in zip(names, chunk)]
            paths += write_samples(list(slices), affine, out_dir, names, spatial_dims=2, titles=titles,
                                   overview=False)
            all_slices += list(slices)
            if isinstance(recorder, TrajectoryRecorder):
                frames = {int(actual): _decode(vae, x.float() / s_z, slice_shape, value_range)
                          for _, (actual, x) in sorted(recorder.frames.items(), reverse=True)}
                for i, name in enumerate(names[:opts.trajectory - len(trajectories)]):
                    trajectories.append((name[len(PREFIX):], [(f"t={t}", f[i]) for t, f in frames.items()]
                                         + [(f"t=0 ({res.steps_taken} steps)", slices[i])]))
            for i, (name, c) in enumerate(zip(names, chunk)):
                rows.append({"path": f"{name}.png", "modality": modality, "label": c or "",
                             "class_id": classes.index(c) if c else "", "seed": seed, "index_in_batch": i,
                             "guidance": scale, "solver": solver, "steps": steps, "steps_taken": res.steps_taken,
                             "early_stop": threshold or "", "run": str(Path(opts.run).resolve())})
    write_samples_csv(out_dir, rows)
    write_overview(out_dir / "previews", f"{out_dir.name or out_dir}: samples")
    grid_figure(all_slices, [r["path"][:-4] for r in rows], out_dir / "grid.png",
                f"slice2d samples ({solver} {steps} steps" + (f", CFG {scale:g}" if classes else "") + ")")
    if trajectories:
        trajectory_grid(trajectories, out_dir / "trajectory.png",
                        f"DDIM trajectory (decoded x_t; {solver} {steps} steps)")
    if opts.nifti and all_slices:
        write_nifti(np.stack(all_slices, axis=-1), np.diag([*(spacing or (1.0, 1.0)), 1.0, 1.0]),
                    out_dir / "stack.nii.gz")
    summary = {"n": len(rows), "solver": solver, "steps": steps, "guidance": scale, "early_stop": threshold,
               "steps_taken_per_batch": taken, "mean_steps_taken": float(np.mean(taken)) if taken else 0.0,
               "seconds": round(time.perf_counter() - t0, 3), "device": str(device)}
    (out_dir / "sampling.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _log(f"wrote {len(rows)} slice(s) + grid.png + samples.csv to {out_dir} in {summary['seconds']:.1f} s"
         + (f"; steps actually taken per batch {taken} (of {steps})" if threshold else ""))
    return paths


def _store_spacing(info: dict[str, Any]) -> tuple[float, float] | None:
    """The pixel spacing of the slice store behind the latent cache (None when unknown)."""
    latents = info.get("latents")
    if not latents or not (Path(latents) / "zarr.json").exists():
        return None
    store = LatentCache(latents, mode="r").info.get("source_store")
    if not store or not Path(store).exists():
        return None
    spacing = VolumeStore(store).info.get("spacing")
    return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None
