"""MedicalNet (Med3D) 3D ResNet features for FID/MMD, as seed 003 §2.5.7 computes them.

Seed 003 evaluates synthesis with medmetric: volumes are z-scored, passed through a fixed
pretrained MedicalNet backbone and globally average-pooled, f = F(v) in R^d (512-d for depths
10/18/34, 2048-d for 50). This module builds that backbone from MONAI's ``ResNet`` (its module
names equal MedicalNet's, so released checkpoints load key for key) and then gives it
MedicalNet's geometry, which MONAI's stock configuration does not have: conv1 with stride 2, and
layer3/layer4 with stride 1 and dilation 2/4 (Chen et al. 2019; medmetric's backbone is the same).
Without that change the weights would still load but the features would not be MedicalNet's.

Shortcut types follow the releases: B for depths 10 and 50, A (parameter-free, zero-padded
identity) for 18 and 34. Released checkpoints are ``{"state_dict": {"module.<key>": ...}}``
including the ``conv_seg`` segmentation head, which is dropped here.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from ..weights import (
    WeightsError,
    WeightsInfo,
    load_into,
    load_state_dict_file,
    random_weights_info,
    resolve_weights_path,
    verify_weights_file,
)


@dataclass(frozen=True)
class MedicalNetArch:
    block: str
    layers: tuple[int, int, int, int]
    shortcut: str

    @property
    def feature_dim(self) -> int:
        return 512 * (4 if self.block == "bottleneck" else 1)


MEDICALNET_ARCHS: dict[int, MedicalNetArch] = {
    10: MedicalNetArch("basic", (1, 1, 1, 1), "B"),
    18: MedicalNetArch("basic", (2, 2, 2, 2), "A"),
    34: MedicalNetArch("basic", (3, 4, 6, 3), "A"),
    50: MedicalNetArch("bottleneck", (3, 4, 6, 3), "B"),
}
"""Depth -> block, stage sizes and the shortcut type of the released checkpoints."""

DEFAULT_DEPTH = 50
"""medmetric's default backbone (seed 003 does not name the depth it used)."""


def _dilate_stage(model: ResNet, stage: nn.Sequential, dilation: int) -> None:
    """Turn a MONAI stride-2 stage into MedicalNet's stride-1 dilated stage, in place."""
    for block in stage:
        for conv in block.modules():
            if isinstance(conv, nn.Conv3d) and conv.kernel_size == (3, 3, 3):
                conv.stride = (1, 1, 1)
                conv.dilation = (dilation,) * 3
                conv.padding = (dilation,) * 3
        ds = block.downsample
        if isinstance(ds, nn.Sequential):
            ds[0].stride = (1, 1, 1)
        elif isinstance(ds, functools.partial):
            block.downsample = functools.partial(ds.func, *ds.args, **{**ds.keywords, "stride": 1})


def build_medicalnet_backbone(depth: int = DEFAULT_DEPTH, shortcut: str | None = None) -> ResNet:
    """A randomly initialised MedicalNet backbone (MONAI ResNet in MedicalNet's geometry) returning
    globally average-pooled features of shape (B, feature_dim)."""
    if depth not in MEDICALNET_ARCHS:
        raise WeightsError(f"MedicalNet depth {depth} is not supported: use one of {sorted(MEDICALNET_ARCHS)}")
    arch = MEDICALNET_ARCHS[depth]
    shortcut = (shortcut or arch.shortcut).upper()
    if shortcut not in ("A", "B"):
        raise WeightsError(f"shortcut type {shortcut!r} is not supported: use A or B")
    model = ResNet(block=arch.block, layers=list(arch.layers), block_inplanes=[64, 128, 256, 512], spatial_dims=3,
                   n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, shortcut_type=shortcut,
                   feed_forward=False, bias_downsample=False)
    _dilate_stage(model, model.layer3, 2)
    _dilate_stage(model, model.layer4, 4)
    return model


class MedicalNetExtractor(nn.Module):
    """Pooled MedicalNet features f = F(v) (seed 003 §2.5.7) of z-scored volumes (B, 1, X, Y, Z)."""

    def __init__(self, depth: int = DEFAULT_DEPTH, shortcut: str | None = None):
        super().__init__()
        self.depth = int(depth)
        self.shortcut = (shortcut or MEDICALNET_ARCHS.get(depth, MEDICALNET_ARCHS[DEFAULT_DEPTH]).shortcut).upper()
        self.backbone = build_medicalnet_backbone(depth, self.shortcut)
        self.feature_dim = MEDICALNET_ARCHS[depth].feature_dim

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer4 feature map (B, C, X/8, Y/8, Z/8) before pooling."""
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def zscore_volume(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-volume z-score over all voxels (population std), the MedicalNet input normalisation of
    seed 003 §2.5.7 ("real and synthetic volumes are z-score normalized before feature extraction")."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def medicalnet_default_names(depth: int) -> tuple[str, ...]:
    """Released file names for a depth, preferred first (the 23-dataset weights are the newer release)."""
    return (f"resnet_{depth}_23dataset.pth", f"resnet_{depth}.pth")


def load_medicalnet(weights: str | os.PathLike[str] | None, depth: int = DEFAULT_DEPTH, shortcut: str | None = None,
                    *, sha256: str | None = None, allow_random: bool = False,
                    device: torch.device | str = "cpu") -> tuple[MedicalNetExtractor, WeightsInfo]:
    """Build the extractor and load a MedicalNet checkpoint (released format or a plain state dict).

    ``weights`` None looks in ``$BSYNTH_WEIGHTS_DIR`` for the released file names. When nothing is
    found, ``allow_random`` keeps the random initialisation (smoke tests; the returned info says
    so); otherwise a WeightsError says where to put the file.
    """
    extractor = MedicalNetExtractor(depth, shortcut)
    network = f"MedicalNet-ResNet{depth}"
    try:
        path = resolve_weights_path(weights, "MedicalNet", medicalnet_default_names(depth), "--weights")
    except WeightsError:
        if weights is None and allow_random:
            return extractor.to(device).eval(), random_weights_info(network)
        raise
    info = verify_weights_file(path, network, sha256)
    state = {k: v for k, v in load_state_dict_file(path, network).items()
             if not k.startswith(("conv_seg.", "fc."))}
    load_into(extractor.backbone, state, network, path,
              hint=f"check --depth (this file may be another depth) and the shortcut type (released checkpoints "
                   f"use B for depths 10/50 and A for 18/34; this network uses {extractor.shortcut})")
    return extractor.to(device).eval(), info


@torch.inference_mode()
def extract_medicalnet_features(extractor: MedicalNetExtractor, volumes: Iterable[np.ndarray], batch_size: int = 1,
                                device: torch.device | str = "cpu") -> np.ndarray:
    """Pooled features (N, d) in float64 of volumes (X, Y, Z), each z-scored first."""
    feats: list[np.ndarray] = []
    for batch in _batches(volumes, batch_size):
        x = torch.from_numpy(np.stack(batch)).to(device=device, dtype=torch.float32).unsqueeze(1)
        feats.append(extractor(zscore_volume(x)).double().cpu().numpy())
    if not feats:
        return np.zeros((0, extractor.feature_dim))
    return np.concatenate(feats, axis=0)


def _batches(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(np.asarray(item, dtype=np.float32))
        if len(batch) == max(1, size):
            yield batch
            batch = []
    if batch:
        yield batch
