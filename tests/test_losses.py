"""Stage-A losses (seed 003 §2.5.1, seed 000 §3.1/§5.1): KL, L1, adversarial, slice LPIPS, combiner."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from bsynth_hpc.errors import ConfigError
from bsynth_hpc.eval.lpips_slices import triplanar_lpips
from bsynth_hpc.nn.lpips import load_lpips
from bsynth_hpc.weights import WEIGHTS_ENV, WeightsError
from bsynth_hpc.losses import (LOSS_PRESETS, VAEGANLoss, VAEGANWeights, discriminator_adversarial_loss,
                               gaussian_kl, generator_adversarial_loss, kl_loss, reconstruction_loss)
from bsynth_hpc.losses.perceptual import SlicePerceptualLoss
from bsynth_hpc.models.autoencoder import DiagonalGaussian


@pytest.fixture(scope="module")
def random_lpips():
    """LPIPS with a random AlexNet trunk (the smoke mode), loaded once."""
    network, info = load_lpips(None, allow_random=True)
    assert info.random
    return network


@pytest.fixture(autouse=True)
def _no_weights_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "empty-weights"))


# ---------------------------------------------------------------------------------------------- KL
def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 3, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, 2, 3, 2, generator=g, dtype=torch.float64)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), ref)
    torch.testing.assert_close(kl_loss(mean, logvar), ref.mean())  # sum over latent elements, mean over batch
    torch.testing.assert_close(kl_loss((mean, logvar)), ref.mean())
    post = DiagonalGaussian(mean, logvar)
    torch.testing.assert_close(post.kl(), ref)
    torch.testing.assert_close(kl_loss(post), ref.mean())
    assert kl_loss(torch.zeros(2, 4, 3, 3, 3), torch.zeros(2, 4, 3, 3, 3)).item() == 0.0


def test_l1_reconstruction_is_the_voxel_mean():
    a, b = torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4)
    b[0, 0, 0, 0, 0] = 2.0
    assert reconstruction_loss(a, b).item() == pytest.approx(2.0 / a.numel())
    assert reconstruction_loss(a, b, "l2").item() == pytest.approx(4.0 / a.numel())


# ---------------------------------------------------------------------------------------------- adversarial
def test_adversarial_losses_for_known_logits():
    zero = torch.zeros(2, 1, 3, 3, 3)
    # D outputs 1/2 everywhere: -log(1/2) for the generator and for the discriminator
    assert generator_adversarial_loss(zero, "bce").item() == pytest.approx(math.log(2))
    assert discriminator_adversarial_loss(zero, zero, "bce").item() == pytest.approx(math.log(2))
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_adversarial_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.0)
    assert discriminator_adversarial_loss(torch.ones(4), torch.zeros(4), "lsgan").item() == 0.0
    assert generator_adversarial_loss(torch.zeros(4), "lsgan").item() == pytest.approx(1.0)


def test_bce_adversarial_matches_binary_cross_entropy():
    """003 §2.5.1: L_D = -1/2(E log D(v) + E log(1 - D(v_hat))), L_G = -E log D(v_hat)."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(2, 1, 4, 4, 4, generator=g) * 3, torch.randn(2, 1, 4, 4, 4, generator=g) * 3
    bce = F.binary_cross_entropy
    d_real, d_fake = torch.sigmoid(real.double()), torch.sigmoid(fake.double())
    expect_d = 0.5 * (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)))
    expect_g = -torch.log(d_fake).mean()
    assert discriminator_adversarial_loss(real, fake).item() == pytest.approx(expect_d.item(), rel=1e-5)
    assert generator_adversarial_loss(fake).item() == pytest.approx(expect_g.item(), rel=1e-5)
    # several logit maps (multi-scale) average their losses
    multi = generator_adversarial_loss([fake, torch.zeros(1, 1, 2, 2, 2)])
    assert multi.item() == pytest.approx(0.5 * (expect_g.item() + math.log(2)), rel=1e-5)
    with pytest.raises(ValueError, match="kind"):
        generator_adversarial_loss(fake, "wgan")



@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_adversarial_losses_agree_with_monai_where_monai_computes_the_same(spatial_dims):
    """MONAI's PatchAdversarialLoss (evaluated for issue 13 item 7): least_squares without its activation is our
    lsgan, its bce is ours on moderate logits; on a saturated logit its sigmoid + BCELoss clamps (why we keep ours)."""
    from monai.losses import PatchAdversarialLoss

    g = torch.Generator().manual_seed(2)
    shape = (2, 1) + (4,) * spatial_dims
    real, fake = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for kind, monai_loss in (("lsgan", PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)),
                             ("bce", PatchAdversarialLoss(criterion="bce"))):
        expect_d = 0.5 * (monai_loss(real, True, True) + monai_loss(fake, False, True))
        assert discriminator_adversarial_loss(real, fake, kind).item() == pytest.approx(expect_d.item(), rel=1e-5)
        assert generator_adversarial_loss(fake, kind).item() == pytest.approx(monai_loss(fake, True, False).item(),
                                                                               rel=1e-5)
    saturated = torch.full(shape, 25.0, requires_grad=True)
    ours = discriminator_adversarial_loss(real, saturated, "bce")
    assert ours.item() == pytest.approx(0.5 * (F.softplus(-real).mean().item() + 25.0), rel=1e-5)
    assert torch.autograd.grad(ours, saturated)[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- perceptual
def test_perceptual_loss_zero_for_identical_positive_otherwise_and_differentiable(random_lpips):
    loss = SlicePerceptualLoss(network=random_lpips, slices_per_plane=3)
    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 16, 20, 12, generator=g)
    assert loss(target, target.clone()).item() == 0.0
    recon = (target + 0.2 * torch.randn(target.shape, generator=g)).requires_grad_()
    value = loss(recon, target)
    assert value.item() > 0
    value.backward()
    assert recon.grad is not None and torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.network.parameters())  # the extractor stays fixed


