"""One configuration system: shared stage-A names, renamed keys, typed model overrides, PrepConfig."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

from bsynth_hpc import cli
from bsynth_hpc.configtools import DeprecatedKeyWarning, Overrides, from_mapping, to_plain
from bsynth_hpc.engine.config import build_run_config, load_run_config
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.models.autoencoder import PatchDiscriminatorConfig
from bsynth_hpc.prep import pipeline
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource
from bsynth_hpc.recipes.common.vaegan_stage import PerceptualConfig, VAEGANConfig
from bsynth_hpc.recipes.dit3d.vae import DiT3dVAEConfig
from bsynth_hpc.recipes.wfdm.stages import WFDMVAEConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _load(cls, data):
    """(config, warning messages) of ``from_mapping(cls, data, "recipe")``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = from_mapping(cls, data, "recipe")
    return config, [str(w.message) for w in caught if issubclass(w.category, DeprecatedKeyWarning)]


# ---------------------------------------------------------------------------- shared stage-A names
OLD_AND_NEW = [
    (WFDMVAEConfig,
     {"perceptual_slices": 2, "allow_random_perceptual": True, "perceptual_weights": "/w/alexnet.pth"},
     {"perceptual": {"slices_per_plane": 2, "allow_random": True, "weights": "/w/alexnet.pth"}}),
    (DiT3dVAEConfig,
     {"slices_per_plane": 2, "perceptual_allow_random": True, "perceptual_weights": "/w/alexnet.pth",
      "disc_channels": 8, "disc_layers": 2},
     {"perceptual": {"slices_per_plane": 2, "allow_random": True, "weights": "/w/alexnet.pth"},
      "discriminator": {"channels": 8, "num_layers": 2}}),
]


@pytest.mark.parametrize("cls, old, new", OLD_AND_NEW, ids=["wfdm-vae", "dit3d-vae"])
def test_old_and_new_key_names_give_the_same_validated_config(cls, old, new):
    from_old, messages = _load(cls, old)
    from_new, none = _load(cls, new)
    assert from_old == from_new and not none
    assert from_new.perceptual == PerceptualConfig(weights="/w/alexnet.pth", slices_per_plane=2, allow_random=True)
    # one one-line message per old key, naming the new key
    assert len(messages) == len(old) and all("\n" not in m for m in messages)
    for key in old:
        target = cls.config_aliases[key]
        assert f"recipe.{key} is deprecated: use recipe.{target}" in " | ".join(messages)


def test_both_recipes_share_the_base_fields():
    shared = {f.name for f in dataclasses.fields(VAEGANConfig)}
    for cls in (WFDMVAEConfig, DiT3dVAEConfig):
        assert issubclass(cls, VAEGANConfig) and shared <= {f.name for f in dataclasses.fields(cls)}
    dit, _ = _load(DiT3dVAEConfig, {})
    assert dit.discriminator == PatchDiscriminatorConfig(channels=64, num_layers=3)  # 000's PatchGAN
    assert (dit.adversarial, dit.perceptual_weight, dit.lr) == ("lsgan", 0.6, 1e-3)  # its own defaults


def test_an_old_name_override_wins_over_a_new_name_config_and_says_so():
    raw = {"stage": "wfdm-vae", "recipe": {"perceptual": {"allow_random": True, "slices_per_plane": 1}}}
    with pytest.warns(DeprecatedKeyWarning, match=r"use recipe\.perceptual\.allow_random \(its value False "
                                                  r"replaces recipe\.perceptual\.allow_random=True\)"):
        config = build_run_config(raw, overrides=["recipe.allow_random_perceptual=false"])
    assert config.recipe.perceptual == PerceptualConfig(slices_per_plane=1, allow_random=False)


