"""Seed 002's clinical VAE-GAN parts (bsynth_hpc.models.clinical, losses.diffaugment/efficientnet, data.augment3d):
shapes at tiny sizes, the 1/8 feature grid, StyleGAN2 modulation/demodulation maths, the KL from the learned
prior, frozen auxiliary heads, DiffAugment gradients, the EfficientNet-B0 perceptual loss and parameter counts."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from bsynth_hpc.data.augment3d import ConventionalAugment3d, ConventionalAugmentConfig
from bsynth_hpc.diffusion import DiffusionConfig, build_process, sample
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.losses.diffaugment import DiffAugment3d, DiffAugmentParams, translate3d
from bsynth_hpc.losses.kl import gaussian_kl, gaussian_kl_between
from bsynth_hpc.models.autoencoder import PatchDiscriminator, PatchDiscriminatorConfig
from bsynth_hpc.models.clinical import (ClinicalEpsMLP, ClinicalLossWeights, ClinicalModelConfig, ClinicalVAEGAN,
                                        ClinicalVAEGANLoss, ModulatedFullConv3d, ModulatedSeparableConv3d,
                                        build_aux_heads, build_discriminator, clinical_preset, parameter_counts,
                                        prior_kl, relative_posterior, split_clinical, xavier_init)
from bsynth_hpc.weights import WEIGHTS_ENV, WeightsError


def _tiny(**overrides) -> ClinicalModelConfig:
    return clinical_preset("tiny", image_size=16, **overrides)


def _clinical(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(batch, 7, generator=g)
    c[:, 6] = (torch.arange(batch) % 2).float()
    return c


# ----------------------------------------------------------------------------- shapes and sizes


def test_tiny_model_shapes_and_feature_grid():
    torch.manual_seed(0)
    model = ClinicalVAEGAN(_tiny())
    x, c = torch.rand(2, 1, 16, 16, 16), _clinical(2)
    assert model.encoder.features(x).shape == (2, 32, 4, 4, 4)  # three widths 8..32, 16^3 -> 4^3 = 1/4
    mu, logvar = model.encode(x, c)
    assert mu.shape == logvar.shape == (2, 16)
    mu_p, logvar_p = model.prior(c)
    assert mu_p.shape == logvar_p.shape == (2, 16)
    assert model.decode(mu, c).shape == x.shape
    out = model(x, c, generator=torch.Generator().manual_seed(1))
    assert out["recon"].shape == x.shape and out["z"].shape == (2, 16)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.generate(c, g1), model.generate(c, g2))
    with pytest.raises(ValueError):
        model.encode(x, None)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ClinicalVAEGAN(_tiny())
    ckpt = ClinicalVAEGAN(_tiny(checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x, c, z = torch.rand(1, 1, 16, 16, 16), _clinical(1), torch.randn(1, 16)
    for m in (plain, ckpt):
        mu, _ = m.encode(x, c)
        (m.decode(z + mu, c).square().mean()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert all(blk.checkpointing for blk in ckpt.decoder.stages)


def test_output_template_starts_at_zero_and_learns_the_mean_volume():
    """The tiny preset's learned template is a zero-init per-voxel bias: at init the decoder equals the plain one,
    and a few steps on a constant target move the template towards it (it gets the gradient of every voxel)."""
    torch.manual_seed(0)
    plain = ClinicalVAEGAN(_tiny(output_template=False))
    templ = ClinicalVAEGAN(_tiny())
    assert templ.decoder.template.shape == (1, 1, 16, 16, 16) and plain.decoder.template is None
    templ.load_state_dict({**plain.state_dict(), "decoder.template": torch.zeros(1, 1, 16, 16, 16)})
    z, c = torch.randn(2, 16), _clinical(2)
    torch.testing.assert_close(templ.decode(z, c), plain.decode(z, c))
    target = torch.zeros(1, 1, 16, 16, 16)
    target[..., 4:12, 4:12, 4:12] = 1.0
    opt = torch.optim.Adam([templ.decoder.template], lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        (templ.decode(z, c) - target).abs().mean().backward()
        opt.step()
    inside, outside = templ.decoder.template[..., 6:10, 6:10, 6:10].mean(), templ.decoder.template[..., :2, :2, :2].mean()
    assert inside - outside > 0.5


def test_full_widths_reach_one_eighth_with_512_channels():
    cfg = clinical_preset("full", image_size=16)  # 002's widths; 16^3 keeps the CPU test small
    with torch.no_grad():
        feats = ClinicalVAEGAN(cfg).encoder.features(torch.rand(1, 1, 16, 16, 16))
    assert feats.shape == (1, 512, 2, 2, 2)
    assert clinical_preset("full").latent_grid == 16  # 128^3 -> 16^3


def test_parameter_counts_full_config_plausible():
    counts = parameter_counts(clinical_preset("full"))
    print("clinical full parameter counts:", counts)
    # 002 Table 2: 8.1 M for the Xception VAE-GAN + clinical conditions (13.2 M with EfficientNet-B0's 5.3 M)
    assert 6.5e6 < counts["vae_gan"] + counts["discriminator"] < 10e6
    assert counts["total"] == counts["vae_gan"] + counts["discriminator"] + counts["aux_heads"]
    assert 1e6 < counts["aux_heads"] < 6e6  # two separable ResNet-18s
    assert parameter_counts(clinical_preset("tiny"))["total"] < 4e5
    assert counts["vae_gan"] == sum(p.numel() for p in ClinicalVAEGAN(clinical_preset("full", image_size=128))
                                    .parameters())


def test_config_from_dict_and_validation():
    cfg = ClinicalModelConfig.from_dict({"preset": "tiny", "latent_dim": 8})
    assert cfg.latent_dim == 8 and cfg.image_size == 32 and cfg.encoder_channels == (8, 16, 32)
    assert ClinicalModelConfig.from_dict(cfg.as_dict()) == cfg
    rebuilt = ClinicalVAEGAN(**json.loads(json.dumps(ClinicalVAEGAN(cfg).factory_kwargs())))  # export round trip
    assert rebuilt.config == cfg
    with pytest.raises(ConfigError):
        ClinicalModelConfig.from_dict({"preset": "tiny", "latnt_dim": 8})
    with pytest.raises(ConfigError):
        clinical_preset("tiny", image_size=18)
    with pytest.raises(ConfigError):
        clinical_preset("huge")


def test_xavier_init_and_style_bias():
    model = ClinicalVAEGAN(_tiny())
    lin = model.encoder.mu
    bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))
    assert lin.weight.abs().max() <= bound and torch.count_nonzero(lin.bias) == 0
    affine = model.decoder.stages[0].sd_c3.affine
    assert torch.all(affine.bias == 1.0)  # StyleGAN2's modulation starts near the identity
    layer = torch.nn.Linear(5, 3)
    xavier_init(layer)
    assert torch.count_nonzero(layer.bias) == 0
    dw = model.encoder.blocks[1].body[1].depthwise.weight  # bsynth_hpc.nn.DepthwiseConv3d (C, 1, 3, 3, 3)
    assert dw.abs().max() <= math.sqrt(6.0 / (27 * (1 + dw.shape[0])))  # Xavier bound, not Kaiming


# ----------------------------------------------------------------------------- modulation / demodulation


def _reference_modulated(x, w_eff, s, demod, padding):
    """StyleGAN2 literally: per-sample weights s_i W_oik, normalised per output filter, grouped conv over the batch."""
    b, cin = x.shape[:2]
    wmod = w_eff[None] * s[:, None, :, None, None, None]  # (B, O, I, k, k, k)
    if demod:
        wmod = wmod * torch.rsqrt(wmod.square().sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
    y = F.conv3d(x.reshape(1, b * cin, *x.shape[2:]), wmod.reshape(-1, cin, *wmod.shape[3:]), padding=padding,
                 groups=b)
    return y.reshape(b, -1, *y.shape[2:])


@pytest.mark.parametrize("demod", [True, False])
def test_modulated_separable_equals_per_sample_weights(demod):
    torch.manual_seed(0)
    conv = ModulatedSeparableConv3d(5, 7, w_dim=4, demodulate=demod).double()
    x, w = torch.randn(3, 5, 6, 7, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    w_eff = conv.pointwise.weight[:, :, 0, 0, 0, None, None, None] * conv.depthwise.weight[None, :, 0]
    ref = _reference_modulated(x, w_eff, conv.affine(w), demod, padding=1)
    torch.testing.assert_close(conv(x, w), ref)


@pytest.mark.parametrize("kernel", [1, 3])
def test_modulated_full_conv_equals_per_sample_weights(kernel):
    torch.manual_seed(1)
    conv = ModulatedFullConv3d(6, 4, w_dim=3, kernel_size=kernel).double()
    x, w = torch.randn(2, 6, 5, 4, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    ref = _reference_modulated(x, conv.weight_conv.weight, conv.affine(w), True, kernel // 2)
    torch.testing.assert_close(conv(x, w), ref)


@pytest.mark.parametrize("kind", ["separable", "style_conv", "full3"])
def test_demodulated_output_has_unit_variance_per_channel(kind):
    torch.manual_seed(2)
    conv = {"separable": lambda: ModulatedSeparableConv3d(16, 8, w_dim=6),
            "style_conv": lambda: ModulatedFullConv3d(16, 8, 6),
            "full3": lambda: ModulatedFullConv3d(16, 8, 6, kernel_size=3)}[kind]()
    torch.nn.init.normal_(conv.affine.weight, std=1.0)  # styles far from 1, so demodulation has work to do
    w = torch.randn(4, 6)
    with torch.no_grad():
        y = conv(torch.randn(4, 16, 20, 20, 20), w)[:, :, 1:-1, 1:-1, 1:-1]  # away from the zero padding
        var = y.var(dim=(2, 3, 4))  # (B, O)
    torch.testing.assert_close(var, torch.ones_like(var), atol=0.1, rtol=0)
    conv.demodulate = False
    with torch.no_grad():
        raw = conv(torch.randn(4, 16, 20, 20, 20), w)[:, :, 1:-1, 1:-1, 1:-1].var(dim=(2, 3, 4))
    assert (raw - 1).abs().max() > 0.3  # without demodulation the variance follows the style


# ----------------------------------------------------------------------------- prior and KL


def test_kl_between_gaussians_closed_form():
    g = torch.Generator().manual_seed(0)
    mq, lq = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    mp, lp = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    ours = gaussian_kl_between(mq, lq, mp, lp)
    ref = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(1)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gaussian_kl_between(mq, lq, torch.zeros(1, 6), torch.zeros(1, 6)), gaussian_kl(mq, lq))
    torch.testing.assert_close(gaussian_kl(*relative_posterior(mq, lq, mp, lp)), ours)  # what the loss uses
    # Monte Carlo: E_q[log q(z) - log p(z)]
    q, p = Normal(mq[0], (0.5 * lq[0]).exp()), Normal(mp[0], (0.5 * lp[0]).exp())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(1).mean()
    assert abs(float(mc) - float(ours[0])) < 0.02 * float(ours[0]) + 0.02
    assert float(prior_kl(mq, lq, mp, lp)) == pytest.approx(float(ours.mean()))


def test_kl_is_zero_when_posterior_equals_prior_and_gradients_reach_the_prior():
    model = ClinicalVAEGAN(_tiny())
    c = _clinical(3)
    mu_p, logvar_p = model.prior(c)
    assert float(prior_kl(mu_p, logvar_p, mu_p, logvar_p).detach()) == pytest.approx(0.0, abs=1e-6)
    prior_kl(torch.randn_like(mu_p), torch.zeros_like(logvar_p), mu_p, logvar_p).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())


def test_unconditional_ablation_ignores_c():
    torch.manual_seed(0)
    model = ClinicalVAEGAN(_tiny(conditioning=False))
    c1, c2, z = _clinical(2, 0), _clinical(2, 1), torch.randn(2, 16)
    mu_p, logvar_p = model.prior(c1)
    assert torch.count_nonzero(mu_p) == 0 and torch.count_nonzero(logvar_p) == 0
    with torch.no_grad():
        assert torch.equal(model.decode(z, c1), model.decode(z, c2))
    cond = ClinicalVAEGAN(_tiny())
    with torch.no_grad():
        assert not torch.allclose(cond.decode(z, c1), cond.decode(z, c2))
    assert parameter_counts(_tiny(conditioning=False))["vae_gan"] < parameter_counts(_tiny())["vae_gan"]


def test_standard_convolution_ablation():
    cfg = _tiny(separable=False)
    model, disc = ClinicalVAEGAN(cfg), build_discriminator(cfg)
    x, c = torch.rand(1, 1, 16, 16, 16), _clinical(1)
    assert model(x, c)["recon"].shape == x.shape and disc(x, c).shape == (1, 1, 4, 4, 4)
    assert not any(isinstance(m, ModulatedSeparableConv3d) for m in model.modules())
    full = parameter_counts(clinical_preset("full"))
    dense = parameter_counts(clinical_preset("full", separable=False))
    print("clinical full, standard convolutions:", dense)
    assert dense["vae_gan"] + dense["discriminator"] > 2 * (full["vae_gan"] + full["discriminator"])
    assert dense["aux_heads"] == full["aux_heads"]


# ----------------------------------------------------------------------------- discriminator


def test_conditional_separable_patchgan():
    torch.manual_seed(0)
    cfg = _tiny()
    disc = build_discriminator(cfg)
    x = torch.rand(2, 1, 16, 16, 16)
    logits = disc(x, _clinical(2, 0))
    assert logits.shape == (2, 1, 4, 4, 4)  # two stride-2 stages, 3x3x3 stride-1 head
    assert not torch.allclose(logits, disc(x, _clinical(2, 1)))
    assert build_discriminator(_tiny(conditioning=False))(x).shape == logits.shape
    # the separable PatchGAN is the project's PatchDiscriminator with conv="separable": fewer parameters
    standard = PatchDiscriminator(PatchDiscriminatorConfig(channels=8, num_layers=2, kernel_size=3, max_channels=64))
    separable = PatchDiscriminator(cfg.discriminator_config())
    assert sum(p.numel() for p in separable.parameters()) < sum(p.numel() for p in standard.parameters()) / 3
    with pytest.raises(ConfigError):
        PatchDiscriminatorConfig(conv="separable", spatial_dims=2).validate()


# ----------------------------------------------------------------------------- auxiliary heads


def test_frozen_aux_heads_get_no_gradient_and_stay_unchanged():
    torch.manual_seed(0)
    cfg = _tiny()
    model, heads = ClinicalVAEGAN(cfg), build_aux_heads(cfg)
    x, c = torch.rand(2, 1, 16, 16, 16), _clinical(2)
    logits, rois = heads(x)
    assert logits.shape == (2, 2) and rois.shape == (2, 6)
    heads.freeze()
    heads.train()  # a stage putting everything in train mode must not unfreeze them
    assert not heads.training and all(not p.requires_grad for p in heads.parameters())
    before = copy.deepcopy(heads.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    aux = heads.losses(model(x, c)["recon"], c)
    (aux["cls"] + aux["reg"]).backward()
    opt.step()
    assert all(p.grad is None for p in heads.parameters())
    assert all(torch.equal(before[k], v) for k, v in heads.state_dict().items())
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_aux_losses_match_definitions():
    heads = build_aux_heads(_tiny())
    x, c = torch.rand(2, 1, 16, 16, 16), _clinical(2)
    rois, label = split_clinical(c)
    logits, pred = heads(x)
    got = heads.losses(x, c)
    torch.testing.assert_close(got["cls"], F.cross_entropy(logits, label))
    torch.testing.assert_close(got["reg"], ((pred - rois) ** 2).mean())
    assert label.tolist() == [0, 1]


# ----------------------------------------------------------------------------- objective


def test_clinical_loss_is_weighted_sum_of_terms():
    g = torch.Generator().manual_seed(0)
    target, recon = torch.rand(2, 1, 8, 8, 8, generator=g), torch.rand(2, 1, 8, 8, 8, generator=g)
    post = (torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g))
    prior = (torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g))
    fake = torch.randn(2, 1, 2, 2, 2, generator=g)
    aux = {"cls": torch.tensor(0.7), "reg": torch.tensor(0.2)}
    assert ClinicalLossWeights() == ClinicalLossWeights(recon=10, kl=0.1, perceptual=20, adversarial=1, cls=1, reg=1)
    w = ClinicalLossWeights(perceptual=0.0)
    terms = ClinicalVAEGANLoss(w).generator_loss(target, recon, post, prior, fake, aux)
    kl = gaussian_kl_between(*post, *prior).mean()
    expected = 10 * (recon - target).abs().mean() + 0.1 * kl + F.softplus(-fake).mean() + 0.7 + 0.2
    torch.testing.assert_close(terms["total"], expected)
    torch.testing.assert_close(terms["kl"], kl)
    with pytest.raises(ConfigError):
        ClinicalVAEGANLoss()  # lambda_perc 20 needs a perceptual module
    with pytest.raises(ConfigError):
        ClinicalLossWeights(cls=-1).validate()


def test_one_training_step_of_algorithm_1():
    """E/prior/G step with the frozen heads, then a D step on DiffAugment'ed real and fake (tiny, CPU)."""
    torch.manual_seed(0)
    cfg = _tiny()
    model, disc, heads = ClinicalVAEGAN(cfg), build_discriminator(cfg), build_aux_heads(cfg).freeze()
    loss_fn, aug = ClinicalVAEGANLoss(ClinicalLossWeights(perceptual=0.0)), DiffAugment3d()
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.999))
    x, c = torch.rand(2, 1, 16, 16, 16), _clinical(2)
    out = model(x, c)
    terms = loss_fn.generator_loss(x, out["recon"], (out["mu"], out["logvar"]), (out["mu_p"], out["logvar_p"]),
                                   disc(aug(out["recon"]), c), heads.losses(out["recon"], c))
    assert {"recon", "kl", "adv_g", "cls", "reg", "total"} <= set(terms) and torch.isfinite(terms["total"])
    opt_g.zero_grad()
    terms["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt_g.step()
    d_before = [p.detach().clone() for p in disc.parameters()]
    opt_d.zero_grad()
    d_terms = loss_fn.discriminator_loss(disc(aug(x), c), disc(aug(out["recon"].detach()), c))
    d_terms["total"].backward()
    opt_d.step()
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
    assert all(p.grad is None for p in heads.parameters())


# ----------------------------------------------------------------------------- augmentation


def test_translate3d_against_roll_with_zero_fill():
    x = torch.randn(2, 3, 5, 6, 7)
    shift = torch.tensor([[1, -2, 0], [0, 3, -1]])
    out = translate3d(x, shift)
    for b in range(2):
        ref = torch.roll(x[b], tuple(int(s) for s in shift[b]), dims=(1, 2, 3))
        mask = torch.ones(5, 6, 7)
        for axis, s in enumerate(shift[b].tolist()):
            idx = torch.arange(x.shape[2 + axis])
            keep = ((idx - s) >= 0) & ((idx - s) < x.shape[2 + axis])
            shape = [1, 1, 1]
            shape[axis] = -1
            mask = mask * keep.reshape(shape)
        torch.testing.assert_close(out[b], ref * mask)


def test_diffaugment_differentiable_and_consistent():
    aug = DiffAugment3d()
    x = torch.rand(2, 2, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    params = aug.draw(x, torch.Generator().manual_seed(0))
    assert params.shift.abs().max() <= 1  # ratio 1/8 of sizes <= 6
    assert torch.autograd.gradcheck(lambda v: aug.apply(v, params), (x,))
    torch.testing.assert_close(aug.apply(x, params), aug.apply(x, params))
    p2 = aug.draw(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((params.brightness, params.contrast, params.shift),
                                                 (p2.brightness, p2.contrast, p2.shift)))
    # brightness then contrast, per sample, the same for every channel
    only = DiffAugmentParams(params.brightness, params.contrast, None)
    y = aug.apply(x, only)
    xb = x + params.brightness.reshape(-1, 1, 1, 1, 1)
    m = xb.mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(y, (xb - m) * params.contrast.reshape(-1, 1, 1, 1, 1) + m)
    # the generator gets gradient through D(DiffAug(G(z)))
    model, disc = ClinicalVAEGAN(_tiny()), build_discriminator(_tiny())
    c = _clinical(2)
    fake = model.decode(torch.randn(2, 16), c)
    disc(aug(fake), c).mean().backward()
    assert sum(float(p.grad.abs().sum()) for p in model.decoder.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError):
        DiffAugment3d(policy=("cutout",))


def test_conventional_augmentation_reproducible():
    cfg = ConventionalAugmentConfig(prob_blur=1.0, prob_noise=1.0, prob_gamma=1.0)
    x = torch.rand(2, 1, 8, 8, 8)
    a, b = ConventionalAugment3d(cfg, seed=5)(x), ConventionalAugment3d(cfg, seed=5)(x)
    assert type(a) is torch.Tensor and a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.allclose(a, x)
    off = ConventionalAugment3d(ConventionalAugmentConfig(prob_blur=0.0, prob_noise=0.0, prob_gamma=0.0), seed=0)
    assert torch.equal(off(x[0]), x[0])
    with pytest.raises(ValueError):
        ConventionalAugmentConfig(prob_blur=1.5).validate()


# ----------------------------------------------------------------------------- perceptual loss


def test_efficientnet_perceptual_loss(monkeypatch, tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import efficientnet_b0

    from bsynth_hpc.losses.perceptual import EfficientNetPerceptualLoss

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(WeightsError):
        EfficientNetPerceptualLoss()
    torch.manual_seed(0)
    loss = EfficientNetPerceptualLoss(allow_random=True, slices_per_plane=2)
    assert loss.weights_info.random and not loss.network.training
    target = torch.rand(1, 1, 16, 16, 16)
    recon = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    value = loss(recon, target)
    value.backward()
    assert float(value.detach()) > 0 and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.network.parameters())
    # weights only from a local file, torch.load(weights_only=True) or safetensors; both give the same features
    state = efficientnet_b0(weights=None).state_dict()
    torch.save(state, tmp_path / "efficientnet_b0.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "effnet.safetensors"))
    from_pth = EfficientNetPerceptualLoss(tmp_path / "efficientnet_b0.pth", slices_per_plane=2)
    from_st = EfficientNetPerceptualLoss(tmp_path / "effnet.safetensors", slices_per_plane=2)
    assert from_pth.weights_info.path.endswith("efficientnet_b0.pth") and not from_pth.weights_info.random
    torch.testing.assert_close(from_pth(recon.detach(), target), from_st(recon.detach(), target))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert EfficientNetPerceptualLoss(slices_per_plane=2).weights_info.path == str(tmp_path / "efficientnet_b0.pth")


# ----------------------------------------------------------------------------- clinical diffusion prior


def test_clinical_eps_mlp_through_the_diffusion_layer():
    torch.manual_seed(0)
    net = ClinicalEpsMLP(dim=7, hidden=32, time_dim=16)
    x_t, t = torch.randn(5, 7), torch.tensor([0, 10, 100, 500, 999])
    assert net(x_t, t).shape == (5, 7)
    assert not torch.allclose(net(x_t, torch.zeros(5)), net(x_t, torch.full((5,), 900.0)))  # time matters
    process = build_process(DiffusionConfig.from_dict({"scheduler": "ddpm"}))
    out = sample(net, (3, 7), process, steps=5, solver="ddim", generator=torch.Generator().manual_seed(0))
    assert out.sample.shape == (3, 7) and torch.isfinite(out.sample).all()
    with pytest.raises(ValueError):
        net(x_t, t, {"clinical": x_t})
    assert sum(p.numel() for p in ClinicalEpsMLP().parameters()) < 2e5  # a small 3-layer MLP
