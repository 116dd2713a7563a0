"""The latent-diffusion stage shared by the recipes (``wfdm-ldm``, ``dit3d``).

Both recipes train one denoiser on the scaled latents of a ``bsynth encode`` cache. This base
class holds what is the same:

* the data: ``LatentDataset(recipe.latents, split)`` restricted to the training contrasts
  (``recipe.modalities``; default: every contrast in the cache, or the single one for a model
  that does not condition on the contrast), refused when the cache's compressor was retrained;
* balanced sampling (``recipe.balanced``): every group of :meth:`balance_groups` (WFDM: the
  target modality, DiT-3D: the class) equally likely; group -1 is never drawn;
* one denoiser (the :meth:`build_denoiser` hook), its EMA (``recipe.ema``) and one optimizer;
* the objective of ``recipe.diffusion`` through ``bsynth_hpc.diffusion`` (``build_process`` /
  ``build_objective``: DDPM or RFlow, epsilon / v / x0 targets, the configured ``loss`` l2 or l1);
* classifier-free-guidance condition dropout through the model's conditioning interface
  (``models.conditioning``: one uniform draw per sample and condition group from the engine's
  per-sample seeds, so the dropped conditions do not depend on the launch layout);
* validation (the per-sample diffusion loss without dropout) and the export of the denoiser with
  a sidecar that names the compressor run, its weights' SHA-256, the latent geometry, the
  diffusion config and the modalities, plus the recipe's info file (``info_file``) in RUN/.

What a recipe states (hooks): its model/phase/factory names, the model kwargs and builder, how
a batch becomes a :data:`~bsynth_hpc.models.conditioning.Conditioning`, the balance groups, its
extra sidecar fields and info-file contents.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...configtools import aliases_of, from_mapping, require, to_plain
from ...constants import MODALITIES, MODALITY_IDS
from ...diffusion import DiffusionConfig, build_objective, build_process
from ...engine.checkpoint import write_json
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...errors import ConfigError
from ...models.conditioning import Conditioning, cfg_dropout
from .provenance import check_cache_is_current
from .stage_utils import bare_module

__all__ = ["LatentDiffusionConfig", "LatentDiffusionStage", "config_from_record", "open_latent_cache"]


def config_from_record(cls: type, recipe: Mapping[str, Any], where: str) -> Any:
    """The ``recipe:`` section recorded in a run (RUN/config.yaml, an export sidecar) as ``cls``, old
    key names (``cls.config_aliases``) read silently: a run trained before a rename still loads. Not
    validated as a training config: a sampler needs the classes and diffusion settings, not the cache."""
    aliases = aliases_of(cls)
    data = {aliases.get(k, k): v for k, v in recipe.items()}
    return from_mapping(cls, data, where, validate=False)


@dataclass
class LatentDiffusionConfig:
    """The ``recipe:`` fields every latent-diffusion stage shares (module docstring); a recipe's
    earlier names for them are its ``config_aliases``."""

    latents: str = ""
    """The latent cache written by `bsynth encode` (required)."""
    compressor_run: str | None = None
    """Stage-A run used at sampling time (default: the one recorded in the latent cache)."""
    modalities: tuple[str, ...] | None = None
    """Contrasts to train on (default: the cache's; see the stage)."""
    balanced: bool = True
    """Balanced draws over the stage's groups (WFDM: target modality, DiT-3D: class); false: uniform."""
    cfg_dropout_prob: float | None = None
    """CFG condition-dropout rate of every condition group (None: the model's own rates)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema: bool = True

    def validate(self, where: str) -> None:
        require(bool(self.latents), f"{where}.latents is required: the latent cache written by `bsynth encode --run "
                                    "RUN_A --store STORE --out LATENTS.zarr` (set recipe.latents=LATENTS.zarr)")
        require(self.lr > 0, f"{where}.lr must be > 0")
        require(self.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
        bad = [m for m in (self.modalities or ()) if m not in MODALITY_IDS]
        require(not bad, f"{where}.modalities {bad} are not modalities; use {', '.join(MODALITY_IDS)}")
        require(self.cfg_dropout_prob is None or 0.0 <= self.cfg_dropout_prob <= 1.0,
                f"{where}.cfg_dropout_prob must lie in [0, 1], got {self.cfg_dropout_prob}")
        self.diffusion.validate(f"{where}.diffusion")


def open_latent_cache(path: str | Path) -> dict[str, Any]:
    """The info of latent cache ``path`` (ConfigError naming the command that writes it when absent)."""
    from ...data.latent_cache import LatentCache  # lazy: zarr-backed cache, only when a stage opens one

    if not Path(path).exists():
        raise ConfigError(f"latent cache {path} does not exist: create it with `bsynth encode --run RUN_A --store "
                          f"STORE.zarr --out {path}`")
    return dict(LatentCache(path, mode="r").info)


class LatentDiffusionStage(Stage):
    """Base of the latent-diffusion stages (module docstring); subclasses fill in the hooks."""

    model_name: ClassVar[str]
    """Name of the denoiser (model, EMA, export)."""
    phase_name: ClassVar[str]
    factory: ClassVar[str]
    """Registry name of the denoiser's factory (``bsynth_hpc.models``)."""
    optimizer_name: ClassVar[str] = "adamw"
    single_contrast: ClassVar[bool] = False
    """The model does not condition on the contrast: train on one (``recipe.modalities`` or the cache's only one)."""
    info_file: ClassVar[str | None] = None
    """RUN/<info_file>: what a sampler or user needs, written with the exports."""

    def __init__(self, config: LatentDiffusionConfig, info: Any):
        super().__init__(config, info)
        self.cache_meta = open_latent_cache(config.latents)
        check_cache_is_current(config.latents, self.cache_meta)
        self.latent_shape = tuple(int(s) for s in self.cache_meta["latent_shape"])
        self.modalities = self.training_modalities()
        if not config.compressor_run and self.cache_meta.get("compressor_run"):
            config.compressor_run = str(self.cache_meta["compressor_run"])  # recorded in RUN/config.yaml + export
        self.process = build_process(config.diffusion)
        self.objective = build_objective(config.diffusion, self.process)

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``factory`` (recorded in the export)."""

    @abstractmethod
    def build_denoiser(self) -> nn.Module:
        """A fresh denoiser following the ``models.conditioning`` interface."""

    @abstractmethod
    def conditions(self, batch: Batch, device: torch.device) -> Conditioning:
        """The batch's conditions, as the denoiser takes them."""

    @abstractmethod
    def balance_groups(self, dataset: Any) -> list[int]:
        """Per-item group of balanced sampling (-1: never drawn)."""

    def export_sidecar(self) -> dict[str, Any]:
        """Recipe-specific sidecar fields of the export."""
        return {}

    def info_contents(self) -> dict[str, Any]:
        """What :attr:`info_file` holds (default: the export's shared sidecar fields)."""
        return self.shared_sidecar()

    # ------------------------------------------------------------------ data
    def training_modalities(self) -> list[str]:
        """``recipe.modalities`` (each must be in the cache), else the cache's contrasts (only one allowed
        for a :attr:`single_contrast` model)."""
        from ...data.latent_cache import LatentDataset  # lazy: zarr-backed cache

        c: LatentDiffusionConfig = self.config
        present = sorted({MODALITIES[i] for i in LatentDataset(c.latents, allow_partial=True).modality_ids},
                         key=MODALITY_IDS.get)
        if c.modalities:
            missing = [m for m in c.modalities if m not in present]
            if missing:
                raise ConfigError(f"recipe.modalities {missing} are not in {c.latents} (it holds {present})")
            return list(c.modalities)
        if self.single_contrast and len(present) > 1:
            raise ConfigError(f"{c.latents} holds latents of {', '.join(present)}, and {self.name} does not condition "
                              "on the contrast, so it would mix contrasts and every sample would have an unknown one: "
                              f"set recipe.modalities=[{present[0]}] or encode one contrast (`bsynth encode --modality "
                              f"{present[0]}`)")
        return present

    def dataset(self, split: str | None):  # type: ignore[override]
        from ...data.latent_cache import LatentDataset  # lazy: zarr-backed cache

        chosen = self.config.modalities or self.single_contrast
        return LatentDataset(self.config.latents, split=split,
                             modality_ids=[MODALITY_IDS[m] for m in self.modalities] if chosen else None)

    def sampling_weights(self, dataset: Any) -> Sequence[float] | None:
        from ...data.samplers import GroupBalancedSampler  # lazy: data layer helpers, only when training

        groups = self.balance_groups(dataset)
        if not any(g >= 0 for g in groups):
            raise ConfigError(f"no item of {self.config.latents} can be drawn by {self.name} (no item is in one of "
                              "its groups)")
        if self.config.balanced:
            return GroupBalancedSampler(groups, ignore=(-1,)).weights.tolist()
        return None if all(g >= 0 for g in groups) else [1.0 if g >= 0 else 0.0 for g in groups]

    # ------------------------------------------------------------------ models and phases
    def build_models(self) -> dict[str, nn.Module]:
        return {self.model_name: self.build_denoiser()}

    def phases(self) -> list[Phase]:
        c: LatentDiffusionConfig = self.config
        return [Phase(self.phase_name, self.model_name,
                      OptimSpec(self.optimizer_name, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay))]

    def ema_models(self) -> tuple[str, ...]:
        return (self.model_name,) if self.config.ema else ()

    # ------------------------------------------------------------------ losses
    def _cfg_dropout(self, model: nn.Module, cond: Conditioning, ctx: StepContext) -> Conditioning:
        """CFG condition dropout: group ``g`` becomes the model's null condition where the sample's
        draw ``ctx.rand(salt="cfg-<g>")`` falls under its rate."""
        return cfg_dropout(bare_module(model), cond, lambda group: ctx.rand(salt=f"cfg-{group}"),
                           self.config.cfg_dropout_prob)

    def diffusion_loss(self, batch: Batch, ctx: StepContext, salt: str, dropout: bool) -> torch.Tensor:
        """(B,) per-sample loss of ``recipe.diffusion`` (its ``loss`` norm) on the batch's latents."""
        z0 = batch["latent"].to(ctx.device, ctx.compute_dtype)
        model = ctx.models[self.model_name]
        cond = self.conditions(batch, z0.device)
        if dropout:
            cond = self._cfg_dropout(model, cond, ctx)
        nb = self.objective.draw(z0, noise=ctx.randn(z0.shape[1:], salt=f"{salt}-noise", dtype=z0.dtype),
                                 u=ctx.rand(salt=f"{salt}-t"))
        pred = model(nb.x_t, nb.model_t, cond)
        return self.objective.loss(pred, nb, reduction="per_sample")

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": self.diffusion_loss(batch, ctx, "train", dropout=True).mean()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {self.val_metric: self.diffusion_loss(batch, ctx, "val", dropout=False)}

    # ------------------------------------------------------------------ export
    def shared_sidecar(self) -> dict[str, Any]:
        """Compressor, latent geometry, diffusion config and modalities: what sampling needs besides weights."""
        meta, compressor = self.cache_meta, self.config.compressor_run
        return {"compressor_run": None if compressor is None else str(Path(compressor).resolve()),
                "compressor_export": meta.get("compressor_export", "vae"),
                "compressor_sha256": meta.get("compressor_sha256"),
                "latents": str(Path(self.config.latents).resolve()), "latent_shape": list(self.latent_shape),
                "latent_scale_cache": meta.get("scale_factor"), "volume_shape": meta.get("volume_shape"),
                "affine": meta.get("affine"), "diffusion": to_plain(self.config.diffusion),
                "modalities": list(self.modalities)}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        if self.info_file and ctx.run_dir is not None:
            write_json(self.info_contents(), Path(ctx.run_dir) / self.info_file)
        # latent_scale: the s_z the model was trained at (sampling divides by it before decoding)
        return [ExportSpec(self.model_name, self.model_name, self.factory, self.model_kwargs(),
                           latent_scale=self.cache_meta.get("scale_factor"),
                           sidecar={**self.shared_sidecar(), **self.export_sidecar()})]
