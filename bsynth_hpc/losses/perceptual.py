"""Perceptual loss on tri-planar 2D slices through LPIPS (seed 000 §3.1 eq. 4 and §5.1: "perceptual
loss computed based on 2D slices fed into a pretrained network of AlexNet", LPIPS weight 0.6;
seed 003 §2.5.1: L_perc = ||Phi(v) - Phi(v_hat)|| with a fixed pretrained extractor).

The network is the evaluation's LPIPS(alex, v0.1) (:func:`bsynth_hpc.nn.lpips.load_lpips`):
linear heads shipped with ``lpips``, AlexNet trunk from a local torchvision state dict (argument
or ``$BSYNTH_WEIGHTS_DIR``); it is frozen and kept in eval mode. A missing trunk is a
WeightsError unless ``allow_random`` (smoke tests only) is set, which keeps a random trunk and
logs a warning.

Slicing: for each plane (sagittal fixes X, coronal Y, axial Z; :mod:`bsynth_hpc.slicing`),
``slices_per_plane`` indices are taken, evenly spaced with the end slices excluded (the
evaluation's ``slice_indices``) or drawn at random each call (``sampling="random"``, better
coverage over training). The same indices slice both volumes. Slices in [0, 1] are repeated to
three channels and mapped to [-1, 1]; a slice whose short side is below 64 pixels is upsampled
(bilinear) so that every AlexNet stage has a spatial extent, as in the evaluation. The loss is
the mean LPIPS over the slices of each plane, averaged over the planes; it is differentiable
with respect to the reconstruction. With ``spatial_dims=2`` the inputs are images (B, C, H, W) and
LPIPS runs on each channel image itself (no slicing): the loss of a 2D recipe.

Seed 002's perceptual loss (:class:`EfficientNetPerceptualLoss`, Table 1: "pre-trained EfficientNet-B0
layers") uses the same slicing (:class:`TriplanarSliceLoss`) with an EfficientNet-B0 feature distance.
"""
from __future__ import annotations

import abc
import logging
import os
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.lpips import load_lpips, lpips_input
from ..slicing import PLANES, plane_axis, slice_indices
from .efficientnet import EFFICIENTNET_LAYERS, load_efficientnet_b0

__all__ = ["TriplanarSliceLoss", "SlicePerceptualLoss", "EfficientNetPerceptualLoss", "lpips_input"]

# Ours, not MONAI PerceptualLoss: its AlexNet LPIPS downloads weights (no local path) and skips [-1, 1] + 64-px resize.

log = logging.getLogger(__name__)


