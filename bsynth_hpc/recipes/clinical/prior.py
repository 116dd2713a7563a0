"""Stage ``clinical-prior``: seed 002's diffusion prior p_psi(c) over the 7-D clinical vector (§2.4
"Diffusion Model", Algorithm 2, §2.5).

* Data: the clinical vectors of the training split's clinical T1w volumes (no image is read),
  ROI ratios z-scored with the training split's statistics, label bit 0/1 (002: "encoded as a single
  binary value ... concatenated with the six normalized regional-volume ratios").
* Model: :class:`~bsynth_hpc.models.clinical.ClinicalEpsMLP` (three-layer MLP ε-predictor with a
  timestep embedding), ``hidden`` / ``time_dim`` from the config.
* Objective: DDPM through :mod:`bsynth_hpc.diffusion` (default linear β, T = 1000, ε-prediction,
  MSE on the noise), Adam β (0.5, 0.999) at lr 5e-4 (002 §2.5: every network uses Adam with β1 = 0.5;
  the diffusion prior 5e-4); ReduceLROnPlateau (factor 0.75) and clipping 1.0 are ``engine:`` settings.
* Sampling (``bsynth sample clinical --from-prior``): 500 ancestral DDPM steps by default
  (``recipe.diffusion.sampling``), DDIM for fewer; see :func:`sample_clinical_vectors`.
* Export ``prior``: factory + kwargs, the diffusion config and the normalisation
  (``clinical_stats``), so samples come back as raw ratios.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ...configtools import require, to_plain
from ...diffusion import DiffusionConfig, SamplingConfig, build_objective, build_process, sample
from ...engine.export import load_exported
from ...engine.stage import Batch, ExportContext, ExportSpec, OptimSpec, Phase, Stage, StepContext
from ...errors import ConfigError
from ...models.clinical import ClinicalEpsMLP
from ...vocabulary import CLINICAL_DIM
from .data import LABEL_INDEX, ClinicalNormalizer, ClinicalVectorDataset
from .factories import PRIOR_FACTORY

__all__ = ["ClinicalPriorConfig", "ClinicalPriorStage", "sample_clinical_vectors", "load_prior"]


def _default_diffusion() -> DiffusionConfig:
    return DiffusionConfig(scheduler="ddpm", beta_schedule="linear", num_train_timesteps=1000,
                           sampling=SamplingConfig(solver="ddpm", steps=500))


@dataclass
class ClinicalPriorConfig:
    """``recipe:`` section of clinical-prior (seed 002 §2.4-2.5 defaults)."""

    hidden: int = 256
    time_dim: int = 128
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema: bool = True

    def validate(self, where: str) -> None:
        require(self.hidden >= 1 and self.time_dim >= 2, f"{where}.hidden must be >= 1 and time_dim >= 2")
        require(self.lr > 0, f"{where}.lr must be > 0")
        require(self.diffusion.scheduler == "ddpm", f"{where}.diffusion.scheduler: the clinical prior is a DDPM "
                                                    "(002 §2.4); use scheduler: ddpm")
        require(self.diffusion.prediction_type == "epsilon",
                f"{where}.diffusion.prediction: the clinical prior predicts the noise (002 Algorithm 2); use epsilon")
        self.diffusion.validate(f"{where}.diffusion")


class ClinicalPriorStage(Stage):
    """clinical-prior: see the module docstring."""

    name = "clinical-prior"
    config_class = ClinicalPriorConfig
    val_metric = "diffusion_loss"
    val_mode = "min"

    def __init__(self, config: ClinicalPriorConfig, info: Any):
        super().__init__(config, info)
        self.process = build_process(config.diffusion)
        self.objective = build_objective(config.diffusion, self.process)
        self.normalizer = ClinicalNormalizer.fit(self.dataset(info.data.train_split).vectors)

    def dataset(self, split: str | None) -> Dataset:
        if not self.info.store:
            raise ConfigError("stage clinical-prior reads the clinical vectors of a store: pass --store STORE.zarr")
        return ClinicalVectorDataset(self.info.store, split)

    def model_kwargs(self) -> dict[str, Any]:
        return {"dim": CLINICAL_DIM, "hidden": self.config.hidden, "time_dim": self.config.time_dim}

    def build_models(self) -> dict[str, nn.Module]:
        return {"prior": ClinicalEpsMLP(**self.model_kwargs())}

    def phases(self) -> list[Phase]:
        return [Phase("denoiser", "prior", OptimSpec("adam", lr=self.config.lr, betas=self.config.betas))]

    def ema_models(self) -> tuple[str, ...]:
        return ("prior",) if self.config.ema else ()

    def _per_sample_loss(self, batch: Batch, ctx: StepContext, salt: str) -> torch.Tensor:
        c = self.normalizer.normalize(batch["clinical"].to(ctx.device).float())
        nb = self.objective.draw(c, noise=ctx.randn((CLINICAL_DIM,), salt=f"{salt}-noise", dtype=torch.float32),
                                 u=ctx.rand(salt=f"{salt}-t"))
        return self.objective.loss(ctx.models["prior"](nb.x_t, nb.model_t), nb, reduction="per_sample")

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        per = self._per_sample_loss(batch, ctx, "train")
        return {"loss": per.mean(), "diffusion_loss": per.detach().mean()}

    def validation_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"diffusion_loss": self._per_sample_loss(batch, ctx, "val")}

    def exports(self, models: Mapping[str, nn.Module], ctx: ExportContext) -> list[ExportSpec]:
        return [ExportSpec("prior", "prior", PRIOR_FACTORY, self.model_kwargs(),
                           sidecar={"recipe": "clinical", "clinical_stats": self.normalizer.to_dict(),
                                    "diffusion": to_plain(self.config.diffusion)})]


# ---------------------------------------------------------------------------- sampling (Algorithm 3, stochastic)
def load_prior(run: str | Path, device: torch.device) -> tuple[nn.Module, ClinicalNormalizer, DiffusionConfig]:
    """The exported ε-predictor of a clinical-prior run, its normalisation and diffusion config."""
    model, meta = load_exported(run, "prior", device)
    stats = meta.get("clinical_stats")
    if not stats:
        raise ConfigError(f"{run}/export/prior.json has no clinical_stats: not a clinical-prior export")
    return model, ClinicalNormalizer.from_dict(stats), DiffusionConfig.from_dict(meta.get("diffusion") or {})


def sample_clinical_vectors(model: nn.Module, normalizer: ClinicalNormalizer, diffusion: DiffusionConfig, n: int,
                            generator: torch.Generator, label: float | None = None, steps: int | None = None,
                            solver: str | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` raw clinical vectors (N, 7) drawn from the prior: the label sampled jointly (``label`` None,
    then rounded to 0/1) or fixed to a class.

    A fixed label conditions the draw by replacement on x̂0: at every step the network's ε is corrected
    on the label coordinate so that the predicted clean label is the requested one, and the other six
    features denoise next to it (ancestral DDPM and DDIM alike, through the shared ``sample`` loop)."""
    process = build_process(diffusion)
    solver = solver or diffusion.solver
    steps = steps or diffusion.sampling.steps or None
    fixed = None if label is None else float(label)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        eps = model(x_t, t)
        if fixed is None:
            return eps
        a = process.alpha_bar(t).to(x_t.dtype).reshape(-1)  # type: ignore[attr-defined]
        corrected = (x_t[:, LABEL_INDEX] - a.sqrt() * fixed) / (1.0 - a).clamp_min(1e-12).sqrt()
        return torch.cat([eps[:, :LABEL_INDEX], corrected[:, None], eps[:, LABEL_INDEX + 1:]], dim=1)

    with torch.inference_mode():
        out = sample(model_fn, (n, CLINICAL_DIM), process, steps, solver=solver, generator=generator,
                     eta=diffusion.sampling.eta, spacing=diffusion.sampling.timestep_spacing, device=device)
    c = out.sample.float().clone()
    c[:, LABEL_INDEX] = (c[:, LABEL_INDEX] > 0.5).float() if fixed is None else fixed
    raw = normalizer.denormalize(c)
    raw[:, :LABEL_INDEX] = raw[:, :LABEL_INDEX].clamp_min(0.0)  # ratios are volumes / brain volume
    return raw.cpu()
