"""Stage-A compressor family (seed 003 §2.5.1-2.5.3, §3.1; seed 000 §5.1): wavelet paths, shapes,
gradients, overfitting, checkpointing, tiled decoding, discriminator, registry, latent scale."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsynth_hpc import nn as bnn
from bsynth_hpc import ops
from bsynth_hpc.errors import BsynthError, ConfigError, InputError
from bsynth_hpc.losses import kl_loss, reconstruction_loss
from bsynth_hpc.models import MODEL_FACTORIES, build_model
from bsynth_hpc.models.autoencoder import (Autoencoder3d, CompressorConfig, DiagonalGaussian, PatchDiscriminator3d,
                                           WaveletFusion, WaveletStack, estimate_latent_scale, preset_config,
                                           subband_channels, tiled_decode)

TINY = dict(base_channels=8, norm_groups=4)
COMPRESSORS = ("wf-vae", "wf-sa-vae", "wavelet-vae", "vae-gan", "tle-vaegan")


@pytest.fixture(autouse=True)
def _reference_ops():
    """Model tests run the PyTorch reference ops (the kernels have their own tests; conftest turns
    the Triton interpreter on, which is far too slow for whole networks)."""
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


def _volume(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def _tiny(name: str, **overrides) -> Autoencoder3d:
    torch.manual_seed(0)
    return build_model(name, **{**TINY, **overrides})


# ---------------------------------------------------------------------------------------------- wavelet paths
@pytest.mark.parametrize("subbands,channels", [((0,), 1), ((0, 1, 2, 4), 1), (tuple(range(8)), 1), ((4, 0), 2)])
def test_wavelet_fusion_path_inverts_exactly(subbands, channels):
    """Stage-1 DWT -> stage-2 DWT of S -> IDWT -> fuse -> IDWT returns the input (003 §2.5.2)."""
    x = _volume(2, channels, 8, 12, 16, seed=1).double()
    conv = WaveletFusion(channels, subbands, "conv").double()
    c1, sides = conv.analyze(x)
    assert c1.shape == (2, 8 * channels, 4, 6, 8)
    assert sides[2].shape == (2, 8 * len(subbands) * channels, 2, 3, 4)
    torch.testing.assert_close(conv.synthesize(c1, sides), x, rtol=0, atol=1e-12)
    # additive fusion: the stage-1 head carries only what stage 2 does not (subset zeroed here)
    add = WaveletFusion(channels, subbands, "add").double()
    c1_rest = c1.clone()
    c1_rest[:, subband_channels(subbands, channels)] = 0
    torch.testing.assert_close(add.synthesize(c1_rest, sides), x, rtol=0, atol=1e-12)
    # and the fusion matters: the stage-2 branch carries the subset
    assert (add.synthesize(c1_rest, {2: torch.zeros_like(sides[2])}) - x).abs().max() > 1e-3


def test_wavelet_coefficients_closed_form():
    """Orthonormal Haar: LLL = 2^(3/2) * 2x2x2 block mean; LLL of LLL = 8 * 4x4x4 block mean."""
    x = _volume(1, 1, 8, 8, 12, seed=2).double()
    c1, sides = WaveletFusion(1, (0,)).double().analyze(x)
    torch.testing.assert_close(c1[:, :1], 2 ** 1.5 * F.avg_pool3d(x, 2))
    torch.testing.assert_close(sides[2][:, :1], 8 * F.avg_pool3d(x, 4))


def test_wavelet_stack_is_the_64_channel_two_stage_transform():
    x = _volume(2, 1, 8, 12, 16, seed=3).double()
    t = WaveletStack(1, 2)
    front, _ = t.analyze(x)
    assert t.front_channels == 64 and front.shape == (2, 64, 2, 3, 4)
    torch.testing.assert_close(front[:, :1], 8 * F.avg_pool3d(x, 4))
    torch.testing.assert_close(t.synthesize(front, {}), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["wf-vae", "wavelet-vae"])
def test_model_wavelet_path_is_invertible(name):
    """Inside a built model (untrained fusion initialised to the average): analyze -> synthesize = id."""
    model = _tiny(name)
    x = _volume(1, 1, 16, 8, 8, seed=4)
    front, sides = model.transform.analyze(x)
    torch.testing.assert_close(model.transform.synthesize(front, sides), x, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name,f,zc", [
    ("vae-gan", 2, 4), ("vae-gan", 4, 8), ("wf-vae", 4, 4), ("wf-vae", 8, 8), ("wf-sa-vae", 4, 4),
    ("wavelet-vae", 4, 4), ("wavelet-vae", 2, 8), ("tle-vaegan", 4, 4),
])
def test_shapes_non_cubic(name, f, zc):
    model = _tiny(name, downsample_factor=f, latent_channels=zc).eval()
    x = _volume(2, 1, 16, 24, 8)
    posterior = model.encode(x)
    latent = (2, zc, 16 // f, 24 // f, 8 // f)
    assert posterior.mean.shape == latent and posterior.logvar.shape == latent
    assert model.latent_shape((16, 24, 8)) == latent[1:]
    recon, post = model(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    torch.testing.assert_close(model.encode_latent(x), posterior.mean)
    torch.testing.assert_close(model.reconstruct(x), model(x, sample_posterior=False)[0])
    assert model.decode(posterior.mean).shape == x.shape


def test_tle_vaegan_matches_seed_000_sizes():
    """000 §5.1: 112x136x112 -> 4x28x34x28 with three ResNet blocks, two of them downsampling."""
    model = build_model("tle-vaegan")
    assert model.latent_shape((112, 136, 112)) == (4, 28, 34, 28)
    assert len(model.encoder.levels) == 3 and all(len(level) == 1 for level in model.encoder.levels)
    assert sum(not isinstance(d, nn.Identity) for d in model.encoder.downs) == 2
    assert model.latent_shape((192, 224, 160)) == (4, 48, 56, 40)  # 003 §2.5.1


def test_indivisible_shape_is_a_clear_error_or_padded():
    x = _volume(1, 1, 17, 22, 9)
    with pytest.raises(InputError, match=r"\(17, 22, 9\).*f=4"):
        _tiny("wf-vae").encode(x)
    model = _tiny("wf-vae", pad_input=True).eval()
    assert model.encode(x).mean.shape == (1, 4, 5, 6, 3)
    assert model.reconstruct(x).shape == x.shape
    assert model(x)[0].shape == x.shape


@pytest.mark.parametrize("overrides,match", [
    (dict(kind="wavelet_fusion", downsample_factor=2), "f >= 4"),
    (dict(downsample_factor=6), "power of two"),
    (dict(kind="conv", channel_mult=(1, 2)), "3 positive entries"),
    (dict(base_channels=10, norm_groups=8), "multiples of norm_groups"),
    (dict(subbands=(0, 0)), "distinct"),
    (dict(attention_heads=3), "attention_heads"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        Autoencoder3d(CompressorConfig(**TINY), **overrides)


def test_presets_are_the_documented_variants():
    assert preset_config("wf-sa-vae").attention and not preset_config("wf-vae").attention
    assert preset_config("wf-vae").kind == "wavelet_fusion" and preset_config("vae-gan").kind == "conv"
    wavelet = build_model("wavelet-vae")
    assert wavelet.transform.front_channels == 64  # 003 §3.1: 64-channel stage-2 representation
    assert len(wavelet.encoder.downs) == 1 and isinstance(wavelet.encoder.downs[0], nn.Identity)  # no learned down
    for name in COMPRESSORS:
        cfg = preset_config(name)
        assert (cfg.downsample_factor, cfg.latent_channels) == (4, 4)  # 003 Table 3: 1/4, 4 channels


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,overrides", [
    ("wf-vae", {}), ("wf-vae", dict(encoder_fusion="add", decoder_fusion="add", subbands=(0, 1, 2, 4))),
    ("wf-sa-vae", dict(attention_heads=2)), ("wavelet-vae", {}), ("vae-gan", {}),
])
def test_gradients_reach_every_parameter(name, overrides):
    model = _tiny(name, **overrides)
    names = dict(model.named_parameters())
    if model.config.kind == "wavelet_fusion":  # Pi_2 and the encoder fusion exist and are trained
        assert "encoder.fusions.1.project.weight" in names
        if model.config.decoder_fusion == "conv":
            assert "transform.fusion.mix.weight" in names
    x = _volume(2, 1, 16, 16, 8)
    recon, posterior = model(x, generator=torch.Generator().manual_seed(1))
    (reconstruction_loss(recon, x) + 1e-3 * kl_loss(posterior)).backward()
    dead = [n for n, p in names.items() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_posterior_clamp_and_reparameterisation():
    mean = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    logvar = torch.full((2, 4, 3, 3, 3), 100.0, requires_grad=True)
    post = DiagonalGaussian(mean, logvar, (-30.0, 20.0))
    assert post.logvar.max().item() == 20.0
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    z = post.sample(g)
    torch.testing.assert_close(z, mean + torch.exp(torch.tensor(10.0)) * eps)
    z.sum().backward()
    assert mean.grad is not None and torch.all(mean.grad == 1)


# ---------------------------------------------------------------------------------------------- overfitting
@pytest.mark.parametrize("name", ["wf-vae", "vae-gan"])
def test_tiny_overfit_decreases_l1_and_total(name):
    model = _tiny(name, num_res_blocks=1)
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, 16),) * 3, indexing="ij"))
    x = (torch.exp(-3 * grid.square().sum(0)) + 0.1 * torch.sin(4 * grid[0]))[None, None].clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        recon, posterior = model(x, generator=g)
        l1 = reconstruction_loss(recon, x)
        total = l1 + 1e-6 * kl_loss(posterior)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((l1.item(), total.item()))
    first, last = np.mean(history[:3], axis=0), np.mean(history[-3:], axis=0)
    assert last[0] < 0.5 * first[0] and last[1] < 0.5 * first[1], history


# ---------------------------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("name", ["wf-sa-vae", "vae-gan"])
def test_activation_checkpointing_is_exact(name):
    plain = _tiny(name)
    ckpt = _tiny(name, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    conv = ckpt.encoder.levels[0][0].conv1
    conv.register_forward_hook(lambda *_: calls.append(1))
    x = _volume(2, 1, 16, 8, 8)
    outs = []
    for model in (plain, ckpt):
        recon, posterior = model(x, sample_posterior=False)
        (reconstruction_loss(recon, x) + kl_loss(posterior)).backward()
        outs.append(recon)
    assert len(calls) == 2  # forward + recomputation in backward: checkpointing really ran
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9, msg=n)


# ---------------------------------------------------------------------------------------------- tiled decode
@pytest.mark.parametrize("blend", ["linear", "gaussian"])
@pytest.mark.parametrize("tile,overlap", [(8, 2), ((5, 7, 20), (2, 3, 0)), (6, 4)])
def test_tiled_decode_of_a_pointwise_decoder_is_exact(blend, tile, overlap):
    """Blending weights are a weighted average: a decoder without spatial context is reproduced exactly."""
    z = _volume(2, 3, 19, 13, 7).double()

    def decode(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="nearest") * 3.0 - 1.0

    torch.testing.assert_close(tiled_decode(decode, z, 2, tile, overlap, blend=blend), decode(z), rtol=0, atol=1e-6)


def _without_group_norm(model: nn.Module) -> nn.Module:
    """Swap every GroupNorm+SiLU for a plain SiLU: a decoder with a finite receptive field."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnn.GroupNormSiLU):
                setattr(parent, child_name, nn.SiLU())
    return model


