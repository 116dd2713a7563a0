"""LPIPS(alex, v0.1) from local weights, and the one resize helper for its inputs.

Shared by the perceptual training loss (`bsynth_hpc.losses.perceptual`) and the LPIPS metric
(`bsynth_hpc.eval.lpips_slices`), so both see the same network and the same input preparation.
The ``lpips`` package (Zhang et al. 2018) provides the network and its calibrated linear heads
(shipped inside the package, v0.1). Its AlexNet trunk would normally be downloaded by torchvision;
here it is loaded from a local torchvision ``alexnet`` state dict (``alexnet-owt-7be5be79.pth``),
so nothing touches the network. Images in [0, 1] are repeated to three channels and mapped to
[-1, 1] by the caller (``normalize=True``); images whose short side is below 64 pixels are upsampled
(bilinear) so that every AlexNet stage has a spatial extent.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import (WeightsError, WeightsInfo, load_into, load_state_dict_file, random_weights_info,
                       resolve_weights_path, verify_weights_file)

__all__ = ["ALEXNET_DEFAULT_NAMES", "MIN_SIDE", "alexnet_to_lpips", "load_lpips", "lpips_input"]

ALEXNET_DEFAULT_NAMES: tuple[str, ...] = ("alexnet-owt-7be5be79.pth", "alexnet.pth")
MIN_SIDE = 64
# lpips' AlexNet slices keep torchvision's layer indices: features.i -> slice<k>.i
_ALEX_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def _build_lpips() -> nn.Module:
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)


def alexnet_to_lpips(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision AlexNet ``features.*`` tensors -> keys of lpips' AlexNet trunk (classifier dropped)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        index = int(parts[1])
        if index not in _ALEX_SLICE:
            raise WeightsError(f"unexpected AlexNet layer {key!r}: expected a torchvision alexnet state dict")
        out[f"slice{_ALEX_SLICE[index]}.{index}.{parts[2]}"] = value
    return out


def load_lpips(weights: str | os.PathLike[str] | None, *, sha256: str | None = None, allow_random: bool = False,
               device: torch.device | str = "cpu", flag: str = "--lpips-weights",
               smoke_hint: str = "pass --no-lpips to skip LPIPS, or --allow-random-features (outputs then say so)"
               ) -> tuple[nn.Module, WeightsInfo]:
    """LPIPS(alex, v0.1) with its shipped linear heads and the AlexNet trunk from a local file
    (``$BSYNTH_WEIGHTS_DIR`` when None); ``allow_random`` keeps a random trunk when none is found."""
    model = _build_lpips()
    try:
        path = resolve_weights_path(weights, "AlexNet", ALEXNET_DEFAULT_NAMES, flag, smoke_hint)
    except WeightsError:
        if weights is None and allow_random:
            return model.to(device).eval(), random_weights_info("LPIPS AlexNet trunk")
        raise
    info = verify_weights_file(path, "LPIPS AlexNet trunk", sha256)
    trunk = alexnet_to_lpips(load_state_dict_file(path, "AlexNet"))
    load_into(model.net, trunk, "LPIPS AlexNet trunk", path, hint="expected torchvision's alexnet state dict")
    return model.to(device).eval(), info


def lpips_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) images -> (N, 3, H', W') LPIPS input, short side upsampled (bilinear) to at least
    `MIN_SIDE`; differentiable (the perceptual loss backpropagates through it)."""
    short = min(images.shape[-2:])
    if short < MIN_SIDE:
        scale = MIN_SIDE / short
        size = (max(MIN_SIDE, round(images.shape[-2] * scale)), max(MIN_SIDE, round(images.shape[-1] * scale)))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1)
