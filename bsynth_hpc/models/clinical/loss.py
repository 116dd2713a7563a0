"""Seed 002's training objective (eq. 2, Table 1, Algorithm 1):

    L_total = lambda_rec L_rec + lambda_KL KL(q(z|x,c) || p(z|c)) + lambda_adv L_adv + lambda_perc L_perc
              + lambda_cls L_cls + lambda_reg L_reg,
    lambda_rec 10, lambda_KL 0.1, lambda_adv 1, lambda_perc 20, lambda_cls 1, lambda_reg 1 (§2.1),

with L_rec the L1 voxel error, L_perc the EfficientNet-B0 slice loss, L_cls / L_reg the frozen auxiliary
heads' cross-entropy / MSE on the reconstruction and L_adv the conditional PatchGAN's loss. 002 does not
name the adversarial form; the project's default ``bce`` (non-saturating) is used, ``hinge``/``lsgan`` are
options. This is :class:`~bsynth_hpc.losses.vaegan.VAEGANLoss` with the learned prior and the two
auxiliary terms added: the KL from p(z|c) is the standard-normal KL of the posterior expressed in the
prior's coordinates, ((mu - mu_p) / sigma_p, sigma^2 / sigma_p^2), which is exactly
KL(N(mu, sigma^2) || N(mu_p, sigma_p^2)), so the parent computes every shared term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError
from ...losses.adversarial import AdversarialKind, Logits
from ...losses.vaegan import VAEGANLoss, VAEGANWeights

__all__ = ["ClinicalLossWeights", "ClinicalVAEGANLoss", "relative_posterior"]


@dataclass(frozen=True)
class ClinicalLossWeights(VAEGANWeights):
    """lambda of each term of 002 eq. 2 (defaults: 002 §2.1)."""

    recon: float = 10.0
    kl: float = 0.1
    perceptual: float = 20.0
    adversarial: float = 1.0
    cls: float = 1.0
    reg: float = 1.0

    def validate(self, where: str = "loss weights") -> None:
        super().validate(where)
        for name in ("cls", "reg"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}={getattr(self, name)} must be >= 0")


def relative_posterior(mean: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor,
                       prior_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q = N(mean, exp(logvar)) in the coordinates u = (z - mu_p) / sigma_p of p = N(mu_p, exp(prior_logvar)):
    KL(q || p) equals the KL of the returned (mean, logvar) from N(0, I)."""
    return (mean - prior_mean) * torch.exp(-0.5 * prior_logvar), logvar - prior_logvar


class ClinicalVAEGANLoss(VAEGANLoss):
    """Generator objective (eq. 2) and discriminator loss of the clinical VAE-GAN."""

    def __init__(self, weights: ClinicalLossWeights | None = None, perceptual: nn.Module | None = None,
                 adversarial: AdversarialKind = "bce") -> None:
        super().__init__(weights or ClinicalLossWeights(), perceptual, adversarial, "l1")

    def generator_loss(self, target: torch.Tensor, recon: torch.Tensor,  # type: ignore[override]
                       posterior: tuple[torch.Tensor, torch.Tensor], prior: tuple[torch.Tensor, torch.Tensor],
                       fake_logits: Logits | None = None,
                       aux: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Terms ``recon``, ``kl`` (of ``posterior`` (mu_e, logvar_e) from ``prior`` (mu_p, logvar_p)),
        ``perceptual``, ``adv_g`` (with logits of D(recon, c)), ``cls``/``reg`` (the frozen heads' losses on the
        reconstruction, from ``aux``) and the weighted ``total``. Unlike the parent, the prior is the 4th argument."""
        out = super().generator_loss(target, recon, relative_posterior(*posterior, *prior), fake_logits)
        total = out["total"]
        w: ClinicalLossWeights = self.weights  # type: ignore[assignment]
        for name in ("cls", "reg"):
            if aux is not None and name in aux:
                out[name] = aux[name].detach()
                total = total + getattr(w, name) * aux[name]
        out["total"] = total
        return out
