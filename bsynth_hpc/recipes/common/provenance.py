"""Which compressor a latent cache, a denoiser and a sample belong to (issue #12: stale latents).

A latent cache records the SHA-256 of the compressor weights that encoded it; the denoiser trained
on that cache records it in its export; sampling decodes only with a compressor of the same
weights. Retraining the compressor (``--resume auto --max-steps`` more) changes the weights and
s_z, so without these checks the old latents were silently reused and decoded with the new decoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...data.latent_cache import LatentCache
from ...engine.export import export_paths, load_exported, read_sidecar
from ...errors import ConfigError, StoreError

__all__ = ["training_store", "export_weights_sha256", "check_cache_matches_export", "check_cache_is_current",
           "check_decoder_matches"]


def training_store(latents: str | Path | None, compressor_meta: Mapping[str, Any]) -> str | None:
    """The volume store behind a denoiser: its latent cache's source store, else the compressor's store."""
    if latents and (Path(latents) / "zarr.json").exists():
        store = LatentCache(latents, mode="r").info.get("source_store")
        if store:
            return str(store)
    store = (compressor_meta.get("config") or {}).get("store")
    return str(store) if store else None


def export_weights_sha256(run_dir: str | Path, name: str) -> str | None:
    """The weights SHA-256 recorded in RUN/export/<name>.json, or None when the export is absent."""
    _, sidecar = export_paths(run_dir, name)
    if not sidecar.is_file():
        return None
    return read_sidecar(sidecar).get("weights_sha256")


def _short(sha: Any) -> str:
    return str(sha)[:12] if sha else "unrecorded"


def check_cache_matches_export(cache_path: str | Path, cache_info: Mapping[str, Any], export_sha: str | None,
                               run_dir: str | Path, name: str) -> None:
    """Refuse to add to (resume) a cache that another compressor's weights encoded."""
    recorded = cache_info.get("compressor_sha256")
    if recorded and export_sha and recorded != export_sha:
        raise StoreError(
            f"{cache_path} was encoded with compressor weights {_short(recorded)}, but {run_dir}/export/{name} now "
            f"holds {_short(export_sha)} (the compressor was retrained): its latents and s_z are stale. Re-encode "
            f"with `bsynth encode ... --out {cache_path} --reencode`, or write a new --out")


def check_cache_is_current(cache_path: str | Path, cache_info: Mapping[str, Any]) -> None:
    """Refuse to train a denoiser on a cache whose compressor run has been retrained since encoding."""
    recorded = cache_info.get("compressor_sha256")
    run, name = cache_info.get("compressor_run"), cache_info.get("compressor_export") or "vae"
    if not recorded or not run or not Path(run).is_dir():
        return
    current = export_weights_sha256(run, name)
    if current and current != recorded:
        raise ConfigError(
            f"recipe.latents={cache_path} was encoded with compressor weights {_short(recorded)}, but {run}/export/"
            f"{name} now holds {_short(current)} (retrained since): re-encode with `bsynth encode --run {run} "
            f"--store STORE --out {cache_path} --reencode` before training the denoiser")


def check_decoder_matches(denoiser_sidecar: Mapping[str, Any], where: str, vae_meta: Mapping[str, Any],
                          compressor_run: str | Path) -> None:
    """Refuse to decode a denoiser's latents with other compressor weights than those it was trained on."""
    recorded = denoiser_sidecar.get("compressor_sha256")
    current = vae_meta.get("weights_sha256")
    if recorded and current and recorded != current:
        raise ConfigError(
            f"{where} was trained on latents of compressor weights {_short(recorded)}, but {compressor_run} holds "
            f"{_short(current)} (retrained or another run): decoding would give wrong volumes. Pass --compressor-run "
            "with the original compressor run, or re-encode and retrain the denoiser")



def load_compressor(denoiser_meta: Mapping[str, Any], where: str, compressor_run: str | Path | None, device: Any,
                    stage: str) -> tuple[Any, dict[str, Any], str]:
    """The stage-A compressor that decodes a denoiser's latents: ``compressor_run`` (``--compressor-run``) or the
    run the denoiser's record names, its export (``compressor_export``, default ``vae``) loaded on ``device``
    and checked against the weights the latents came from. Returns (model, its sidecar, the run used)."""
    run = compressor_run or denoiser_meta.get("compressor_run")
    if not run or not Path(run).is_dir():
        found = f"compressor run {run!r} not found" if run else f"{where}.json records no compressor run"
        raise ConfigError(f"{found}: pass --compressor-run RUN (the {stage} run whose latents trained this model)")
    model, meta = load_exported(run, denoiser_meta.get("compressor_export") or "vae", device)
    check_decoder_matches(denoiser_meta, where, meta, run)
    return model, meta, str(run)
