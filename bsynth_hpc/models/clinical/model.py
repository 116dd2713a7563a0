"""``ClinicalVAEGAN``: the encoder e_phi, conditional prior p(z|c) and clinical-style decoder g_theta of seed 002
(§2.1, Fig. 1), plus the factories of the parts trained beside it (discriminator, auxiliary heads) and the
parameter counts of a config.

API the training stages build on:
  ``encode(x, c) -> (mu_e, logvar_e)``, ``decode(z, c) -> x_hat``, ``prior(c) -> (mu_p, logvar_p)``,
  ``forward(x, c)`` (Algorithm 1 lines 3-4: reparameterised z, reconstruction, both Gaussians) and
  ``generate(c)`` (Algorithm 3: z ~ p(z|c), x_hat = g(z, c)).
Every part is Xavier-uniform initialised (002 §2.5).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..checkpointing import set_activation_checkpointing
from .aux_heads import ClinicalAuxHeads
from .config import ClinicalModelConfig, clinical_preset
from .decoder import ClinicalStyleDecoder3d
from .discriminator import ClinicalPatchDiscriminator
from .init import xavier_init
from .prior import ConditionalPrior, reparameterize
from .xception import XceptionEncoder3d

__all__ = ["StandardNormalPrior", "ClinicalVAEGAN", "build_discriminator", "build_aux_heads", "count_parameters",
           "parameter_counts"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) whatever c is: the prior of the unconditional ablation (no parameters)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = c.new_zeros(c.shape[0], self.latent_dim, dtype=torch.float32)
        return zeros, zeros.clone()


class ClinicalVAEGAN(nn.Module):
    """Encoder, prior and decoder of the clinical VAE-GAN (see the module docstring)."""

    def __init__(self, config: ClinicalModelConfig | str | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = clinical_preset(config or "full", **overrides) if not isinstance(config, ClinicalModelConfig) else config
        cfg.validate()
        self.config = cfg
        self.encoder = XceptionEncoder3d(cfg.image_size, cfg.latent_dim, cfg.encoder_channels, cfg.in_channels,
                                         cfg.flat_channels, cfg.clinical_embed_dim, cfg.clinical_dim, cfg.conditioning,
                                         cfg.separable)
        self.prior: nn.Module = (ConditionalPrior(cfg.latent_dim, cfg.prior_hidden, cfg.clinical_dim)
                                 if cfg.conditioning else StandardNormalPrior(cfg.latent_dim))
        self.decoder = ClinicalStyleDecoder3d(cfg.image_size, cfg.latent_dim, cfg.decoder_channels, cfg.in_channels,
                                              cfg.flat_channels, cfg.w_dim, cfg.mapping_layers, cfg.clinical_dim,
                                              cfg.conditioning, cfg.separable, cfg.output_template)
        xavier_init(self)
        set_activation_checkpointing(self, cfg.checkpointing)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute the encoder/decoder blocks' activations in backward (the engine's planner calls this)."""
        set_activation_checkpointing(self, enabled)

    def factory_kwargs(self) -> dict[str, Any]:
        """Constructor keywords that rebuild this architecture (``ClinicalVAEGAN(ClinicalModelConfig(**kw))``)."""
        return self.config.as_dict()

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x, c): (mu_e, logvar_e), each (B, latent_dim)."""
        return self.encoder(x, c)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """g(z, c): (B, in_channels, S, S, S)."""
        return self.decoder(z, c)

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One pass of Algorithm 1: ``recon``, ``z``, posterior ``mu``/``logvar``, prior ``mu_p``/``logvar_p``."""
        mu, logvar = self.encode(x, c)
        mu_p, logvar_p = self.prior(c)
        z = reparameterize(mu, logvar, generator)
        return {"recon": self.decode(z, c), "z": z, "mu": mu, "logvar": logvar, "mu_p": mu_p, "logvar_p": logvar_p}

    @torch.no_grad()
    def generate(self, c: torch.Tensor, generator: torch.Generator | None = None,
                 z: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 3: z ~ p(z|c) (or the given ``z``), x_hat = g(z, c)."""
        if z is None:
            z = reparameterize(*self.prior(c), generator)
        return self.decode(z, c)


def build_discriminator(config: ClinicalModelConfig) -> ClinicalPatchDiscriminator:
    """The conditional separable PatchGAN of a config, Xavier-initialised."""
    disc = ClinicalPatchDiscriminator(config.discriminator_config(), conditional=config.conditioning,
                                      clinical_dim=config.clinical_dim, separable=config.separable)
    return xavier_init(disc)  # type: ignore[return-value]


def build_aux_heads(config: ClinicalModelConfig) -> ClinicalAuxHeads:
    """The AD/CN classifier and ROI regressor of a config, Xavier-initialised."""
    heads = ClinicalAuxHeads(config.aux_widths, config.aux_blocks, config.in_channels)
    set_activation_checkpointing(heads, config.checkpointing)
    return xavier_init(heads)  # type: ignore[return-value]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: ClinicalModelConfig) -> dict[str, int]:
    """Parameters of each part, built on the meta device (nothing allocated): encoder, prior, decoder,
    vae_gan (those three), discriminator, aux_heads (both ResNets) and total."""
    with torch.device("meta"):
        model, disc, aux = ClinicalVAEGAN(config), build_discriminator(config), build_aux_heads(config)
    counts = {"encoder": count_parameters(model.encoder), "prior": count_parameters(model.prior),
              "decoder": count_parameters(model.decoder)}
    counts["vae_gan"] = sum(counts.values())
    counts["discriminator"] = count_parameters(disc)
    counts["aux_heads"] = count_parameters(aux)
    counts["total"] = counts["vae_gan"] + counts["discriminator"] + counts["aux_heads"]
    return counts
