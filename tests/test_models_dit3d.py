"""DiT-3D denoiser (seed 000 §3.2, §5.2): tokenisation, adaLN-Zero, real 3D windows, class tokens, CFG."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from bsynth_hpc import ops
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.models.dit3d import DIT3D_PRESETS, DiT3d, DiT3dConfig, WindowedAttention, dit3d_config
from bsynth_hpc.models.embeddings3d import PatchEmbed3d, patchify, sincos_pos_embed_3d, unpatchify


@pytest.fixture(autouse=True)
def reference_ops():
    """The PyTorch reference of the fast ops (the kernels have their own tests); a test that wants
    the Triton path (the interpreter on CPU) re-enables it."""
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


def tiny(**overrides) -> DiT3d:
    """A small DiT-3D on an 8x8x8 latent with 2x2x2 patches: a 4x4x4 token grid."""
    base = dict(input_size=(8, 8, 8), in_channels=2, patch_size=(2, 2, 2), hidden_size=12, num_heads=2, depth=2,
                window_size=(2, 2, 2), window_blocks=(0,), mlp_ratio=2.0, class_dropout_prob=0.25)
    torch.manual_seed(0)
    return DiT3d(DiT3dConfig(**{**base, **overrides}))


def perturb(model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> torch.nn.Module:
    """Add noise to every parameter: breaks the adaLN-Zero / zero-head initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def token_slice(token: tuple[int, int, int], patch: int = 2) -> tuple[slice, ...]:
    """Voxel index of one token's latent patch in (B, C, X, Y, Z)."""
    return (slice(None), slice(None)) + tuple(slice(i * patch, (i + 1) * patch) for i in token)


# ------------------------------------------------------------------------------------------ tokenisation
def test_patchify_unpatchify_round_trip_and_layout():
    x = torch.randn(2, 3, 8, 6, 4)
    tokens = patchify(x, (4, 2, 2))
    assert tokens.shape == (2, 2 * 3 * 2, 4 * 2 * 2 * 3)
    assert torch.equal(unpatchify(tokens, (2, 3, 2), (4, 2, 2), 3), x)
    # token (gx=1, gy=2, gz=0) is number (1*3 + 2)*2 + 0 and holds that patch in (px, py, pz, C) order
    patch = x[:, :, 4:8, 4:6, 0:2].permute(0, 2, 3, 4, 1).reshape(2, -1)
    assert torch.equal(tokens[:, (1 * 3 + 2) * 2 + 0], patch)


def test_patch_embedding_tokens_follow_patchify_order():
    embed = PatchEmbed3d(3, 6, (2, 2, 2))
    x = torch.randn(1, 3, 4, 6, 2)
    expected = patchify(x, (2, 2, 2)) @ embed.proj.weight.permute(0, 2, 3, 4, 1).reshape(6, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(x), expected, rtol=1e-5, atol=1e-5)


def test_patch_must_divide_latent_grid():
    with pytest.raises(ConfigError, match="must divide the latent grid"):
        DiT3dConfig(input_size=(28, 34, 28), patch_size=(4, 4, 4)).validate()
    with pytest.raises(ValueError, match="must divide the latent grid"):
        PatchEmbed3d(2, 6, (2, 2, 2))(torch.zeros(1, 2, 4, 5, 4))
    model = tiny()
    with pytest.raises(ValueError, match="expected latents of shape"):
        model(torch.zeros(1, 2, 8, 8, 6), torch.zeros(1))


