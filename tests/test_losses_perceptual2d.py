"""The perceptual loss with ``spatial_dims=2``: LPIPS on each channel image itself (no slicing),
checked against the evaluation's per-slice LPIPS computed from numpy stacks (an independent path
through `bsynth_hpc.eval.lpips_slices`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bsynth_hpc.eval.lpips_slices import lpips_slices
from bsynth_hpc.losses.perceptual import SlicePerceptualLoss
from bsynth_hpc.nn.lpips import load_lpips


@pytest.fixture(scope="module")
def random_lpips():
    network, info = load_lpips(None, allow_random=True)
    assert info.random
    return network


def test_2d_loss_is_the_mean_lpips_of_the_channel_images(random_lpips):
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(2, 3, 20, 24, generator=g), torch.rand(2, 3, 20, 24, generator=g)
    loss = SlicePerceptualLoss(network=random_lpips, spatial_dims=2)
    expected = np.mean(lpips_slices(random_lpips, a.reshape(-1, 20, 24).numpy(), b.reshape(-1, 20, 24).numpy()))
    assert loss(a, b).item() == pytest.approx(float(expected), rel=1e-5)
    assert loss(a, a.clone()).item() == 0.0


def test_2d_loss_is_differentiable_and_checks_the_layout(random_lpips):
    g = torch.Generator().manual_seed(8)
    target = torch.rand(1, 1, 16, 16, generator=g)
    recon = (target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_()
    loss = SlicePerceptualLoss(network=random_lpips, spatial_dims=2)
    loss(recon, target).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="images"):
        loss(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="volumes"):
        SlicePerceptualLoss(network=random_lpips)(target, target)
    with pytest.raises(ValueError, match="spatial_dims"):
        SlicePerceptualLoss(network=random_lpips, spatial_dims=1)
