"""Stage ``dit3d``: class-conditional DiT-3D latent diffusion on the VAE-GAN's latents (seed 000 §3.2, §5.2).

* Data: ``LatentDataset(recipe.latents, split)`` (written by ``bsynth encode`` with the
  ``dit3d-vae`` run); its labels are ids into the store's label vocabulary (the cache's
  ``label_names``). ``recipe.classes`` (default healthy, TLE) are the model's classes, in that
  order; volumes with other labels (or none) are never drawn.
* Sampling: class-balanced (``balanced: false``, formerly ``class_balanced``, draws uniformly
  among the labelled volumes of those classes).
* Model: :func:`bsynth_hpc.models.dit3d.build_dit3d` (preset ``dit3d-tle``: depth 12, hidden 384,
  6 heads, patch (4, 2, 4), window (4, 4, 4), class token appended to the patch tokens), input
  size and channels read from the cache.
* CFG: labels are replaced by the learnable null ("class dropout") embedding with probability
  ``cfg_dropout_prob`` (formerly ``class_dropout_prob``), one draw per sample from the engine's
  per-sample seeds (the same labels are dropped whatever the launch layout).
* Objective: ``recipe.diffusion`` (``DiffusionConfig``; default DDPM, linear β 1e-4 -> 2e-2,
  T = 1000, ε-prediction, ``loss`` l2 = MSE or l1), Adam at a fixed 1e-4 (000 §5.2).
* Contrast: DiT-3D conditions on the class only, so it trains on one contrast:
  ``recipe.modalities`` (default: those the cache was encoded with; a cache holding several
  modalities and no ``recipe.modalities`` is refused), recorded in the export for the samples.
* Export ``dit``: the model factory + kwargs; the sidecar (RUN/export/dit.json) holds the resolved
  config (diffusion config, class names, compressor run), the modalities and the compressor's
  weights SHA-256 (sampling refuses other compressor weights). ``RUN/dit_info.json`` sums up what
  a sampler or user needs: classes, modalities, latent shape and scale, the compressor run and
  its weights' SHA-256, the export name, the diffusion config.

Data, balanced sampling, training, validation and export come from the shared
:class:`~bsynth_hpc.recipes.common.ldm_stage.LatentDiffusionStage`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ...configtools import require
from ...engine.export import read_sidecar
from ...engine.stage import Batch
from ...errors import ConfigError
from ...models.conditioning import Conditioning
from ...models.dit3d import build_dit3d
from ..common.ldm_stage import LatentDiffusionConfig, LatentDiffusionStage, config_from_record, open_latent_cache

DIT_FACTORY = "dit3d"  # registry name (bsynth_hpc.models)


@dataclass
class DiT3dStageConfig(LatentDiffusionConfig):
    """recipe: section of dit3d (defaults: seed 000 §5.2); the fields shared with the other
    latent-diffusion stages are LatentDiffusionConfig's."""

    config_aliases: ClassVar[dict[str, str]] = {"class_balanced": "balanced", "class_dropout_prob": "cfg_dropout_prob"}
    cfg_dropout_prob: float | None = 0.1
    classes: tuple[str, ...] = ("healthy", "TLE")
    preset: str = "dit3d-tle"
    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    patch_size: tuple[int, int, int] = (4, 2, 4)
    window_size: tuple[int, int, int] = (4, 4, 4)
    window_blocks: tuple[int, ...] | None = None
    mlp_ratio: float = 4.0
    class_conditioning: str = "token"

    def validate(self, where: str) -> None:
        super().validate(where)
        require(len(self.classes) >= 1 and len(set(self.classes)) == len(self.classes),
                f"{where}.classes must be distinct label names, got {list(self.classes)}")


