"""`bsynth sample dit3d`: class-conditional DiT-3D sampling -> VAE-GAN decoding -> NIfTI + previews + samples.csv.

    bsynth sample dit3d --run RUN_DIT --class TLE --n 8 --cfg 3.0 --out synth/            # DDPM, 1000 steps
    bsynth sample dit3d --run RUN_DIT --class healthy --n 8 --steps 50 --solver ddim --out synth/
    bsynth sample dit3d --run RUN_DIT --n 4 --out synth/          # no --class: n per class of the model
    bsynth sample dit3d --run RUN_DIT --conditions cohort.csv --out synth/   # one row per sample: class (or label)

Defaults (solver, steps, guidance) come from the run's ``recipe.diffusion.sampling``. Latents are
drawn at the trained scale ``s_z`` and divided by it before decoding with the compressor export
(``--compressor-run`` or the run recorded at training). Volumes keep the store's RAS affine and
shape; ``samples.csv`` lists path, modality (the contrast the model trained on), label, class id, seed, guidance, solver, steps,
so ``bsynth eval synth`` reads the folder as a labelled synthetic cohort.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...diffusion import build_process, sample
from ...engine.export import load_exported
from ...errors import ConfigError
from ..common.outputs import (continue_numbering, decode_latents, decode_tile_from_env, output_space, sample_title,
                              store_affine, write_samples, write_samples_csv)
from ..common.provenance import load_compressor, training_store
from ..common.sampling import SampleConfig, requested_classes
from .ldm import load_dit_info

__all__ = ["DiT3dSampleConfig", "add_dit3d_sample_options", "generate"]


@dataclass
class DiT3dSampleConfig(SampleConfig):
    """``bsynth sample dit3d``: the shared options + the class to sample (``None``: ``n`` per class)."""

    class_label: str | None = None


def add_dit3d_sample_options(parser: argparse.ArgumentParser) -> None:
    """The dit3d-only flag of ``bsynth sample dit3d`` (the shared ones come from the CLI)."""
    parser.add_argument("--class", dest="class_label", default=None,
                        help="class label, e.g. TLE (default: --n volumes of every class of the model)")


def _log(msg: str) -> None:
    print(f"[sample dit3d] {msg}", flush=True)


def _affine_and_shape(info: dict[str, Any], vae_meta: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...] | None]:
    affine, shape = info.get("affine"), info.get("volume_shape")
    if affine is None:
        store = (vae_meta.get("config") or {}).get("store")
        if store and Path(store).exists():
            affine = store_affine(store)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64).reshape(4, 4)
    return affine, (tuple(int(s) for s in shape) if shape else None)


def generate(config: DiT3dSampleConfig) -> list[Path]:
    """Sample class-conditional volumes from a dit3d run (see the module docstring); returns the NIfTI paths.

    The registered sampler of the dit3d recipe (``bsynth sample dit3d``)."""
    opts = config
    t0 = time.perf_counter()
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = load_dit_info(opts.run)
    classes: list[str] = info["classes"]
    dcfg = info["diffusion"]
    labels = requested_classes(opts.conditions, opts.class_label, opts.n, classes)
    solver = opts.solver or dcfg.solver
    if solver not in ("ddpm", "ddim"):
        raise ConfigError(f"--solver {solver}: the dit3d model is a DDPM; use ddpm or ddim")
    steps = opts.steps or dcfg.sampling.steps or (dcfg.num_train_timesteps if solver == "ddpm" else 50)
    scale = float(opts.cfg if opts.cfg is not None else dcfg.sampling.guidance_scale)
    model, _ = load_exported(opts.run, "dit", device)
    vae, vae_meta, compressor_run = load_compressor(info, f"{opts.run}/export/dit", opts.compressor_run, device,
                                                    "dit3d-vae")
    modality = "+".join(info["modalities"])
    space = output_space(opts.space, opts.intensity, opts.reference,
                         training_store(info["sidecar"]["config"]["recipe"].get("latents"), vae_meta))
    if space is not None:
        _log(f"output space: {opts.space} grid, {opts.intensity} intensities, from {space.what}")
    s_z = info.get("latent_scale") or vae_meta.get("latent_scale") or 1.0
    affine, volume_shape = _affine_and_shape(info, vae_meta)
    process = build_process(dcfg)
    latent_shape = tuple(info["latent_shape"])
    null_id = model.null_id

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t, y)

    tile = opts.tile or decode_tile_from_env()
    out_dir = Path(opts.out)
    bs = opts.batch_size
    rows: list[dict[str, Any]] = []
    paths: list[Path] = []
    existing = continue_numbering(out_dir, 0, opts.overwrite, "dit3d_", _log)
    _log(f"{len(labels)} volume(s) {sorted(set(labels))} with {solver} x {steps} steps, guidance {scale}, on {device}")
    with torch.inference_mode():
        for start in range(0, len(labels), bs):
            chunk = labels[start:start + bs]
            seed = int(opts.seed) * 1_000_003 + existing + start
            gen = torch.Generator(device="cpu").manual_seed(seed)
            y = torch.tensor([classes.index(c) for c in chunk], dtype=torch.long, device=device)
            x_init = torch.randn((len(chunk), *latent_shape), generator=gen).to(device)
            res = sample(model_fn, (len(chunk), *latent_shape), process, steps, solver=solver, generator=gen,
                         cond=y, uncond=torch.full_like(y, null_id), guidance_scale=scale, x_init=x_init,
                         spacing=dcfg.sampling.timestep_spacing, device=device)
            z = res.sample.float() / float(s_z)
            vol = decode_latents(vae, z.to(next(vae.parameters()).dtype), volume_shape, tile)
            vol = vol.float().clamp(0, 1).cpu().numpy()
            names = [f"dit3d_{existing + start + i:04d}_{c}" for i, c in enumerate(chunk)]
            titles = [sample_title(n, {"class": c, "modality": modality, "CFG": scale, "seed": seed})
                      for n, c in zip(names, chunk)]
            paths += write_samples([v[0] for v in vol], affine, out_dir, names, space=space, titles=titles)
            for i, (name, c) in enumerate(zip(names, chunk)):
                rows.append({"path": f"{name}.nii.gz", "modality": modality, "label": c, "class_id": classes.index(c),
                             "seed": seed, "index_in_batch": i, "guidance": scale, "solver": solver, "steps": steps,
                             "run": str(Path(opts.run).resolve())})
    write_samples_csv(out_dir, rows)
    _log(f"wrote {len(rows)} volume(s) + previews + samples.csv to {out_dir} in {time.perf_counter() - t0:.1f} s")
    return paths

