"""LPIPS on tri-planar 2D slices (seed 002 §3: 32 slices per plane, 96 per volume, averaged per
volume; seed 003 §2.5.7 reports LPIPS for reconstructions; seed 000 §3 uses LPIPS with ImageNet
AlexNet features).

The network and its input preparation are `bsynth_hpc.nn.lpips` (`load_lpips`, `lpips_input`),
shared with the perceptual training loss; the slices are `bsynth_hpc.slicing.triplanar_slices`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nn.lpips import lpips_input
from ..slicing import DEFAULT_PER_PLANE, triplanar_slices

__all__ = ["lpips_slices", "triplanar_lpips"]


def _prepare(stack: np.ndarray, device: torch.device | str) -> torch.Tensor:
    return lpips_input(torch.as_tensor(np.asarray(stack), dtype=torch.float32, device=device)[:, None])


@torch.inference_mode()
def lpips_slices(model: nn.Module, a: np.ndarray, b: np.ndarray, device: torch.device | str = "cpu",
                 batch_size: int = 32) -> np.ndarray:
    """LPIPS of each pair of slices in two stacks (k, H, W) with intensities in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"slice stacks differ in shape: {a.shape} vs {b.shape}")
    out = []
    for i in range(0, a.shape[0], batch_size):
        x, y = _prepare(a[i:i + batch_size], device), _prepare(b[i:i + batch_size], device)
        out.append(model(x, y, normalize=True).flatten().double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def triplanar_lpips(model: nn.Module, a: np.ndarray, b: np.ndarray, per_plane: int = DEFAULT_PER_PLANE,
                    device: torch.device | str = "cpu") -> float:
    """Per-volume LPIPS: the mean over tri-planar slice pairs (seed 002 §3)."""
    sa, sb = triplanar_slices(a, per_plane), triplanar_slices(b, per_plane)
    values = np.concatenate([lpips_slices(model, sa[p], sb[p], device) for p in sa])
    return float(values.mean())
