"""``spatial_dims``: the same compressor, discriminator, U-Net, attention, tiled decode and output
writers build and run in 2D (slice recipes, seeds 001/004) and 3D, checked against independent
references (torch GroupNorm/MultiheadAttention, MONAI's PatchDiscriminator, closed-form parameter counts)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bsynth_hpc import nn as bnn
from bsynth_hpc import ops
from bsynth_hpc.errors import ConfigError, InputError
from bsynth_hpc.losses import kl_loss, reconstruction_loss
from bsynth_hpc.models import build_model
from bsynth_hpc.models.attention import SpatialSelfAttention
from bsynth_hpc.models.autoencoder import PatchDiscriminator, ResBlock, build_compressor, tiled_decode
from bsynth_hpc.models.unet3d import UNetConditional, UNetConfig
from bsynth_hpc.recipes.common.outputs import nifti_affine, write_samples

TINY_VAE = dict(base_channels=8, norm_groups=4)
TINY_UNET = dict(in_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 attention_heads=2, norm_groups=4, metadata_conditioning=False)


@pytest.fixture(autouse=True)
def _reference_ops():
    """Whole networks run the PyTorch reference ops (the Triton interpreter is too slow for them)."""
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


@pytest.mark.parametrize("triton", [False, None])
def test_group_norm_silu_takes_4d_input(triton):
    """ops.group_norm_silu (and the GroupNormSiLU module) on (B, C, H, W) = SiLU(torch GroupNorm), plain and adaptive."""
    ops.set_triton_enabled(triton)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 8, 5, 7, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    scale, shift = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    ref = F.group_norm(x, 4, w, b, 1e-5)
    torch.testing.assert_close(ops.group_norm_silu(x, 4, w, b, 1e-5), F.silu(ref), rtol=1e-5, atol=1e-5)
    adaptive = F.silu(ref * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
    torch.testing.assert_close(ops.group_norm_silu(x, 4, w, b, 1e-5, scale, shift), adaptive, rtol=1e-5, atol=1e-5)
    module = bnn.GroupNormSiLU(4, 8, 1e-5)
    torch.testing.assert_close(module(x), F.silu(F.group_norm(x, 4, module.weight, module.bias, 1e-5)))


def test_2d_compressor_trains_one_step():
    """1x32^2 slices -> 4x4^2 latents (f = 8) with the conv VAE: one Adam step on L1 + KL changes the weights."""
    torch.manual_seed(0)
    vae = build_compressor("vae-gan", spatial_dims=2, downsample_factor=8, **TINY_VAE)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert vae.encode(x).mean.shape == (2, 4, 4, 4)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    recon, posterior = vae(x, generator=torch.Generator().manual_seed(2))
    loss = reconstruction_loss(recon, x) + 1e-6 * kl_loss(posterior)
    assert recon.shape == x.shape and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
    opt.step()
    assert len(_changed(before, vae)) == len(before)


@pytest.mark.parametrize("shape", [(33, 45), (17, 8)])
def test_2d_compressor_odd_sizes_round_trip(shape):
    """pad_input: odd slice sizes encode to ceil(n / f) and decode back to the input size; without it a clear error."""
    torch.manual_seed(0)
    vae = build_compressor("tle-vaegan", spatial_dims=2, pad_input=True, **TINY_VAE).eval()
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        z = vae.encode(x).mean
        assert z.shape == (1, 4) + tuple(-(-n // 4) for n in shape) == (1,) + vae.latent_shape(shape)
        assert vae.reconstruct(x).shape == x.shape
    strict = build_compressor("tle-vaegan", spatial_dims=2, **TINY_VAE)
    with pytest.raises(InputError, match="not divisible"):
        strict.encode(torch.rand(1, 1, 33, 45))
    with pytest.raises(InputError, match=r"expects \(B, 1, X, Y\)"):
        strict.encode(torch.rand(1, 1, 8, 8, 8))


@pytest.mark.parametrize("kind", ["wf-vae", "wf-sa-vae", "wavelet-vae"])
def test_wavelet_kinds_refuse_2d(kind):
    with pytest.raises(ConfigError, match="spatial_dims=3"):
        build_model(kind, spatial_dims=2, **TINY_VAE)
    with pytest.raises(ConfigError, match="spatial_dims=4"):
        build_model("vae-gan", spatial_dims=4, **TINY_VAE)


def _closed_form_resblock(cin: int, cout: int, k: int) -> int:
    """Two GroupNorms (2 parameters per channel each), two k-kernel convs with bias, a 1-tap skip with bias."""
    return 2 * cin + cin * cout * k + cout + 2 * cout + cout * cout * k + cout + cin * cout + cout


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_parameter_counts_follow_the_kernel_size(spatial_dims):
    block = ResBlock(4, 8, 2, spatial_dims=spatial_dims)
    assert sum(p.numel() for p in block.parameters()) == _closed_form_resblock(4, 8, 3 ** spatial_dims)


@pytest.mark.parametrize("name,kwargs", [("vae-gan", TINY_VAE), ("patchgan3d", dict(channels=8)),
                                         ("unet3d", TINY_UNET)])
def test_2d_and_3d_have_the_same_parameters_with_one_kernel_axis_fewer(name, kwargs):
    """Same parameter names; every conv kernel (k, k[, k]) loses one axis in 2D, everything else is identical."""
    two = build_model(name, spatial_dims=2, **kwargs).state_dict()
    three = build_model(name, spatial_dims=3, **kwargs).state_dict()
    assert list(two) == list(three)
    convs = 0
    for key, w2 in two.items():
        w3 = three[key]
        if w2.dim() == 4:  # conv weight (out, in, k, k)
            assert tuple(w3.shape) == tuple(w2.shape) + (w2.shape[-1],)
            convs += 1
        else:
            assert w3.shape == w2.shape, key
    assert convs > 0
    n2 = sum(v.numel() for v in two.values())
    n3 = sum(v.numel() for v in three.values())
    assert n3 - n2 == sum(v.numel() * (v.shape[-1] - 1) for v in two.values() if v.dim() == 4)


def test_2d_unet_trains_one_step_and_keeps_odd_grids():
    torch.manual_seed(0)
    unet = UNetConditional(UNetConfig(spatial_dims=2, **TINY_UNET))
    for shape in [(5, 7), (16, 16), (9, 4)]:
        x = torch.randn(2, 4, *shape)
        assert unet(x, torch.tensor([1, 900]), {"modality": torch.tensor([0, 3])}).shape == x.shape
    with pytest.raises(ValueError, match="spatial_dims=2"):
        unet(torch.randn(1, 4, 4, 4, 4), torch.tensor([1]))
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    cond = {"modality": torch.tensor([0, 1, 2, 3])}
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    out_before = unet(x, torch.tensor([10, 200, 500, 999]), cond).detach()
    loss = F.mse_loss(unet(x, torch.tensor([10, 200, 500, 999]), cond), noise)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert "conv_out.weight" in _changed(before, unet)
    assert not torch.equal(unet(x, torch.tensor([10, 200, 500, 999]), cond), out_before)


def test_spatial_self_attention_2d_equals_torch_multihead_attention():
    torch.manual_seed(0)
    block = SpatialSelfAttention(8, 2, 4)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.attn.qkv.weight)
        mha.in_proj_bias.copy_(block.attn.qkv.bias)
        mha.out_proj.weight.copy_(block.attn.proj.weight)
        mha.out_proj.bias.copy_(block.attn.proj.bias)
    x = torch.randn(2, 8, 3, 5)
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    ref = x + mha(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_discriminator_equals_monai_up_to_parameter_names(spatial_dims):
    """Ours and monai.networks.nets.PatchDiscriminator are the same network (its weights mapped in order)."""
    from monai.networks.nets import PatchDiscriminator as MonaiPatchDiscriminator

    torch.manual_seed(0)
    ours = PatchDiscriminator(channels=8, num_layers=3, spatial_dims=spatial_dims)
    theirs = MonaiPatchDiscriminator(spatial_dims=spatial_dims, channels=8, in_channels=1, num_layers_d=3,
                                     kernel_size=4, norm=("instance", {"affine": True}), bias=False, padding=1)
    ours_sd, theirs_keys = ours.state_dict(), list(theirs.state_dict())
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in theirs.state_dict().values()]
    theirs.load_state_dict(dict(zip(theirs_keys, ours_sd.values())))
    x = torch.rand((2, 1) + (32,) * spatial_dims)
    logits = ours(x)
    assert logits.dim() == 2 + spatial_dims and logits.shape[1] == 1
    torch.testing.assert_close(logits, theirs(x)[-1], rtol=1e-5, atol=1e-6)


def test_2d_tiled_decode_equals_full_decode_for_a_local_decoder():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=4),
                            nn.Conv2d(8, 1, 3, padding=1))
    z = torch.randn(2, 4, 13, 10)
    with torch.no_grad():
        full = decoder(z)
        tiled = tiled_decode(decoder, z, 4, tile=(6, 5), overlap=4, margin=2)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-5)
    vae = build_compressor("tle-vaegan", spatial_dims=2, **TINY_VAE).eval()
    with torch.no_grad():
        assert vae.decode_tiled(torch.randn(1, 4, 10, 6), tile=4, overlap=2, output_shape=(38, 22)).shape == (1, 1, 38, 22)


def test_write_samples_2d_png_and_nifti_with_a_2d_affine(tmp_path):
    g = np.random.default_rng(0)
    slices = g.random((2, 1, 6, 9)).astype(np.float32)
    slices[0, 0, 0, 0] = 1.5  # clipped to 1
    paths = write_samples(slices, None, tmp_path / "png", ["a", "b"], spatial_dims=2)
    assert [p.name for p in paths] == ["a.png", "b.png"] and not (tmp_path / "png" / "a.nii.gz").exists()
    img = np.asarray(Image.open(paths[0]))
    expected = (np.clip(slices[0, 0], 0, 1) * 255 + 0.5).astype(np.uint8)
    assert img.shape == (6, 9) and np.array_equal(img, expected)  # image order: row = first axis
    affine2d = np.array([[0.5, 0.0, -10.0], [0.0, 0.7, 4.0], [0.0, 0.0, 1.0]])
    write_samples(slices, affine2d, tmp_path / "nii", ["a", "b"], spatial_dims=2)
    nii = nib.load(str(tmp_path / "nii" / "b.nii.gz"))
    np.testing.assert_allclose(np.asarray(nii.dataobj), slices[1, 0])
    np.testing.assert_allclose(nii.affine, nifti_affine(affine2d))
    np.testing.assert_allclose(nii.affine[:2, [0, 1, 3]], affine2d[:2])
    with pytest.raises(ValueError, match="3x3"):
        nifti_affine(np.eye(2))


def test_recon_figure_shows_one_row_for_a_slice_and_three_for_a_volume(tmp_path):
    from bsynth_hpc.eval.figures import PAD, PANEL, recon_figure

    g = np.random.default_rng(1)
    vol, sl = g.random((8, 9, 10)), g.random((12, 7))
    h3 = Image.open(recon_figure(vol, vol * 0.5, tmp_path / "v.png", "volume")).height
    h2 = Image.open(recon_figure(sl, sl * 0.5, tmp_path / "s.png", "slice")).height
    assert h3 - h2 == 2 * (PANEL + PAD)
