"""Conditional 3D U-Net and metadata encoder of WFDM (seed 003 §2.5.4-2.5.5)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bsynth_hpc import ops
from bsynth_hpc.data.metadata import FIELD_INDEX, NUM_FIELDS, encode_metadata
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.models.conditioning import MetadataEncoder
from bsynth_hpc.models.unet3d import UNet3dConditional, UNet3dConfig, unet3d_config

STATS = {name: {"mean": 50.0, "std": 10.0, "count": 100.0} for name in ("age", "height", "weight", "bmi")}


@pytest.fixture(autouse=True)
def reference_ops():
    """The PyTorch reference of group_norm_silu (the kernel has its own tests)."""
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


def tiny(**overrides) -> UNet3dConditional:
    """Three levels of 6/12/18 channels, attention at the two lowest, odd in/out channels."""
    base = dict(in_channels=3, out_channels=5, base_channels=6, channel_mult=(1, 2, 3), num_res_blocks=1,
                attention_levels=(1, 2), attention_heads=2, norm_groups=3, metadata_dim=8, metadata_field_dim=4,
                modality_dropout_prob=0.3, metadata_dropout_prob=0.3)
    torch.manual_seed(0)
    return UNet3dConditional(UNet3dConfig(**{**base, **overrides}))


def perturb(model: torch.nn.Module, std: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Add noise to every parameter: breaks the zero-initialised output convolutions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def metadata(*metas: dict) -> dict[str, torch.Tensor]:
    """Condition tensors from raw metadata through the data module's encoder."""
    pairs = [encode_metadata(m, STATS) for m in metas]
    return {"metadata": torch.from_numpy(np.stack([v for v, _ in pairs])),
            "metadata_mask": torch.from_numpy(np.stack([r for _, r in pairs]))}


def cond_batch() -> dict[str, torch.Tensor]:
    return {"modality": torch.tensor([0, 3]),
            **metadata({"age": 61, "sex": "female", "epilepsy": "yes"}, {"age": 25, "handedness": "left"})}


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("overrides,shape", [
    ({}, (7, 9, 5)),
    ({"in_channels": 4, "out_channels": None, "channel_mult": (1, 2), "num_res_blocks": 2, "attention_levels": (),
      "mid_attention": False}, (6, 5, 3)),
    ({"channel_mult": (1, 1, 2, 2), "attention_levels": (3,)}, (9, 4, 11)),
])
def test_output_shape_matches_input_grid(overrides, shape):
    model = tiny(**overrides)
    x = torch.randn(2, model.config.in_channels, *shape)
    out = model(x, torch.tensor([5, 900]), {"modality": torch.tensor([1, 2])})
    assert out.shape == (2, model.config.output_channels, *shape)


def test_output_is_zero_at_init_and_blocks_use_adaptive_groupnorm():
    model = tiny()
    out = model(torch.randn(1, 3, 7, 9, 5), torch.tensor([3]))
    assert torch.count_nonzero(out) == 0        # zero-initialised output convolution (ADM)
    block = model.down_stages[0][0].res
    x, emb = torch.randn(2, 6, 4, 4, 4), torch.randn(2, model.config.embedding_width)
    torch.nn.init.normal_(block.conv2.weight)
    a = block(x, emb)
    b = block(x, emb * 2.0)
    assert (a - b).abs().max() > 1e-4              # the embedding modulates the block


# ------------------------------------------------------------------------------------------ conditions
def test_timestep_modality_and_metadata_each_change_the_output():
    model = perturb(tiny()).eval()
    x, t, cond = torch.randn(2, 3, 7, 9, 5), torch.tensor([100, 100]), cond_batch()
    with torch.no_grad():
        base = model(x, t, cond)
        variants = {
            "timestep": model(x, torch.tensor([600, 600]), cond),
            "modality": model(x, t, {**cond, "modality": torch.tensor([1, 2])}),
            "metadata": model(x, t, {**cond, **metadata({"age": 30, "sex": "male"}, {"age": 25})}),
        }
    for name, out in variants.items():
        assert (out - base).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4, name


def test_missing_field_differs_from_explicit_no_and_masked_values_are_ignored():
    torch.manual_seed(0)
    encoder = MetadataEncoder(out_dim=16, field_dim=4)
    c = metadata({"age": 40, "epilepsy": "no"}, {"age": 40}, {"age": 40, "sex": "female"})
    epi, sex = FIELD_INDEX["epilepsy"], FIELD_INDEX["sex"]
    assert c["metadata"][0, epi] == 1 and c["metadata_mask"][0, epi] == 1     # three-state "no"
    assert c["metadata"][1, epi] == 0 and c["metadata_mask"][1, epi] == 0     # missing
    assert c["metadata"][2, sex] == 0 and c["metadata"][1, sex] == 0          # "female" is category 0
    out = encoder(c["metadata"], c["metadata_mask"])
    assert (out[0] - out[1]).abs().max() > 1e-5     # explicit "no" vs unrecorded
    assert (out[2] - out[1]).abs().max() > 1e-5     # category 0 vs unrecorded (only the mask tells)
    # the value stored under mask 0 does not matter, whatever it is
    junk = c["metadata"].clone()
    missing = c["metadata_mask"] == 0
    junk[missing] = torch.tensor([123.0, 2.0, float("nan"), -7.0]).repeat(int(missing.sum()) // 4 + 1)[
        : int(missing.sum())]
    assert torch.equal(encoder(junk, c["metadata_mask"]), out)