def test_sincos_positions_encode_each_axis():
    grid, dim = (3, 4, 5), 24
    pe = sincos_pos_embed_3d(dim, grid)
    assert pe.shape == (60, dim)
    third = dim // 3
    for x, y, z in [(0, 0, 0), (2, 1, 3), (1, 3, 4)]:
        row = pe[(x * 4 + y) * 5 + z]
        # per axis [sin(p w_0..), cos(p w_0..)] with w_0 = 1
        assert row[0] == pytest.approx(math.sin(x), abs=1e-6)
        assert row[third // 2] == pytest.approx(math.cos(x), abs=1e-6)
        assert row[third] == pytest.approx(math.sin(y), abs=1e-6)
        assert row[2 * third] == pytest.approx(math.sin(z), abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed_3d(16, grid)


# ------------------------------------------------------------------------------------------ adaLN-Zero
@pytest.mark.parametrize("conditioning", ["token", "adaln"])
def test_blocks_start_as_identity_and_model_output_is_zero(conditioning):
    model = tiny(class_conditioning=conditioning)
    extra = 1 if conditioning == "token" else 0
    tokens = torch.randn(2, 64 + extra, 12)
    c = torch.randn(2, 12)
    for block in model.blocks:  # block 0 windowed, block 1 global
        assert torch.equal(block(tokens, c), tokens)
    out = model(torch.randn(2, 2, 8, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 1]))
    assert out.shape == (2, 2, 8, 8, 8) and torch.count_nonzero(out) == 0


# ------------------------------------------------------------------------------------------ windows
def test_windowed_attention_without_appended_tokens_is_window_attention3d():
    attn = WindowedAttention(12, 2, (4, 4, 4), (2, 2, 2), (1, 1, 1))
    x = torch.randn(2, 4, 4, 4, 12)
    expected = attn.inner(x)
    torch.testing.assert_close(attn(x.reshape(2, 64, 12)), expected.reshape(2, 64, 12))


def test_window_larger_than_grid_is_clipped_and_unshifted():
    attn = WindowedAttention(12, 2, (7, 17, 7), (4, 4, 4), (2, 2, 2))
    assert attn.window_size == (4, 4, 4) and attn.shift_size == (2, 2, 2)
    attn = WindowedAttention(12, 2, (3, 17, 7), (4, 4, 4), (2, 2, 2))
    assert attn.window_size == (3, 4, 4) and attn.shift_size == (0, 2, 2)


def test_window_attention_really_windows_inside_the_model():
    """One window block (token mode: the class token is appended): a latent patch outside a token's
    window does not change that token's output, one inside does; shifted windows move the boundary.
    Runs the fast-op path (the Triton kernel through the interpreter on CPU)."""
    ops.set_triton_enabled(None)
    model = perturb(tiny(input_size=(8, 4, 4), num_heads=1, depth=1, class_conditioning="token")).eval()
    x = torch.randn(1, 2, 8, 4, 4)   # a 4x2x2 token grid: windows split x only
    t, y = torch.tensor([5]), torch.tensor([1])
    target = token_slice((1, 0, 0))  # x-window [0, 2) unshifted; [1, 3) shifted by 1

    def responses(*sources: tuple[int, int, int]) -> list[float]:
        """Largest change of the target token's output when each source token's patch is bumped."""
        with torch.no_grad():
            base = model(x, t, y)
            changes = []
            for source in sources:
                bumped = x.clone()
                bumped[token_slice(source)] += 3.0
                changes.append((model(bumped, t, y) - base)[target].abs().max().item())
        return changes

    outside, inside = responses((2, 0, 0), (0, 0, 0))   # neighbour in the next window / same window
    assert outside < 1e-6 and inside > 1e-3
    shifted = WindowedAttention(12, 1, (4, 2, 2), (2, 2, 2), (1, 1, 1))
    assert shifted.shift_size == (1, 0, 0)              # y, z: the window covers the grid, no shift
    shifted.load_state_dict(model.blocks[0].attn.state_dict())
    model.blocks[0].attn = shifted
    now_inside, now_outside = responses((2, 0, 0), (0, 0, 0))
    assert now_inside > 1e-3 and now_outside < 1e-6

@pytest.mark.parametrize("conditioning,reaches", [("adaln", False), ("token", True)])
def test_appended_class_token_carries_global_context_between_window_blocks(conditioning, reaches):
    """Two unshifted window blocks: patch tokens alone never leave their window, but the class token
    attends globally in block 1 and is read by every patch token in block 2."""
    model = perturb(tiny(depth=2, window_blocks=(0, 1), shift_windows=False, class_conditioning=conditioning))
    x = torch.randn(1, 2, 8, 8, 8)
    bumped = x.clone()
    bumped[token_slice((3, 3, 3))] += 3.0
    with torch.no_grad():
        diff = (model(bumped, 5, torch.tensor([0])) - model(x, 5, torch.tensor([0])))[token_slice((0, 0, 0))]
    assert (diff.abs().max().item() > 1e-4) == reaches


def test_shift_alternates_over_window_blocks():
    model = tiny(depth=4, window_blocks=(0, 1, 3))
    kinds = [type(b.attn).__name__ for b in model.blocks]
    assert kinds == ["WindowedAttention", "WindowedAttention", "SelfAttention", "WindowedAttention"]
    assert [model.blocks[i].attn.shift_size for i in (0, 1, 3)] == [(0, 0, 0), (1, 1, 1), (0, 0, 0)]


def test_odd_latent_grid_with_padded_windows():
    """Seed 000's 4x28x34x28 latent, patch (4, 2, 4): a 7x17x7 token grid that (4, 4, 4) windows
    do not divide (the op pads and masks)."""
    model = tiny(input_size=(28, 34, 28), in_channels=4, patch_size=(4, 2, 4), window_size=(4, 4, 4),
                 window_blocks=(0, 1), learn_sigma=True)
    assert model.grid == (7, 17, 7)
    out = perturb(model)(torch.randn(2, 4, 28, 34, 28), torch.tensor([1, 999]), torch.tensor([0, 1]))
    assert out.shape == (2, 8, 28, 34, 28) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------ classes / CFG
@pytest.mark.parametrize("conditioning", ["token", "adaln"])
def test_class_conditioning_and_cfg(conditioning):
    model = perturb(tiny(class_conditioning=conditioning, learn_sigma=True)).eval()
    x, t = torch.randn(2, 2, 8, 8, 8), torch.tensor([10, 400])
    y = torch.tensor([0, 1])
    null = torch.full_like(y, model.null_id)
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, null)
        assert (cond - model(x, t, torch.tensor([1, 0]))).abs().max() > 1e-3   # the class matters
        torch.testing.assert_close(model(x, t), uncond)                         # y=None: null class
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), cond, rtol=1e-5, atol=1e-5)
        guided = model.forward_with_cfg(x, t, y, 4.0)
    torch.testing.assert_close(guided[:, :2], uncond[:, :2] + 4.0 * (cond[:, :2] - uncond[:, :2]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, 2:], cond[:, 2:], rtol=1e-5, atol=1e-5)  # sigma: conditional


