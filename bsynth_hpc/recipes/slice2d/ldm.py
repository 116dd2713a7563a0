"""Stage ``slice2d-ldm``: 2D latent diffusion on the slice VAE's latents (seed 001 §III.B.2-3, seed 004 §V).

``recipe.mode`` chooses the seed:

* ``unconditional`` (001): U-Net preset ``slice001_unet`` (sinusoidal time embedding -> 512, levels
  [64, 128, 256], two residual blocks with time-conditional GroupNorm, attention at 8^2, dropout
  0.1); ε-MSE + ``lambda_freq`` · FFT loss (001: 0.1; ``fft_mode``: ``amplitude`` compares |FFT|
  magnitudes, ``complex`` is 001's Eq. 4 as printed, which equals the MSE by Parseval, see
  :mod:`bsynth_hpc.losses.frequency`), latent CutMix with probability ``cutmix_prob`` (001: 0.25;
  :mod:`bsynth_hpc.diffusion.cutmix`), AdamW 2e-4 with the engine's warm-up (001: 1000 steps), EMA.
* ``conditional`` (004): U-Net preset ``slice004_unet`` with a class embedding for ``classes``
  (default normal, tumour: the store's labels), label dropout ``cfg_dropout_prob`` (004: 0.1) for
  classifier-free guidance, class-balanced mini-batches (``balanced``, the data layer's
  ``GroupBalancedSampler`` over the classes), EMA. Slices of other labels are never drawn.

Both: DDPM with the ``recipe.diffusion`` schedule (default Nichol's cosine, T = 1000; 001's printed
``cosine_ramp`` is selectable), ε-prediction, DDIM 50 (η = 0) at sampling time on the "leading" timestep
grid (980, 960, ..., 0; a DDIM step from t = 999, where the cosine ᾱ is ~1e-7, blows x̂0 up). CutMix mixes the
clean latents and their noise with one box before noising (equivalent to mixing z_t at equal t), its
box and partner drawn from a generator seeded by the batch's per-sample seeds and the step (the
same mixing on resume). Validation reports the plain diffusion loss (no FFT term, no CutMix, no
dropout), so ablation arms compare on one scale. Data, balanced sampling, EMA, export and the
info file (RUN/slice2d_info.json) come from the shared
:class:`~bsynth_hpc.recipes.common.ldm_stage.LatentDiffusionStage`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ...configtools import Overrides, require, to_plain
from ...diffusion import DiffusionConfig, SamplingConfig, latent_cutmix
from ...engine.export import read_sidecar
from ...engine.stage import Batch, StepContext
from ...errors import ConfigError
from ...losses.frequency import fft_loss
from ...models.conditioning import Conditioning
from ...models.unet3d import UNet3dConfig, build_unet3d, unet3d_config
from ..common.ldm_stage import LatentDiffusionConfig, LatentDiffusionStage, config_from_record, open_latent_cache

UNET_FACTORY = "unet3d"  # registry name (bsynth_hpc.models); the preset sets spatial_dims=2
MODES = ("unconditional", "conditional")
INFO_FILE = "slice2d_info.json"

__all__ = ["Slice2dLDMConfig", "Slice2dLDMStage", "load_slice2d_info", "step_generator", "MODES"]


def _default_diffusion() -> DiffusionConfig:
    """DDPM, Nichol's cosine, T = 1000; DDIM 50, η = 0, on the "leading" grid (t = 980, 960, ..., 0): the cosine
    schedule's ᾱ at t = 999 is about 1e-7, so a DDIM step from there divides ε̂'s error by sqrt(ᾱ) ~ 3e-4 and
    the deterministic trajectory never recovers from that x̂0."""
    return DiffusionConfig(scheduler="ddpm", beta_schedule="cosine", num_train_timesteps=1000,
                           sampling=SamplingConfig(solver="ddim", steps=50, eta=0.0, timestep_spacing="leading"))


@dataclass
class Slice2dLDMConfig(LatentDiffusionConfig):
    """recipe: section of slice2d-ldm (defaults: seed 001); shared fields in LatentDiffusionConfig."""

    mode: Literal["unconditional", "conditional"] = "unconditional"
    classes: tuple[str, ...] = ("normal", "tumour")
    """The conditional mode's classes (store labels), in class-id order."""
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    unet_preset: str = "slice001_unet"
    unet: Overrides[UNet3dConfig] = field(default_factory=Overrides)
    """UNet3dConfig overrides (base_channels, channel_mult, attention_levels, ...)."""
    lambda_freq: float = 0.0
    """Weight of the FFT loss (001: 0.1; 0 = ε-MSE only)."""
    fft_mode: Literal["amplitude", "complex"] = "amplitude"
    cutmix_prob: float = 0.0
    """Latent CutMix probability (001: 0.25; 0 = off)."""
    lr: float = 2e-4
    weight_decay: float = 0.0
    early_stop: float | None = None
    """Default ‖ε̂‖ threshold of adaptive early stopping at sampling time (001: 0.05; None = off)."""

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.lambda_freq >= 0, f"{where}.lambda_freq must be >= 0")
        require(0.0 <= self.cutmix_prob <= 1.0, f"{where}.cutmix_prob must lie in [0, 1]")
        require(self.early_stop is None or self.early_stop > 0, f"{where}.early_stop must be > 0 (or null)")
        distinct = len(self.classes) >= 1 and len(set(self.classes)) == len(self.classes)
        require(self.mode == "unconditional" or distinct,
                f"{where}.classes must be distinct label names, got {list(self.classes)}")
        try:
            cfg = unet3d_config(self.unet_preset, **self.unet)
            cfg.validate(f"{where}.unet")
        except TypeError as exc:
            raise ConfigError(f"{where}.unet: {exc}") from exc
        require(cfg.spatial_dims == 2, f"{where}.unet_preset {self.unet_preset!r}: the slice denoiser needs a 2D "
                                       "preset (slice001_unet, slice004_unet) or unet.spatial_dims=2")


