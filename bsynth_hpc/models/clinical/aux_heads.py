"""The two auxiliary clinical networks of seed 002 §2.4 ("3D network for clinical-info classification and
regression"): 3D ResNet-18 backbones whose 3x3x3 convolutions are depth-wise separable, global average
pooling, and a task head - (i) two AD/CN logits trained with cross-entropy, (ii) six regional volumes
trained with MSE. They are trained first on real volumes, then frozen (:meth:`ClinicalAuxHeads.freeze`):
during VAE-GAN training only their losses reach the generator (:meth:`ClinicalAuxHeads.losses`).

ResNet-18 = BasicBlock x [2, 2, 2, 2] at widths 64/128/256/512, strides 1/2/2/2, after a 7x7x7 stride-2
stem and a 3x3x3 stride-2 max-pool (He et al. 2016, 3D as in Hara et al. / MedicalNet); the stem stays a
standard convolution (one input channel). GroupNorm stands for BatchNorm (small batches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpointing import CheckpointedBlock
from .embedding import NUM_ROIS, split_clinical
from .xception import conv3x3x3, group_norm

__all__ = ["SeparableBasicBlock3d", "SeparableResNet3d", "ClinicalAuxHeads"]


class SeparableBasicBlock3d(CheckpointedBlock):
    """ResNet BasicBlock with depth-wise separable 3x3x3 convolutions and a 1x1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_channels, out_channels, stride=stride)
        self.norm1 = group_norm(out_channels)
        self.conv2 = conv3x3x3(out_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels else
                         nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       group_norm(out_channels)))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class SeparableResNet3d(nn.Module):
    """(B, C, X, Y, Z) -> (B, out_features): 3D ResNet (BasicBlock x ``blocks``) + GAP + Linear."""

    def __init__(self, out_features: int, widths: tuple[int, ...] = (64, 128, 256, 512),
                 blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 1) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} differ in length")
        self.stem = nn.Sequential(nn.Conv3d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                                  group_norm(widths[0]), nn.ReLU(), nn.MaxPool3d(3, stride=2, padding=1))
        layers, width = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(SeparableBasicBlock3d(width, w, stride=2 if i > 0 and j == 0 else 1))
                width = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3, 4)))


class ClinicalAuxHeads(nn.Module):
    """The AD/CN classifier and the 6-ROI regressor: x -> (logits (B, 2), rois (B, 6))."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 in_channels: int = 1, num_classes: int = 2, num_rois: int = NUM_ROIS) -> None:
        super().__init__()
        self.classifier = SeparableResNet3d(num_classes, widths, blocks, in_channels)
        self.regressor = SeparableResNet3d(num_rois, widths, blocks, in_channels)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(x), self.regressor(x)

    def losses(self, x: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cls``: cross-entropy of the logits against c's label bit; ``reg``: MSE of the ROI predictions
        against c's six ratios (L_cls and L_reg of 002 eq. 2; also the heads' own training losses)."""
        rois, label = split_clinical(c)
        logits, pred = self(x)
        return {"cls": F.cross_entropy(logits.float(), label), "reg": F.mse_loss(pred.float(), rois.float())}

    def freeze(self) -> "ClinicalAuxHeads":
        """Fix the heads for VAE-GAN training: no parameter takes gradient and the module stays in eval
        mode (:meth:`train` is then a no-op), so the generator's updates leave them bit-identical."""
        self.requires_grad_(False)
        self.frozen = True
        return super().train(False)

    def train(self, mode: bool = True) -> "ClinicalAuxHeads":
        return super().train(False if self.frozen else mode)