def test_perceptual_loss_equals_evaluation_lpips_on_the_same_slices(random_lpips):
    """Even sampling uses the evaluation's tri-planar indices: same value as eval's triplanar_lpips."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 16, 20, 12, generator=g), torch.rand(1, 1, 16, 20, 12, generator=g)
    loss = SlicePerceptualLoss(network=random_lpips, slices_per_plane=4)
    expected = triplanar_lpips(random_lpips, a[0, 0].numpy(), b[0, 0].numpy(), per_plane=4)
    assert loss(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_perceptual_loss_random_sampling_reaches_end_slices(random_lpips):
    """Even sampling skips the end slices (eval's convention); random sampling covers them over calls."""
    x = torch.rand(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(5))
    y = x.clone()
    y[0, 0, 0, 0, 0] += 0.5  # a corner voxel: only in end slices
    assert SlicePerceptualLoss(network=random_lpips, slices_per_plane=2)(y, x).item() == 0.0
    loss = SlicePerceptualLoss(network=random_lpips, slices_per_plane=2, sampling="random")
    assert loss(x, x).item() == 0.0
    torch.manual_seed(0)
    assert max(loss(y, x).item() for _ in range(20)) > 0


def test_perceptual_loss_weights_come_from_local_files(tmp_path, monkeypatch, caplog):
    with pytest.raises(WeightsError, match="never downloaded"):
        SlicePerceptualLoss()
    with caplog.at_level(logging.WARNING, logger="bsynth_hpc.losses.perceptual"):
        smoke = SlicePerceptualLoss(allow_random=True)
    assert smoke.weights_info.random and "RANDOM AlexNet" in caplog.text
    # a torchvision AlexNet state dict on disk is loaded (here: random features saved locally)
    from torchvision.models import alexnet
    torch.manual_seed(0)
    features = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    path = tmp_path / "alexnet.pth"
    torch.save(features, path)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bsynth_hpc.losses.perceptual"):
        real = SlicePerceptualLoss(slices_per_plane=2)
    assert not real.weights_info.random and real.weights_info.path == str(path) and not caplog.text
    torch.testing.assert_close(real.network.net.slice1[0].weight, features["features.0.weight"])


# ---------------------------------------------------------------------------------------------- combiner
def test_vaegan_loss_weights_terms(random_lpips):
    perc = SlicePerceptualLoss(network=random_lpips, slices_per_plane=2)
    loss = VAEGANLoss("tle", perceptual=perc)
    assert loss.weights == VAEGANWeights(recon=1.0, kl=1e-6, perceptual=0.6, adversarial=0.02)  # 000 §5.1
    g = torch.Generator().manual_seed(4)
    target = torch.rand(2, 1, 12, 12, 12, generator=g)
    recon = (target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_()
    mean, logvar = torch.randn(2, 4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, 3, generator=g)
    logits = torch.randn(2, 1, 2, 2, 2, generator=g)
    terms = loss.generator_loss(target, recon, (mean, logvar), fake_logits=logits)
    assert set(terms) == {"recon", "kl", "perceptual", "adv_g", "total"}
    expected = (reconstruction_loss(recon, target) + 1e-6 * kl_loss(mean, logvar) + 0.6 * perc(recon, target)
                + 0.02 * generator_adversarial_loss(logits))
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    # before the adversarial phase: no logits, no adversarial term
    assert "adv_g" not in loss.generator_loss(target, recon.detach(), (mean, logvar))
    d = loss.discriminator_loss(torch.full((2, 1, 2, 2, 2), 3.0), torch.full((2, 1, 2, 2, 2), -3.0))
    assert d["total"].item() == pytest.approx(math.log1p(math.exp(-3.0)))
    assert d["logit_real"].item() == 3.0 and d["logit_fake"].item() == -3.0


def test_vaegan_loss_presets_and_errors():
    assert LOSS_PRESETS["wfdm"] == VAEGANWeights(1.0, 1e-7, 0.3, 0.1)
    with pytest.raises(ConfigError, match="perceptual loss module"):
        VAEGANLoss("wfdm")
    no_perc = VAEGANLoss(VAEGANWeights(perceptual=0.0), adversarial="hinge")
    x = torch.rand(1, 1, 4, 4, 4)
    terms = no_perc.generator_loss(x, x, (torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1)),
                                   fake_logits=torch.ones(1, 1, 2, 2, 2))
    assert terms["total"].item() == pytest.approx(-0.1)  # recon 0, KL 0, hinge G = -mean(logits)
    with pytest.raises(ConfigError, match="unknown loss preset"):
        VAEGANLoss("nope")
    with pytest.raises(ConfigError, match=">= 0"):
        VAEGANLoss(VAEGANWeights(kl=-1.0, perceptual=0.0))
    assert np.isclose(LOSS_PRESETS["tle"].perceptual, 0.6)
