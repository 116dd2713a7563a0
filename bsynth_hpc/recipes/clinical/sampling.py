"""`bsynth sample clinical`: seed 002's inference (Algorithm 3) -> NIfTI + previews + samples.csv.

    bsynth sample clinical --run RUN_VAEGAN --n 4 --clinical hippocampus_l=0.0041,ventricle_l=0.02,label=AD --out synth/
    bsynth sample clinical --run RUN_VAEGAN --n 100 --from-prior --prior-run RUN_PRIOR --out synth/       # c ~ p_psi(c)
    bsynth sample clinical --run RUN_VAEGAN --n 50 --from-prior --prior-run RUN_PRIOR --label AD --steps 50 --solver ddim ...
    bsynth sample clinical --run RUN_VAEGAN --conditions cohort.csv --out synth/   # one row per sample (ROI names, label)

1. c: manual (``--clinical``: ROI ratios by name - hippocampus_l/_r, amygdala_l/_r, ventricle_l/_r, or the
   long ``roi_*`` names - and ``label`` CN/AD; unnamed ratios take the training means, an unnamed label CN),
   one row per sample of ``--conditions``, or drawn from the diffusion prior (``--from-prior``: 500 ancestral
   steps by default, ``--steps``/``--solver ddim`` for fewer; ``--label`` fixes the class, else it is sampled
   jointly);
2. z ~ p(z|c) = N(mu_p(c), sigma_p^2(c)); 3. x̂ = g(z, c).

Volumes are written on the model's cube grid with its world affine (the training store's grid fitted to the
cube), so they overlay the store's volumes. ``samples.csv`` lists path, modality, label, the six requested ROI
ratios (raw units), the mode, seed, and the per-sample seconds of drawing c and of decoding.
"""
from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...engine.export import load_exported
from ...errors import ConfigError
from ..common.outputs import continue_numbering, sample_title, write_samples, write_samples_csv
from ..common.sampling import SampleConfig
from .data import CLINICAL_KEYS, CLINICAL_MODALITY, ClinicalNormalizer, clinical_row, parse_clinical, parse_label
from .factories import register_clinical_models
from .prior import load_prior, sample_clinical_vectors

__all__ = ["ClinicalSampleConfig", "add_clinical_sample_options", "generate", "load_vaegan", "decode_clinical",
           "ClinicalGenerator"]


@dataclass
class ClinicalSampleConfig(SampleConfig):
    """``bsynth sample clinical``: the shared options + how c is given (module docstring)."""

    clinical: str | None = None
    from_prior: bool = False
    prior_run: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        given = sum([self.clinical is not None, bool(self.from_prior), self.conditions is not None])
        if given != 1:
            raise ConfigError("bsynth sample clinical: give exactly one of --clinical NAME=VALUE,...,  --from-prior "
                              "(with --prior-run RUN_PRIOR) or --conditions CSV")
        if self.from_prior and not self.prior_run:
            raise ConfigError("--from-prior needs --prior-run RUN_PRIOR (a clinical-prior run)")
        if self.label is not None and not self.from_prior:
            raise ConfigError("--label fixes the class of prior draws; with --clinical write label=AD in the list")
        unused = [flag for flag, value in (("--cfg", self.cfg), ("--compressor-run", self.compressor_run),
                                           ("--tile", self.tile), ("--reference", self.reference)) if value is not None]
        if unused or self.space != "store" or self.intensity != "unit":
            raise ConfigError(f"bsynth sample clinical writes the model's cube grid in [0, 1]; "
                              f"{', '.join(unused) or '--space/--intensity'} do(es) not apply")
        if self.solver == "euler":
            raise ConfigError("--solver euler: the clinical prior is a DDPM; use ddpm or ddim")


def add_clinical_sample_options(parser: argparse.ArgumentParser) -> None:
    """The clinical-only flags of ``bsynth sample clinical`` (the shared ones come from the CLI)."""
    parser.add_argument("--clinical", default=None,
                        help="manual clinical vector: NAME=VALUE pairs, e.g. hippocampus_l=0.0041,ventricle_r=0.02,"
                             "label=AD (names: hippocampus_l/_r, amygdala_l/_r, ventricle_l/_r, label)")
    parser.add_argument("--from-prior", action="store_true", help="draw c from the clinical diffusion prior")
    parser.add_argument("--prior-run", default=None, help="the clinical-prior run (with --from-prior)")
    parser.add_argument("--label", default=None, help="--from-prior: fix the class (CN or AD); default: sampled")


def _log(msg: str) -> None:
    print(f"[sample clinical] {msg}", flush=True)


def load_vaegan(run: str | Path, device: torch.device) -> tuple[nn.Module, ClinicalNormalizer, dict[str, Any]]:
    """The exported ClinicalVAEGAN of a ``clinical`` run, its normalisation and sidecar."""
    register_clinical_models()
    model, meta = load_exported(run, "vaegan", device)
    if not meta.get("clinical_stats"):
        raise ConfigError(f"{run}/export/vaegan.json has no clinical_stats: not a clinical export")
    return model, ClinicalNormalizer.from_dict(meta["clinical_stats"]), meta


