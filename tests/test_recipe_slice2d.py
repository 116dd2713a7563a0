"""The slice2d recipe (seeds 001 / 004, issue 17) end to end on a tiny slice store through the CLI:
BraTS layout -> 3D store -> ``--slices-from`` -> slice2d-vae -> encode -> slice2d-ldm (unconditional with
FFT loss + CutMix; conditional with CFG) -> ``bsynth sample slice2d`` -> ``bsynth eval fidelity`` on 2D
samples; plus the augmentation and β ramp against references, class-balanced draws of the ldm stage and
a 2-rank DDP step (gloo, CPU)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bsynth_hpc.cli import main as bsynth
from bsynth_hpc.engine.config import load_run_config
from bsynth_hpc.engine.stage import StageInfo
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep
from bsynth_hpc.prep.slices_from import SliceConfig, slices_from_store
from bsynth_hpc.recipes.slice2d.augment import SliceAugmentConfig, augment_slices
from bsynth_hpc.recipes.slice2d.ldm import Slice2dLDMStage
from bsynth_hpc.recipes.slice2d.metrics import (channel_statistics, nearest_real, pairwise_diversity,
                                                radial_power_spectrum)
from bsynth_hpc.recipes.slice2d.vae import kl_beta
from engine_support import REPO, VENV_BIN, explain, free_port, metrics, run, subprocess_env

SHAPE = (24, 28, 10)      # source grid (X, Y, Z), 1 mm; axial slices 24 x 28 -> padded/resized to 32^2
SIZE = 32
CASES = {f"case{k:02d}": ("tumour" if k % 3 else "normal") for k in range(1, 7)}   # 4 tumour : 2 normal


def _head(rng: np.random.Generator) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    inside = ((x - 11.5) / 10) ** 2 + ((y - 13.5) / 12) ** 2 < 1.0
    inside &= (z >= 2) & (z < 8)
    return np.where(inside, 100.0 + 30.0 * rng.random(SHAPE) + 4.0 * y, 0.0).astype(np.float32)


def _config(src: str, dst: Path, recipe: dict | None = None, engine: dict | None = None) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / src).read_text())
    cfg["engine"].update({"val_every": 0, "ckpt_every": 0, "log_every": 1, "progress": False, "tensorboard": False,
                          **(engine or {})})
    cfg["recipe"].update(recipe or {})
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Slice store, a trained tiny VAE, its latent cache and an unconditional tiny LDM (all through the CLI)."""
    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    os.environ.pop("BSYNTH_FAULTS", None)
    root = tmp_path_factory.mktemp("slice2d")
    brats, rng = root / "BraTS", np.random.default_rng(0)
    for case in CASES:
        (brats / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(_head(rng), np.eye(4)), str(brats / case / f"{case}_flair.nii.gz"))
    table = root / "subjects.csv"
    table.write_text("subject,label\n" + "".join(f"{c},{lab}\n" for c, lab in CASES.items()))
    result = run_prep(PrepSource.brats(brats, subjects_table=table), root / "volumes.zarr",
                      PrepConfig(shape=SHAPE, spacing=(1.0, 1.0, 1.0), cluster="sync", progress=False,
                                 splits=(0.5, 0.25, 0.25)))
    assert result.exit_code == 0
    slices = slices_from_store(root / "volumes.zarr", root / "slices.zarr",
                               SliceConfig(size=SIZE, progress=False)).store_path
    vae_cfg = _config("slice2d-vae_tiny.yaml", root / "vae.yaml",
                      engine={"max_steps": 6, "micro_batch": 4, "val_every": 6})
    assert bsynth(["train", "slice2d-vae", "--config", str(vae_cfg), "--store", str(slices),
                   "--run-dir", str(root / "vae")]) == 0
    latents = root / "latents.zarr"
    assert bsynth(["encode", "--run", str(root / "vae"), "--store", str(slices), "--out", str(latents),
                   "--batch-size", "16"]) == 0
    ldm_cfg = _config("slice2d-ldm_tiny.yaml", root / "ldm.yaml", {"latents": str(latents)},
                      {"max_steps": 4, "micro_batch": 4})
    assert bsynth(["train", "slice2d-ldm", "--config", str(ldm_cfg), "--run-dir", str(root / "ldm")]) == 0
    return root, slices, latents, ldm_cfg


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("slice2d_*.png"))}


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "samples.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------- the unconditional chain (001)
def test_unconditional_chain_trains_samples_and_evaluates(pipeline, tmp_path):
    root, slices, latents, _ = pipeline
    vae_meta = json.loads((root / "vae" / "export" / "vae.json").read_text())
    assert vae_meta["spatial_dims"] == 2 and vae_meta["value_range"] == [-1.0, 1.0]
    assert vae_meta["latent_scale"] > 0
    vae_val = [r for r in metrics(root / "vae") if "val/ssim" in r]
    assert vae_val and 0.0 <= vae_val[-1]["val/ssim"] <= 1.0 and math.isfinite(vae_val[-1]["val/psnr"])
    kl = [r["loss/generator/kl_beta"] for r in metrics(root / "vae") if "loss/generator/kl_beta" in r]
    assert kl == pytest.approx([kl_beta(s, 1e-5, 10) for s in range(len(kl))])
    train = [r for r in metrics(root / "ldm") if "loss/denoiser" in r]
    for r in train:   # the logged total is eps-MSE + 0.1 FFT (the tiny config's lambda_freq)
        assert r["loss/denoiser"] == pytest.approx(r["loss/denoiser/eps_mse"] + 0.1 * r["loss/denoiser/fft"], rel=1e-5)
    info = json.loads((root / "ldm" / "slice2d_info.json").read_text())
    assert info["mode"] == "unconditional" and info["classes"] == [] and len(info["latent_shape"]) == 3

    out = tmp_path / "samples"
    assert bsynth(["sample", "slice2d", "--run", str(root / "ldm"), "--n", "5", "--batch-size", "4", "--steps", "10",
                   "--early-stop", "100", "--nifti", "--out", str(out)]) == 0
    pngs = _pngs(out)
    assert len(pngs) == 5 and all(a.shape == (SIZE, SIZE) and a.dtype == np.uint8 for a in pngs.values())
    for name in ("grid.png", "trajectory.png", "stack.nii.gz", "previews/overview.png", "sampling.json"):
        assert (out / name).is_file(), name
    assert nib.load(str(out / "stack.nii.gz")).shape == (SIZE, SIZE, 5)
    summary = json.loads((out / "sampling.json").read_text())
    # ||eps|| < 100 holds at the first step: every batch stops after one step and reports it
    assert summary["steps_taken_per_batch"] == [1, 1] and summary["steps"] == 10
    assert {r["steps_taken"] for r in _rows(out)} == {"1"}
    again = tmp_path / "again"
    assert bsynth(["sample", "slice2d", "--run", str(root / "ldm"), "--n", "2", "--steps", "3", "--out",
                   str(again)]) == 0
    assert json.loads((again / "sampling.json").read_text())["steps_taken_per_batch"] == [3, 3]

    report = tmp_path / "fidelity"
    assert bsynth(["eval", "fidelity", "--real", str(slices), "--fake", str(out), "--out", str(report)]) == 0
    result = json.loads((report / "fidelity.json").read_text())
    assert result["summary"]["samples"]["pooled"]["n"] == 5
    assert result["real_heldout"] and result["memorization"]["ssim"].startswith("2D SSIM")
    # a held-out real slice correlates with the real slice mean better than chance
    assert result["summary"]["real_heldout"]["pooled"]["corr_modality"]["median"] > 0.3
    assert (report / "nearest_training.png").is_file()