def step_generator(sample_seeds: torch.Tensor, step: int, device: torch.device) -> torch.Generator:
    """A generator seeded by the batch's per-sample seeds and the step (resume-exact draws)."""
    seed = int((sample_seeds.detach().cpu().long() * 1000003).sum().item()) % (2 ** 62)
    return torch.Generator(device=device).manual_seed(seed + 7919 * int(step))


class Slice2dLDMStage(LatentDiffusionStage):
    """slice2d-ldm: see the module docstring."""

    name = "slice2d-ldm"
    config_class = Slice2dLDMConfig
    val_metric = "diffusion_loss"
    val_mode = "min"
    model_name = "unet"
    phase_name = "denoiser"
    factory = UNET_FACTORY
    single_contrast = True
    info_file = INFO_FILE

    def __init__(self, config: Slice2dLDMConfig, info: Any):
        super().__init__(config, info)
        if len(self.latent_shape) != 3:
            raise ConfigError(f"{config.latents} holds latents of shape {self.latent_shape}, not 2D slice latents "
                              "(C, H, W): encode a slice store with a slice2d-vae run")
        vocab = list(self.cache_meta.get("label_names") or [])
        self.conditional = config.mode == "conditional"
        lookup = torch.full((max(len(vocab), 1) + 1,), -1, dtype=torch.long)  # last entry: unlabelled (-1)
        if self.conditional:
            missing = [c for c in config.classes if c not in vocab]
            if missing:
                raise ConfigError(f"recipe.classes {missing} are not labels of {config.latents} (its store's labels: "
                                  f"{vocab or 'none'}); set recipe.classes to labels the store has")
            for k, name in enumerate(config.classes):
                lookup[vocab.index(name)] = k
        self.lookup = lookup

    # ------------------------------------------------------------------ model
    @property
    def classes(self) -> list[str]:
        return list(self.config.classes) if self.conditional else []

    def model_kwargs(self) -> dict[str, Any]:
        c: Slice2dLDMConfig = self.config
        kw = dict(c.unet)
        kw.setdefault("in_channels", self.latent_shape[0])
        kw["num_classes"] = len(self.classes)
        if self.conditional and c.cfg_dropout_prob is not None:
            kw["class_dropout_prob"] = c.cfg_dropout_prob
        return {"preset": c.unet_preset, **to_plain(kw)}

    def build_denoiser(self) -> nn.Module:
        kw = self.model_kwargs()
        return build_unet3d(kw.pop("preset"), **kw)

    # ------------------------------------------------------------------ conditions and balance
    def class_ids(self, store_labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Store label ids -> class index in ``recipe.classes`` (-1 for other labels / unlabelled)."""
        ids = torch.as_tensor(store_labels, dtype=torch.long)
        ids = torch.where(ids < 0, torch.full_like(ids, len(self.lookup) - 1), ids)
        return self.lookup.to(ids.device)[ids]

    def conditions(self, batch: Batch, device: torch.device) -> Conditioning:
        """``{"class": id}`` in the conditional mode (other labels: the null class), else none."""
        if not self.conditional:
            return {}
        y = self.class_ids(torch.as_tensor(batch["label"])).to(device)
        return {"class": torch.where(y < 0, torch.full_like(y, len(self.classes)), y)}

    def balance_groups(self, dataset: Any) -> list[int]:
        """Conditional: the class (-1 for other labels: never drawn); unconditional: one group."""
        if not self.conditional:
            return [0] * len(dataset)
        groups = self.class_ids(dataset.label_ids).tolist()
        if not any(g >= 0 for g in groups):
            raise ConfigError(f"no slice of {self.config.latents} has one of the labels {self.classes}")
        return groups

    def sampling_weights(self, dataset: Any) -> Sequence[float] | None:
        """Class-balanced draws in the conditional mode; uniform shuffling in the unconditional one."""
        return super().sampling_weights(dataset) if self.conditional else None

    # ------------------------------------------------------------------ losses
    def objective_terms(self, batch: Batch, ctx: StepContext, salt: str, training: bool) -> dict[str, torch.Tensor]:
        """(B,) ``eps_mse`` (the configured diffusion norm), ``fft`` when weighted, and ``loss``; CutMix,
        the FFT term and CFG dropout only when ``training``."""
        c: Slice2dLDMConfig = self.config
        z0 = batch["latent"].to(ctx.device, ctx.compute_dtype)
        model = ctx.models[self.model_name]
        cond = self.conditions(batch, z0.device)
        if training and cond:
            cond = self._cfg_dropout(model, cond, ctx)
        noise = ctx.randn(z0.shape[1:], salt=f"{salt}-noise", dtype=z0.dtype)
        if training and c.cutmix_prob > 0:
            mixed = latent_cutmix(z0, noise, p=c.cutmix_prob, generator=step_generator(ctx.sample_seeds, ctx.step,
                                                                                      z0.device))
            z0, noise = mixed.tensors
        nb = self.objective.draw(z0, noise=noise, u=ctx.rand(salt=f"{salt}-t"))
        pred = model(nb.x_t, nb.model_t, cond)
        terms = {"eps_mse": self.objective.loss(pred, nb, reduction="per_sample")}
        loss = terms["eps_mse"]
        if training and c.lambda_freq > 0:
            terms["fft"] = fft_loss(pred, nb.target, mode=c.fft_mode, reduction="per_sample")
            loss = loss + c.lambda_freq * terms["fft"]
        terms["loss"] = loss
        return terms

    def diffusion_loss(self, batch: Batch, ctx: StepContext, salt: str, dropout: bool) -> torch.Tensor:
        return self.objective_terms(batch, ctx, salt, training=dropout)["loss"]

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        terms = self.objective_terms(batch, ctx, "train", training=True)
        return {k: v.mean() for k, v in terms.items()}

    # ------------------------------------------------------------------ export
    def export_sidecar(self) -> dict[str, Any]:
        return {"recipe": "slice2d", "mode": self.config.mode, "classes": self.classes}

    def info_contents(self) -> dict[str, Any]:
        return {"stage": self.name, "export": self.model_name, "mode": self.config.mode, "classes": self.classes,
                "latent_scale": self.cache_meta.get("scale_factor"), "early_stop": self.config.early_stop,
                **self.shared_sidecar()}


def load_slice2d_info(run_dir: str | Path) -> dict[str, Any]:
    """What sampling needs besides the weights (mode, classes, diffusion config, latent geometry, the
    compressor run), from the export sidecar's resolved config and the latent cache it names."""
    sidecar = Path(run_dir) / "export" / "unet.json"
    if not sidecar.is_file():
        raise ConfigError(f"{sidecar} not found: train the slice2d-ldm stage to completion first (it exports 'unet')")
    meta = read_sidecar(sidecar)
    if meta.get("recipe") != "slice2d":
        raise ConfigError(f"{run_dir} is not a slice2d-ldm run (its export names recipe {meta.get('recipe')!r})")
    cfg = config_from_record(Slice2dLDMConfig, dict(meta.get("config", {}).get("recipe", {})), "recipe")
    cache = open_latent_cache(cfg.latents) if cfg.latents and Path(cfg.latents).exists() else {}
    return {"mode": cfg.mode, "classes": list(meta.get("classes") or []), "diffusion": cfg.diffusion,
            "early_stop": cfg.early_stop, "latent_shape": [int(s) for s in meta["latent_shape"]],
            "latent_scale": meta.get("latent_scale") or cache.get("scale_factor"),
            "compressor_run": cfg.compressor_run or meta.get("compressor_run") or cache.get("compressor_run"),
            "compressor_export": meta.get("compressor_export") or cache.get("compressor_export", "vae"),
            "slice_shape": meta.get("volume_shape") or cache.get("volume_shape"),
            "compressor_sha256": meta.get("compressor_sha256") or cache.get("compressor_sha256"),
            "modalities": list(meta.get("modalities") or cfg.modalities or []), "latents": cfg.latents,
            "sidecar": meta}