def test_tiled_decode_equals_full_decode_when_margin_covers_receptive_field():
    # f=2, one ResNet block per level: the decoder sees 5 latent voxels to each side (conv_in 1, level-1
    # block 2, upsampling conv 1/2, level-0 block 1, head 1/2); margin 6 leaves one to spare
    model = _without_group_norm(_tiny("vae-gan", downsample_factor=2, num_res_blocks=1)).eval()
    z = _volume(1, 4, 24, 20, 6, seed=7)
    with torch.no_grad():
        full = model.decode(z)
        tiled = model.decode_tiled(z, tile=16, overlap=12, margin=6)
        naive = model.decode_tiled(z, tile=16, overlap=2, margin=0)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)
    assert (naive - full).abs().max() > 1e-4  # without the margin the tile borders show


def test_tiled_decode_with_group_norm_model():
    model = _tiny("wf-vae").eval()
    z = _volume(1, 4, 6, 8, 4, seed=8)
    with torch.no_grad():
        full = model.decode(z)
        torch.testing.assert_close(model.decode_tiled(z, tile=8, overlap=2), full, rtol=0, atol=1e-6)  # one tile
        tiled = model.decode_tiled(z, tile=4, overlap=2, output_shape=(22, 30, 16))
    assert tiled.shape == (1, 1, 22, 30, 16) and torch.isfinite(tiled).all()
    with pytest.raises(ValueError, match="2\\*margin <= overlap"):
        model.decode_tiled(z, tile=4, overlap=2, margin=2)


