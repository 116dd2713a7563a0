"""Inference exports: RUN/export/<name>.safetensors + RUN/export/<name>.json.

The sidecar is what a sampler or evaluator needs to rebuild the model without the training
code path::

    {"name", "stage", "factory": "<registered model name>", "factory_kwargs": {...},
     "config": <the resolved run config>, "latent_scale": float | null, "step": int | null,
     "versions": {"bsynth_hpc", "torch", "safetensors", "python"}, "num_params", "weights_sha256", "format": 2}

Security: model files are shared between groups, so a sidecar is untrusted input. ``factory`` is a
name looked up in the allow-list ``bsynth_hpc.models.MODEL_FACTORIES``, never an import path the
loader would import and call (format-1 sidecars recorded paths; a path is accepted only when it is
exactly a registered one). Export names must be plain file stems that stay inside RUN/export/.
Before the real model is built, it is built on the ``meta`` device and its parameter shapes are
compared with the safetensors header, so inflated ``factory_kwargs`` cannot allocate a huge model.

``load_exported`` then builds the model and loads the weights with ``strict=True``. Both files are
written atomically; the sidecar last, so a sidecar always describes complete weights.
"""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any, Callable

import safetensors
import torch
from torch import nn

from .. import __version__ as bsynth_version
from ..hashing import sha256_file
from ..models import MODEL_FACTORIES, registered_name
from ..models import resolve_factory as registry_lookup
from .checkpoint import write_json
from .errors import CheckpointError

FORMAT = 2
READABLE_FORMATS = (1, 2)
FACTORY_ATTR = "bsynth_factory"


def set_factory(model: nn.Module, factory: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Record on ``model`` how to rebuild it (used when export_model gets no factory in ``extra``)."""
    setattr(model, FACTORY_ATTR, (factory, dict(kwargs or {})))
    return model


def _versions() -> dict[str, str]:
    return {"bsynth_hpc": str(bsynth_version), "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_export_name(name: Any, source: str = "export name") -> str:
    """``name`` if it is a plain file stem (letters, digits, '.', '_', '-'; no path parts), else an error."""
    if not isinstance(name, str) or not _EXPORT_NAME.match(name) or ".." in name:
        raise CheckpointError(f"{source} {name!r} is not a valid export name (1-64 letters, digits, '.', '_' or '-', "
                              "no path separators): the file was edited or damaged; re-export the run")
    return name


def resolve_factory(name: Any, source: str = "factory") -> Callable[..., nn.Module]:
    """The allow-listed factory ``name`` (a ``bsynth_hpc.models`` registry name).

    A format-1 import path "package.module:callable" is accepted only if it is exactly the path of
    a registered model; anything else is refused without importing it.
    """
    key = name if isinstance(name, str) and name in MODEL_FACTORIES else None
    if key is None and isinstance(name, str) and ":" in name:
        key = registered_name(name)
    if key is None:
        raise CheckpointError(
            f"{source} {name!r} is not a registered bsynth_hpc model, so it is not loaded (exports only build "
            f"models from the allow-list bsynth_hpc.models.MODEL_FACTORIES: {', '.join(sorted(MODEL_FACTORIES))}); "
            "a sidecar naming anything else was edited or comes from other software. For a network of your own, "
            "call bsynth_hpc.models.register_model(name, factory) in your code before loading")
    return registry_lookup(key)


def _registry_name(factory: str) -> str:
    """The registry name to record for ``factory`` (a name, or a registered import path)."""
    resolve_factory(factory, "export factory")
    return factory if factory in MODEL_FACTORIES else str(registered_name(factory))


def header_metadata(name: str) -> dict[str, str]:
    """The safetensors header metadata of an export: ONE key. safetensors writes its metadata map in hash order,
    which changes from process to process, so two keys gave the same weights different file bytes, and hence a
    different ``weights_sha256``, half of the time; a re-export after a resumed, already finished run then looked
    like a retrained compressor and ``bsynth encode`` refused the latent cache. One key keeps the bytes (and the
    checksum) a function of the weights alone."""
    return {"bsynth_export": json.dumps({"format": FORMAT, "name": name}, sort_keys=True)}


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
    check_export_name(name)
    factory = _registry_name(factory)  # fail now, not when someone loads the export
    out_dir = Path(run_dir) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    sidecar = out_dir / f"{name}.json"
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=header_metadata(name))
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
        "weights_sha256": sha256_file(weights),
        "format": FORMAT,
        **extra,
    }
    write_json(meta, sidecar)
    return weights


def read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar as a dict, with its fields checked for type and its factory on the allow-list."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON ({exc}): the export is damaged; re-export the run") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar} does not hold a JSON object: the export is damaged; re-export the run")
    if meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{sidecar} has export format {meta.get('format')!r}, this version reads "
                              f"{', '.join(map(str, READABLE_FORMATS))}")
    kwargs = meta.get("factory_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{sidecar}: factory_kwargs must be a JSON object; the export is damaged")
    resolve_factory(meta.get("factory"), f"{sidecar}: factory")  # refuse a hostile sidecar before anyone reads it
    return meta


def _check_shapes_on_meta(factory: Callable[..., nn.Module], kwargs: dict[str, Any], weights: Path,
                          sidecar: Path) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with the weights file's
    header, so a sidecar whose kwargs were inflated never allocates the model it describes."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            probe = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{sidecar}: factory_kwargs do not build export {sidecar.stem!r} ({exc}); the export is "
                              "damaged or from another bsynth_hpc version") from None
    except (NotImplementedError, RuntimeError):
        return  # a factory that cannot run on meta: the strict load below still checks every tensor
    with safe_open(str(weights), framework="pt") as fh:
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    if stored != expected:
        diff = sorted(set(stored) ^ set(expected)) or [k for k in expected if stored.get(k) != expected[k]]
        raise CheckpointError(f"{weights} does not fit the model that {sidecar} describes (first differences: "
                              f"{', '.join(diff[:3])}); the sidecar was edited or damaged: re-export the run")


def export_paths(run_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """(weights, sidecar) of export ``name`` of a run, checked to lie inside RUN/export/."""
    check_export_name(name)
    out_dir = (Path(run_dir) / "export").resolve()
    weights, sidecar = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    for path in (weights, sidecar):
        if path.resolve().parent != out_dir:
            raise CheckpointError(f"export {name!r}: {path} resolves outside {out_dir} (a symbolic link?); "
                                  "exports must be plain files inside RUN/export/")
    return weights, sidecar


def load_exported(run_dir: str | os.PathLike[str], name: str, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild export ``name`` of a run: (model in eval mode on ``device``, sidecar dict)."""
    from safetensors.torch import load_file

    out_dir = Path(run_dir) / "export"
    weights, sidecar = export_paths(run_dir, name)
    if not sidecar.is_file() or not weights.is_file():
        have = sorted(p.stem for p in out_dir.glob("*.json")) if out_dir.is_dir() else []
        raise CheckpointError(f"no export {name!r} in {out_dir} (exports there: {', '.join(have) or 'none'}); "
                              "exports are written when training finishes")
    meta = read_sidecar(sidecar)
    factory = resolve_factory(meta.get("factory"), f"{sidecar}: factory")
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the checksum in {sidecar}: the file is damaged or was "
                              "replaced; re-export it")
    kwargs = dict(meta.get("factory_kwargs", {}))
    _check_shapes_on_meta(factory, kwargs, weights, sidecar)
    model = factory(**kwargs)
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"weights in {weights} do not fit {meta['factory']}(**{kwargs}): {first}") from None
    return model.to(device).eval(), meta
