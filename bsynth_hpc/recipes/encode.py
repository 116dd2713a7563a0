"""`bsynth encode`: a trained compressor's posterior means of a store -> a latent cache (seed 003 §2.5.3).

Shared by every latent-diffusion recipe (WFDM, DiT-3D)::

    bsynth encode --run RUN_A --store STORE.zarr --out LATENTS.zarr [--split train] [--name vae]
    torchrun --nproc_per_node 4 -m bsynth_hpc.cli encode ...        # data-parallel: rank r takes r::world

* The compressor is RUN_A/export/<name> (default ``vae``, else the run's only export), in eval mode.
* Every selected volume's posterior **mean** ``mu_phi(v)`` is stored **unscaled**, with its conditions
  (volume id, modality id, metadata values + availability mask, label, clinical vector, split); the
  cache records ``s_z`` from the export sidecar (estimated on the training split when stage A
  exported), so ``LatentDataset`` yields ``s_z * mu``. An export without a scale gets one estimated
  from the cache after encoding (single process).
* Resumable: a sample is flagged written only after its latent and conditions are on disk, and a
  rerun with the same --out encodes only the unflagged samples.
* The cache attributes also carry what the sampler needs later: the compressor run, the store's
  RAS affine and volume shape, and the store's metadata z-score statistics.
* Only the modalities the compressor was trained on are encoded (its run's ``data.modalities``;
  ``--modality`` overrides, ``all`` for every volume), and the cache records them.
* The cache records the compressor's weights SHA-256: resuming into a cache that other weights
  encoded (the compressor was retrained) is refused; ``--reencode`` rebuilds it. Denoisers record
  the hash and sampling refuses a compressor of other weights (``common/provenance.py``).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.dataset import VolumeDataset
from ..data.latent_cache import LatentCache
from ..engine.distributed import discover
from ..engine.export import load_exported
from ..errors import ConfigError
from .common.outputs import store_affine
from .common.provenance import check_cache_matches_export

__all__ = ["encode_store", "encode_from_args", "resolve_export_name", "rank_and_world"]


def _log(msg: str) -> None:
    print(f"[encode] {msg}", flush=True)


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process (torchrun / srun / mpiexec / single)."""
    info = discover(use_mpi=False)
    return info.rank, info.world_size, info.local_rank


def resolve_export_name(run_dir: str | os.PathLike[str], name: str | None, preferred: str = "vae") -> str:
    """The export to use: ``name``, else ``preferred`` when present, else the run's only export."""
    export_dir = Path(run_dir) / "export"
    have = sorted(p.stem for p in export_dir.glob("*.json")) if export_dir.is_dir() else []
    if name:
        return name
    if preferred in have:
        return preferred
    if len(have) == 1:
        return have[0]
    raise ConfigError(f"{export_dir} holds exports {have or 'none'}: pass --name to choose one (train stage A "
                      "to completion first if there is none)")


def _device(requested: str | None, local_rank: int) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def encoding_modalities(requested: Sequence[str] | None, compressor_meta: dict[str, Any]) -> list[str] | None:
    """The modalities to encode: ``requested`` ("all" = every one), else those the compressor was trained on
    (its run's ``data.modalities``), else every modality of the store (None)."""
    if requested:
        return None if list(requested) == ["all"] else list(requested)
    trained = ((compressor_meta.get("config") or {}).get("data") or {}).get("modalities")
    return list(trained) if trained else None


def _remove_cache(out: Path) -> None:
    """Delete a latent cache for --reencode (only something that is one: never another folder)."""
    LatentCache(out, mode="r")  # raises StoreError when ``out`` is not a latent cache
    shutil.rmtree(out)


