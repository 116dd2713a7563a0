"""Inference exports: RUN/export/<name>.safetensors + RUN/export/<name>.json.

The sidecar is what a sampler or evaluator needs to rebuild the model without the training
code path::

    {"name", "stage", "factory": "module.path:callable", "factory_kwargs": {...},
     "config": <the resolved run config>, "latent_scale": float | null, "step": int | null,
     "versions": {"bsynth_hpc", "torch", "safetensors", "python"}, "num_params", "weights_sha256", "format": 1}

``load_exported`` imports the factory, calls it with the kwargs and loads the weights with
``strict=True``. Both files are written atomically; the sidecar last, so a sidecar always
describes complete weights.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import platform
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import write_json
from .errors import CheckpointError

FORMAT = 1
FACTORY_ATTR = "bsynth_factory"


def set_factory(model: nn.Module, factory: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Record on ``model`` how to rebuild it (used when export_model gets no factory in ``extra``)."""
    setattr(model, FACTORY_ATTR, (factory, dict(kwargs or {})))
    return model


def _versions() -> dict[str, str]:
    import safetensors

    from .. import __version__ as bsynth_version

    return {"bsynth_hpc": str(bsynth_version), "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_factory(target: str) -> Callable[..., nn.Module]:
    """Import "module.path:callable"."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"factory {target!r} must look like 'package.module:callable'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"cannot import factory {target!r}: {exc}; is the right bsynth_hpc version "
                              "installed?") from exc
    if not callable(fn):
        raise CheckpointError(f"factory {target!r} is not callable")
    return fn


def export_model(run_dir: str | os.PathLike[str], name: str, model: nn.Module, config: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and sidecar under RUN/export/; returns the .safetensors path.

    ``extra`` may hold "factory", "factory_kwargs", "latent_scale", "step" and any further
    sidecar fields; factory/kwargs default to what ``set_factory`` recorded on the model.
    """
    from safetensors.torch import save_file

    extra = dict(extra or {})
    factory, kwargs = extra.pop("factory", None), extra.pop("factory_kwargs", None)
    if factory is None:
        recorded = getattr(model, FACTORY_ATTR, None)
        if recorded is None:
            raise ValueError(f"export_model({name!r}): no factory given in extra and none recorded with set_factory")
        factory, recorded_kwargs = recorded
        kwargs = recorded_kwargs if kwargs is None else kwargs
    resolve_factory(factory)  # fail now, not when someone loads the export
    out_dir = Path(run_dir) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    sidecar = out_dir / f"{name}.json"
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"name": name, "format": str(FORMAT)})
    os.replace(tmp, weights)
    latent_scale = extra.pop("latent_scale", None)
    meta = {
        "name": name,
        "stage": config.get("stage"),
        "factory": factory,
        "factory_kwargs": dict(kwargs or {}),
        "config": config,
        "latent_scale": None if latent_scale is None else float(latent_scale),
        "step": extra.pop("step", None),
        "versions": _versions(),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "weights_sha256": _sha256(weights),
        "format": FORMAT,
        **extra,
    }
    write_json(meta, sidecar)
    return weights


def load_exported(run_dir: str | os.PathLike[str], name: str, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild export ``name`` of a run: (model in eval mode on ``device``, sidecar dict)."""
    import json

    from safetensors.torch import load_file

    out_dir = Path(run_dir) / "export"
    weights, sidecar = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    if not sidecar.is_file() or not weights.is_file():
        have = sorted(p.stem for p in out_dir.glob("*.json")) if out_dir.is_dir() else []
        raise CheckpointError(f"no export {name!r} in {out_dir} (exports there: {', '.join(have) or 'none'}); "
                              "exports are written when training finishes")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if int(meta.get("format", 0)) != FORMAT:
        raise CheckpointError(f"{sidecar} has export format {meta.get('format')}, this version reads {FORMAT}")
    expected = meta.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise CheckpointError(f"{weights} does not match the checksum in {sidecar}: the file is damaged or was "
                              "replaced; re-export it")
    model = resolve_factory(meta["factory"])(**meta.get("factory_kwargs", {}))
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {weights} do not fit {meta['factory']}(**{meta.get('factory_kwargs')}): "
                              f"{exc}") from exc
    return model.to(device).eval(), meta
