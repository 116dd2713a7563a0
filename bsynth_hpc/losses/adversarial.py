"""Adversarial losses on discriminator logit maps (seed 003 §2.5.1, seed 000 eq. 2).

``bce`` (the form of 003 §2.5.1, non-saturating generator), with D(v) = sigmoid(logit):
    L_D = -1/2 (E[log D(v)] + E[log(1 - D(v_hat))]) = 1/2 (E[softplus(-l_real)] + E[softplus(l_fake)])
    L_G = -E[log D(v_hat)]                         = E[softplus(-l_fake)]
``hinge``: L_D = 1/2 (E[relu(1 - l_real)] + E[relu(1 + l_fake)]),  L_G = -E[l_fake]
``lsgan``: L_D = 1/2 (E[(l_real - 1)^2] + E[l_fake^2]),            L_G = E[(l_fake - 1)^2]

E is the mean over every patch logit and the batch; a list of logit maps (multi-scale
discriminators) averages the per-map losses. Computed in float32.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

__all__ = ["AdversarialKind", "ADVERSARIAL_KINDS", "generator_adversarial_loss", "discriminator_adversarial_loss"]

AdversarialKind = Literal["bce", "hinge", "lsgan"]
ADVERSARIAL_KINDS: tuple[str, ...] = ("bce", "hinge", "lsgan")
Logits = torch.Tensor | Sequence[torch.Tensor]


def _maps(logits: Logits) -> list[torch.Tensor]:
    maps = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not maps:
        raise ValueError("no discriminator logits given")
    return [m.float() for m in maps]


def _check(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"adversarial loss kind={kind!r}: use one of {', '.join(ADVERSARIAL_KINDS)}")


# Kept over monai.losses.PatchAdversarialLoss: its bce is sigmoid + BCELoss (log clamped at -100: fake logits
# [-2, 0, 25, 1] give L_D 13.0 instead of 3.62 and zero gradient at 25), its hinge squashes logits with tanh
# (L_G 0.80 instead of -E[l] = -6.0); its least_squares with no_activation_leastsq equals our lsgan (tested).
def generator_adversarial_loss(fake_logits: Logits, kind: AdversarialKind = "bce") -> torch.Tensor:
    """L_G on the discriminator's logits for reconstructions (see the module docstring)."""
    _check(kind)
    terms = []
    for lf in _maps(fake_logits):
        if kind == "bce":
            terms.append(F.softplus(-lf).mean())
        elif kind == "hinge":
            terms.append(-lf.mean())
        else:
            terms.append((lf - 1.0).square().mean())
    return torch.stack(terms).mean()


def discriminator_adversarial_loss(real_logits: Logits, fake_logits: Logits,
                                   kind: AdversarialKind = "bce") -> torch.Tensor:
    """L_D on the logits for real volumes and (detached) reconstructions."""
    _check(kind)
    reals, fakes = _maps(real_logits), _maps(fake_logits)
    if len(reals) != len(fakes):
        raise ValueError(f"{len(reals)} real vs {len(fakes)} fake logit maps")
    terms = []
    for lr, lf in zip(reals, fakes):
        if kind == "bce":
            terms.append(0.5 * (F.softplus(-lr).mean() + F.softplus(lf).mean()))
        elif kind == "hinge":
            terms.append(0.5 * (F.relu(1.0 - lr).mean() + F.relu(1.0 + lf).mean()))
        else:
            terms.append(0.5 * ((lr - 1.0).square().mean() + lf.square().mean()))
    return torch.stack(terms).mean()