class DiT3dStage(LatentDiffusionStage):
    """dit3d: see the module docstring."""

    name = "dit3d"
    config_class = DiT3dStageConfig
    val_metric = "eps_mse"
    val_mode = "min"
    model_name = "dit"
    phase_name = "dit"
    factory = DIT_FACTORY
    optimizer_name = "adam"
    single_contrast = True
    info_file = "dit_info.json"

    def __init__(self, config: DiT3dStageConfig, info: Any):
        super().__init__(config, info)
        vocab = list(self.cache_meta.get("label_names") or [])
        missing = [c for c in config.classes if c not in vocab]
        if missing:
            raise ConfigError(f"recipe.classes {missing} are not labels of {config.latents} (its store's labels: "
                              f"{vocab or 'none'}); set recipe.classes to labels the store has")
        self.label_names = vocab
        lookup = torch.full((max(len(vocab), 1) + 1,), -1, dtype=torch.long)  # last entry: unlabelled (-1)
        for k, name in enumerate(config.classes):
            lookup[vocab.index(name)] = k
        self.lookup = lookup

    def model_kwargs(self) -> dict[str, Any]:
        c: DiT3dStageConfig = self.config
        kw: dict[str, Any] = dict(preset=c.preset, input_size=list(self.latent_shape[1:]),
                                  in_channels=self.latent_shape[0], depth=c.depth, hidden_size=c.hidden_size,
                                  num_heads=c.num_heads, patch_size=list(c.patch_size),
                                  window_size=list(c.window_size), mlp_ratio=c.mlp_ratio,
                                  num_classes=len(c.classes), class_conditioning=c.class_conditioning)
        if c.cfg_dropout_prob is not None:
            kw["class_dropout_prob"] = c.cfg_dropout_prob
        blocks = c.window_blocks if c.window_blocks is not None else tuple(i for i in (0, 3, 6, 9) if i < c.depth)
        kw["window_blocks"] = list(blocks)
        return kw

    def build_denoiser(self) -> nn.Module:
        return build_dit3d(**self.model_kwargs())

    def class_ids(self, store_labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Store label ids -> class index in ``recipe.classes`` (-1 for other labels / unlabelled)."""
        ids = torch.as_tensor(store_labels, dtype=torch.long)
        ids = torch.where(ids < 0, torch.full_like(ids, len(self.lookup) - 1), ids)
        return self.lookup.to(ids.device)[ids]

    def conditions(self, batch: Batch, device: torch.device) -> Conditioning:
        """``{"class": class id}``; volumes outside ``recipe.classes`` get the null id."""
        y = self.class_ids(torch.as_tensor(batch["label"])).to(device)
        return {"class": torch.where(y < 0, torch.full_like(y, len(self.config.classes)), y)}

    def balance_groups(self, dataset: Any) -> list[int]:
        """Class-balanced draws: the class of ``recipe.classes`` (-1: other labels, never drawn)."""
        classes = self.class_ids(dataset.label_ids).tolist()
        if not any(k >= 0 for k in classes):
            raise ConfigError(f"no volume of {self.config.latents} has one of the labels {list(self.config.classes)}")
        return classes

    def info_contents(self) -> dict[str, Any]:
        return {"stage": self.name, "export": self.model_name, "classes": list(self.config.classes),
                "latent_scale": self.cache_meta.get("scale_factor"), **self.shared_sidecar()}


def load_dit_info(run_dir: str | Path) -> dict[str, Any]:
    """What sampling needs besides the weights: classes, diffusion config, compressor run, affine.

    Read from the export sidecar's resolved config (recipe section; runs trained before the shared
    key names load too) and the latent cache it names."""
    sidecar = Path(run_dir) / "export" / "dit.json"
    if not sidecar.is_file():
        raise ConfigError(f"{sidecar} not found: train the dit3d stage to completion first (it exports 'dit')")
    meta = read_sidecar(sidecar)
    cfg = config_from_record(DiT3dStageConfig, dict(meta.get("config", {}).get("recipe", {})), "recipe")
    cache = open_latent_cache(cfg.latents) if cfg.latents and Path(cfg.latents).exists() else {}
    kwargs = meta.get("factory_kwargs", {})
    try:
        latent_shape = [int(kwargs["in_channels"]), *map(int, kwargs["input_size"])]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{sidecar}: factory_kwargs lack in_channels/input_size; the export is damaged or not "
                          "a dit3d export") from None
    return {"classes": list(cfg.classes), "diffusion": cfg.diffusion, "latent_shape": latent_shape,
            "latent_scale": meta.get("latent_scale") or cache.get("scale_factor"),
            "compressor_run": cfg.compressor_run or cache.get("compressor_run"),
            "compressor_export": cache.get("compressor_export", "vae"),
            "volume_shape": cache.get("volume_shape"), "affine": cache.get("affine"), "sidecar": meta,
            "modalities": list(meta.get("modalities") or cfg.modalities or ["T1w"]),
            "compressor_sha256": meta.get("compressor_sha256") or cache.get("compressor_sha256")}


__all__ = ["DiT3dStageConfig", "DiT3dStage", "load_dit_info", "DIT_FACTORY"]
