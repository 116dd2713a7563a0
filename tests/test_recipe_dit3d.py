"""DiT-3D recipe (seed 000) end to end on a tiny labelled store (healthy / TLE):

dit3d-vae with the two-phase schedule -> export -> encode_store -> dit3d -> class-conditional
sampling -> NIfTI with the store's affine; plus one 2-rank ZeRO-2 dit3d run under the deepspeed
launcher (gloo, CPU).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.engine.run import train_main
from engine_support import REPO, VENV_BIN, explain, free_port, metrics, run, volume

SHAPE = (16, 16, 16)
AFFINE = np.array([[2.0, 0, 0, -16], [0, 2.0, 0, -18], [0, 0, 2.0, -10], [0, 0, 0, 1]])
VAE = {"phase1_steps": 3, "disc_steps": 2, "vae_min_steps": 1, "vae_max_steps": 4, "adv_threshold": 0.3,
       "adv_ema": 0.5, "rounds": 2, "slices_per_plane": 1}
VAE_STEPS = 16


def make_labelled_store(path: Path, n: int = 12) -> Path:
    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(2.0, 2.0, 2.0)))
    for k in range(n):
        s = f"sub-{k:02d}"
        rec = {"subject": s, "session": None, "dataset": "smoke", "modality": "T1w", "modality_id": 0,
               "source_path": f"/synthetic/{s}.nii.gz", "source_sha256": "0" * 64,
               "label": "TLE" if k % 2 else "healthy", "affine": AFFINE.tolist(), "shape": list(SHAPE)}
        store.write_volume(f"smoke_{s}_T1w", volume(k, SHAPE), rec)
    finalize_store(store, fractions=(0.75, 0.25, 0.0), seed=0, stratify="dataset")
    return path


def tiny_config(src: str, dst: Path, recipe: dict | None = None, engine: dict | None = None) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / src).read_text())
    cfg["engine"].update({"val_every": 0, "ckpt_every": 0, "log_every": 1, **(engine or {})})
    cfg["recipe"].update(recipe or {})
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    os.environ.pop("BSYNTH_FAULTS", None)
    root = tmp_path_factory.mktemp("dit3d")
    store = make_labelled_store(root / "store.zarr")
    vae_cfg = tiny_config("dit3d-vae_tiny.yaml", root / "vae.yaml", VAE, {"max_steps": VAE_STEPS})
    assert train_main(["dit3d-vae", "--config", str(vae_cfg), "--store", str(store), "--run-dir",
                       str(root / "vae")]) == 0
    from bsynth_hpc.recipes.encode import encode_store

    latents = encode_store(root / "vae", store, root / "latents.zarr")
    dit_cfg = tiny_config("dit3d_tiny.yaml", root / "dit.yaml", {"latents": str(latents)},
                          {"max_steps": 4, "val_every": 4})
    assert train_main(["dit3d", "--config", str(dit_cfg), "--store", str(store), "--run-dir",
                       str(root / "dit")]) == 0
    return root, store, latents, dit_cfg


def _segments(records):
    """[(mode, [records])] in step order: mode 'vae' (no adversarial term), 'disc', 'vae_adv'."""
    segs: list[tuple[str, list]] = []
    for r in records:
        mode = "disc" if "loss/disc" in r else ("vae_adv" if "loss/vae/adv_g" in r else "vae")
        if mode == "vae_adv" and r["loss/vae/gan_round"] >= VAE["rounds"]:
            mode = "final"  # after the last round: VAE with the adversarial term, D frozen
        assert not ("loss/disc" in r and "loss/vae" in r), f"step {r['step']}: VAE and D updated together"
        if segs and segs[-1][0] == mode:
            segs[-1][1].append(r)
        else:
            segs.append((mode, [r]))
    return segs


def test_vae_two_phase_schedule(pipeline):
    root = pipeline[0]
    records = [r for r in metrics(root / "vae") if "step" in r and ("loss/vae" in r or "loss/disc" in r)]
    assert len(records) == VAE_STEPS
    segs = _segments(records)
    # phase 1: VAE only, no discriminator update, no adversarial term
    assert segs[0][0] == "vae" and len(segs[0][1]) == VAE["phase1_steps"]
    # phase 2 alternates D and VAE(+adv): disc, vae_adv, disc, vae_adv, then the final VAE(+adv)
    modes = [m for m, _ in segs[1:]]
    assert modes[:4] == ["disc", "vae_adv", "disc", "vae_adv"], modes
    assert all(len(recs) == VAE["disc_steps"] for m, recs in segs[1:] if m == "disc")
    # each VAE round stops once the running (EMA) adversarial loss is below the threshold, or at the cap
    vae_rounds = [recs for m, recs in segs[1:5] if m == "vae_adv"]
    for recs in vae_rounds:
        ema, crossed_at = None, None
        for i, r in enumerate(recs):
            v = r["loss/vae/adv_g"]
            ema = v if ema is None else VAE["adv_ema"] * ema + (1 - VAE["adv_ema"]) * v
            if i + 1 >= VAE["vae_min_steps"] and ema < VAE["adv_threshold"]:
                crossed_at = i + 1
                break
        expected = crossed_at if crossed_at is not None else VAE["vae_max_steps"]
        assert len(recs) == expected, (len(recs), expected, [r["loss/vae/adv_g"] for r in recs])
    # the round counter advanced; after the last round no discriminator update happens any more
    assert records[-1]["loss/vae/gan_round"] == VAE["rounds"]
    assert segs[-1][0] == "final" and all("loss/disc" not in r for r in segs[-1][1])
    side = json.loads((root / "vae" / "export" / "vae.json").read_text())
    assert side["latent_scale"] and side["latent_scale"] > 0
    assert side["factory"] == "autoencoder3d" and side["factory_kwargs"]["latent_channels"] == 4


def _gan_keys(records):
    return sorted({k for r in records for k in r if k.startswith(("loss/", "lr/"))})


def _same_value(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_gan_schedule_state_round_trips_through_a_checkpoint(tmp_path):
    """The schedule's state_dict, saved with weights_only-safe types, continues the decisions exactly."""
    import torch

    from bsynth_hpc.configtools import from_mapping
    from bsynth_hpc.recipes.dit3d.vae import DiT3dVAEConfig, GANSchedule

    cfg = from_mapping(DiT3dVAEConfig, VAE, "recipe")
    adv = [0.9, 0.5, 0.2, 0.8, 0.1, 0.05, 0.6, 0.4, 0.3, 0.2, 0.1, 0.1, 0.9, 0.2, 0.1, 0.1, 0.3, 0.2, 0.1, 0.05]

    def drive(schedule, steps):
        seq = []
        for step in steps:
            mode = schedule.mode_at(step)
            counts = (schedule.updates_before("vae", step), schedule.updates_before("disc", step))
            if mode in ("vae_adv", "final"):
                schedule.record_adv(adv[step])
            seq.append((step, mode, schedule.round, schedule.ema, counts))
        return seq

    full = GANSchedule(cfg)
    reference = drive(full, range(len(adv)))
    assert {mode for _, mode, *_ in reference} == {"vae", "disc", "vae_adv", "final"}
    for stop in range(1, len(adv)):
        first = GANSchedule(cfg)
        head = drive(first, range(stop))
        torch.save({"stage": first.state_dict()}, tmp_path / "trainer.pt")
        resumed = GANSchedule(cfg)
        resumed.load_state_dict(torch.load(tmp_path / "trainer.pt", weights_only=True)["stage"])
        assert head + drive(resumed, range(stop, len(adv))) == reference, stop
        assert resumed.history == full.history and resumed.updates == full.updates