def _refused(argv: list[str], capsys, text: str) -> None:
    capsys.readouterr()
    assert bsynth(argv) != 0
    assert text in capsys.readouterr().err


def test_unconditional_run_refuses_a_class(pipeline, tmp_path, capsys):
    root = pipeline[0]
    _refused(["sample", "slice2d", "--run", str(root / "ldm"), "--class", "tumour", "--out", str(tmp_path / "x")],
             capsys, "unconditional")


# ---------------------------------------------------------------------------- the conditional mode (004)
def test_conditional_mode_samples_classes_and_guidance_uses_the_class(pipeline, tmp_path, capsys):
    root, slices, latents, ldm_cfg = pipeline
    run_dir = tmp_path / "ldmc"
    assert bsynth(["train", "slice2d-ldm", "--config", str(ldm_cfg), "--run-dir", str(run_dir),
                   "recipe.mode=conditional", "recipe.lambda_freq=0", "recipe.cutmix_prob=0"]) == 0
    sidecar = json.loads((run_dir / "export" / "unet.json").read_text())
    assert sidecar["factory_kwargs"]["num_classes"] == 2 and sidecar["classes"] == ["normal", "tumour"]

    def draw(label: str, cfg: str) -> np.ndarray:
        out = tmp_path / f"{label}-{cfg}"
        assert bsynth(["sample", "slice2d", "--run", str(run_dir), "--class", label, "--cfg", cfg, "--n", "2",
                       "--steps", "5", "--seed", "3", "--nifti", "--out", str(out)]) == 0
        assert {r["label"] for r in _rows(out)} == {label}
        return np.asarray(nib.load(str(out / "stack.nii.gz")).dataobj)

    # guidance 0 is the unconditional (null-class) model: the class cannot matter; guidance 3 conditions on it
    assert np.array_equal(draw("normal", "0"), draw("tumour", "0"))
    assert not np.array_equal(draw("normal", "3"), draw("tumour", "3"))
    both = tmp_path / "both"
    assert bsynth(["sample", "slice2d", "--run", str(run_dir), "--n", "2", "--steps", "2", "--out", str(both)]) == 0
    assert [r["label"] for r in _rows(both)] == ["normal", "normal", "tumour", "tumour"]
    _refused(["sample", "slice2d", "--run", str(run_dir), "--class", "glioma", "--out", str(tmp_path / "bad")],
             capsys, "not one of the model's classes")

    report = tmp_path / "eval"
    assert bsynth(["eval", "slice2d", "--store", str(slices), "--vae-run", str(root / "vae"), "--samples", str(both),
                   "--ldm-run", str(run_dir), "--cfg-scales", "0", "3", "--sweep-n", "2", "--sweep-steps", "2",
                   "--classifier-epochs", "1", "--max-real", "20", "--allow-random-features", "--out",
                   str(report)]) == 0
    result = json.loads((report / "slice2d_eval.json").read_text())
    rec, gen, sweep = result["reconstruction"], result["generated"], result["cfg_sweep"]
    assert 0 <= rec["ssim"]["mean"] <= 1 and len(rec["latent_channels"]["mean"]) == 8
    assert gen["n"] == 4 and gen["inception"]["random_features"] and set(gen["fid"]) == {"all", "normal", "tumour"}
    assert [r["cfg"] for r in sweep["sweep"]] == [0.0, 3.0] and all(0 <= r["accuracy"] <= 1 for r in sweep["sweep"])
    for name in ("recon_heatmaps.png", "latent_channels.png", "power_spectra.png", "slice2d_eval.md"):
        assert (report / name).is_file(), name
    assert "RANDOM Inception" in (report / "slice2d_eval.md").read_text()