def decode_clinical(model: nn.Module, normalizer: ClinicalNormalizer, raw: torch.Tensor,
                    generator: torch.Generator | None = None, z: torch.Tensor | None = None,
                    eps: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 3 lines 4-5 for raw vectors (N, 7): z = μ_p(c) + σ_p(c) ε with ε ~ N(0, I) drawn from
    ``generator`` (or the given ``eps``, broadcast over N), or the given ``z``; x̂ = g(z, c) in [0, 1]."""
    device = next(model.parameters()).device
    c = normalizer.normalize(raw.to(device).float())
    if z is None:
        with torch.inference_mode():
            mu, logvar = model.prior(c)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator else "cpu")
        z = mu + torch.exp(0.5 * logvar) * eps.to(device, mu.dtype)
    with torch.inference_mode():
        return model.decode(z.to(device), c).float().clamp(0, 1)


class ClinicalGenerator:
    """A loaded VAE-GAN (+ optional prior) that turns requests into raw vectors and volumes, timing each part."""

    def __init__(self, run: str | Path, prior_run: str | Path | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model, self.normalizer, self.meta = load_vaegan(run, self.device)
        self.prior = load_prior(prior_run, self.device) if prior_run else None
        self.train_mean = np.asarray([*self.normalizer.mean, 0.0], dtype=np.float32)

    def draw(self, n: int, generator: torch.Generator, label: float | None = None, steps: int | None = None,
             solver: str | None = None) -> torch.Tensor:
        """``n`` raw vectors from the prior (label fixed or joint)."""
        if self.prior is None:
            raise ConfigError("no clinical-prior run loaded: pass --prior-run")
        model, norm, diffusion = self.prior
        return sample_clinical_vectors(model, norm, diffusion, n, generator, label=label, steps=steps, solver=solver,
                                       device=self.device)

    def volumes(self, raw: torch.Tensor, generator: torch.Generator, z: torch.Tensor | None = None) -> np.ndarray:
        return decode_clinical(self.model, self.normalizer, raw, generator, z).cpu().numpy()


def _manual_vectors(config: ClinicalSampleConfig, defaults: np.ndarray) -> list[np.ndarray]:
    """The raw vectors of ``--clinical`` (``n`` copies) or of the rows of ``--conditions`` (columns: the ROI
    names and ``label``; other columns, e.g. of a samples.csv, are ignored)."""
    if not config.conditions:
        return [parse_clinical(config.clinical or "", defaults)] * config.n
    with open(config.conditions, newline="", encoding="utf-8") as fh:
        rows = [{k: v for k, v in r.items() if k in CLINICAL_KEYS and v not in (None, "")}
                for r in csv.DictReader(fh)]
    if not rows:
        raise ConfigError(f"{config.conditions}: no rows")
    return [parse_clinical(r, defaults) for r in rows]


def generate(config: ClinicalSampleConfig) -> list[Path]:
    """Sample volumes from a clinical run (module docstring); returns the NIfTI paths. The registered sampler."""
    t0 = time.perf_counter()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = ClinicalGenerator(config.run, config.prior_run if config.from_prior else None, device)
    out_dir = Path(config.out)
    first = continue_numbering(out_dir, 0, config.overwrite, "clinical_", _log)
    affine = np.asarray(gen.meta.get("affine") or np.eye(4), dtype=np.float64)
    mode = "prior" if config.from_prior else "manual"
    label = None if config.label is None else parse_label(config.label)
    manual = None if config.from_prior else _manual_vectors(config, gen.train_mean)
    total = config.n if manual is None else len(manual)
    rows: list[dict[str, Any]] = []
    paths: list[Path] = []
    _log(f"{total} volume(s), c {'from the diffusion prior' if config.from_prior else 'given'}, on {device}")
    for start in range(0, total, config.batch_size):
        k = min(config.batch_size, total - start)
        seed = int(config.seed) * 1_000_003 + first + start
        g = torch.Generator(device="cpu").manual_seed(seed)
        t = time.perf_counter()
        if manual is None:
            raw = gen.draw(k, g, label=label, steps=config.steps, solver=config.solver)
        else:
            raw = torch.from_numpy(np.stack(manual[start:start + k]))
        t_c = (time.perf_counter() - t) / k
        t = time.perf_counter()
        vols = gen.volumes(raw, g)
        t_x = (time.perf_counter() - t) / k
        names, titles = [], []
        for i in range(k):
            row = clinical_row(raw[i].tolist())
            names.append(f"clinical_{first + start + i:04d}_{row['label']}")
            titles.append(sample_title(names[-1], {"label": row["label"], "ventricle_l": float(raw[i, 4]),
                                                   "hippocampus_l": float(raw[i, 0])}))
            rows.append({"path": f"{names[-1]}.nii.gz", "modality": CLINICAL_MODALITY, **row, "mode": mode,
                         "seed": seed, "index_in_batch": i, "seconds_c": f"{t_c:.4g}", "seconds_x": f"{t_x:.4g}",
                         "run": str(Path(config.run).resolve())})
        paths += write_samples([v[0] for v in vols], affine, out_dir, names, titles=titles)
    write_samples_csv(out_dir, rows)
    _log(f"wrote {len(rows)} volume(s) + previews + samples.csv to {out_dir} in {time.perf_counter() - t0:.1f} s")
    return paths

