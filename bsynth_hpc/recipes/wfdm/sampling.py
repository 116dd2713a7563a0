"""`bsynth sample wfdm`: conditional latent sampling with CFG, decoding and NIfTI output (seed 003 §2.5.4-2.5.5).

::

    bsynth sample wfdm --run RUN_B --n 2 --modality T1w,FLAIR --meta age=56,sex=M,stroke=yes --out samples/
    bsynth sample wfdm --run RUN_B --conditions cohort.csv --out cohort/    # one row per condition (+ n each)

* RUN_B/export/unet (+ sidecar: diffusion config, s_z, compressor run, store affine and shape, metadata
  z-score statistics); the compressor is RUN_B's recorded stage-A run unless ``--compressor-run``.
* Conditions: ``--modality`` (one or a comma list; default all four) x ``--meta k=v,...`` (schema field
  names of seed 003 §2.2.2, parsed with ``parse_metadata`` and z-scored with the training store's
  statistics; absent fields are masked as unavailable), or ``--conditions CSV`` with a ``modality``
  column, optional ``label``/``n``/``seed`` columns and metadata columns.
* Sample k of the call starts from N(0, I) drawn with seed ``--seed + k`` (independent of the batch
  size), runs ``sample`` with ``--steps`` / ``--solver`` / ``--cfg`` (default: the run's config), is
  unscaled (z / s_z) and decoded (``--tile T`` or $BSYNTH_DECODE_TILE: sliding-window decoding in
  latent tiles of T voxels, for large volumes on small GPUs; default full decode).
* Writes OUT/sample-XXXX_<modality>.nii.gz with the store's RAS affine, OUT/previews/*.png (tri-planar)
  and OUT/samples.csv (path, modality, label, seed, metadata) that ``bsynth eval synth --fake OUT`` reads.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...constants import MODALITIES, canonical_modality
from ...data.metadata import FIELDS, encode_metadata, parse_metadata
from ...diffusion import DiffusionConfig, build_process, sample
from ...engine.export import load_exported
from ...errors import ConfigError
from ..common.outputs import (continue_numbering, decode_latents, decode_tile_from_env, output_space, sample_title,
                              write_samples, write_samples_csv)
from ..common.provenance import load_compressor, training_store
from ..common.sampling import SampleConfig

__all__ = ["WFDMSampleConfig", "add_wfdm_sample_options", "generate", "sample_wfdm", "parse_meta_arg",
           "build_conditions"]

_RESERVED = {"modality", "label", "class", "n", "seed", "path"}


def _log(msg: str) -> None:
    print(f"[sample wfdm] {msg}", flush=True)


def parse_meta_arg(text: str | None) -> dict[str, str]:
    """``age=56,sex=M`` -> {"age": "56", "sex": "M"} (ConfigError for malformed items)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"--meta item {item!r} must look like key=value (e.g. --meta age=56,sex=M,stroke=yes)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _encode_meta(raw: dict[str, Any], stats: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    parsed = parse_metadata(raw, source)
    unknown = [k for k, v in raw.items() if str(v).strip() and all(val is None for val in
                                                                    parse_metadata({k: v}, source).values())]
    if unknown:
        raise ConfigError(f"{source}: unknown metadata field(s) {unknown}; valid fields: "
                          f"{', '.join(f.name for f in FIELDS)}")
    values, mask = encode_metadata(parsed, stats, source)
    return np.asarray(values, np.float32), np.asarray(mask, np.float32)


def _modalities(text: str | None) -> list[str]:
    if not text or text.strip().lower() == "all":
        return list(MODALITIES)
    try:
        return [canonical_modality(m.strip()) for m in text.split(",") if m.strip()]
    except (KeyError, ValueError):
        raise ConfigError(f"--modality {text!r}: use one or more of {', '.join(MODALITIES)} (comma separated) or "
                          "'all'") from None


