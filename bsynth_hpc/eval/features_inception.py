"""InceptionV3 pool3 features (2048-d) of 2D slices, for the 2D-slice FID of seeds 000 and 001.

Seed 000 (§4 "Fréchet Inception Distance", Tables 1-2) embeds 2D slices of the 3D volumes with a
pretrained InceptionV3; seed 001 (§III.C) does the same on 2D slices. The network is
torchvision's ``Inception3`` architecture; its weights come from a local file in either standard
format:

* ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port of the TensorFlow FID graph,
  1008-class head): the pool branches of Mixed_5b-7c are switched to the TF graph's variants
  (average pools that exclude padding, a max pool in Mixed_7c), as pytorch-fid does, so the
  features are the reference FID features;
* ``inception_v3_google-0cc3c7bd.pth`` (torchvision's ImageNet weights, 1000-class head, with or
  without the auxiliary head).

Slices in [0, 1] are resized to 299x299 (bilinear), repeated to three channels and mapped to
[-1, 1], the input range both weight sets expect; features are the global average pool of
Mixed_7c.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.inception import (
    BasicConv2d,
    Inception3,
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from ..weights import (
    WeightsError,
    WeightsInfo,
    load_into,
    load_state_dict_file,
    random_weights_info,
    resolve_weights_path,
    verify_weights_file,
)

INCEPTION_DEFAULT_NAMES: tuple[str, ...] = ("pt_inception-2015-12-05-6726825d.pth", "inception_v3_google-0cc3c7bd.pth")
FEATURE_DIM = 2048
INPUT_SIZE = 299


class _FIDInceptionA(InceptionA):
    """InceptionA with the TF graph's pool branch (average pool excluding padding)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = super()._forward(x)
        outs[-1] = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return outs


class _FIDInceptionC(InceptionC):
    """InceptionC with the TF graph's pool branch (average pool excluding padding)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = super()._forward(x)
        outs[-1] = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return outs


class _FIDInceptionE1(InceptionE):
    """Mixed_7b of the TF graph: average pool excluding padding."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = super()._forward(x)
        outs[-1] = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return outs


class _FIDInceptionE2(InceptionE):
    """Mixed_7c of the TF graph: max pool in the pool branch."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = super()._forward(x)
        outs[-1] = self.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return outs


def build_inception(variant: str = "torchvision") -> Inception3:
    """torchvision's Inception3 without heads; ``variant="fid"`` uses the TF-FID pool branches."""
    if variant == "fid":
        blocks = [BasicConv2d, _FIDInceptionA, InceptionB, _FIDInceptionC, InceptionD, _FIDInceptionE1, InceptionAux]
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False, inception_blocks=blocks)
        net.Mixed_7c = _FIDInceptionE2(2048)
    elif variant == "torchvision":
        net = Inception3(num_classes=1000, aux_logits=False, init_weights=False)
    else:
        raise WeightsError(f"unknown Inception variant {variant!r}: use 'fid' or 'torchvision'")
    net.fc = nn.Identity()
    net.dropout = nn.Identity()
    return net


class InceptionExtractor(nn.Module):
    """Pool3 features (N, 2048) of grayscale slices (N, 1, H, W) with intensities in [0, 1]."""

    def __init__(self, variant: str = "torchvision"):
        super().__init__()
        self.variant = variant
        self.net = build_inception(variant)
        self.feature_dim = FEATURE_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected slices of shape (N, 1, H, W), got {tuple(x.shape)}")
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x.repeat(1, 3, 1, 1) - 1.0
        n = self.net
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        return torch.flatten(n.avgpool(x), 1)


def load_inception(weights: str | os.PathLike[str] | None, *, sha256: str | None = None, allow_random: bool = False,
                   device: torch.device | str = "cpu") -> tuple[InceptionExtractor, WeightsInfo]:
    """The pool3 extractor with weights from a local file (``$BSYNTH_WEIGHTS_DIR`` when None).

    The file's head size picks the variant (1008 classes: pytorch-fid's FID weights; 1000:
    torchvision's). Without a file, ``allow_random`` keeps a random torchvision network (smoke tests);
    otherwise a WeightsError says where to put the file.
    """
    try:
        path = resolve_weights_path(weights, "InceptionV3", INCEPTION_DEFAULT_NAMES, "--inception-weights")
    except WeightsError:
        if weights is None and allow_random:
            return InceptionExtractor("torchvision").to(device).eval(), random_weights_info("InceptionV3")
        raise
    info = verify_weights_file(path, "InceptionV3", sha256)  # before unpickling anything
    state = load_state_dict_file(path, "InceptionV3")
    head = state.get("fc.weight")
    variant = "fid" if head is not None and head.shape[0] == 1008 else "torchvision"
    network = "InceptionV3 (pytorch-fid FID weights)" if variant == "fid" else "InceptionV3 (torchvision)"
    info = dataclasses.replace(info, network=network)
    extractor = InceptionExtractor(variant)
    body = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    load_into(extractor.net, body, network, path, hint="expected a torchvision/pytorch-fid InceptionV3 state dict")
    return extractor.to(device).eval(), info


@torch.inference_mode()
def extract_inception_features(extractor: InceptionExtractor, slices: Iterable[np.ndarray], batch_size: int = 32,
                               device: torch.device | str = "cpu") -> np.ndarray:
    """Pool3 features (N, 2048) in float64 of 2D slices (H, W) in [0, 1]."""
    feats: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).to(device=device, dtype=torch.float32).unsqueeze(1)
        feats.append(extractor(x).double().cpu().numpy())
        batch.clear()

    for s in slices:
        batch.append(np.asarray(s, dtype=np.float32))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(feats, axis=0) if feats else np.zeros((0, FEATURE_DIM))
