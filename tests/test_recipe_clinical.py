"""Seed 002 (`clinical` recipe) end to end on a tiny CN/AD store: clinical-aux -> clinical -> clinical-prior ->
sample (manual c and from the prior) -> eval clinical, through the CLI; plus the data path, the prior's label
fixing, resume mid-training and a 2-rank gloo step of the VAE-GAN stage."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.engine.run import train_main
from bsynth_hpc.recipes.clinical.data import (ClinicalNormalizer, ClinicalVolumeDataset, cube_affine, fit_to_cube,
                                              parse_clinical)
from bsynth_hpc.vocabulary import CLINICAL_ROI_FIELDS
from engine_support import explain, losses, run, subprocess_env

SHAPE = (16, 20, 14)
SIDE = 16
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -30], [0, 0, 2.0, -10], [0, 0, 0, 1]])
ENGINE = {"micro_batch": 2, "grad_accum": 1, "max_steps": 3, "val_every": 0, "ckpt_every": 0, "log_every": 1,
          "progress": False, "tensorboard": False, "ema_decay": 0.9, "seed": 1,
          "schedule": {"name": "constant", "warmup": 0}}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    monkeypatch.delenv("BSYNTH_FAULTS", raising=False)


def brain(k: int, ventricle: float, shape=SHAPE) -> np.ndarray:
    """A bright ellipsoid 'brain' with a dark central 'ventricle' whose radius grows with ``ventricle``."""
    rng = np.random.default_rng(k)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    vol = np.where(r < 0.85, 0.8, 0.0) + rng.normal(0, 0.02, size=shape)
    vol = np.where(r < 0.2 + 10.0 * ventricle, 0.1, vol)
    return np.clip(vol, 0, 1).astype(np.float32)


def label_map(ventricle: float, shape=SHAPE) -> np.ndarray:
    """The label map of :func:`brain` (demo dseg vocabulary): WM, ventricles 15/16 (left/right half), a
    'hippocampus' shell 11/12 just outside the ventricles."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    lab = np.where(r < 0.85, 3, 0)
    left = grid[0] < 0
    lab = np.where((r >= 0.55) & (r < 0.65), np.where(left, 11, 12), lab)
    lab = np.where(r < 0.2 + 10.0 * ventricle, np.where(left, 15, 16), lab)
    return lab.astype(np.uint8)


def make_clinical_store(path: Path, n_subjects: int = 12) -> Path:
    """CN/AD subjects (T1w with a clinical vector; AD: larger ventricles, smaller hippocampi) + one T2w and
    one T1w without clinical vector that the clinical datasets must skip."""
    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(2.0, 2.0, 2.0)))
    for k in range(n_subjects):
        ad = k % 2 == 1
        rng = np.random.default_rng(100 + k)
        vent = (0.03 if ad else 0.015) + rng.uniform(0, 0.01)
        hip = (0.0035 if ad else 0.0045) + rng.uniform(0, 0.0005)
        clinical = dict(zip(CLINICAL_ROI_FIELDS, [hip, hip * 1.02, hip * 0.4, hip * 0.41, vent, vent * 0.95]))
        record = {"subject": f"sub-{k:02d}", "session": None, "dataset": "demo-dementia", "modality": "T1w",
                  "modality_id": 0, "label": "AD" if ad else "CN", "clinical": clinical,
                  "source_path": f"/x/sub-{k:02d}_T1w.nii.gz", "source_sha256": "0" * 64,
                  "affine": AFFINE.tolist(), "shape": list(SHAPE)}
        store.write_volume(f"dem_sub-{k:02d}_T1w", brain(k, vent), record)
        import nibabel as nib

        seg = path.parent / "labels" / f"sub-{k:02d}" / "ses-01" / "anat" / f"sub-{k:02d}_ses-01_dseg.nii.gz"
        seg.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label_map(vent), AFFINE), str(seg))
        if k == 0:
            store.write_volume("dem_sub-00_T2w", brain(k, vent), {**record, "modality": "T2w", "modality_id": 1})
    store.write_volume("other_sub-99_T1w", brain(99, 0.02), {
        "subject": "sub-99", "session": None, "dataset": "other", "modality": "T1w", "modality_id": 0,
        "label": "healthy", "source_path": "/x/o.nii.gz", "source_sha256": "0" * 64, "affine": AFFINE.tolist(),
        "shape": list(SHAPE)})
    finalize_store(store, fractions=(0.67, 0.33, 0.0), seed=0, stratify="label")
    return path


