"""What ``bsynth eval recon`` reconstructs with: a trained compressor exported by the training
engine, or one of the fixed wavelet references of seed 003 Table 3.

* ``dwt1`` - one-level 3D Haar DWT -> inverse ("WDM-style DWT (1-stage)", 1/2 per axis, 8 channels);
* ``dwt2`` - two-level ("DWT reference (2-stage)", 1/4 per axis, 64 channels).
Both are exact up to float round-off (seed 003 reports PSNR 76-85 dB for them); they run through
the ops facade (Triton on CUDA, the PyTorch reference elsewhere).

A trained compressor is any module with ``reconstruct(x)``, or ``encode``/``decode``, or a
``forward`` that returns the reconstruction: :func:`reconstructor_from_module` picks in that
order. ``encode`` returning a tuple (mean, sigma) or a distribution uses the mean / mode, the
deterministic reconstruction an evaluation reports.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import ops
from ..engine.export import load_exported
from ..errors import ConfigError

Reconstruct = Callable[[torch.Tensor], torch.Tensor]
REFERENCE_COMPRESSORS: dict[str, str] = {
    "dwt1": "WDM-style Haar DWT, 1 stage (1/2 per axis, 8 channels); lossless: PSNR reflects float rounding only, not compression quality",
    "dwt2": "Haar DWT reference, 2 stages (1/4 per axis, 64 channels); lossless: PSNR reflects float rounding only, not compression quality",
}


def reference_compressor(name: str) -> Reconstruct:
    """The fixed wavelet transform ``name`` followed by its inverse (seed 003 Table 3 references)."""
    if name == "dwt1":
        def dwt1(x: torch.Tensor) -> torch.Tensor:
            return ops.haar_idwt3d(ops.haar_dwt3d(x), tuple(x.shape[2:]))
        return dwt1
    if name == "dwt2":
        def dwt2(x: torch.Tensor) -> torch.Tensor:
            y1 = ops.haar_dwt3d(x)
            y2 = ops.haar_dwt3d(y1)
            return ops.haar_idwt3d(ops.haar_idwt3d(y2, tuple(y1.shape[2:])), tuple(x.shape[2:]))
        return dwt2
    raise ConfigError(f"unknown reference compressor {name!r}: use one of {', '.join(REFERENCE_COMPRESSORS)}")


def _latent(encoded: Any) -> torch.Tensor:
    if isinstance(encoded, torch.Tensor):
        return encoded
    if isinstance(encoded, (tuple, list)) and encoded and isinstance(encoded[0], torch.Tensor):
        return encoded[0]
    for attr in ("mode", "mean"):
        value = getattr(encoded, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, torch.Tensor):
            return value
    dist = getattr(encoded, "latent_dist", None)
    if dist is not None:
        return _latent(dist)
    raise ConfigError(f"cannot take a latent from what encode() returned ({type(encoded).__name__})")


def _image(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise ConfigError(f"cannot take a reconstruction from the compressor's output ({type(output).__name__})")


def reconstructor_from_module(module: nn.Module) -> Reconstruct:
    """``reconstruct(x)`` if the module has it, else ``decode(encode(x))``, else ``forward(x)``."""
    module.eval()
    if callable(getattr(module, "reconstruct", None)):
        return lambda x: _image(module.reconstruct(x))
    if callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None)):
        return lambda x: _image(module.decode(_latent(module.encode(x))))
    return lambda x: _image(module(x))


def default_export_name(run_dir: Path) -> str:
    """The single export in RUN/export, else "vae"."""
    export = run_dir / "export"
    names = sorted(p.name[: -len(".safetensors")] for p in export.glob("*.safetensors")) if export.is_dir() else []
    return names[0] if len(names) == 1 else "vae"


def load_run_compressor(run_dir: str | os.PathLike[str], name: str | None,
                        device: torch.device | str) -> tuple[Reconstruct, dict[str, Any]]:
    """The compressor exported by a training run (``bsynth_hpc.engine.export.load_exported``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run directory {run} does not exist: give the --run-dir of a `bsynth train` run")
    export_name = name or default_export_name(run)
    module, sidecar = load_exported(run, export_name, device)
    keep = ("stage", "factory", "factory_kwargs", "step", "latent_scale", "num_params", "weights_sha256")
    return reconstructor_from_module(module), {"run": str(run), "name": export_name,
                                                **{k: sidecar.get(k) for k in keep if k in sidecar}}
