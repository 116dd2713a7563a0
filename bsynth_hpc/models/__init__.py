"""Model registry: the allow-list of networks a run may build and an export may name.

Every trainable network of the recipes is built through a module-level factory registered here
under a short name. Export sidecars (``RUN/export/*.json``) record that *name* and its kwargs,
never an import path: loading an export only ever calls a factory from this table, so an edited
sidecar cannot make the loader import and call arbitrary code (``os:system``). Code that adds its
own networks registers them with :func:`register_model` before loading or exporting them.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError

__all__ = ["MODEL_FACTORIES", "build_model", "resolve_factory", "register_model", "registered_name",
           "is_registered"]

Factory = Callable[..., nn.Module]

MODEL_FACTORIES: dict[str, str | Factory] = {
    # Stage-A compressors (seed 003 §2.5.1-2.5.2, §3.1; seed 000 §5.1) and their discriminator; these and the
    # U-Net factories take spatial_dims (3 default, 2 for slices; the wavelet kinds are 3D only).
    "wf-vae": "bsynth_hpc.models.autoencoder:wf_vae",
    "wf-sa-vae": "bsynth_hpc.models.autoencoder:wf_sa_vae",
    "wavelet-vae": "bsynth_hpc.models.autoencoder:wavelet_vae",
    "vae-gan": "bsynth_hpc.models.autoencoder:vae_gan",
    "tle-vaegan": "bsynth_hpc.models.autoencoder:tle_vaegan",
    "patchgan3d": "bsynth_hpc.models.autoencoder:patchgan3d",
    "compressor": "bsynth_hpc.models.autoencoder:build_compressor",        # any compressor by config (wfdm-vae)
    "autoencoder3d": "bsynth_hpc.models.autoencoder.model:Autoencoder3d",  # dit3d-vae's export
    # Stage-B latent denoisers: DiT-3D (seed 000 §3.2, §5.2) and the conditional 3D U-Net (seed 003 §2.5.4-2.5.5).
    "dit3d-s": "bsynth_hpc.models.dit3d:dit3d_s",
    "dit3d-b": "bsynth_hpc.models.dit3d:dit3d_b",
    "dit3d-tle": "bsynth_hpc.models.dit3d:dit3d_tle",
    "dit3d": "bsynth_hpc.models.dit3d:build_dit3d",
    "unet3d-wfdm": "bsynth_hpc.models.unet3d:unet3d_wfdm",
    "unet3d": "bsynth_hpc.models.unet3d:build_unet3d",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def register_model(name: str, factory: str | Factory, *, replace: bool = False) -> None:
    """Add ``factory`` ("package.module:callable" or a callable) to the allow-list as ``name``.

    Registration happens in code the user runs, never from a file being loaded.
    """
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if name in MODEL_FACTORIES and MODEL_FACTORIES[name] != factory and not replace:
        raise ConfigError(f"model name {name!r} is already registered as {MODEL_FACTORIES[name]!r}; pass replace=True")
    MODEL_FACTORIES[name] = factory


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model name."""
    return name in MODEL_FACTORIES


def registered_name(target: str) -> str | None:
    """The registered name of an import path "package.module:callable" (sidecars of format-1 exports
    recorded the path), or None when that path is not on the allow-list."""
    for name, registered in MODEL_FACTORIES.items():
        if registered == target:
            return name
    return None


def resolve_factory(name: str) -> Factory:
    """The factory registered as ``name`` (imports its module)."""
    try:
        target = MODEL_FACTORIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}: registered models are {', '.join(sorted(MODEL_FACTORIES))}") from None
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {target} is not a callable factory")
    return factory


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with factory keyword arguments ``kwargs``."""
    return resolve_factory(name)(**kwargs)