class TriplanarSliceLoss(nn.Module, abc.ABC):
    """A frozen 2D network's image distance averaged over tri-planar slices (the slicing of the module
    docstring); subclasses give the distance of two stacks of one-channel images (N, 1, H, W) in [0, 1]."""

    def __init__(self, network: nn.Module, *, slices_per_plane: int = 8, planes: Sequence[str] = tuple(PLANES),
                 sampling: Literal["even", "random"] = "even", spatial_dims: int = 3) -> None:
        super().__init__()
        self.check_slicing(slices_per_plane, planes, sampling, spatial_dims)
        self.spatial_dims = spatial_dims
        self.planes = tuple(planes)
        self.slices_per_plane = slices_per_plane
        self.sampling = sampling
        self.network = network.eval().requires_grad_(False)

    @staticmethod
    def check_slicing(slices_per_plane: int, planes: Sequence[str], sampling: str, spatial_dims: int) -> None:
        """ValueError for a bad slicing setting (subclasses call it before loading their network)."""
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims}: use 2 (images) or 3 (volumes)")
        if slices_per_plane < 1:
            raise ValueError(f"slices_per_plane={slices_per_plane} must be >= 1")
        if sampling not in ("even", "random"):
            raise ValueError(f"sampling={sampling!r}: use 'even' or 'random'")
        for p in planes:
            plane_axis(p)  # validates the name

    def train(self, mode: bool = True) -> "TriplanarSliceLoss":
        """The network stays in eval mode (its dropout off, normalisation statistics fixed) whatever the caller asks."""
        super().train(mode)
        self.network.eval()
        return self

    def _indices(self, length: int, device: torch.device) -> torch.Tensor:
        if self.sampling == "random" and self.slices_per_plane < length:
            return torch.randperm(length)[: self.slices_per_plane].sort().values.to(device)
        return torch.as_tensor(slice_indices(length, self.slices_per_plane), device=device)

    def _plane_slices(self, x: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
        s = x.index_select(2 + axis, idx).movedim(2 + axis, 2)  # (B, C, k, H, W)
        return s.reshape(-1, 1, *s.shape[-2:])

    @abc.abstractmethod
    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean distance (scalar) of two stacks of one-channel images (N, 1, H, W) in [0, 1]."""

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for volumes (B, C, X, Y, Z) (``spatial_dims=3``; each channel is sliced separately)
        or images (B, C, H, W) (``spatial_dims=2``; each channel is one image), values in [0, 1]."""
        if recon.shape != target.shape or recon.dim() != 2 + self.spatial_dims:
            layout = "volumes (B, C, X, Y, Z)" if self.spatial_dims == 3 else "images (B, C, H, W)"
            raise ValueError(f"perceptual loss (spatial_dims={self.spatial_dims}) needs two {layout} of one shape, "
                             f"got {tuple(recon.shape)} and {tuple(target.shape)}")
        r, t = recon.float(), target.float()
        if self.spatial_dims == 2:
            return self._distance(r.reshape(-1, 1, *r.shape[-2:]), t.reshape(-1, 1, *t.shape[-2:]))
        per_plane = []
        for plane in self.planes:
            axis = plane_axis(plane)
            idx = self._indices(r.shape[2 + axis], r.device)
            per_plane.append(self._distance(self._plane_slices(r, axis, idx), self._plane_slices(t, axis, idx)))
        return torch.stack(per_plane).mean()


class SlicePerceptualLoss(TriplanarSliceLoss):
    """LPIPS between tri-planar slices of a reconstruction and its target (see the module docstring)."""

    def __init__(self, weights: str | os.PathLike[str] | None = None, *, slices_per_plane: int = 8,
                 planes: Sequence[str] = tuple(PLANES), sampling: Literal["even", "random"] = "even",
                 sha256: str | None = None, allow_random: bool = False, network: nn.Module | None = None,
                 weights_option: str = "recipe.perceptual_weights=",
                 allow_random_option: str = "recipe.allow_random_perceptual=true", spatial_dims: int = 3) -> None:
        """``network`` reuses an already loaded LPIPS module (e.g. the evaluation's) instead of loading one;
        ``weights_option``/``allow_random_option`` are the caller's config keys, named in the error when
        no weights are found; ``spatial_dims`` 3 slices volumes, 2 compares images directly."""
        self.check_slicing(slices_per_plane, planes, sampling, spatial_dims)
        weights_info = None
        if network is None:
            network, weights_info = load_lpips(weights, sha256=sha256, allow_random=allow_random, flag=weights_option,
                                               smoke_hint=f"set {allow_random_option} (the export then says so)")
            if weights_info.random:
                log.warning("perceptual loss uses a RANDOM AlexNet trunk (allow_random smoke mode): its values are "
                            "not LPIPS; put alexnet-owt-7be5be79.pth in $BSYNTH_WEIGHTS_DIR for real training")
        super().__init__(network, slices_per_plane=slices_per_plane, planes=planes, sampling=sampling,
                         spatial_dims=spatial_dims)
        self.weights_info = weights_info

    def _lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS of two stacks of one-channel images (N, 1, H, W) in [0, 1]."""
        return self.network(lpips_input(a), lpips_input(b), normalize=True).mean()

    _distance = _lpips


class EfficientNetPerceptualLoss(TriplanarSliceLoss):
    """Seed 002's perceptual loss: EfficientNet-B0 feature distance on tri-planar slices.

    Slices are prepared as for LPIPS (:func:`lpips_input`: three channels, short side >= 64 px); the
    distance is LPIPS's unweighted form on each tapped feature map - features unit-normalised over
    channels, squared difference averaged over channels and positions - summed over the layers.
    Weights come only from a local file (:func:`~.efficientnet.load_efficientnet_b0`).
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None, *, slices_per_plane: int = 8,
                 planes: Sequence[str] = tuple(PLANES), sampling: Literal["even", "random"] = "even",
                 layers: Sequence[int] = EFFICIENTNET_LAYERS, sha256: str | None = None, allow_random: bool = False,
                 weights_option: str = "recipe.perceptual_weights=",
                 allow_random_option: str = "recipe.allow_random_perceptual=true") -> None:
        self.check_slicing(slices_per_plane, planes, sampling, 3)
        network, info = load_efficientnet_b0(weights, layers=layers, sha256=sha256, allow_random=allow_random,
                                             flag=weights_option,
                                             smoke_hint=f"set {allow_random_option} (the export then says so)")
        if info.random:
            log.warning("EfficientNet-B0 perceptual loss uses a RANDOM network (allow_random smoke mode); put "
                        "efficientnet_b0_rwightman-7f5810bc.pth in $BSYNTH_WEIGHTS_DIR for real training")
        super().__init__(network, slices_per_plane=slices_per_plane, planes=planes, sampling=sampling)
        self.weights_info = info

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.network(lpips_input(a)), self.network(lpips_input(b))
        terms = [(F.normalize(x, dim=1, eps=1e-10) - F.normalize(y, dim=1, eps=1e-10)).square().mean()
                 for x, y in zip(fa, fb)]
        return torch.stack(terms).sum()
