"""Stage ``dit3d``: class-conditional DiT-3D latent diffusion on the VAE-GAN's latents (seed 000 §3.2, §5.2).

* Data: ``LatentDataset(recipe.latents, split)`` (written by ``bsynth encode`` with the
  ``dit3d-vae`` run); its labels are ids into the store's label vocabulary (the cache's
  ``label_names``). ``recipe.classes`` (default healthy, TLE) are the model's classes, in that
  order; volumes with other labels (or none) are never drawn.
* Sampling: class-balanced (``ClassBalancedSampler``'s weights; ``class_balanced: false`` draws
  uniformly among the labelled volumes of those classes).
* Model: :func:`bsynth_hpc.models.dit3d.build_dit3d` (preset ``dit3d-tle``: depth 12, hidden 384,
  6 heads, patch (4, 2, 4), window (4, 4, 4), class token appended to the patch tokens), input
  size and channels read from the cache.
* CFG: labels are replaced by the learnable null ("class dropout") embedding with probability
  ``class_dropout_prob`` via ``DiT3d.drop_labels`` with a generator seeded from the batch's
  per-sample seeds (reproducible whatever the launch layout).
* Objective: ``recipe.diffusion`` (``DiffusionConfig``; default DDPM, linear β 1e-4 -> 2e-2,
  T = 1000, ε-prediction, MSE), Adam at a fixed 1e-4 (000 §5.2).
* Contrast: DiT-3D conditions on the class only, so it trains on one contrast:
  ``recipe.modalities`` (default: those the cache was encoded with; a cache holding several
  modalities and no ``recipe.modalities`` is refused), recorded in the export for the samples.
* Export ``dit``: the model factory + kwargs; the sidecar (RUN/export/dit.json) holds the resolved
  config (diffusion config, class names, compressor run), the modalities and the compressor's
  weights SHA-256 (sampling refuses other compressor weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ...diffusion import DiffusionConfig, build_objective, build_process
from ...engine.configtools import require
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...constants import MODALITIES, MODALITY_IDS
from ...errors import ConfigError
from ..common.provenance import check_cache_is_current

DIT_FACTORY = "dit3d"  # registry name (bsynth_hpc.models)


@dataclass
class DiT3dStageConfig:
    """recipe: section of dit3d (defaults: seed 000 §5.2)."""

    latents: str = ""
    classes: tuple[str, ...] = ("healthy", "TLE")
    class_balanced: bool = True
    compressor_run: str | None = None
    modalities: tuple[str, ...] | None = None
    """Contrasts to train on (default: the cache's; several in one cache must be chosen explicitly)."""
    preset: str = "dit3d-tle"
    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    patch_size: tuple[int, int, int] = (4, 2, 4)
    window_size: tuple[int, int, int] = (4, 4, 4)
    window_blocks: tuple[int, ...] | None = None
    mlp_ratio: float = 4.0
    class_conditioning: str = "token"
    class_dropout_prob: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 0.0
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def validate(self, where: str) -> None:
        require(bool(self.latents), f"{where}.latents is required: the latent cache written by `bsynth encode --run "
                                    "RUN_VAE --store STORE --out LATENTS.zarr` (set recipe.latents=LATENTS.zarr)")
        require(len(self.classes) >= 1 and len(set(self.classes)) == len(self.classes),
                f"{where}.classes must be distinct label names, got {list(self.classes)}")
        require(self.lr > 0, f"{where}.lr must be > 0")
        bad = [m for m in (self.modalities or ()) if m not in MODALITY_IDS]
        require(not bad, f"{where}.modalities {bad} are not modalities; use {', '.join(MODALITY_IDS)}")
        self.diffusion.validate(f"{where}.diffusion")


def cache_info(path: str | Path) -> dict[str, Any]:
    from ...data.latent_cache import LatentCache

    if not Path(path).exists():
        raise ConfigError(f"latent cache {path} does not exist: create it with `bsynth encode --run RUN_VAE --store "
                          f"STORE.zarr --out {path}`")
    return dict(LatentCache(path, mode="r").info)


class DiT3dStage(Stage):
    """dit3d: see the module docstring."""

    name = "dit3d"
    config_class = DiT3dStageConfig
    val_metric = "eps_mse"
    val_mode = "min"

    def __init__(self, config: DiT3dStageConfig, info: Any):
        super().__init__(config, info)
        meta = cache_info(config.latents)
        self.cache_meta = meta
        self.latent_shape = tuple(int(s) for s in meta["latent_shape"])
        vocab = list(meta.get("label_names") or [])
        missing = [c for c in config.classes if c not in vocab]
        if missing:
            raise ConfigError(f"recipe.classes {missing} are not labels of {config.latents} (its store's labels: "
                              f"{vocab or 'none'}); set recipe.classes to labels the store has")
        self.label_names = vocab
        check_cache_is_current(config.latents, meta)
        self.modalities = training_modalities(config, meta)
        if not config.compressor_run and meta.get("compressor_run"):
            config.compressor_run = str(meta["compressor_run"])  # recorded in RUN/config.yaml and the export
        lookup = torch.full((max(len(vocab), 1) + 1,), -1, dtype=torch.long)  # last entry: unlabelled (-1)
        for k, name in enumerate(config.classes):
            lookup[vocab.index(name)] = k
        self.lookup = lookup
        self.process = build_process(config.diffusion)
        self.objective = build_objective(config.diffusion, self.process)

    def model_kwargs(self) -> dict[str, Any]:
        c: DiT3dStageConfig = self.config
        kw: dict[str, Any] = dict(preset=c.preset, input_size=list(self.latent_shape[1:]),
                                  in_channels=self.latent_shape[0], depth=c.depth, hidden_size=c.hidden_size,
                                  num_heads=c.num_heads, patch_size=list(c.patch_size),
                                  window_size=list(c.window_size), mlp_ratio=c.mlp_ratio,
                                  num_classes=len(c.classes), class_conditioning=c.class_conditioning,
                                  class_dropout_prob=c.class_dropout_prob)
        blocks = c.window_blocks if c.window_blocks is not None else tuple(i for i in (0, 3, 6, 9) if i < c.depth)
        kw["window_blocks"] = list(blocks)
        return kw

    def build_models(self) -> dict[str, nn.Module]:
        from ...models.dit3d import build_dit3d

        return {"dit": build_dit3d(**self.model_kwargs())}

    def phases(self) -> list[Phase]:
        c: DiT3dStageConfig = self.config
        return [Phase("dit", "dit", OptimSpec("adam", lr=c.lr, weight_decay=c.weight_decay))]

    def ema_models(self) -> tuple[str, ...]:
        return ("dit",)

    def dataset(self, split: str | None):  # type: ignore[override]
        from ...data.latent_cache import LatentDataset

        return LatentDataset(self.config.latents, split=split,
                             modality_ids=[MODALITY_IDS[m] for m in self.modalities])

    def class_ids(self, store_labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Store label ids -> class index in ``recipe.classes`` (-1 for other labels / unlabelled)."""
        ids = torch.as_tensor(store_labels, dtype=torch.long)
        ids = torch.where(ids < 0, torch.full_like(ids, len(self.lookup) - 1), ids)
        return self.lookup.to(ids.device)[ids]

    def sampling_weights(self, dataset: Any) -> Sequence[float] | None:
        from ...data.samplers import ClassBalancedSampler

        classes = self.class_ids(dataset.label_ids).tolist()
        if not any(k >= 0 for k in classes):
            raise ConfigError(f"no volume of {self.config.latents} has one of the labels {list(self.config.classes)}")
        if self.config.class_balanced:
            return ClassBalancedSampler(classes).weights.tolist()
        return [1.0 if k >= 0 else 0.0 for k in classes]

    def _eps_mse(self, batch: Batch, ctx: StepContext, salt: str, drop: bool) -> torch.Tensor:
        z0 = batch["latent"]
        y = self.class_ids(batch["label"].to(z0.device) if torch.is_tensor(batch["label"])
                           else torch.tensor(batch["label"], device=z0.device))
        model = ctx.models["dit"]
        bare = getattr(model, "module", model)
        null = torch.full_like(y, bare.null_id)
        y = torch.where(y < 0, null, y)
        if drop:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(int(batch["sample_seed"].long().sum().item()) & 0x7FFFFFFFFFFFFFFF)
            y = bare.drop_labels(y.cpu(), generator=gen).to(z0.device)
        nb = self.objective.draw(z0, noise=ctx.randn(z0.shape[1:], salt=f"{salt}-eps", dtype=z0.dtype),
                                 u=ctx.rand(salt=f"{salt}-t"))
        out = model(nb.x_t, nb.model_t, y)
        return ((out.float() - nb.target.float()) ** 2).flatten(1).mean(1)

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": self._eps_mse(batch, ctx, "train", drop=True).mean()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"eps_mse": self._eps_mse(batch, ctx, "val", drop=False)}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        # latent_scale: the s_z the model was trained at (sampling divides by it before decoding)
        return [ExportSpec("dit", "dit", DIT_FACTORY, self.model_kwargs(),
                           latent_scale=self.cache_meta.get("scale_factor"),
                           sidecar={"modalities": list(self.modalities),
                                    "compressor_sha256": self.cache_meta.get("compressor_sha256")})]


def training_modalities(config: DiT3dStageConfig, cache_meta: Mapping[str, Any]) -> list[str]:
    """The contrasts the dit3d stage trains on: ``recipe.modalities``, else the single one in the cache."""
    from ...data.latent_cache import LatentDataset

    present = sorted({MODALITIES[i] for i in LatentDataset(config.latents, allow_partial=True).modality_ids},
                     key=MODALITY_IDS.get)
    if config.modalities:
        missing = [m for m in config.modalities if m not in present]
        if missing:
            raise ConfigError(f"recipe.modalities {missing} are not in {config.latents} (it holds {present})")
        return list(config.modalities)
    if len(present) > 1:
        raise ConfigError(f"{config.latents} holds latents of {', '.join(present)}, and DiT-3D conditions on the class "
                          "only, so it would mix contrasts and every sample would have an unknown one: set "
                          f"recipe.modalities=[{present[0]}] or encode one contrast (`bsynth encode --modality "
                          f"{present[0]}`)")
    return present


def load_dit_info(run_dir: str | Path) -> dict[str, Any]:
    """What sampling needs besides the weights: classes, diffusion config, compressor run, affine.

    Read from the export sidecar's resolved config (recipe section) and the latent cache it names."""
    from ...engine.export import read_sidecar

    sidecar = Path(run_dir) / "export" / "dit.json"
    if not sidecar.is_file():
        raise ConfigError(f"{sidecar} not found: train the dit3d stage to completion first (it exports 'dit')")
    meta = read_sidecar(sidecar)
    recipe = dict(meta.get("config", {}).get("recipe", {}))
    cfg = DiT3dStageConfig(**{k: v for k, v in recipe.items() if k != "diffusion"})
    cfg.diffusion = DiffusionConfig.from_dict(recipe.get("diffusion") or {})
    cache = cache_info(cfg.latents) if cfg.latents and Path(cfg.latents).exists() else {}
    kwargs = meta.get("factory_kwargs", {})
    try:
        latent_shape = [int(kwargs["in_channels"]), *map(int, kwargs["input_size"])]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{sidecar}: factory_kwargs lack in_channels/input_size; the export is damaged or not "
                          "a dit3d export") from None
    out = {"classes": list(cfg.classes), "diffusion": cfg.diffusion, "latent_shape": latent_shape,
           "latent_scale": meta.get("latent_scale") or cache.get("scale_factor"),
           "compressor_run": cfg.compressor_run or cache.get("compressor_run"),
           "compressor_export": cache.get("compressor_export", "vae"),
           "volume_shape": cache.get("volume_shape"), "affine": cache.get("affine"), "sidecar": meta,
           "modalities": list(meta.get("modalities") or cfg.modalities or ["T1w"]),
           "compressor_sha256": meta.get("compressor_sha256") or cache.get("compressor_sha256")}
    return out


__all__ = ["DiT3dStageConfig", "DiT3dStage", "load_dit_info", "DIT_FACTORY"]