def build_conditions(modality: str | None, meta: str | None, conditions_csv: str | None, n: int, seed: int,
                     stats: Any, label: str | None = None) -> list[dict[str, Any]]:
    """One dict per sample: modality, modality_id, metadata, metadata_mask, raw metadata, label, seed."""
    rows: list[tuple[str, dict[str, str], str, int, str]] = []  # modality, raw meta, label, count, source
    if conditions_csv:
        with open(conditions_csv, newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        if not table or "modality" not in table[0]:
            raise ConfigError(f"{conditions_csv}: needs a header with a 'modality' column (+ metadata columns, "
                              "optional label / n / seed)")
        for i, row in enumerate(table):
            raw = {k: v for k, v in row.items() if k and k.lower() not in _RESERVED and v not in (None, "")}
            count = int(row.get("n") or n)
            for m in _modalities(row["modality"]):
                rows.append((m, raw, (row.get("label") or row.get("class") or label or ""), count,
                             f"{conditions_csv} row {i + 2}"))
    else:
        raw = parse_meta_arg(meta)
        for m in _modalities(modality):
            rows.append((m, raw, label or "", n, "--meta"))
    out: list[dict[str, Any]] = []
    for m, raw, lab, count, source in rows:
        values, mask = _encode_meta(raw, stats, source)
        for _ in range(count):
            out.append({"modality": m, "modality_id": MODALITIES.index(m), "metadata": values, "metadata_mask": mask,
                        "raw": raw, "label": lab, "seed": seed + len(out)})
    if not out:
        raise ConfigError("nothing to sample: --n must be >= 1 (or the --conditions CSV has no rows)")
    return out


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class WFDMSampleConfig(SampleConfig):
    """``bsynth sample wfdm``: the shared options + the modality / metadata conditions (module docstring).

    ``label`` is written to samples.csv for rows without one; ``trajectory`` > 0 also decodes that many
    intermediate x-hat-0 frames per sample into OUT/trajectory/ (both for programs, no CLI flag)."""

    modality: str | None = None
    meta: str | None = None
    label: str | None = None
    trajectory: int = 0


def add_wfdm_sample_options(parser: argparse.ArgumentParser) -> None:
    """The wfdm-only flags of ``bsynth sample wfdm`` (the shared ones come from the CLI)."""
    parser.add_argument("--modality", default=None, help="target modality: T1w, T2w, T1Gd or FLAIR (comma list or "
                                                         "'all'; default all four)")
    parser.add_argument("--meta", default=None, help="metadata, e.g. age=56,sex=M,stroke=yes")


def sample_wfdm(run: str | os.PathLike[str], out: str | os.PathLike[str], *, n: int = 1,
                **options: Any) -> list[Path]:
    """Keyword form of :func:`generate` (``options`` are :class:`WFDMSampleConfig` fields)."""
    return generate(WFDMSampleConfig(run=os.fspath(run), out=os.fspath(out), n=n, **options))


def generate(config: WFDMSampleConfig) -> list[Path]:
    """Sample volumes from a wfdm-ldm run (see the module docstring); returns the NIfTI paths.

    The registered sampler of the wfdm recipe (``bsynth sample wfdm``)."""
    opts = config
    run, out, steps, solver, cfg, overwrite = opts.run, opts.out, opts.steps, opts.solver, opts.cfg, opts.overwrite
    dev = _device(opts.device)
    unet, meta_b = load_exported(run, "unet", dev)
    vae, meta_a, comp_run = load_compressor(meta_b, f"{run}/export/unet", opts.compressor_run, dev, "wfdm-vae")
    out_space = output_space(opts.space, opts.intensity, opts.reference, training_store(meta_b.get("latents"), meta_a))
    if out_space is not None:
        _log(f"output space: {opts.space} grid, {opts.intensity} intensities, from {out_space.what}")
    scale = meta_b.get("latent_scale") or meta_a.get("latent_scale")
    if not scale:
        raise ConfigError(f"no latent scale s_z in {run}/export/unet.json nor {comp_run}/export: re-encode the "
                          "latents with `bsynth encode` (it records s_z)")
    dcfg = DiffusionConfig.from_dict(meta_b.get("diffusion") or {})
    process = build_process(dcfg)
    kwargs = dcfg.sampling_kwargs()
    if steps is not None:
        kwargs["steps"] = int(steps)
    if solver is not None:
        kwargs["solver"] = solver
    guidance = float(cfg) if cfg is not None else float(kwargs.pop("guidance_scale", 1.0))
    kwargs.pop("guidance_scale", None)
    latent_shape = tuple(int(s) for s in meta_b["latent_shape"])
    volume_shape = tuple(int(s) for s in meta_b.get("volume_shape") or [s * vae.downsample_factor
                                                                       for s in latent_shape[1:]])
    affine = np.asarray(meta_b.get("affine") or np.eye(4), dtype=np.float64)
    seed = continue_numbering(out, opts.seed, overwrite, "sample-", _log)
    conds = build_conditions(opts.modality, opts.meta, opts.conditions, opts.n, seed, meta_b.get("metadata_stats"),
                             opts.label)
    clash = [c["seed"] for c in conds if not overwrite and any(Path(out).glob(f"sample-{c['seed']:04d}_*.nii.gz"))]
    if clash:
        raise ConfigError(f"{out} already holds samples with seeds {clash[:5]} (seeds from --conditions): pass "
                          "--overwrite to replace them, or another --out")
    tile = opts.tile or decode_tile_from_env()
    _log(f"{len(conds)} volume(s) {volume_shape} from {run} (latents {latent_shape}, s_z={scale:.5g}) with "
         f"{kwargs.get('solver')} x {kwargs.get('steps') or 'default'} steps, CFG scale {guidance:g}, decoder "
         f"{comp_run}{f' tiled ({tile})' if tile else ''}, on {dev}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bs = opts.batch_size
    for start in range(0, len(conds), bs):
        chunk = conds[start:start + bs]
        b = len(chunk)
        cond = {"modality": torch.tensor([c["modality_id"] for c in chunk], dtype=torch.long, device=dev),
                "metadata": torch.from_numpy(np.stack([c["metadata"] for c in chunk])).to(dev),
                "metadata_mask": torch.from_numpy(np.stack([c["metadata_mask"] for c in chunk])).to(dev)}
        x_init = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(c["seed"]))
                              for c in chunk]).to(dev)
        gen = torch.Generator(device=dev).manual_seed(int(chunk[0]["seed"]) + 1_000_003)
        with torch.no_grad():
            res = sample(lambda x, t, c: unet(x, t, c), (b, *latent_shape), process, generator=gen, cond=cond,
                         uncond=unet.null_condition(b, dev), guidance_scale=guidance, x_init=x_init, device=dev,
                         return_intermediates=opts.trajectory, **kwargs)
            z = res.sample.float() / float(scale)
            vol = decode_latents(vae, z, volume_shape, tile)
        vol = vol.float().clamp(0, 1).cpu()
        names = [f"sample-{c['seed']:04d}_{c['modality']}" for c in chunk]
        titles = [sample_title(n, {"modality": c["modality"], "label": c["label"], "CFG": guidance, **c["raw"]})
                  for n, c in zip(names, chunk)]
        paths += write_samples(vol[:, 0], affine, out, names, space=out_space, titles=titles)
        if opts.trajectory and res.intermediates:
            with torch.no_grad():
                frames = [vae.decode(x.float() / float(scale), volume_shape).float().clamp(0, 1).cpu()
                          for x in res.intermediates]
            for j, name in enumerate(names):
                write_samples([f[j, 0] for f in frames], affine, out / "trajectory" / name,
                              [f"step-{k:03d}" for k in range(len(frames))], previews=False)
        for c, name in zip(chunk, names):
            rows.append({"path": f"{name}.nii.gz", "modality": c["modality"], "label": c["label"], "seed": c["seed"],
                         "metadata": json.dumps(c["raw"], sort_keys=True),
                         "metadata_fields": int(c["metadata_mask"].sum())})
    csv_path = write_samples_csv(out, rows)
    _log(f"wrote {len(paths)} NIfTI volume(s) + previews to {out} in {time.perf_counter() - t0:.1f} s ({csv_path.name})")
    return paths