def test_ldm_stage_draws_classes_equally_and_never_other_labels(pipeline):
    root, slices, latents, ldm_cfg = pipeline
    cfg = load_run_config(ldm_cfg, overrides=["recipe.mode=conditional"])
    info = StageInfo(store=None, volume_shape=None, data=cfg.data, engine=cfg.engine)
    stage = Slice2dLDMStage(cfg.recipe, info)
    ds = stage.dataset("train")
    names = np.array([["normal", "tumour"][k] for k in ds.label_ids])
    counts = {c: int((names == c).sum()) for c in ("normal", "tumour")}
    assert min(counts.values()) > 0
    weights = torch.tensor(stage.sampling_weights(ds), dtype=torch.float64)
    draws = torch.multinomial(weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0)).numpy()
    share = float((names[draws] == "tumour").mean())
    assert share == pytest.approx(0.5, abs=0.02), (counts, share)   # balanced whatever the slice counts

    only = load_run_config(ldm_cfg, overrides=["recipe.mode=conditional", "recipe.classes=[tumour]"])
    w = np.asarray(Slice2dLDMStage(only.recipe, info).sampling_weights(ds))
    assert (w[names == "normal"] == 0).all() and (w[names == "tumour"] > 0).all()
    uncond = load_run_config(ldm_cfg)
    assert Slice2dLDMStage(uncond.recipe, info).sampling_weights(ds) is None   # 001: plain shuffling