@pytest.mark.parametrize("data, pattern", [
    ({"perceptual": {"slice_per_plane": 2}}, r"unknown key recipe\.perceptual\.slice_per_plane .*did you mean "
                                            r"'slices_per_plane'"),
    ({"perceptual_slice": 2}, r"unknown key recipe\.perceptual_slice .*did you mean 'perceptual\.slices_per_plane'"),
    ({"discriminator": {"chanels": 8}}, r"unknown key recipe\.discriminator\.chanels .*did you mean 'channels'"),
    ({"discriminator": {"norm": "layer"}}, r"recipe\.discriminator\.norm='layer' is not allowed"),
    ({"perceptual": {"slices_per_plane": 0}}, r"recipe\.perceptual\.slices_per_plane must be >= 1"),
    ({"compressor_kwargs": {"base_channel": 8}}, r"unknown key recipe\.compressor_kwargs\.base_channel .*did you "
                                                 r"mean 'base_channels'"),
    ({"compressor_kwargs": {"base_channels": "wide"}}, r"recipe\.compressor_kwargs\.base_channels='wide' must be an "
                                                       r"integer"),
    ({"compressor_kwargs": {"norm_groups": 5}}, r"recipe\.compressor_kwargs: .*multiples of norm_groups=5"),
])
def test_unknown_or_bad_keys_still_error_with_the_closest_name(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_mapping(WFDMVAEConfig, data, "recipe")


def test_compressor_kwargs_are_typed_overrides_of_the_preset():
    config, _ = _load(WFDMVAEConfig, {"compressor_kwargs": {"channel_mult": [2, 4], "base_channels": 8.0,
                                                                "norm_groups": 4}})
    kwargs = config.compressor_kwargs
    assert isinstance(kwargs, Overrides) and kwargs == {"channel_mult": (2, 4), "base_channels": 8, "norm_groups": 4}
    assert type(kwargs["base_channels"]) is int
    # what the run records stays plain YAML/JSON data with only the given keys
    assert to_plain(config)["compressor_kwargs"] == {"channel_mult": [2, 4], "base_channels": 8, "norm_groups": 4}


@pytest.mark.parametrize("name", ["wfdm-vae.yaml", "wfdm-vae_tiny.yaml", "dit3d-vae.yaml", "dit3d-vae_tiny.yaml"])
def test_shipped_configs_use_the_new_names(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedKeyWarning)
        config = load_run_config(CONFIGS / name)
    assert isinstance(config.recipe.perceptual, PerceptualConfig)
    assert isinstance(config.recipe.discriminator, PatchDiscriminatorConfig)


@pytest.mark.parametrize("name", ["wfdm-ldm.yaml", "wfdm-ldm_tiny.yaml", "dit3d_tle.yaml", "dit3d_tiny.yaml"])
def test_shipped_latent_diffusion_configs_use_the_shared_names(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedKeyWarning)
        config = load_run_config(CONFIGS / name, overrides=["recipe.latents=latents.zarr"])
    assert config.recipe.balanced is True


# ---------------------------------------------------------------------------- prep
@pytest.mark.parametrize("kwargs, pattern", [
    ({"workers": 0}, r"^--workers: workers=0"),
    ({"cluster": "kubernetes"}, r"^--cluster: cluster='kubernetes'"),
    ({"cluster": "sync", "cluster_options": {"memory_limit": "1GB"}}, r"^--cluster-config: cluster_options"),
    ({"splits": (0.5, 0.5, 0.5)}, r"^--splits: split fractions"),
    ({"stratify": "age"}, r"^--stratify: stratify='age'"),
])
def test_prep_config_errors_name_the_flag(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PrepConfig(**kwargs)


def _cmd_prep_config(monkeypatch, tmp_path, *flags):
    """The PrepConfig that `bsynth prep` builds from ``flags`` (run_prep replaced by a recorder)."""
    seen = {}

    def fake_run_prep(source, out, config):
        seen.update(source=source, out=out, config=config)
        return type("Result", (), {"exit_code": 0})()

    monkeypatch.setattr(pipeline, "run_prep", fake_run_prep)
    args = cli.build_parser().parse_args(["prep", "--manifest", str(tmp_path / "m.csv"), "--out",
                                          str(tmp_path / "s.zarr"), *flags])
    assert args.func(args) == 0
    assert seen["source"] == PrepSource.manifest(tmp_path / "m.csv") and seen["out"] == str(tmp_path / "s.zarr")
    return seen["config"]


def test_cmd_prep_defaults_are_the_prep_config_defaults(monkeypatch, tmp_path):
    assert _cmd_prep_config(monkeypatch, tmp_path) == PrepConfig()


def test_cmd_prep_maps_each_flag_onto_its_field(monkeypatch, tmp_path):
    config = _cmd_prep_config(monkeypatch, tmp_path, "--shape", "12", "14", "10", "--spacing", "2", "--workers", "3",
                              "--cluster", "sync", "--normalize", "zscore", "--clip-percentiles", "1", "99",
                              "--mask-column", "brain", "--allow-outside-root", "--chunks", "6", "7", "5",
                              "--dtype", "float32", "--splits", "0.6", "0.2", "0.2", "--seed", "4", "--quiet",
                              "--stratify", "dataset", "--max-volume-mb", "64")
    assert config == PrepConfig(shape=(12, 14, 10), spacing=(2.0,), workers=3, cluster="sync", normalize="zscore",
                                clip_percentiles=(1.0, 99.0), mask="brain", allow_outside_root=True,
                                chunks=(6, 7, 5), dtype="float32", splits=(0.6, 0.2, 0.2), seed=4, progress=False,
                                stratify="dataset", max_volume_mb=64.0)