# ---------------------------------------------------------------------------------------------- discriminator
def test_patch_discriminator_logit_map_and_gradients():
    torch.manual_seed(0)
    disc = build_model("patchgan3d", channels=8, num_layers=3)
    x = _volume(2, 1, 32, 32, 24).requires_grad_()
    logits = disc(x)
    # stem /2, two stride-2 stages /2 each, last stage and head (k=4, p=1) shrink by one each
    assert logits.shape == (2, 1, 2, 2, 1)
    logits.mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in disc.parameters())
    assert isinstance(disc, PatchDiscriminator3d)
    shallow = build_model("patchgan3d", channels=4, num_layers=1, norm="none")
    assert shallow(x).shape == (2, 1, 14, 14, 10)


def test_patch_discriminator_checkpointing_is_exact():
    torch.manual_seed(0)
    a = build_model("patchgan3d", channels=8, norm="group")
    b = build_model("patchgan3d", channels=8, norm="group", checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = _volume(1, 1, 24, 24, 24)
    for m in (a, b):
        m(x).square().mean().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_builds_every_name():
    assert set(COMPRESSORS) | {"patchgan3d"} <= set(MODEL_FACTORIES)
    x = _volume(1, 1, 16, 16, 16)
    for name in COMPRESSORS:
        assert isinstance(build_model(name), Autoencoder3d)  # full-size defaults construct
        model = _tiny(name).eval()
        assert model.reconstruct(x).shape == x.shape
    assert isinstance(build_model("patchgan3d"), PatchDiscriminator3d)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no-such-model")
    with pytest.raises(ConfigError, match="unknown compressor option"):
        build_model("wf-vae", no_such_field=1)


def test_factory_kwargs_round_trip_through_json():
    model = _tiny("wf-sa-vae", subbands=(0, 1)).eval()
    kwargs = json.loads(json.dumps(model.factory_kwargs()))
    clone = Autoencoder3d(**kwargs).eval()
    clone.load_state_dict(model.state_dict())
    x = _volume(1, 1, 16, 8, 8)
    torch.testing.assert_close(clone.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- latent scale
def test_latent_scale_matches_numpy_std_of_concatenated_latents():
    rng = np.random.default_rng(0)
    batches = [rng.normal(1e4, 0.3, size=(2, 4, 3, 5, 2)) for _ in range(7)] + [rng.normal(1e4, 0.3, size=(1, 4, 3, 5, 2))]
    mixed = [torch.from_numpy(b).float() if i % 2 else b for i, b in enumerate(batches)]
    flat = [b.double().numpy() if isinstance(b, torch.Tensor) else b for b in mixed]  # float32 values as stored
    expected = 1.0 / np.concatenate(flat, axis=0).std()
    assert math.isclose(estimate_latent_scale(mixed), expected, rel_tol=1e-9)
    assert math.isclose(estimate_latent_scale(iter(batches[:2]), max_batches=1), 1.0 / batches[0].std(), rel_tol=1e-9)


def test_latent_scale_rejects_degenerate_input():
    with pytest.raises(BsynthError, match="no latents"):
        estimate_latent_scale([])
    with pytest.raises(BsynthError, match="zero variance"):
        estimate_latent_scale([torch.ones(2, 4, 3, 3, 3)])
    with pytest.raises(BsynthError, match="NaN"):
        estimate_latent_scale([torch.tensor([1.0, float("nan")])])
