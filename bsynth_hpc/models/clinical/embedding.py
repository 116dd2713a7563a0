"""The MLP that embeds the 7-D clinical vector c (six ROI ratios + AD/CN bit), seed 002 §2.4.

One class for the three places 002 reads c through an MLP, each with its own weights: the encoder's
"MLP embedding of the clinical vector" concatenated with the flattened image features, the conditional
prior's "small MLP (FC) that reads embedded c", and the decoder's mapping c -> style code w.
"""
from __future__ import annotations

import torch
from torch import nn

from ...vocabulary import CLINICAL_DIM, CLINICAL_ROI_FIELDS

__all__ = ["CLINICAL_DIM", "NUM_ROIS", "LABEL_INDEX", "ClinicalMLP", "split_clinical"]

NUM_ROIS = len(CLINICAL_ROI_FIELDS)
"""The six regional volume ratios come first in the vector (``CLINICAL_ROI_FIELDS`` order) ..."""
LABEL_INDEX = NUM_ROIS
"""... and the AD/CN label bit (0 = CN, 1 = AD) last."""


def split_clinical(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c (B, 7) -> (ROI ratios (B, 6), label (B,) long: 1 where the bit is above 0.5)."""
    if c.dim() != 2 or c.shape[1] != CLINICAL_DIM:
        raise ValueError(f"clinical vector must be (B, {CLINICAL_DIM}), got {tuple(c.shape)}")
    return c[:, :NUM_ROIS], (c[:, LABEL_INDEX] > 0.5).long()


class ClinicalMLP(nn.Module):
    """c (B, in_dim) -> (B, out_dim): ``layers`` Linear layers with LeakyReLU(0.2) between them (and after the
    last one when ``final_activation``, as an embedding feeding further layers)."""

    def __init__(self, out_dim: int, hidden: int | None = None, layers: int = 2, in_dim: int = CLINICAL_DIM,
                 final_activation: bool = True) -> None:
        super().__init__()
        if layers < 1 or out_dim < 1 or in_dim < 1:
            raise ValueError(f"ClinicalMLP: layers={layers}, out_dim={out_dim}, in_dim={in_dim} must be >= 1")
        hidden = hidden or out_dim
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods.append(nn.Linear(a, b))
            if i < layers - 1 or final_activation:
                mods.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*mods)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if c.dim() != 2 or c.shape[1] != self.in_dim:
            raise ValueError(f"clinical vector must be (B, {self.in_dim}), got {tuple(c.shape)}")
        return self.net(c.to(self.net[0].weight.dtype))