def test_label_dropout_rate_and_null_id():
    model = tiny(class_dropout_prob=0.25)
    y = torch.randint(0, 2, (40000,), generator=torch.Generator().manual_seed(3))
    dropped = model.drop_labels(y, generator=torch.Generator().manual_seed(7))
    is_null = dropped == model.null_id
    assert model.null_id == 2
    assert abs(is_null.float().mean().item() - 0.25) < 0.01   # 4.6 sigma of Binomial(40000, 0.25)
    assert torch.equal(dropped[~is_null], y[~is_null])
    assert torch.equal(dropped, model.drop_labels(y, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(model.drop_labels(y, prob=0.0), y)
    assert (model.drop_labels(y, prob=1.0) == model.null_id).all()


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("conditioning", ["token", "adaln"])
def test_gradients_reach_every_parameter(conditioning):
    model = perturb(tiny(class_conditioning=conditioning, learn_sigma=True))
    out = model(torch.randn(3, 2, 8, 8, 8), torch.tensor([1, 50, 900]), torch.tensor([0, 1, 2]))
    out.square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_activation_checkpointing_gives_identical_outputs_and_grads():
    ref = perturb(tiny())
    ckpt = copy.deepcopy(ref)
    ckpt.set_activation_checkpointing(True)
    assert all(b.checkpointing for b in ckpt.blocks)
    x, t, y = torch.randn(2, 2, 8, 8, 8), torch.tensor([3, 30]), torch.tensor([0, 2])
    outs = []
    for model in (ref, ckpt):
        out = model(x, t, y)
        out.square().mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad), name


# ------------------------------------------------------------------------------------------ config
def test_presets_and_config_errors():
    tle = dit3d_config("dit3d-tle")   # seed 000 §5.2
    assert (tle.depth, tle.hidden_size, tle.patch_size, tle.num_heads) == (12, 384, (4, 2, 4), 6)
    assert (tle.num_classes, tle.class_conditioning, tle.token_grid) == (2, "token", (7, 17, 7))
    assert set(DIT3D_PRESETS) >= {"dit3d-s", "dit3d-b", "dit3d-tle"}
    b = dit3d_config("dit3d-b", window_blocks=[0, 6])
    assert (b.hidden_size, b.num_heads, b.depth, b.window_blocks) == (768, 12, 12, (0, 6))
    with pytest.raises(ConfigError, match="unknown DiT-3D preset"):
        dit3d_config("dit3d-xl")
    with pytest.raises(ConfigError, match="unknown DiT-3D config field"):
        dit3d_config("dit3d-s", hidden=3)
    with pytest.raises(ConfigError, match="window_blocks"):
        dit3d_config("dit3d-s", depth=4)          # default window blocks (0, 3, 6, 9) exceed depth 4
    with pytest.raises(ConfigError, match="class_conditioning"):
        dit3d_config("dit3d-s", class_conditioning="cross")


def test_registry_builds_dit3d_and_timestep_features():
    from bsynth_hpc.models import build_model
    from bsynth_hpc.models.conditioning import timestep_embedding

    model = build_model("dit3d-tle", hidden_size=12, num_heads=2, depth=2, window_blocks=[1])
    assert isinstance(model, DiT3d) and model.grid == (7, 17, 7)
    emb = timestep_embedding(torch.tensor([0.0, 7.5]), 8)
    # [cos(t f_i), sin(t f_i)], f_i = 10000 ** (-i / 4)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [[math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs] for t in (0.0, 7.5)]
    torch.testing.assert_close(emb, torch.tensor(expected))