# ---------------------------------------------------------------------------- DDP
def test_two_rank_ddp_step_of_slice2d_ldm(pipeline, tmp_path):
    root, slices, latents, ldm_cfg = pipeline
    run_dir = tmp_path / "ddp"
    proc = run([str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                "-m", "bsynth_hpc.engine.run", "slice2d-ldm", "--config", str(ldm_cfg), "--run-dir", str(run_dir),
                "engine.backend=ddp", "engine.micro_batch=2", "engine.max_steps=2", "recipe.mode=conditional"],
               env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, explain(proc)
    assert "2 rank(s)" in proc.stdout + proc.stderr
    rec = [r for r in metrics(run_dir) if "loss/denoiser" in r]
    assert len(rec) == 2 and all(math.isfinite(r["loss/denoiser"]) for r in rec)
    assert (run_dir / "export" / "unet.safetensors").is_file()


# ---------------------------------------------------------------------------- parts against references
def test_augmentation_identity_and_flip_against_torch():
    x = torch.randn(3, 1, 8, 10)
    u = torch.rand(3, 5)
    off = SliceAugmentConfig(flip_prob=0.0, rotate_deg=0.0, translate=0.0, scale=0.0)
    assert torch.allclose(augment_slices(x, u, off), x, atol=1e-5)
    flip = SliceAugmentConfig(flip_prob=1.0, rotate_deg=0.0, translate=0.0, scale=0.0)
    assert torch.allclose(augment_slices(x, u, flip), torch.flip(x, dims=[-1]), atol=1e-5)
    assert augment_slices(x, u, SliceAugmentConfig(enabled=False)) is x
    # a pure shift moves content in from outside as background (-1), never as a replicated border
    shift = SliceAugmentConfig(flip_prob=0.0, rotate_deg=0.0, translate=0.25, scale=0.0)
    ones = torch.ones(1, 1, 8, 8)
    moved = augment_slices(ones, torch.tensor([[0.9, 0.5, 1.0, 0.5, 0.5]]), shift)
    assert moved.min() == pytest.approx(-1.0, abs=1e-5) and moved.max() == pytest.approx(1.0, abs=1e-5)


def test_kl_beta_ramps_linearly_to_the_weight():
    assert [kl_beta(s, 1e-5, 4) for s in (0, 1, 2, 4, 9)] == pytest.approx([0, 2.5e-6, 5e-6, 1e-5, 1e-5])
    assert kl_beta(0, 1e-3, 0) == 1e-3


def test_packaged_full_configs_load():
    for name in ("slice2d-vae_001.yaml", "slice2d-vae_004.yaml", "slice2d-ldm_001.yaml", "slice2d-ldm_004.yaml"):
        cfg = load_run_config(REPO / "configs" / name)
        assert cfg.stage in ("slice2d-vae", "slice2d-ldm")
    assert load_run_config(REPO / "configs" / "slice2d-ldm_004.yaml").recipe.mode == "conditional"


def test_evaluation_metrics_against_references():
    n = 32
    yy, xx = np.indices((n, n))
    waves = [0.5 + 0.4 * np.cos(2 * np.pi * k * xx / n + phase) for k, phase in ((5, 0.0), (5, 1.0))]
    spectrum = radial_power_spectrum(waves)
    assert int(np.argmax(spectrum[1:])) + 1 == 5          # all power at radius 5 (k cycles per slice)
    assert np.delete(spectrum, 5).max() < 1e-12 * spectrum[5]   # and nowhere else
    rng = np.random.default_rng(0)
    real = [rng.random((n, n)) for _ in range(5)]
    ssim, psnr, idx = nearest_real([real[3], real[1]], real)
    assert idx.tolist() == [3, 1] and np.allclose(ssim, 1.0, atol=1e-4) and (psnr > 90).all()
    same = pairwise_diversity([real[0]] * 4)
    assert same["pairs"] == 6 and same["rms_distance"] == 0.0 and same["one_minus_ssim"] == pytest.approx(0, abs=1e-4)
    two = pairwise_diversity([np.zeros((n, n)), np.ones((n, n))])
    assert two["pairs"] == 1 and two["rms_distance"] == pytest.approx(1.0)
    z = rng.normal(2.0, 3.0, size=(400, 2, 4, 4))
    stats = channel_statistics(z)
    assert np.allclose(stats["mean"], z.mean(axis=(0, 2, 3))) and np.allclose(stats["std"], 3.0, rtol=0.05)
