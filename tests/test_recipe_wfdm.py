"""WFDM end to end on a tiny 4-modality store: wfdm-vae -> encode -> wfdm-ldm -> sample (+ resume, launcher)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.latent_cache import LatentCache, LatentDataset
from bsynth_hpc.data.dataset import VolumeDataset
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.engine.export import load_exported
from bsynth_hpc.engine.run import train_main
from engine_support import REPO, explain, losses, run, subprocess_env, volume

SHAPE = (16, 16, 16)
MODS = ("T1w", "T2w", "T1Gd", "FLAIR")
AFFINE = np.array([[-2.0, 0, 0, 30], [0, 2.0, 0, -40], [0, 0, 2.0, -20], [0, 0, 0, 1]])
ENGINE = {"micro_batch": 2, "grad_accum": 1, "max_steps": 3, "val_every": 0, "ckpt_every": 0, "log_every": 1,
          "progress": False, "tensorboard": False, "ema_decay": 0.9, "seed": 1,
          "schedule": {"name": "constant", "warmup": 0}}
VAE_RECIPE = {"compressor": "wf-vae", "compressor_kwargs": {"base_channels": 4, "num_res_blocks": 1, "norm_groups": 4},
              "discriminator": {"channels": 4, "num_layers": 1}, "lr": 2e-3, "disc_start": 1,
              "perceptual_weight": 0.3, "perceptual": {"slices_per_plane": 1, "allow_random": True},
              "scale_volumes": 4}
UNET = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
        "attention_heads": 2, "norm_groups": 4, "metadata_dim": 8, "metadata_field_dim": 4}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    monkeypatch.delenv("BSYNTH_FAULTS", raising=False)


def _config(path: Path, stage: str, recipe: dict, **engine) -> Path:
    cfg = {"stage": stage, "engine": {**ENGINE, **engine}, "data": {"num_workers": 0}, "recipe": recipe}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _train(stage, config, store, run_dir, *extra, resume=False):
    args = [stage, "--config", str(config), "--store", str(store), "--run-dir", str(run_dir), *extra]
    return train_main(args + (["--resume", "auto"] if resume else []))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import os

    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    root = tmp_path_factory.mktemp("wfdm")
    store = VolumeStore.create_or_open(root / "store.zarr", StoreLayout(kind="volume3d", shape=SHAPE,
                                                                        spacing=(2.0, 2.0, 2.0)))
    for k in range(8):
        subject = f"sub-{k:02d}"
        for j, mod in enumerate(MODS[: 2 + k % 3]):
            meta = {"age": 30 + 5 * k, "sex": "male" if k % 2 else "female"}
            if k % 2:
                meta["stroke"] = "yes"
            record = {"subject": subject, "session": None, "dataset": "smoke", "modality": mod,
                      "modality_id": MODS.index(mod), "source_path": f"/x/{subject}_{mod}.nii.gz",
                      "source_sha256": "0" * 64, "affine": AFFINE.tolist(), "shape": list(SHAPE), "metadata": meta}
            store.write_volume(f"smoke_{subject}_{mod}", volume(10 * k + j, SHAPE), record)
    finalize_store(store, fractions=(0.75, 0.25, 0.0), seed=0, stratify="dataset")
    store_path = root / "store.zarr"
    vae_cfg = _config(root / "vae.yaml", "wfdm-vae", VAE_RECIPE)
    assert _train("wfdm-vae", vae_cfg, store_path, root / "vae") == 0
    from bsynth_hpc.recipes.encode import encode_store

    encode_store(root / "vae", store_path, root / "lat.zarr", batch_size=4)
    ldm_recipe = {"latents": str(root / "lat.zarr"), "unet": UNET, "lr": 2e-3,
                  "diffusion": {"scheduler": "rflow", "sampling": {"steps": 4}}}
    ldm_cfg = _config(root / "ldm.yaml", "wfdm-ldm", ldm_recipe, max_steps=2)
    assert _train("wfdm-ldm", ldm_cfg, store_path, root / "ldm") == 0
    return {"root": root, "store": store_path, "vae": root / "vae", "lat": root / "lat.zarr", "ldm": root / "ldm",
            "ldm_cfg": ldm_cfg}


def test_vae_export_records_scale_and_random_perceptual(pipeline):
    model, meta = load_exported(pipeline["vae"], "vae")
    assert meta["latent_scale"] > 0 and meta["perceptual"] == "random-smoke" and meta["downsample_factor"] == 4
    assert model.latent_shape(SHAPE) == (4, 4, 4, 4)
    keys = losses(pipeline["vae"], "loss/generator/adv_g")
    assert keys and min(keys) >= 2  # adversarial term only after the warm-up step
    assert losses(pipeline["vae"], "loss/discriminator")


def test_encode_writes_conditions_and_resumes(pipeline, capsys):
    from bsynth_hpc.recipes.encode import encode_store

    cache = LatentCache(pipeline["lat"])
    ds = VolumeDataset(pipeline["store"], split=None)
    assert cache.n == len(ds) and cache.pending() == []
    assert cache.scale_factor == pytest.approx(load_exported(pipeline["vae"], "vae")[1]["latent_scale"])
    assert np.allclose(cache.info["affine"], AFFINE) and cache.info["metadata_stats"]
    lat = LatentDataset(pipeline["lat"])
    for i in (0, 5):
        item, ref = lat[i], ds[i]
        assert item["modality_id"] == ref["modality_id"] and item["volume_id"] == ref["volume_id"]
        np.testing.assert_allclose(item["metadata_mask"].numpy(), ref["metadata_mask"].numpy())
        np.testing.assert_allclose(item["metadata"].numpy(), ref["metadata"].numpy(), atol=1e-6)
    # metadata masking: subjects without 'stroke' have it masked out, others observed
    masks = {int(lat[i]["metadata_mask"].sum()) for i in range(len(lat))}
    assert len(masks) == 2
    # resume: un-flag one sample, the rerun encodes only that one
    import zarr

    z0 = cache.read_latent(3, scaled=False).copy()
    zarr.open_array(str(pipeline["lat"] / "written"), mode="r+")[3] = 0
    capsys.readouterr()
    encode_store(pipeline["vae"], pipeline["store"], pipeline["lat"])
    out = capsys.readouterr().out
    assert "1 of" in out and "already written, skipped" in out
    assert LatentCache(pipeline["lat"]).pending() == []
    np.testing.assert_allclose(LatentCache(pipeline["lat"]).read_latent(3, scaled=False), z0, atol=1e-3)


def test_ldm_export_sidecar_and_balanced_sampling(pipeline):
    _, meta = load_exported(pipeline["ldm"], "unet")
    assert Path(meta["compressor_run"]) == pipeline["vae"].resolve()
    assert meta["diffusion"]["scheduler"] == "rflow" and meta["metadata_stats"] and meta["latent_scale"] > 0
    from bsynth_hpc.engine.registry import get_stage_class

    stage_cls = get_stage_class("wfdm-ldm")
    from bsynth_hpc.engine.config import load_run_config

    cfg = load_run_config(pipeline["ldm_cfg"])
    stage = stage_cls(cfg.recipe, None)
    ds = stage.dataset("train")
    w = stage.sampling_weights(ds)
    per_mod: dict[int, float] = {}
    for m, wi in zip(ds.modality_ids, w):
        per_mod[m] = per_mod.get(m, 0.0) + wi
    assert len(set(round(v, 6) for v in per_mod.values())) == 1  # each modality equally likely


def test_cfg_dropout_uses_model_null_conditions(pipeline):
    from bsynth_hpc.engine.config import load_run_config
    from bsynth_hpc.engine.stage import StepContext
    from bsynth_hpc.engine.registry import get_stage_class

    cfg = load_run_config(pipeline["ldm_cfg"])
    stage = get_stage_class("wfdm-ldm")(cfg.recipe, None)
    unet = stage.build_models()["unet"]
    unet.config.modality_dropout_prob = 1.0
    unet.config.metadata_dropout_prob = 0.0
    batch = next(iter(torch.utils.data.DataLoader(stage.dataset(None), batch_size=4)))
    ctx = StepContext(0, "denoiser", {"unet": unet}, torch.device("cpu"), torch.arange(4))
    cond = stage.conditions(batch, torch.device("cpu"))
    dropped = stage._cfg_dropout(unet, cond, ctx)
    assert (dropped["modality"] == unet.null_modality).all()
    assert torch.equal(dropped["metadata_mask"], cond["metadata_mask"])


def test_sample_two_modalities_with_metadata_and_cfg(pipeline, tmp_path):
    from bsynth_hpc.recipes.wfdm.sampling import build_conditions, sample_wfdm

    stats = load_exported(pipeline["ldm"], "unet")[1]["metadata_stats"]
    conds = build_conditions("T1w,FLAIR", "age=56,sex=M", None, 1, 0, stats)
    assert [c["modality"] for c in conds] == ["T1w", "FLAIR"] and conds[0]["metadata_mask"].sum() == 2
    paths = sample_wfdm(pipeline["ldm"], tmp_path / "s", n=1, modality="T1w,FLAIR", meta="age=56,sex=M,stroke=yes",
                        cfg=2.0, steps=3, batch_size=2, seed=5)
    assert len(paths) == 2
    for p in paths:
        img = nib.load(str(p))
        assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    assert (tmp_path / "s" / "previews" / f"{paths[0].name[:-7]}.png").is_file()
    rows = (tmp_path / "s" / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("path,modality,label") and len(rows) == 3
    again = sample_wfdm(pipeline["ldm"], tmp_path / "t", n=1, modality="T1w", meta="age=56,sex=M,stroke=yes",
                        cfg=2.0, steps=3, batch_size=1, seed=5)
    np.testing.assert_allclose(np.asarray(nib.load(str(again[0])).dataobj),
                               np.asarray(nib.load(str(paths[0])).dataobj), atol=1e-5)
    with pytest.raises(Exception, match="unknown metadata"):
        build_conditions("T1w", "favourite_colour=blue", None, 1, 0, stats)


def test_cli_tiled_decode_matches_whole_decode(pipeline, tmp_path, monkeypatch):
    """`bsynth sample wfdm --tile T` reaches the tiled decoder: a tile covering the latent is the whole decode;
    smaller tiles really tile (per-tile GroupNorm statistics change the values; exactness of the blending is
    tested in test_models_autoencoder.py) and $BSYNTH_DECODE_TILE is the same switch."""
    from bsynth_hpc.cli import main

    def sample(out: str, *extra: str) -> np.ndarray:
        args = ["sample", "wfdm", "--run", str(pipeline["ldm"]), "--out", str(tmp_path / out), "--n", "1",
                "--modality", "T1w", "--meta", "age=40", "--steps", "2", "--seed", "3", *extra]
        assert main(args) == 0
        img = nib.load(str(next((tmp_path / out).glob("*.nii.gz"))))
        assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
        return np.asarray(img.dataobj, dtype=np.float32)

    whole = sample("whole")
    np.testing.assert_allclose(sample("one-tile", "--tile", "4"), whole, atol=1e-6)
    tiled = sample("tiles", "--tile", "2")
    assert np.isfinite(tiled).all() and tiled.min() >= 0 and tiled.max() <= 1
    assert not np.allclose(tiled, whole, atol=1e-4)
    monkeypatch.setenv("BSYNTH_DECODE_TILE", "2")
    np.testing.assert_allclose(sample("env"), tiled, atol=1e-6)
    monkeypatch.setenv("BSYNTH_DECODE_TILE", "sixteen")
    with pytest.raises(AssertionError):  # main() answers 2 with the variable named (tests/test_faults_cli.py)
        sample("bad")


def test_ldm_resume_mid_stage_reproduces_losses(pipeline, tmp_path):
    cfg = pipeline["ldm_cfg"]
    store = pipeline["store"]
    assert _train("wfdm-ldm", cfg, store, tmp_path / "ref", "engine.max_steps=4") == 0
    cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", "wfdm-ldm", "--config", str(cfg), "--store", str(store),
           "--run-dir", str(tmp_path / "b"), "engine.max_steps=4"]
    proc = run(cmd, env=subprocess_env(BSYNTH_FAULTS="signal@1:sig=TERM"))
    assert proc.returncode == 75, explain(proc)
    assert _train("wfdm-ldm", cfg, store, tmp_path / "b", "engine.max_steps=4", resume=True) == 0
    ref, res = losses(tmp_path / "ref", "loss/denoiser"), losses(tmp_path / "b", "loss/denoiser")
    # steps 1-2 ran in a 1-thread subprocess, so float reductions may round differently (threads, not resume)
    assert len(ref) == 4 and ref.keys() == res.keys()
    assert all(res[k] == pytest.approx(v, rel=1e-5) for k, v in ref.items()), (ref, res)


def test_launcher_default_stage_is_wfdm_ldm(pipeline, tmp_path):
    cmd = [sys.executable, str(REPO / "launchers" / "train_wfdm.py"), "--config", str(pipeline["ldm_cfg"]),
           "--store", str(pipeline["store"]), "--run-dir", str(tmp_path / "l"), "engine.max_steps=1"]
    proc = run(cmd)
    assert proc.returncode == 0, explain(proc)
    assert (tmp_path / "l" / "export" / "unet.json").is_file()
    assert json.loads((tmp_path / "l" / "export" / "unet.json").read_text())["stage"] == "wfdm-ldm"


def test_training_writes_reconstruction_previews(pipeline, tmp_path):
    """#12.9: a user sees reconstructions while the compressor trains (RUN/logs/previews/step-*.png)."""
    from PIL import Image

    cfg = _config(tmp_path / "vae.yaml", "wfdm-vae", VAE_RECIPE, max_steps=2, val_every=2)
    assert _train("wfdm-vae", cfg, pipeline["store"], tmp_path / "run") == 0
    previews = sorted((tmp_path / "run" / "logs" / "previews").glob("step-*.png"))
    assert previews, "no preview written at validation"
    with Image.open(previews[-1]) as im:
        assert im.width > 100 and im.height > 100
