"""Model registry: name -> "module:callable" factory, imported on first use.

Every trainable network of the recipes is built through a module-level factory so that exports
can name it (``RUN/export/*.json`` records the factory and its kwargs). ``MODEL_FACTORIES`` is a
plain dict; add one line per model.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError

__all__ = ["MODEL_FACTORIES", "build_model", "resolve_factory"]

MODEL_FACTORIES: dict[str, str] = {
    # Stage-A compressors (seed 003 §2.5.1-2.5.2, §3.1; seed 000 §5.1) and their discriminator.
    "wf-vae": "bsynth_hpc.models.autoencoder:wf_vae",
    "wf-sa-vae": "bsynth_hpc.models.autoencoder:wf_sa_vae",
    "wavelet-vae": "bsynth_hpc.models.autoencoder:wavelet_vae",
    "vae-gan": "bsynth_hpc.models.autoencoder:vae_gan",
    "tle-vaegan": "bsynth_hpc.models.autoencoder:tle_vaegan",
    "patchgan3d": "bsynth_hpc.models.autoencoder:patchgan3d",
    # Stage-B latent denoisers: DiT-3D (seed 000 §3.2, §5.2) and the conditional 3D U-Net (seed 003 §2.5.4-2.5.5).
    "dit3d-s": "bsynth_hpc.models.dit3d:dit3d_s",
    "dit3d-b": "bsynth_hpc.models.dit3d:dit3d_b",
    "dit3d-tle": "bsynth_hpc.models.dit3d:dit3d_tle",
    "unet3d-wfdm": "bsynth_hpc.models.unet3d:unet3d_wfdm",
}


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name`` (imports its module)."""
    try:
        target = MODEL_FACTORIES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: registered models are {', '.join(sorted(MODEL_FACTORIES))}") from None
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {target} is not a callable factory")
    return factory


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with factory keyword arguments ``kwargs``."""
    return resolve_factory(name)(**kwargs)
