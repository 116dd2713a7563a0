"""The shared latent-diffusion stage (wfdm-ldm, dit3d) on a tiny hand-written latent cache: CFG dropout and
losses independent of the launch layout, the configured loss norm, the info file, old key names, and the
conditioning interface (incl. a clinical-vector model)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bsynth_hpc.configtools import DeprecatedKeyWarning, from_mapping
from bsynth_hpc.data.latent_cache import CLINICAL_DIM, LatentCache, LatentDataset
from bsynth_hpc.data.metadata import NUM_FIELDS
from bsynth_hpc.engine.stage import ExportContext, StepContext
from bsynth_hpc.models.conditioning import ConditionalDenoiser, ConditionGroup, cfg_dropout, drop_groups
from bsynth_hpc.recipes.dit3d.ldm import DiT3dStage, DiT3dStageConfig, load_dit_info
from bsynth_hpc.recipes.wfdm.stages import WFDMLDMConfig, WFDMLDMStage

LATENT = (2, 4, 4, 4)
N = 8
DIT = dict(depth=1, hidden_size=12, num_heads=2, patch_size=(2, 2, 2), window_size=(2, 2, 2), window_blocks=(0,))
UNET = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "attention_heads": 2,
        "norm_groups": 4, "metadata_dim": 8, "metadata_field_dim": 4}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "lat.zarr"
    lat = LatentCache.create(path, N, LATENT, scale_factor=0.5, dtype="float32", label_names=["healthy", "TLE"])
    rng = np.random.default_rng(0)
    for i in range(N):
        mask = np.zeros(NUM_FIELDS, dtype=np.float32)
        mask[: 1 + i % 3] = 1
        lat.write(i, rng.standard_normal(LATENT).astype(np.float32), volume_id=f"v{i}", modality_id=0,
                  metadata=mask * 0.3, metadata_mask=mask, label=i % 2, split="train")
    return path


def _stage(kind: str, latents, **recipe):
    if kind == "dit3d":
        return DiT3dStage(from_mapping(DiT3dStageConfig, {"latents": str(latents), **DIT, **recipe}, "recipe"), None)
    return WFDMLDMStage(from_mapping(WFDMLDMConfig, {"latents": str(latents), "unet": UNET, **recipe}, "recipe"), None)


def _batch(latents, rows):
    ds = LatentDataset(latents)
    items = [ds[i] for i in rows]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in
            ("latent", "label", "modality_id", "metadata", "metadata_mask")}


def _ctx(stage, model, seeds):
    return StepContext(0, stage.phase_name, {stage.model_name: model}, torch.device("cpu"), seeds)


def _split(batch, parts):
    size = N // parts
    return [{k: v[r * size:(r + 1) * size] for k, v in batch.items()} for r in range(parts)]


@pytest.mark.parametrize("kind, recipe", [("dit3d", {"cfg_dropout_prob": 0.5}), ("wfdm", {"cfg_dropout_prob": 0.5})])
def test_cfg_dropout_and_losses_do_not_depend_on_the_rank_layout(cache, kind, recipe):
    """8 samples as 1 rank x 8 and as 2 ranks x 4 (each rank sees its half, with its samples' seeds)."""
    stage = _stage(kind, cache, **recipe)
    torch.manual_seed(0)
    model = stage.build_models()[stage.model_name].eval()
    batch, seeds = _batch(cache, range(N)), torch.arange(N) * 7919 + 3
    whole = stage._cfg_dropout(model, stage.conditions(batch, torch.device("cpu")), _ctx(stage, model, seeds))
    halves = [stage._cfg_dropout(model, stage.conditions(b, torch.device("cpu")), _ctx(stage, model, s))
              for b, s in zip(_split(batch, 2), seeds.chunk(2))]
    for key, value in whole.items():
        assert torch.equal(value, torch.cat([h[key] for h in halves])), key
    first = next(iter(whole))
    null = model.null_condition(N, "cpu")[first]
    dropped = (whole[first] == null).flatten(1).all(1) if whole[first].dim() > 1 else whole[first] == null
    assert 0 < int(dropped.sum()) < N  # at rate 0.5 some are dropped, some kept
    with torch.no_grad():
        loss = stage.diffusion_loss(batch, _ctx(stage, model, seeds), "train", dropout=True)
        split = torch.cat([stage.diffusion_loss(b, _ctx(stage, model, s), "train", dropout=True)
                           for b, s in zip(_split(batch, 2), seeds.chunk(2))])
    assert loss.shape == (N,)
    torch.testing.assert_close(loss, split, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dit3d", "wfdm"])
def test_configured_loss_norm_is_used(cache, kind):
    """recipe.diffusion.loss=l1 gives the mean absolute error of the prediction (dit3d computed MSE always)."""
    values = {}
    for norm in ("l2", "l1"):
        stage = _stage(kind, cache, diffusion={"loss": norm})
        torch.manual_seed(0)
        model = stage.build_models()[stage.model_name].eval()
        with torch.no_grad():
            for p in model.parameters():  # zero-initialised heads would predict 0 for every norm
                p.add_(0.05 * torch.randn_like(p))
        batch, seeds = _batch(cache, range(4)), torch.arange(4)
        ctx = _ctx(stage, model, seeds)
        with torch.no_grad():
            got = stage.validation_step(batch, ctx)[stage.val_metric]
            z0 = batch["latent"]
            nb = stage.objective.draw(z0, noise=ctx.randn(z0.shape[1:], salt="val-noise"), u=ctx.rand(salt="val-t"))
            err = model(nb.x_t, nb.model_t, stage.conditions(batch, z0.device)) - nb.target
        ref = err.abs().flatten(1).mean(1) if norm == "l1" else err.square().flatten(1).mean(1)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        values[norm] = got
    assert not torch.allclose(values["l1"], values["l2"])


def test_dit3d_writes_its_info_file(cache, tmp_path):
    stage = _stage("dit3d", cache)
    models = stage.build_models()
    (spec,) = stage.exports(models, ExportContext(0, None, tmp_path))
    info = json.loads((tmp_path / "dit_info.json").read_text())
    assert info["classes"] == ["healthy", "TLE"] and info["modalities"] == ["T1w"]
    assert info["latent_shape"] == list(LATENT) and info["latent_scale"] == 0.5 and info["export"] == "dit"
    assert info["diffusion"]["scheduler"] == "ddpm" and "compressor_sha256" in info and "compressor_run" in info
    assert spec.factory_kwargs["class_dropout_prob"] == 0.1 and spec.sidecar["modalities"] == ["T1w"]
    stage.exports(models, ExportContext(0, None, None))  # no run folder (outside a run): nothing written


def test_old_key_names_give_the_same_config(cache, recwarn):
    new = from_mapping(DiT3dStageConfig, {"latents": str(cache), "balanced": False, "cfg_dropout_prob": 0.2}, "recipe")
    with pytest.warns(DeprecatedKeyWarning, match="recipe.cfg_dropout_prob"):
        old = from_mapping(DiT3dStageConfig, {"latents": str(cache), "class_balanced": False,
                                              "class_dropout_prob": 0.2}, "recipe")
    assert old == new
    with pytest.warns(DeprecatedKeyWarning, match="recipe.balanced"):
        old_w = from_mapping(WFDMLDMConfig, {"latents": str(cache), "balance_modalities": False}, "recipe")
    assert old_w == from_mapping(WFDMLDMConfig, {"latents": str(cache), "balanced": False}, "recipe")


def test_load_dit_info_reads_an_export_with_the_old_key_names(cache, tmp_path):
    from bsynth_hpc.engine.export import export_model

    stage = _stage("dit3d", cache)
    model = stage.build_models()["dit"]
    recipe = {"latents": str(cache), "classes": ["healthy", "TLE"], "class_balanced": True,
              "class_dropout_prob": 0.1, **{k: list(v) if isinstance(v, tuple) else v for k, v in DIT.items()}}
    export_model(tmp_path, "dit", model, {"stage": "dit3d", "recipe": recipe},
                 extra={"factory": "dit3d", "factory_kwargs": stage.model_kwargs(), "modalities": ["T1w"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedKeyWarning)  # an old run loads silently
        info = load_dit_info(tmp_path)
    assert info["classes"] == ["healthy", "TLE"] and info["latent_shape"] == list(LATENT)


def test_balanced_sampling_weights(cache):
    dit = _stage("dit3d", cache)
    w = dit.sampling_weights(dit.dataset(None))
    labels = [i % 2 for i in range(N)]
    assert sum(wi for wi, y in zip(w, labels) if y == 0) == pytest.approx(sum(wi for wi, y in zip(w, labels) if y))
    assert _stage("wfdm", cache, balanced=False).sampling_weights(LatentDataset(cache)) is None


class _ClinicalDenoiser(nn.Module):
    """A denoiser conditioned on seed 002's 7-D clinical vector (+ availability mask): the interface fits it."""

    def __init__(self, dropout_prob: float) -> None:
        super().__init__()
        self.dropout_prob = dropout_prob
        self.proj = nn.Linear(2 * CLINICAL_DIM, LATENT[0])

    def condition_groups(self) -> tuple[ConditionGroup, ...]:
        return (ConditionGroup("clinical", ("clinical", "clinical_mask"), self.dropout_prob),)

    def null_condition(self, batch: int, device) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(batch, CLINICAL_DIM, device=device)
        return {"clinical": zeros, "clinical_mask": zeros.clone()}

    def forward(self, x, t, cond):
        c = self.proj(torch.cat([cond["clinical"], cond["clinical_mask"]], 1))
        return x + c[:, :, None, None, None]


def test_every_denoiser_follows_the_conditioning_interface(cache):
    clinical = _ClinicalDenoiser(0.5)
    models = [_stage("dit3d", cache).build_denoiser(), _stage("wfdm", cache).build_denoiser(), clinical]
    assert all(isinstance(m, ConditionalDenoiser) for m in models)
    cond = {"clinical": torch.rand(N, CLINICAL_DIM) + 1, "clinical_mask": torch.ones(N, CLINICAL_DIM)}
    seeds = torch.arange(N)
    from bsynth_hpc.engine.noise import sample_rand

    out = cfg_dropout(clinical, cond, lambda g: sample_rand(seeds, f"cfg-{g}"))
    dropped = sample_rand(seeds, "cfg-clinical") < 0.5
    assert torch.equal(out["clinical"][dropped], torch.zeros(int(dropped.sum()), CLINICAL_DIM))
    assert torch.equal(out["clinical"][~dropped], cond["clinical"][~dropped])
    assert torch.equal(out["clinical_mask"].sum(1) == 0, dropped)
    # drop_groups leaves groups that are not asked for alone
    same = drop_groups(cond, clinical.null_condition(N, "cpu"), clinical.condition_groups(), {})
    assert all(torch.equal(same[k], cond[k]) for k in cond)
