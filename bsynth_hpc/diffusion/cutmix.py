"""Latent CutMix (seed 001 §III.B.3): with probability p, a random box of a training latent is
replaced by the same box of another latent of the batch, and the target noise gets the same box.

Where to apply it. 001 mixes z_t. Mixing the clean latents z0 and the noise eps with one box
*before* noising is the same thing at equal timesteps (z_t = sqrt(a) z0 + sqrt(1 - a) eps is
elementwise), and stays consistent when the two samples have different timesteps: the mixed
region of z_t is then noised at the sample's own t and its target is the partner's eps in that
region, which the network can predict. Mixing z_t after noising at different t would ask the
network to predict, at its own t, noise that was injected at the partner's t. So a recipe does::

    mixed = latent_cutmix(z0, noise, p=0.25, generator=g)
    nb = objective.draw(mixed.tensors[0], noise=mixed.tensors[1], u=u)

Boxes (CutMix, Yun et al. 2019): the box covers a fraction r ~ U(0, 1) of the grid, each side
``round(n * r ** (1/d))`` for d spatial axes, centred at a uniform position and clipped to the
grid (so the covered area is at most r). Every sample draws independently whether it is mixed
(Bernoulli(p)); its partner is the next sample of a random cyclic order of the batch (never
itself). A batch of one is never mixed. Works for (B, C, H, W) and (B, C, X, Y, Z).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError

__all__ = ["CutMix", "cutmix_boxes", "latent_cutmix", "CUTMIX_PROB"]

CUTMIX_PROB = 0.25
"""001's mixing probability."""


@dataclass(frozen=True)
class CutMix:
    """The mixed tensors, the (B, 1, *spatial) bool box mask (True = taken from the partner), which
    samples were mixed (B,) and each sample's partner index (B,)."""

    tensors: tuple[torch.Tensor, ...]
    mask: torch.Tensor
    applied: torch.Tensor
    partner: torch.Tensor


def cutmix_boxes(batch: int, spatial: Sequence[int], p: float = CUTMIX_PROB,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask (B, 1, *spatial) bool, applied (B,) bool, partner (B,) long) for one batch (module docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"cutmix probability p={p} must lie in [0, 1]")
    spatial = tuple(int(n) for n in spatial)
    if batch < 1 or not spatial or any(n < 1 for n in spatial):
        raise ValueError(f"cutmix needs a batch >= 1 and a non-empty spatial grid, got {batch} and {spatial}")
    draw = generator.device if generator is not None else torch.device("cpu")
    d = len(spatial)
    applied = (torch.rand(batch, generator=generator, device=draw) < p) & (batch > 1)
    order = torch.randperm(batch, generator=generator, device=draw)
    partner = torch.empty(batch, dtype=torch.long, device=draw)
    partner[order] = order.roll(-1)
    ratio = torch.rand(batch, generator=generator, device=draw, dtype=torch.float64)
    centre = torch.rand(batch, d, generator=generator, device=draw, dtype=torch.float64)
    mask = torch.zeros((batch, 1, *spatial), dtype=torch.bool, device=draw)
    for b in torch.nonzero(applied).flatten().tolist():
        box = []
        for a, n in enumerate(spatial):
            side = int(round(n * float(ratio[b]) ** (1.0 / d)))
            c = int(centre[b, a] * n)
            lo, hi = max(0, c - side // 2), min(n, c - side // 2 + side)
            box.append(slice(lo, hi))
        mask[(b, 0, *box)] = True
    return mask.to(device), applied.to(device), partner.to(device)


def latent_cutmix(*tensors: torch.Tensor, p: float = CUTMIX_PROB,
                  generator: torch.Generator | None = None) -> CutMix:
    """Apply one set of boxes and partners to every tensor (same batch and spatial size; channels may differ)."""
    if not tensors:
        raise ValueError("latent_cutmix needs at least one tensor")
    first = tensors[0]
    if first.ndim < 3:
        raise ValueError(f"latent_cutmix needs (B, C, *spatial) tensors, got shape {tuple(first.shape)}")
    for t in tensors[1:]:
        if t.shape[0] != first.shape[0] or t.shape[2:] != first.shape[2:]:
            raise ValueError(f"latent_cutmix: shape {tuple(t.shape)} does not match {tuple(first.shape)} in batch "
                             "and spatial size")
    mask, applied, partner = cutmix_boxes(first.shape[0], first.shape[2:], p, generator, first.device)
    mixed = tuple(torch.where(mask, t[partner], t) for t in tensors)
    return CutMix(mixed, mask, applied, partner)