def encode_store(run_dir: str | os.PathLike[str], store: str | os.PathLike[str], out: str | os.PathLike[str],
                 name: str | None = None, split: str | None = None, batch_size: int = 1,
                 device: str | None = None, dtype: str = "float16", modalities: Sequence[str] | None = None,
                 reencode: bool = False) -> Path:
    """Encode ``store`` (one split or all, the compressor's modalities unless ``modalities``) into the
    latent cache ``out``; returns ``out``. ``reencode`` replaces an existing cache at ``out``."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    rank, world, local_rank = rank_and_world()
    dev = _device(device, local_rank)
    name = resolve_export_name(run_dir, name)
    model, meta = load_exported(run_dir, name, dev)
    if not hasattr(model, "encode_latent"):
        raise ConfigError(f"export {name!r} of {run_dir} ({meta.get('factory')}) is not a compressor: it has no "
                          "encode_latent(); pass the stage-A run and its compressor export")
    mods = encoding_modalities(modalities, meta)
    ds = VolumeDataset(store, split=split, modalities=mods)
    if reencode and world > 1:
        raise ConfigError("--reencode replaces the cache: run it with one process, then resume with several")
    if reencode and Path(out).exists():
        _log(f"--reencode: removing the old latent cache {out}")
        _remove_cache(Path(out))
    latent_shape = tuple(int(s) for s in model.latent_shape(ds.shape))
    scale = meta.get("latent_scale")
    extra: dict[str, Any] = {
        "compressor_run": str(Path(run_dir).resolve()), "compressor_export": name,
        "compressor_factory": meta.get("factory"), "volume_shape": list(ds.shape),
        "affine": store_affine(store).tolist(), "metadata_stats": {k: dict(v) for k, v in ds.metadata_stats.items()},
        "label_names": list(ds.label_names), "encoded_split": split, "modalities": mods,
        "compressor_sha256": meta.get("weights_sha256"),
        "scale_source": "export (training split)" if scale is not None else "cache",
    }
    if (Path(out) / "zarr.json").exists():
        old = LatentCache(out, mode="r").info
        check_cache_matches_export(out, old, meta.get("weights_sha256"), run_dir, name)
        if old.get("modalities", mods) != mods:
            raise ConfigError(f"{out} holds latents of modalities {old.get('modalities') or 'all'}, this call encodes "
                              f"{mods or 'all'}: use a new --out, or --reencode")
    cache = LatentCache.create(out, n=len(ds), latent_shape=latent_shape, scale_factor=scale,
                               source_store=str(Path(store).resolve()), dtype=dtype, **extra)
    pending = [i for i in cache.pending() if i % world == rank]
    skipped = len(ds) // world + (1 if rank < len(ds) % world else 0) - len(pending)
    _log(f"rank {rank}/{world}: {len(pending)} of {len(ds)} volumes to encode with {run_dir}/export/{name} on {dev}"
         + (f" ({skipped} already written, skipped)" if skipped else ""))
    t0 = time.perf_counter()
    model_dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for start in range(0, len(pending), batch_size):
            idx = pending[start:start + batch_size]
            items = [ds[i] for i in idx]
            x = torch.stack([it["image"] for it in items]).to(dev, model_dtype)
            mu = model.encode_latent(x).float().cpu().numpy()
            for i, it, z in zip(idx, items, mu):
                cache.write_item(i, z, it)
    dt = time.perf_counter() - t0
    if world == 1 and cache.scale_factor is None:
        s = cache.estimate_scale_factor()
        cache.set_scale_factor(s)
        _log(f"no latent scale in the export: estimated s_z = {s:.5g} from the cache (1 / std of the latents)")
    elif world > 1 and cache.scale_factor is None and rank == 0:
        _log("no latent scale in the export and several ranks: after all ranks finish, run "
             f"`bsynth encode` once more with one process on {out} to set it")
    s = cache.scale_factor
    _log(f"rank {rank}: wrote {len(pending)} latents of shape {latent_shape} in {dt:.1f} s to {out}"
         + (f" (s_z = {s:.5g})" if s is not None else ""))
    return Path(out)


def encode_from_args(args: Any) -> int:
    """Entry point of `bsynth encode` (see bsynth_hpc/cli.py)."""
    encode_store(args.run, args.store, args.out, name=getattr(args, "name", None), split=getattr(args, "split", None),
                 batch_size=int(getattr(args, "batch_size", 1) or 1), device=getattr(args, "device", None),
                 modalities=getattr(args, "modality", None), reencode=bool(getattr(args, "reencode", False)))
    return 0