def test_metadata_encoder_reads_values_and_codes():
    torch.manual_seed(0)
    encoder = MetadataEncoder(out_dim=16, field_dim=4)
    c = metadata({"age": 40, "race": "asian", "stroke": "yes"}, {"age": 70, "race": "asian", "stroke": "yes"},
                 {"age": 40, "race": "white", "stroke": "yes"}, {"age": 40, "race": "asian", "stroke": "no"})
    out = encoder(c["metadata"], c["metadata_mask"])
    for other in (1, 2, 3):       # continuous value, category, binary code each matter
        assert (out[0] - out[other]).abs().max() > 1e-5
    with pytest.raises(ValueError, match=f"\\(B, {NUM_FIELDS}\\)"):
        encoder(torch.zeros(2, 24), torch.zeros(2, 24))


def test_cfg_null_condition_and_guidance():
    model = perturb(tiny()).eval()
    x, t, cond = torch.randn(2, 3, 7, 9, 5), torch.tensor([40, 400]), cond_batch()
    with torch.no_grad():
        c_out = model(x, t, cond)
        u_out = model(x, t, model.null_condition(2, x.device))
        torch.testing.assert_close(model(x, t), u_out)          # no condition = null condition
        torch.testing.assert_close(model(x, t, model.drop_conditions(cond, modality_prob=1.0, metadata_prob=1.0)),
                                   u_out)
        torch.testing.assert_close(model.forward_with_cfg(x, t, cond, 1.0), c_out, rtol=1e-4, atol=1e-5)
        guided = model.forward_with_cfg(x, t, cond, 3.0)
    assert (c_out - u_out).abs().max() > 1e-4
    torch.testing.assert_close(guided, u_out + 3.0 * (c_out - u_out), rtol=1e-4, atol=1e-5)


def test_condition_dropout_rates_are_independent_and_seeded():
    model = tiny(modality_dropout_prob=0.3, metadata_dropout_prob=0.6)
    n = 20000
    cond = {"modality": torch.randint(0, 4, (n,)), "metadata": torch.randn(n, NUM_FIELDS).abs() + 1,
            "metadata_mask": torch.ones(n, NUM_FIELDS)}
    dropped = model.drop_conditions(cond, generator=torch.Generator().manual_seed(5))
    mod_null = dropped["modality"] == model.null_modality
    meta_null = dropped["metadata_mask"].sum(1) == 0
    assert abs(mod_null.float().mean().item() - 0.3) < 0.015
    assert abs(meta_null.float().mean().item() - 0.6) < 0.015
    assert abs((mod_null & meta_null).float().mean().item() - 0.18) < 0.015   # independent draws
    assert torch.equal(dropped["modality"][~mod_null], cond["modality"][~mod_null])
    assert (dropped["metadata"][meta_null] == 0).all() and torch.equal(dropped["metadata"][~meta_null],
                                                                        cond["metadata"][~meta_null])
    again = model.drop_conditions(cond, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(again[k], dropped[k]) for k in cond)


def test_condition_errors():
    model = tiny()
    x, t = torch.randn(1, 3, 4, 4, 4), torch.tensor([1])
    with pytest.raises(ValueError, match="unknown condition key"):
        model(x, t, {"modalities": torch.tensor([0])})
    with pytest.raises(ValueError, match="given together"):
        model(x, t, {"metadata": torch.zeros(1, NUM_FIELDS)})
    with pytest.raises(ValueError, match="modality_conditioning=False"):
        tiny(modality_conditioning=False)(x, t, {"modality": torch.tensor([0])})


# ------------------------------------------------------------------------------------------ training
def test_gradients_reach_every_parameter():
    model = perturb(tiny(dropout=0.0))
    out = model(torch.randn(2, 3, 7, 9, 5), torch.tensor([5, 500]), cond_batch())
    out.square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_activation_checkpointing_gives_identical_outputs_and_grads():
    ref = perturb(tiny())
    ckpt = copy.deepcopy(ref)
    ckpt.set_activation_checkpointing(True)
    x, t, cond = torch.randn(2, 3, 7, 9, 5), torch.tensor([5, 500]), cond_batch()
    outs = []
    for model in (ref, ckpt):
        out = model(x, t, cond)
        out.square().mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad), name


# ------------------------------------------------------------------------------------------ config
def test_config_validation_and_preset():
    wfdm = unet3d_config("unet3d-wfdm")
    assert (wfdm.in_channels, wfdm.output_channels, wfdm.num_modalities) == (4, 4, 4)
    with pytest.raises(ConfigError, match="norm_groups=4 must divide"):
        UNet3dConfig(base_channels=6, norm_groups=4).validate()
    with pytest.raises(ConfigError, match="attention_levels"):
        UNet3dConfig(channel_mult=(1, 2), attention_levels=(2,)).validate()
    with pytest.raises(ConfigError, match="attention_heads"):
        unet3d_config("unet3d-wfdm", attention_heads=3)
    with pytest.raises(ConfigError, match="unknown U-Net config field"):
        unet3d_config("unet3d-wfdm", channels=3)


def test_registry_builds_unet():
    from bsynth_hpc.models import build_model

    model = build_model("unet3d-wfdm", base_channels=4, norm_groups=2, attention_heads=2, metadata_dim=4)
    assert isinstance(model, UNet3dConditional) and model.config.channel_mult == (1, 2, 4)
