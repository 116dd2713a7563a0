"""The VAE-GAN objectives of Stage A (seed 003 §2.5.1, seed 000 §3.1 eq. 5 and §5.1).

    L_VAE = lambda_rec L_recon + lambda_KL L_KL + lambda_perc L_perc + lambda_adv L_adv^G
    L_D   = L_adv^D

Training alternates: the autoencoder minimises L_VAE with the discriminator fixed, then the
discriminator minimises L_D on the detached reconstruction. Before the adversarial phase
starts (000 trains 100 epochs without it) pass no discriminator logits: the term is left out.

Weight presets (``LOSS_PRESETS``):
* ``tle`` (seed 000 §5.1): L1 1.0, LPIPS 0.6, KL 1e-6, adversarial 0.02.
* ``wfdm`` (seed 003): 003 gives no values and follows the VAE-GAN strategy of MAISI (Guo et al.
  2025), so MAISI's published autoencoder settings are used: L1 1.0, perceptual 0.3, KL 1e-7,
  adversarial 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .adversarial import (ADVERSARIAL_KINDS, AdversarialKind, Logits, discriminator_adversarial_loss,
                          generator_adversarial_loss)
from .kl import kl_loss
from .reconstruction import ReconKind, reconstruction_loss

__all__ = ["VAEGANWeights", "LOSS_PRESETS", "VAEGANLoss"]


@dataclass(frozen=True)
class VAEGANWeights:
    """lambda of each term of L_VAE."""

    recon: float = 1.0
    kl: float = 1e-7
    perceptual: float = 0.3
    adversarial: float = 0.1

    def validate(self, where: str = "loss weights") -> None:
        for name in ("recon", "kl", "perceptual", "adversarial"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}={getattr(self, name)} must be >= 0")


LOSS_PRESETS: dict[str, VAEGANWeights] = {
    "wfdm": VAEGANWeights(recon=1.0, kl=1e-7, perceptual=0.3, adversarial=0.1),
    "tle": VAEGANWeights(recon=1.0, kl=1e-6, perceptual=0.6, adversarial=0.02),
}


class VAEGANLoss(nn.Module):
    """Combiner of the Stage-A terms; every method returns a dict of named terms (``total`` is
    the one to minimise, the others are detached for logging)."""

    def __init__(self, weights: VAEGANWeights | str = "wfdm", perceptual: nn.Module | None = None,
                 adversarial: AdversarialKind = "bce", recon: ReconKind = "l1") -> None:
        """``perceptual`` is e.g. a :class:`~.perceptual.SlicePerceptualLoss`; required when its weight is > 0."""
        super().__init__()
        if isinstance(weights, str):
            if weights not in LOSS_PRESETS:
                raise ConfigError(f"unknown loss preset {weights!r}: use one of {', '.join(LOSS_PRESETS)}")
            weights = LOSS_PRESETS[weights]
        weights.validate()
        if weights.perceptual > 0 and perceptual is None:
            raise ConfigError(f"perceptual weight {weights.perceptual} > 0 needs a perceptual loss module "
                              "(SlicePerceptualLoss); pass one or set the weight to 0")
        if adversarial not in ADVERSARIAL_KINDS:
            raise ConfigError(f"adversarial={adversarial!r}: use one of {', '.join(ADVERSARIAL_KINDS)}")
        self.weights = weights
        self.perceptual = perceptual
        self.adversarial = adversarial
        self.recon_kind = recon

    def generator_loss(self, target: torch.Tensor, recon: torch.Tensor, posterior: Any,
                       fake_logits: Logits | None = None) -> dict[str, torch.Tensor]:
        """L_VAE terms: ``recon``, ``kl``, ``perceptual`` (when weighted), ``adv_g`` (when logits of
        D(recon) are given) and the weighted ``total``. ``posterior`` has .mean/.logvar or is a pair."""
        w = self.weights
        terms = {"recon": reconstruction_loss(recon, target, self.recon_kind), "kl": kl_loss(posterior)}
        total = w.recon * terms["recon"] + w.kl * terms["kl"]
        if w.perceptual > 0 and self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, target)
            total = total + w.perceptual * terms["perceptual"]
        if fake_logits is not None:
            terms["adv_g"] = generator_adversarial_loss(fake_logits, self.adversarial)
            total = total + w.adversarial * terms["adv_g"]
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total
        return out

    def discriminator_loss(self, real_logits: Logits, fake_logits: Logits) -> dict[str, torch.Tensor]:
        """L_D (``total``; also ``adv_d``) and the mean real/fake logits for monitoring."""
        loss = discriminator_adversarial_loss(real_logits, fake_logits, self.adversarial)

        def mean_logit(lg: Logits) -> torch.Tensor:
            maps = [lg] if isinstance(lg, torch.Tensor) else list(lg)
            return torch.stack([m.detach().float().mean() for m in maps]).mean()

        return {"adv_d": loss.detach(), "logit_real": mean_logit(real_logits),
                "logit_fake": mean_logit(fake_logits), "total": loss}
