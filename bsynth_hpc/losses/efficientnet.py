"""EfficientNet-B0 feature extractor for seed 002's perceptual loss (Table 1: "Perceptual feature loss using
pre-trained EfficientNet-B0 layers"), weights from a local file only.

The architecture is torchvision's ``efficientnet_b0(weights=None)``; its ImageNet weights are read from a
torchvision state dict (``efficientnet_b0_rwightman-7f5810bc.pth``, or ``efficientnet_b0.pth`` /
``.safetensors``) given explicitly or found under ``$BSYNTH_WEIGHTS_DIR`` (:mod:`bsynth_hpc.weights`:
checksum recorded and verified where known; ``torch.load(weights_only=True)`` or safetensors). Nothing is
downloaded; without a file it is a WeightsError unless ``allow_random`` (smoke tests) keeps a random
network. Features are the outputs of ``features[i]`` for ``layers`` (default the five stages ending at
strides 2, 4, 8, 16, 32, like LPIPS's five AlexNet taps); the classifier is dropped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from ..weights import (WeightsError, WeightsInfo, load_into, load_state_dict_file, random_weights_info,
                       resolve_weights_path, verify_weights_file)

__all__ = ["EFFICIENTNET_DEFAULT_NAMES", "EFFICIENTNET_LAYERS", "EfficientNetFeatures", "load_efficientnet_b0"]

EFFICIENTNET_DEFAULT_NAMES: tuple[str, ...] = ("efficientnet_b0_rwightman-7f5810bc.pth", "efficientnet_b0.pth",
                                               "efficientnet_b0.safetensors")
EFFICIENTNET_LAYERS: tuple[int, ...] = (1, 2, 3, 4, 6)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetFeatures(nn.Module):
    """(N, 3, H, W) images in [0, 1] -> the feature maps of ``layers`` (ImageNet normalisation inside)."""

    def __init__(self, features: nn.Sequential, layers: Sequence[int] = EFFICIENTNET_LAYERS) -> None:
        super().__init__()
        self.layers = tuple(sorted(set(int(i) for i in layers)))
        if not self.layers or self.layers[0] < 0 or self.layers[-1] >= len(features):
            raise ValueError(f"EfficientNet layers {layers} must lie in 0..{len(features) - 1}")
        self.features = features[: self.layers[-1] + 1]
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        out = []
        for i, block in enumerate(self.features):
            h = block(h)
            if i in self.layers:
                out.append(h)
        return out


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # header/format errors
            raise WeightsError(f"cannot read EfficientNet-B0 weights {path} as safetensors: {exc}") from exc
    return load_state_dict_file(path, "EfficientNet-B0")


def load_efficientnet_b0(weights: str | os.PathLike[str] | None, *, layers: Sequence[int] = EFFICIENTNET_LAYERS,
                         sha256: str | None = None, allow_random: bool = False,
                         flag: str = "recipe.perceptual_weights=",
                         smoke_hint: str = "set the perceptual loss's allow_random (outputs then say so)"
                         ) -> tuple[EfficientNetFeatures, WeightsInfo]:
    """The frozen-to-be feature extractor and the provenance of its weights (see the module docstring)."""
    from torchvision.models import efficientnet_b0  # torchvision is optional (the eval extra)

    model = efficientnet_b0(weights=None)
    try:
        path = resolve_weights_path(weights, "EfficientNet-B0", EFFICIENTNET_DEFAULT_NAMES, flag, smoke_hint)
    except WeightsError:
        if weights is None and allow_random:
            return EfficientNetFeatures(model.features, layers).eval(), random_weights_info("EfficientNet-B0")
        raise
    info = verify_weights_file(path, "EfficientNet-B0", sha256)
    load_into(model, _read_state(path), "EfficientNet-B0", path,
              hint="expected torchvision's efficientnet_b0 state dict")
    return EfficientNetFeatures(model.features, layers).eval(), info