def test_vae_resume_mid_round_reproduces_the_uninterrupted_run(pipeline, tmp_path):
    """Preempted inside a phase-2 round (SIGTERM -> checkpoint -> exit 75), the resumed run continues the
    round: the same per-step modes, round counters, adversarial EMA and losses as the uninterrupted run."""
    import sys

    import torch
    from safetensors.torch import load_file

    from bsynth_hpc.engine.errors import EXIT_REQUEUE
    from engine_support import subprocess_env

    root, store = pipeline[0], pipeline[1]
    reference = [r for r in metrics(root / "vae") if "loss/vae" in r or "loss/disc" in r]
    segs = _segments(reference)
    # stop after the first step of a VAE(+adv) round that lasts >= 2 steps (round 1 preferred): the resumed
    # run must carry the round counter, the steps done in the round and the pending adversarial value
    candidates = [recs for m, recs in segs if m == "vae_adv" and len(recs) >= 2]
    assert candidates, [(m, len(recs)) for m, recs in segs]
    stop = candidates[-1][0]["step"]  # 1-based: steps done when the checkpoint is written
    run_dir = tmp_path / "vae"
    cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", "dit3d-vae", "--config", str(root / "vae.yaml"),
           "--store", str(store), "--run-dir", str(run_dir)]
    proc = run(cmd, env=subprocess_env(BSYNTH_FAULTS=f"signal@{stop - 1}:sig=TERM"))
    assert proc.returncode == EXIT_REQUEUE, explain(proc)
    state = torch.load(run_dir / "checkpoints" / f"step-{stop:08d}" / "trainer.pt", weights_only=True)
    assert state["stage"]["gan_schedule"]["mode"] == "vae_adv" and state["stage"]["gan_schedule"]["pending"]
    assert train_main(["dit3d-vae", "--config", str(root / "vae.yaml"), "--store", str(store), "--run-dir",
                       str(run_dir), "--resume", "auto"]) == 0
    resumed = [r for r in metrics(run_dir) if "loss/vae" in r or "loss/disc" in r]
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    assert _segments(resumed) and [m for m, _ in _segments(resumed)] == [m for m, _ in segs]
    keys = _gan_keys(reference)
    assert {"loss/vae/gan_round", "loss/vae/adv_ema", "loss/vae/adv_g", "loss/disc"} <= set(keys)
    for ref, res in zip(reference, resumed):
        for key in keys:
            assert _same_value(ref.get(key), res.get(key)), (ref["step"], key, ref.get(key), res.get(key))
    wa = load_file(str(root / "vae" / "export" / "vae.safetensors"))
    wb = load_file(str(run_dir / "export" / "vae.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dit3d_trains_exports_and_samples_per_class(pipeline, tmp_path):
    root, store, latents, _ = pipeline
    side = json.loads((root / "dit" / "export" / "dit.json").read_text())
    recipe = side["config"]["recipe"]
    assert recipe["classes"] == ["healthy", "TLE"]
    assert recipe["compressor_run"] == str((root / "vae").resolve())
    assert recipe["diffusion"]["beta_schedule"] == "linear" and recipe["diffusion"]["num_train_timesteps"] == 1000
    assert side["factory_kwargs"]["input_size"] == [4, 4, 4] and side["factory_kwargs"]["num_classes"] == 2
    info = json.loads((root / "dit" / "dit_info.json").read_text())  # promised by the stage's docstring
    assert info["classes"] == ["healthy", "TLE"] and info["modalities"] == ["T1w"] and info["export"] == "dit"
    assert info["compressor_run"] == recipe["compressor_run"] and info["compressor_sha256"] == side["compressor_sha256"]
    assert info["latent_shape"][1:] == [4, 4, 4] and info["diffusion"] == recipe["diffusion"]
    losses = [r["loss/dit"] for r in metrics(root / "dit") if "loss/dit" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)

    import nibabel as nib

    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate

    out = tmp_path / "synth"
    base = dict(run=str(root / "dit"), out=str(out), n=2, steps=5, batch_size=2, seed=0, device="cpu")
    assert generate(DiT3dSampleConfig(**base, class_label="TLE", cfg=3.0, solver="ddim"))
    assert generate(DiT3dSampleConfig(**{**base, "n": 1}, class_label=None, cfg=1.0, solver="ddpm"))
    with open(out / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["TLE", "TLE", "healthy", "TLE"]
    assert {r["modality"] for r in rows} == {"T1w"}
    for r in rows:
        img = nib.load(out / r["path"])
        assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
        assert (out / "previews" / r["path"].replace(".nii.gz", ".png")).is_file()


def test_dit3d_rejects_unknown_class(pipeline, tmp_path):
    from bsynth_hpc.errors import ConfigError
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate

    root = pipeline[0]
    args = DiT3dSampleConfig(run=str(root / "dit"), out=str(tmp_path / "x"), n=1, steps=2, batch_size=1, seed=0,
                             device="cpu", class_label="glioma", cfg=1.0, solver="ddim")
    with pytest.raises(ConfigError, match="healthy or TLE"):
        generate(args)


@pytest.mark.distributed
def test_dit3d_zero2_two_ranks_under_the_deepspeed_launcher(pipeline, tmp_path):
    root, store, latents, dit_cfg = pipeline
    run_dir = tmp_path / "zero2"
    from engine_support import subprocess_env

    proc = run([str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                str(REPO / "launchers" / "train_dit3d.py"), "--config", str(dit_cfg), "--store", str(store),
                "--run-dir", str(run_dir), "engine.backend=deepspeed", "engine.zero_stage=2", "engine.micro_batch=1",
                "engine.max_steps=1", "engine.val_every=0"], env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, explain(proc)
    text = proc.stdout + proc.stderr
    assert "stage dit3d" in text and "backend deepspeed" in text and "2 rank(s)" in text
    rec = [r for r in metrics(run_dir) if "loss/dit" in r]
    assert len(rec) == 1 and math.isfinite(rec[0]["loss/dit"])
    assert (run_dir / "export" / "dit.safetensors").is_file()


# ---------------------------------------------------------------------------- issue #12: silent wrong results
def _sample_args(run: Path, out: Path, **over) -> "DiT3dSampleConfig":
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig

    base = dict(run=str(run), out=str(out), n=1, steps=2, batch_size=2, seed=0, device="cpu", class_label=None,
                cfg=1.0, solver="ddim", overwrite=False)
    return DiT3dSampleConfig(**{**base, **over})


def _mixed_store(path: Path) -> Path:
    """T1w and T2w volumes of the same subjects (the T2w ones inverted, as CSF is bright in T2w)."""
    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(2.0, 2.0, 2.0)))
    for k in range(8):
        s = f"sub-{k:02d}"
        for mod, mid in (("T1w", 0), ("T2w", 1)):
            v = volume(k, SHAPE)
            rec = {"subject": s, "session": None, "dataset": "smoke", "modality": mod, "modality_id": mid,
                   "label": "TLE" if k % 2 else "healthy", "affine": AFFINE.tolist(), "shape": list(SHAPE)}
            store.write_volume(f"smoke_{s}_{mod}", v if mod == "T1w" else 1.0 - v, rec)
    finalize_store(store, fractions=(0.75, 0.25, 0.0), seed=0, stratify="dataset")
    return path


def test_dit3d_trains_on_one_contrast_and_labels_samples_with_it(pipeline, tmp_path):
    """Repro of #12.1: `bsynth encode` encoded every contrast and DiT-3D trained on all of them while every sample
    was labelled T1w."""
    from bsynth_hpc.data.latent_cache import LatentCache
    from bsynth_hpc.errors import ConfigError
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate
    from bsynth_hpc.recipes.encode import encode_store

    root = pipeline[0]
    store = _mixed_store(tmp_path / "mixed.zarr")
    default = LatentCache(encode_store(root / "vae", store, tmp_path / "t1.zarr"), mode="r")
    assert default.n == 8 and default.info["modalities"] == ["T1w"]  # the compressor's data.modalities
    mixed = encode_store(root / "vae", store, tmp_path / "all.zarr", modalities=["all"])
    assert LatentCache(mixed, mode="r").n == 16
    cfg = tiny_config("dit3d_tiny.yaml", tmp_path / "dit.yaml", {"latents": str(mixed)}, {"max_steps": 2})
    from bsynth_hpc.recipes.dit3d.ldm import DiT3dStage, DiT3dStageConfig

    with pytest.raises(ConfigError, match="holds latents of T1w, T2w"):  # refused when the stage is built
        DiT3dStage(DiT3dStageConfig(latents=str(mixed)), None)
    assert train_main(["dit3d", "--config", str(cfg), "--store", str(store), "--run-dir", str(tmp_path / "dit"),
                       "recipe.modalities=[T2w]"]) == 0
    side = json.loads((tmp_path / "dit" / "export" / "dit.json").read_text())
    assert side["modalities"] == ["T2w"]
    assert generate(_sample_args(tmp_path / "dit", tmp_path / "s"))
    with open(tmp_path / "s" / "samples.csv", newline="") as fh:
        assert {r["modality"] for r in csv.DictReader(fh)} == {"T2w"}


def test_sampling_never_overwrites_and_continues_the_seeds(pipeline, tmp_path):
    """Repro of #12.3: a second call into the same --out rewrote sample 0 with seed 0 again."""
    import nibabel as nib

    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate

    root, out = pipeline[0], tmp_path / "synth"
    assert generate(_sample_args(root / "dit", out))
    first = {p.name: np.asarray(nib.load(p).dataobj) for p in out.glob("*.nii.gz")}
    assert generate(_sample_args(root / "dit", out))
    with open(out / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and len({r["path"] for r in rows}) == 4 and len({r["seed"] for r in rows}) == 2
    for name, data in first.items():  # the earlier files are untouched
        assert np.array_equal(np.asarray(nib.load(out / name).dataobj), data)
    assert generate(_sample_args(root / "dit", out, overwrite=True))
    with open(out / "samples.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4  # same names rewritten, nothing added
    for name, data in first.items():  # same seeds -> the same volumes
        np.testing.assert_allclose(np.asarray(nib.load(out / name).dataobj), data, atol=1e-5)


def test_a_retrained_compressor_invalidates_its_latents(pipeline, tmp_path):
    """Repro of #12.2: after more compressor training, `bsynth encode` said "already written, skipped" with the old
    s_z, and sampling decoded with the new decoder."""
    import shutil

    import torch

    from bsynth_hpc.engine.export import export_model, load_exported
    from bsynth_hpc.errors import ConfigError, StoreError
    from bsynth_hpc.recipes.dit3d.ldm import DiT3dStage, DiT3dStageConfig
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate
    from bsynth_hpc.recipes.encode import encode_store

    root, store = pipeline[0], pipeline[1]
    vae_run = tmp_path / "vae"
    shutil.copytree(root / "vae" / "export", vae_run / "export")
    cache = encode_store(vae_run, store, tmp_path / "lat.zarr")
    model, meta = load_exported(vae_run, "vae")
    with torch.no_grad():  # "retrain": other weights, exported as training would
        next(model.parameters()).add_(0.01)
    export_model(vae_run, "vae", model, meta["config"], extra={
        "factory": meta["factory"], "factory_kwargs": meta["factory_kwargs"], "latent_scale": meta["latent_scale"]})
    with pytest.raises(StoreError, match="stale"):
        encode_store(vae_run, store, cache)
    with pytest.raises(ConfigError, match="retrained since"):
        DiT3dStage(DiT3dStageConfig(latents=str(cache)), None)
    with pytest.raises(ConfigError, match="decoding would give wrong volumes"):
        generate(_sample_args(root / "dit", tmp_path / "s", compressor_run=str(vae_run)))
    assert not (tmp_path / "s").exists()
    encode_store(vae_run, store, cache, reencode=True)
    from bsynth_hpc.data.latent_cache import LatentCache

    assert LatentCache(cache, mode="r").info["compressor_sha256"] == json.loads(
        (vae_run / "export" / "vae.json").read_text())["weights_sha256"]
    DiT3dStage(DiT3dStageConfig(latents=str(cache)), None)  # current again


def test_space_native_overlays_the_reference_scan_in_world_coordinates(pipeline, tmp_path):
    """#12.9: `--space native` resamples samples onto a scanner grid; checked against nibabel's resampling."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from bsynth_hpc.errors import ConfigError
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig, generate

    root = pipeline[0]
    ref_affine = np.array([[-1.5, 0.1, 0, 12], [0.1, 1.5, 0, -15], [0, 0, 1.25, -8], [0, 0, 0, 1]])
    ref = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((18, 20, 22), dtype=np.float32), ref_affine), str(ref))
    assert generate(_sample_args(root / "dit", tmp_path / "grid", class_label="TLE"))
    assert generate(_sample_args(root / "dit", tmp_path / "native", class_label="TLE", space="native",
                                         reference=str(ref)))
    on_grid = nib.load(next((tmp_path / "grid").glob("*.nii.gz")))
    native = nib.load(next((tmp_path / "native").glob("*.nii.gz")))
    assert native.shape == (18, 20, 22) and np.allclose(native.affine, ref_affine)
    expected = resample_from_to(on_grid, (native.shape, ref_affine), order=1, mode="constant", cval=0.0)
    diff = np.abs(np.asarray(native.dataobj) - np.asarray(expected.dataobj))
    assert (diff > 2e-3).mean() < 0.01  # only voxels at the exact edge of the store grid differ (edge rounding)
    assert np.asarray(native.dataobj).max() > 0.05  # the grids overlap: not an empty volume
    with pytest.raises(ConfigError, match="no source grid"):  # this synthetic store recorded no source scans
        generate(_sample_args(root / "dit", tmp_path / "x", space="native"))


def test_output_space_scanner_grid_and_intensities(tmp_path):
    """--space native --intensity scanner with a store volume as reference: the source scan's grid (from the
    record prep wrote) and the inverse of its recorded normalisation."""
    from nibabel.processing import resample_from_to
    import nibabel as nib

    from bsynth_hpc.errors import ConfigError
    from bsynth_hpc.recipes.common.outputs import output_space

    store = VolumeStore.create_or_open(tmp_path / "s.zarr", StoreLayout(kind="volume3d", shape=SHAPE,
                                                                         spacing=(2.0, 2.0, 2.0)))
    src_affine = np.array([[1.0, 0, 0, -14], [0, 1.0, 0, -16], [0, 0, 1.0, -8], [0, 0, 0, 1]])
    rec = {"subject": "sub-00", "session": None, "dataset": "d", "modality": "T1w", "modality_id": 0,
           "affine": AFFINE.tolist(), "source_affine": src_affine.tolist(), "source_shape": [28, 30, 26],
           "intensity": {"method": "minmax", "clip_low": 10.0, "clip_high": 410.0, "offset": 10.0, "scale": 1 / 400}}
    store.write_volume("d_sub-00_T1w", volume(0, SHAPE), rec)
    space = output_space("native", "scanner", "d_sub-00_T1w", tmp_path / "s.zarr")
    vol = volume(1, SHAPE)
    out, affine = space.apply(vol, AFFINE)
    assert out.shape == (28, 30, 26) and np.allclose(affine, src_affine)
    ref = resample_from_to(nib.Nifti1Image(vol, AFFINE), ((28, 30, 26), src_affine), order=1, cval=0.0)
    inside = np.asarray(ref.dataobj) > 0.05
    np.testing.assert_allclose(out[inside], np.asarray(ref.dataobj)[inside] * 400 + 10, rtol=0, atol=1.0)
    assert output_space("store", "unit", None, None) is None
    with pytest.raises(ConfigError, match="needs --reference VOLUME_ID"):
        nib.save(nib.Nifti1Image(vol, AFFINE), str(tmp_path / "r.nii.gz"))
        output_space("store", "scanner", str(tmp_path / "r.nii.gz"), None)