def _config(path: Path, stage: str, recipe: dict, **engine) -> Path:
    cfg = {"stage": stage, "engine": {**ENGINE, **engine}, "data": {"num_workers": 0}, "recipe": recipe}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _train(stage, config, store, run_dir, *extra, resume=False):
    args = [stage, "--config", str(config), "--store", str(store), "--run-dir", str(run_dir), *extra]
    return train_main(args + (["--resume", "auto"] if resume else []))


PRIOR_RECIPE = {"hidden": 32, "time_dim": 16, "lr": 2e-3,
                "diffusion": {"num_train_timesteps": 100, "sampling": {"solver": "ddpm", "steps": 50}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_clinical_store(tmp_path_factory.mktemp("clinical") / "store.zarr")


# ---------------------------------------------------------------------------- data path
def test_dataset_keeps_clinical_t1w_and_fits_the_cube(store):
    ds = ClinicalVolumeDataset(store, "train", SIDE)
    ids = [ds.base.entries[i].volume_id for i in ds.indices]
    assert ids and all(v.startswith("dem_") and v.endswith("_T1w") for v in ids)
    item = ds[0]
    assert item["image"].shape == (1, SIDE, SIDE, SIDE)
    assert item["clinical"].shape == (7,) and float(item["clinical_mask"].min()) == 1.0
    # isotropic fit: the longest axis (20) fills the cube, the others keep the aspect and are centred
    raw = torch.from_numpy(ds.base.read_image(ds.indices[0])).float()[None]
    cube = fit_to_cube(raw, SIDE)
    assert torch.allclose(cube, item["image"])
    # (16, 20, 14) * 0.8 -> (13, 16, 11), padded by (1, 0, 2) before: those planes are empty, the middle is not
    assert float(cube[0, 0].abs().max()) == 0.0 and float(cube[0, :, :, :2].abs().max()) == 0.0
    assert float(cube[0, SIDE // 2, SIDE // 2, SIDE // 2]) > 0


def test_cube_affine_maps_cube_voxels_to_the_same_world_points():
    shape, side = (10, 20, 8), 16
    aff = cube_affine(AFFINE, shape, side)
    x = torch.zeros(1, *shape)
    x[0, 5, 10, 4] = 1.0  # a point: its world position must survive the fit
    cube = fit_to_cube(x, side)
    peak = np.unravel_index(int(cube[0].argmax()), cube.shape[1:])
    world_in = AFFINE @ np.array([5, 10, 4, 1.0])
    world_out = aff @ np.array([*peak, 1.0])
    assert np.abs(world_in - world_out)[:3].max() <= 2.0 * 20 / 16 + 1e-6  # within one cube voxel


def test_normalizer_round_trip_and_parse():
    v = np.random.default_rng(0).uniform(0.001, 0.03, size=(9, 7)).astype(np.float32)
    v[:, 6] = [0, 1, 0, 1, 0, 1, 0, 1, 1]
    norm = ClinicalNormalizer.fit(v)
    z = norm.normalize(torch.from_numpy(v))
    assert torch.allclose(z[:, :6].mean(0), torch.zeros(6), atol=1e-5)
    assert torch.equal(z[:, 6], torch.from_numpy(v[:, 6]))
    assert torch.allclose(norm.denormalize(z), torch.from_numpy(v), atol=1e-6)
    assert ClinicalNormalizer.from_dict(norm.to_dict()) == norm
    c = parse_clinical("hippocampus_l=0.004,roi_lateral_ventricle_right=0.02,label=AD", [0.1] * 6 + [0.0])
    assert c[0] == pytest.approx(0.004) and c[5] == pytest.approx(0.02) and c[6] == 1.0 and c[1] == pytest.approx(0.1)
    from bsynth_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown"):
        parse_clinical("thalamus=0.1", [0.1] * 7)
    with pytest.raises(ConfigError, match="CN"):
        parse_clinical("label=MCI", [0.1] * 7)


# ---------------------------------------------------------------------------- clinical-prior
def test_prior_trains_exports_and_fixes_the_label(store, tmp_path):
    from bsynth_hpc.recipes.clinical.prior import load_prior, sample_clinical_vectors

    cfg = _config(tmp_path / "prior.yaml", "clinical-prior", PRIOR_RECIPE, max_steps=4, micro_batch=4)
    assert _train("clinical-prior", cfg, store, tmp_path / "prior") == 0
    meta = json.loads((tmp_path / "prior" / "export" / "prior.json").read_text())
    assert meta["factory"] == "clinical-eps-mlp" and len(meta["clinical_stats"]["mean"]) == 6
    model, norm, diffusion = load_prior(tmp_path / "prior", torch.device("cpu"))
    ds = ClinicalVolumeDataset(store, "train", SIDE)
    assert norm == ClinicalNormalizer.fit(ds.vectors)  # statistics of the training split
    g = torch.Generator().manual_seed(0)
    fixed = sample_clinical_vectors(model, norm, diffusion, 6, g, label=1.0)
    assert fixed.shape == (6, 7) and torch.all(fixed[:, 6] == 1.0) and torch.all(fixed[:, :6] >= 0)
    joint = sample_clinical_vectors(model, norm, diffusion, 6, torch.Generator().manual_seed(0), solver="ddim", steps=5)
    assert set(joint[:, 6].tolist()) <= {0.0, 1.0} and torch.isfinite(joint).all()


# ---------------------------------------------------------------------------- clinical-aux -> clinical
TINY = {"image_size": SIDE, "latent_dim": 8, "encoder_channels": [4, 8, 8, 8], "decoder_channels": [8, 8, 8, 4],
        "flat_channels": 2, "clinical_embed_dim": 8, "w_dim": 8, "mapping_layers": 1, "prior_hidden": 8,
        "aux_widths": [8, 16, 16, 16], "aux_blocks": [1, 1, 1, 1]}  # >= 2 channels per norm group at 1^3
AUX_RECIPE = {"preset": "tiny", "model": TINY, "lr": 1e-3}


def clinical_recipe(aux_run) -> dict:
    return {"preset": "tiny", "model": TINY, "aux_run": str(aux_run), "discriminator": {"channels": 4, "num_layers": 1},
            "perceptual": {"slices_per_plane": 1, "allow_random": True}, "lr": 1e-3}


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("clinical_runs")
    aux_cfg = _config(root / "aux.yaml", "clinical-aux", AUX_RECIPE, max_steps=2)
    assert _train("clinical-aux", aux_cfg, store, root / "aux") == 0
    cfg = _config(root / "clinical.yaml", "clinical", clinical_recipe(root / "aux"), max_steps=2)
    assert _train("clinical", cfg, store, root / "vaegan") == 0
    prior_cfg = _config(root / "prior.yaml", "clinical-prior", PRIOR_RECIPE, max_steps=3, micro_batch=4)
    assert _train("clinical-prior", prior_cfg, store, root / "prior") == 0
    return {"root": root, "aux": root / "aux", "vaegan": root / "vaegan", "prior": root / "prior", "cfg": cfg}


def test_aux_and_vaegan_exports(trained):
    aux = json.loads((trained["aux"] / "export" / "aux.json").read_text())
    assert aux["factory"] == "clinical-aux-heads" and aux["image_size"] == SIDE
    vg = json.loads((trained["vaegan"] / "export" / "vaegan.json").read_text())
    assert vg["factory"] == "clinical-vaegan" and vg["perceptual"] == "random-smoke" and vg["cls_reg_losses"]
    assert np.asarray(vg["affine"]).shape == (4, 4)
    logged = losses(trained["vaegan"], "loss/generator")
    assert len(logged) == 2


def _cli(*args: str) -> int:
    from bsynth_hpc.cli import main

    return main(list(args))


def test_sample_manual_and_from_prior_via_cli(trained, tmp_path):
    import nibabel as nib

    out = tmp_path / "manual"
    assert _cli("sample", "clinical", "--run", str(trained["vaegan"]), "--n", "2", "--clinical",
                "hippocampus_l=0.004,ventricle_l=0.03,label=AD", "--out", str(out), "--device", "cpu") == 0
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert len(rows) == 2 and {r["label"] for r in rows} == {"AD"} and {r["mode"] for r in rows} == {"manual"}
    assert float(rows[0]["hippocampus_l"]) == pytest.approx(0.004) and float(rows[0]["ventricle_l"]) == pytest.approx(0.03)
    img = nib.load(out / rows[0]["path"])
    assert img.shape == (SIDE,) * 3 and (out / "previews" / rows[0]["path"].replace(".nii.gz", ".png")).is_file()
    a, b = (np.asarray(nib.load(out / r["path"]).dataobj) for r in rows)
    assert not np.allclose(a, b)  # same c, two draws of z ~ p(z|c)

    prior = tmp_path / "prior"
    assert _cli("sample", "clinical", "--run", str(trained["vaegan"]), "--n", "3", "--from-prior", "--prior-run",
                str(trained["prior"]), "--label", "CN", "--steps", "5", "--solver", "ddim", "--out", str(prior),
                "--device", "cpu") == 0
    rows = list(csv.DictReader(open(prior / "samples.csv")))
    assert len(rows) == 3 and {r["label"] for r in rows} == {"CN"} and {r["mode"] for r in rows} == {"prior"}
    assert all(float(r["seconds_c"]) > 0 and float(r["ventricle_r"]) >= 0 for r in rows)

    again = tmp_path / "cohort"  # a samples.csv is a conditions file: the same vectors come back
    assert _cli("sample", "clinical", "--run", str(trained["vaegan"]), "--conditions", str(prior / "samples.csv"),
                "--out", str(again), "--device", "cpu") == 0
    back = list(csv.DictReader(open(again / "samples.csv")))
    assert [r["ventricle_l"] for r in back] == [r["ventricle_l"] for r in rows]


def test_sample_needs_one_source_of_c(trained, tmp_path):
    from bsynth_hpc.errors import ConfigError
    from bsynth_hpc.recipes.clinical.sampling import ClinicalSampleConfig

    with pytest.raises(ConfigError, match="exactly one"):
        ClinicalSampleConfig(run=str(trained["vaegan"]), out=str(tmp_path))
    with pytest.raises(ConfigError, match="prior-run"):
        ClinicalSampleConfig(run=str(trained["vaegan"]), out=str(tmp_path), from_prior=True)


def test_eval_clinical_via_cli(trained, store, tmp_path):
    out = tmp_path / "eval"
    assert _cli("eval", "clinical", "--run", str(trained["vaegan"]), "--aux-run", str(trained["aux"]), "--store",
                str(store), "--split", "val", "--prior-run", str(trained["prior"]), "--labels",
                str(store.parent / "labels"), "--n", "4", "--prior-samples", "50", "--steps", "5", "--solver", "ddim",
                "--sweep", "3", "--timing-samples", "1", "--per-plane", "4", "--allow-random-features",
                "--device", "cpu", "--out", str(out)) == 0
    res = json.loads((out / "clinical.json").read_text())
    t4 = res["consistency"]
    assert t4["generated"]["n"] == 4 and t4["real"]["n"] >= 2 and 0 <= t4["real"]["bac_percent"] <= 100
    # the measurement itself: on real volumes, CSF in the template ventricle region follows the true ratio
    assert res["roi_check"]["real"]["ventricles"]["pearson_r"] > 0.9
    assert set(res["prior_fidelity"]["kde_overlap"]) == {"hippocampus_l", "hippocampus_r", "amygdala_l", "amygdala_r",
                                                        "ventricle_l", "ventricle_r", "label"}
    assert res["random_features"] and res["timing"]["from_prior_seconds"] > 0
    assert res["parameters"]["vae_gan"] > 0 and "monotonic" in res["controllability"]["CN"]
    for name in ("clinical.md", "controllability.png", "prior_kde.png", "prior_pca.png"):
        assert (out / name).is_file(), name
    assert "Table 4" in (out / "clinical.md").read_text()


def test_clinical_resume_mid_stage_reproduces_losses(trained, store, tmp_path):
    cfg = trained["cfg"]
    assert _train("clinical", cfg, store, tmp_path / "ref", "engine.max_steps=3") == 0
    cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", "clinical", "--config", str(cfg), "--store", str(store),
           "--run-dir", str(tmp_path / "b"), "engine.max_steps=3"]
    proc = run(cmd, env=subprocess_env(BSYNTH_FAULTS="signal@1:sig=TERM"))
    assert proc.returncode == 75, explain(proc)
    assert _train("clinical", cfg, store, tmp_path / "b", "engine.max_steps=3", resume=True) == 0
    for key in ("loss/generator", "loss/discriminator"):
        ref, res = losses(tmp_path / "ref", key), losses(tmp_path / "b", key)
        assert len(ref) == 3 and ref.keys() == res.keys(), key
        # steps before the preemption ran in a 1-thread subprocess: float sums may round differently
        assert all(res[k] == pytest.approx(v, rel=1e-4) for k, v in ref.items()), (key, ref, res)


def test_frozen_heads_stay_unchanged_through_training(trained):
    from safetensors.torch import load_file

    from bsynth_hpc.recipes.clinical.aux import load_aux_heads

    heads, _, _ = load_aux_heads(str(trained["aux"]))
    assert not any(p.requires_grad for p in heads.parameters()) and not heads.training
    before = load_file(str(trained["aux"] / "export" / "aux.safetensors"))
    assert all(torch.equal(before[k], v) for k, v in heads.state_dict().items())


@pytest.mark.distributed
def test_two_rank_ddp_step_of_clinical(trained, store, tmp_path):
    from engine_support import VENV_BIN, free_port

    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
           "bsynth_hpc.engine.run", "clinical", "--config", str(trained["cfg"]), "--store", str(store), "--run-dir",
           str(tmp_path / "ddp"), "engine.backend=ddp", "engine.micro_batch=1", "engine.max_steps=2"]
    proc = run(cmd, timeout=600)
    assert proc.returncode == 0, explain(proc)
    assert "backend ddp" in proc.stdout + proc.stderr and "2 rank(s)" in proc.stdout + proc.stderr
    got = losses(tmp_path / "ddp", "loss/generator")
    assert len(got) == 2 and all(np.isfinite(v) for v in got.values())
    assert (tmp_path / "ddp" / "export" / "vaegan.safetensors").is_file()


def test_table2_rows_and_parameter_counts():
    from bsynth_hpc.recipes.clinical.ablation import ablation_parameters

    rows = ablation_parameters("full")
    assert [r["name"] for r in rows][0] == "3D VAE" and len(rows) == 5
    p = [r["parameters"] / 1e6 for r in rows]
    # 002 Table 2: 24.6, 35.7, 7.9, 8.1, 13.2 M - standard convs cost ~4x, the perceptual network ~5.3 M
    assert p[0] > 3 * p[2] and p[1] > p[0] and 6 < p[2] < 10 and p[2] < p[3] < 10 and 12 < p[4] < 15


def test_ventricle_sweep_decodes_one_noise_draw_through_the_prior_of_each_step():
    """Algorithm 3 with a shared ε: z_k = μ_p(c_k) + σ_p(c_k) ε, so the prior's c-dependence reaches the latent;
    each row sweeps its own class's training range (AD ventricles here all larger than CN's)."""
    from types import SimpleNamespace

    from bsynth_hpc.eval.clinical import ventricle_sweep
    from bsynth_hpc.models.clinical.model import ClinicalVAEGAN

    torch.manual_seed(0)
    model = ClinicalVAEGAN("tiny", image_size=16).eval()
    rng = np.random.default_rng(0)
    label = np.arange(20) % 2
    vent = np.where(label[:, None] == 1, rng.uniform(0.012, 0.02, (20, 2)), rng.uniform(0.005, 0.01, (20, 2)))
    raw = np.c_[rng.uniform(0.002, 0.004, (20, 4)), vent, label].astype(np.float32)
    norm = ClinicalNormalizer.fit(raw)
    result, rows = ventricle_sweep(SimpleNamespace(model=model, normalizer=norm), raw, steps=3, seed=7)
    assert [name for name, _ in rows] == ["CN", "AD"]
    eps = torch.randn((1, model.config.latent_dim), generator=torch.Generator().manual_seed(7))
    ad = raw[label == 1]
    req = np.repeat(np.asarray([*ad[:, :6].mean(0), 1.0], dtype=np.float32)[None], 3, axis=0)
    for i in (4, 5):
        req[:, i] = np.quantile(ad[:, i], [0.05, 0.5, 0.95])
    with torch.inference_mode():
        c = norm.normalize(torch.from_numpy(req))
        mu, logvar = model.prior(c)
        want = model.decode(mu + torch.exp(0.5 * logvar) * eps, c).clamp(0, 1)[:, 0].numpy()
    got = np.stack([v for _, v in rows[1][1]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(result["AD"]["requested_ventricles"], req[:, 4] + req[:, 5], rtol=1e-6)
    assert max(result["CN"]["requested_ventricles"]) < (ad[:, 4] + ad[:, 5]).min()   # CN never AD-sized


def test_a_flat_sweep_is_not_control():
    from bsynth_hpc.eval.clinical import rises

    assert rises([0.01, 0.01, 0.02]) and not rises([0.02, 0.02, 0.02]) and not rises([0.01, 0.03, 0.02])
