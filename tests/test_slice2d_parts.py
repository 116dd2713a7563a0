"""Parts of the 2D slice LDMs (seeds 001/004, issue 17): slices cut from a 3D store (BraTS layout ->
3D store -> slice store, splits kept, empty slices dropped, resizing, resume, bad volumes), the
slice001/slice004 presets, the FFT loss against numpy.fft, latent CutMix and the adaptive DDIM stop."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

from bsynth_hpc import nn as bnn
from bsynth_hpc import ops
from bsynth_hpc.cli import main as bsynth
from bsynth_hpc.data import VolumeDataset
from bsynth_hpc.data.finalize import load_index
from bsynth_hpc.data.intensity import denormalize
from bsynth_hpc.data.store import VolumeStore
from bsynth_hpc.diffusion import DDPMProcess, early_stop_callback, latent_cutmix, make_schedule, sample
from bsynth_hpc.errors import ConfigError, StoreError
from bsynth_hpc.losses import eps_fft_loss, fft_loss
from bsynth_hpc.models.autoencoder import GroupNormAct, build_compressor
from bsynth_hpc.models.unet3d import build_unet3d
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep
from bsynth_hpc.prep.slices_from import SliceConfig, slices_from_store

SHAPE = (12, 14, 10)      # source grid (X, Y, Z), 1 mm
BRAIN_Z = range(2, 8)     # axial slices that hold brain; the others are empty
CASES = {"case01": "tumour", "case02": "normal", "case03": "tumour", "case04": "normal"}


@pytest.fixture(autouse=True)
def _reference_ops():
    ops.set_triton_enabled(False)
    yield
    ops.set_triton_enabled(None)


# ---------------------------------------------------------------------------- slices from volumes
def _head(rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid 'brain' with texture in axial slices BRAIN_Z, zero (skull-stripped) elsewhere."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    inside = ((x - 5.5) / 4.5) ** 2 + ((y - 6.5) / 5.5) ** 2 < 1.0
    inside &= (z >= BRAIN_Z.start) & (z < BRAIN_Z.stop)
    return np.where(inside, 100.0 + 50.0 * rng.random(SHAPE) + 5.0 * y, 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory) -> Path:
    """BraTS layout (FLAIR + T1ce per case, labels from a subject table) -> `bsynth prep --brats` store."""
    tmp = tmp_path_factory.mktemp("brats")
    root, rng = tmp / "BraTS", np.random.default_rng(0)
    for case in CASES:
        (root / case).mkdir(parents=True)
        for suffix in ("flair", "t1ce"):
            nib.save(nib.Nifti1Image(_head(rng), np.eye(4)), str(root / case / f"{case}_{suffix}.nii.gz"))
    table = tmp / "subjects.csv"
    table.write_text("subject,label\n" + "".join(f"{c},{lab}\n" for c, lab in CASES.items()))
    result = run_prep(PrepSource.brats(root, subjects_table=table), tmp / "volumes.zarr",
                      PrepConfig(shape=SHAPE, spacing=(1.0, 1.0, 1.0), cluster="sync", progress=False,
                                 splits=(0.5, 0.25, 0.25)))
    assert result.exit_code == 0 and result.done == 2 * len(CASES)
    return result.store_path


def _brain_slices(volume: np.ndarray, min_fraction: float) -> list[int]:
    """Independent reference of the filter: the volume's foreground threshold, per-axial-slice fraction."""
    threshold = volume.min() + 0.1 * (np.percentile(volume, 99.0) - volume.min())
    fractions = [(volume[:, :, k] > threshold).mean() for k in range(volume.shape[2])]
    return [k for k, f in enumerate(fractions) if f >= min_fraction and f > 0]


@pytest.fixture(scope="module")
def slice_store(volume_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slices") / "slices.zarr"
    result = slices_from_store(volume_store, out, SliceConfig(size=16, modalities=("flair",), progress=False))
    assert result.exit_code == 0 and result.complete and result.done == len(CASES)
    return result.store_path


def test_slices_are_the_non_empty_axial_slices_of_the_chosen_modality(volume_store, slice_store):
    src, out = VolumeStore(volume_store), VolumeStore(slice_store)
    assert out.kind == "slice2d" and out.shape == (16, 16)
    expected = set()
    for vid in src.volume_ids():
        if src.record(vid)["modality"] != "FLAIR":
            continue
        kept = _brain_slices(src.read_volume(vid), 0.05)
        assert kept == list(BRAIN_Z)
        expected |= {f"{vid}__axial{k:03d}" for k in kept}
    assert set(out.volume_ids()) == expected
    for sid in out.volume_ids():
        rec = out.record(sid)
        source = src.record(rec["source_volume_id"])
        assert rec["modality"] == "FLAIR" and rec["label"] == CASES[rec["subject"]] == source["label"]
        assert (rec["subject"], rec["dataset"], rec["slice_axis"]) == (source["subject"], source["dataset"], "axial")
        image = out.read_volume(sid)
        assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() == -1.0  # padded/air background


def test_a_slice_is_the_resized_volume_plane_in_minus_one_one(volume_store, slice_store):
    """Pixel values against PIL on the display-oriented plane (rows: anterior first, columns: left->right)."""
    src, out = VolumeStore(volume_store), VolumeStore(slice_store)
    sid = out.volume_ids()[2]
    rec = out.record(sid)
    plane = src.read_volume(rec["source_volume_id"])[:, :, rec["slice_index"]]
    display = plane.T[::-1]                                   # (Y reversed, X) = (14, 12)
    resized = np.asarray(Image.fromarray(display.astype(np.float32)).resize((14, 16), Image.Resampling.BICUBIC))
    ref = np.full((16, 16), 0.0, np.float32)
    ref[:, 1:15] = resized                                    # pad: 14x12 -> 16x14, centred
    np.testing.assert_allclose(out.read_volume(sid), 2.0 * np.clip(ref, 0, 1) - 1.0, atol=2e-3)


def test_unresized_slices_keep_values_and_map_back_to_scanner_units(volume_store, tmp_path):
    src = VolumeStore(volume_store)
    vid = next(v for v in src.volume_ids() if v.endswith("T1Gd"))
    result = slices_from_store(volume_store, tmp_path / "t1gd.zarr",
                               SliceConfig(size=(14, 12), fit="stretch", modalities=("T1ce",), dtype="float32",
                                           progress=False))
    out = VolumeStore(result.store_path)
    sid = f"{vid}__axial004"
    stored, source = out.read_volume(sid), src.read_volume(vid)[:, :, 4].T[::-1]
    np.testing.assert_allclose(stored, 2.0 * source - 1.0, atol=1e-6)
    np.testing.assert_allclose(denormalize(stored, out.record(sid)), denormalize(source, src.record(vid)),
                               rtol=1e-4, atol=1e-3)


def test_splits_are_the_source_subjects_splits(volume_store, slice_store):
    src_info, _ = load_index(volume_store)
    info, entries = load_index(slice_store)
    assignment = src_info["splits"]["assignment"]
    assert {e.key: info["splits"]["assignment"][e.key] for e in entries} == {e.key: assignment[e.key] for e in entries}
    assert info["labels"] == src_info["labels"] == ["normal", "tumour"]
    seen = set()
    for split in ("train", "val", "test"):
        ds = VolumeDataset(slice_store, split=split)
        assert all(assignment[f"{ds.entries[i].dataset}/{ds.entries[i].subject}"] == split for i in range(len(ds)))
        item = ds[0]
        assert item["image"].shape == (1, 16, 16) and item["label_name"] == CASES[item["subject"]]
        assert item["label"] == ds.label_names.index(item["label_name"])
        seen |= {e.subject for e in ds.entries}
    assert seen == set(CASES)


def test_rerun_is_idempotent_and_resumes(volume_store, slice_store, tmp_path):
    out = tmp_path / "copy.zarr"
    shutil.copytree(slice_store, out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "volumes").rglob("*") if p.is_file()}
    again = slices_from_store(volume_store, out, SliceConfig(size=16, modalities=("FLAIR",), progress=False))
    assert again.exit_code == 0 and (again.done, again.skipped) == (0, len(CASES))
    assert {p: p.stat().st_mtime_ns for p in (out / "volumes").rglob("*") if p.is_file()} == mtimes
    victim = sorted((out / "volumes").iterdir())[3]
    shutil.rmtree(victim)
    resumed = slices_from_store(volume_store, out, SliceConfig(size=16, modalities=("FLAIR",), progress=False))
    assert resumed.exit_code == 0 and resumed.done == 1 and (out / "volumes" / victim.name / "zarr.json").exists()
    with pytest.raises(StoreError, match="other options"):
        slices_from_store(volume_store, out, SliceConfig(size=16, modalities=("FLAIR",), min_brain_fraction=0.2,
                                                         progress=False))


def test_a_bad_volume_is_reported_and_skipped(volume_store, tmp_path):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(volume_store, broken)
    bad = sorted(v for v in VolumeStore(broken).volume_ids() if v.endswith("FLAIR"))[1]
    arr = zarr.open_array(str(broken / "volumes" / bad), mode="r+")
    arr[3, 3, 3] = np.nan
    result = slices_from_store(broken, tmp_path / "out.zarr", SliceConfig(size=16, modalities=("FLAIR",),
                                                                         progress=False))
    assert result.exit_code == 1 and result.complete and result.done == len(CASES) - 1
    assert [f.volume_id for f in result.failures] == [bad] and "non-finite" in result.failures[0].message
    assert not any(v.startswith(bad) for v in VolumeStore(result.store_path).volume_ids())
    VolumeDataset(result.store_path, split=None)  # finalized despite the failure


def test_cli_slices_from(volume_store, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    code = bsynth(["prep", "--slices-from", str(volume_store), "--out", str(out), "--size", "8", "--modalities",
                   "FLAIR", "T1Gd", "--min-brain-fraction", "0.3", "--interpolation", "bilinear", "--quiet"])
    assert code == 0
    store = VolumeStore(out)
    assert store.shape == (8, 8) and {store.record(v)["modality"] for v in store.volume_ids()} == {"FLAIR", "T1Gd"}
    fractions = [store.record(v)["brain_fraction"] for v in store.volume_ids()]
    assert fractions and min(fractions) >= 0.3
    assert bsynth(["prep", "--slices-from", str(out), "--out", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    assert "3D volume store" in capsys.readouterr().err


def test_bad_slice_options():
    with pytest.raises(ConfigError, match="--axis"):
        SliceConfig(axis="oblique")
    with pytest.raises(ConfigError, match="--modalities"):
        SliceConfig(modalities=("DWI",))
    with pytest.raises(ConfigError, match="--value-range"):
        SliceConfig(value_range=(1.0, -1.0))


def _write_volume_samples(folder: Path, volumes: list[tuple[str, np.ndarray]]) -> Path:
    """3D FLAIR samples as `bsynth sample` writes them (NIfTI on the 1 mm source grid + samples.csv)."""
    folder.mkdir(parents=True)
    for name, volume in volumes:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"{name}.nii.gz"))
    (folder / "samples.csv").write_text("path,modality,label\n" + "".join(f"{n}.nii.gz,FLAIR,\n" for n, _ in volumes))
    return folder


def test_3d_samples_are_cut_like_the_slice_store_and_scored_on_slices(volume_store, slice_store, tmp_path):
    """`eval fidelity` of 3D samples against a slice store: a held-out volume given as a sample is cut into the
    slices the store's own cut kept (the independent brain filter below), and each scores what the store's
    held-out slice of it scores; a new volume is cut by its own brain extent."""
    from bsynth_hpc.eval.fidelity import FidelityConfig, evaluate_fidelity
    from bsynth_hpc.eval.io import open_store_set
    from bsynth_hpc.prep.slices_from import slice_volume_id

    held = open_store_set(volume_store, split="test")
    i = next(k for k, r in enumerate(held.refs) if r.modality == "FLAIR")
    volume = held.load(i)
    shorter = volume.copy()
    shorter[:, :, BRAIN_Z.start] = 0.0   # one brain slice fewer
    folder = _write_volume_samples(tmp_path / "samples", [("heldout", volume), ("shorter", shorter)])
    result = evaluate_fidelity(slice_store, folder, FidelityConfig(ssim_candidates=0)).result
    assert result["inputs"]["generated"]["kind"] == "volume-slices"
    rows = {r["sample"]: r for r in result["samples"]}
    assert set(rows) == ({slice_volume_id("heldout", "axial", k) for k in _brain_slices(volume, 0.05)}
                         | {slice_volume_id("shorter", "axial", k) for k in _brain_slices(shorter, 0.05)})
    assert len(rows) == 2 * len(BRAIN_Z) - 1
    real = {r["volume_id"]: r for r in result["real_heldout"]}
    for k in _brain_slices(volume, 0.05):
        mine, theirs = rows[slice_volume_id("heldout", "axial", k)], real[slice_volume_id(held.refs[i].volume_id,
                                                                                            "axial", k)]
        assert mine["matched_level"] == theirs["matched_level"]
        assert mine["corr_modality"] == pytest.approx(theirs["corr_modality"], abs=1e-3)   # the store keeps float16
        assert mine["dice"] == pytest.approx(theirs["dice"], abs=0.02)


def test_held_out_volumes_as_samples_match_the_real_slices_level_by_level(volume_store, slice_store, tmp_path):
    """The level-matched comparison of `eval fidelity`: every held-out volume of the store given as a 3D sample
    lands on the levels its real slices do, with no gap in r or Dice; the report prints the level table."""
    from bsynth_hpc.eval.fidelity import FidelityConfig, evaluate_fidelity, fidelity_markdown, headline
    from bsynth_hpc.eval.io import open_store_set

    volumes = []
    for split in ("val", "test"):
        held = open_store_set(volume_store, split=split)
        volumes += [(f"{split}{i}", held.load(i)) for i, r in enumerate(held.refs) if r.modality == "FLAIR"]
    folder = _write_volume_samples(tmp_path / "samples", volumes)
    result = evaluate_fidelity(slice_store, folder, FidelityConfig(ssim_candidates=0)).result
    levels = result["by_level"]["FLAIR"]
    assert levels["coverage"]["total_variation"] == pytest.approx(0.0)
    assert levels["coverage"]["levels_without_sample"] == 0
    assert levels["gap"]["corr_modality"]["mean_difference"] == pytest.approx(0.0, abs=1e-3)   # float16 store
    assert levels["gap"]["dice"]["mean_difference"] == pytest.approx(0.0, abs=0.02)
    assert levels["gap"]["corr_modality"]["n_samples"] == len(result["samples"])
    assert "## FLAIR by slice level" in fidelity_markdown(result, None)
    assert "FLAIR level-matched gap to real r +0.000" in headline(result) or \
        "FLAIR level-matched gap to real r -0.000" in headline(result)


def test_3d_samples_need_the_slice_stores_source_grid(volume_store, tmp_path, capsys):
    """Cut from a store that is gone: the samples' grid can't be checked, and the error says so."""
    source = tmp_path / "copy.zarr"
    shutil.copytree(volume_store, source)
    slices = slices_from_store(source, tmp_path / "slices.zarr", SliceConfig(size=16, progress=False)).store_path
    shutil.rmtree(source)
    folder = _write_volume_samples(tmp_path / "samples", [("a", np.zeros(SHAPE, np.float32))])
    code = bsynth(["eval", "fidelity", "--real", str(slices), "--fake", str(folder), "--out", str(tmp_path / "o")])
    assert code != 0 and "which is gone" in capsys.readouterr().err


# ---------------------------------------------------------------------------- presets
def test_slice_vae_presets_have_the_papers_shapes():
    with torch.no_grad():
        vae001 = build_compressor("slice001").eval()
        assert vae001.encode(torch.zeros(1, 1, 128, 128)).mean.shape == (1, 8, 16, 16)
        vae004 = build_compressor("slice004").eval()
        assert vae004.encode(torch.zeros(1, 1, 256, 256)).mean.shape == (1, 8, 32, 32)
    assert vae001.config.channels == (32, 64, 128, 256) and vae001.config.num_res_blocks == 2
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae001.decoder.modules()) == 3
    assert sum(isinstance(m, bnn.GroupNormSiLU) for m in vae001.modules()) > 0
    enc_acts = {m.activation for m in vae004.encoder.modules() if isinstance(m, GroupNormAct)}
    dec_acts = {m.activation for m in vae004.decoder.modules() if isinstance(m, GroupNormAct)}
    assert enc_acts == {"leaky_relu"} and dec_acts == {"relu"}
    assert all(m.num_groups == 1 for m in vae004.modules() if isinstance(m, torch.nn.GroupNorm))


def test_group_norm_act_matches_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 6, generator=g)
    for act, ref in (("relu", F.relu), ("leaky_relu", lambda h: F.leaky_relu(h, 0.2))):
        m = GroupNormAct(2, 8, 1e-6, act)
        torch.nn.init.normal_(m.weight, generator=g)
        torch.testing.assert_close(m(x), ref(F.group_norm(x, 2, m.weight, m.bias, 1e-6)))


@pytest.mark.parametrize("preset", ["slice001", "slice004"])
def test_slice_vaes_train_at_tiny_width(preset):
    torch.manual_seed(0)
    vae = build_compressor(preset, base_channels=8, norm_groups=1 if preset == "slice004" else 4, attention_heads=1)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    recon, posterior = vae(x, generator=torch.Generator().manual_seed(1))
    assert recon.shape == x.shape and posterior.mean.shape == (2, 8, 4, 4)
    assert recon.abs().max() < 1.0  # tanh output
    loss = F.mse_loss(recon, x) + 1e-5 * posterior.kl().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


def test_slice001_unet_preset_and_tiny_step():
    full = build_unet3d("slice001_unet").config
    assert (full.embedding_width, full.level_channels(), full.dropout, full.attention_levels) == \
        (512, [64, 128, 256], 0.1, (1,))
    torch.manual_seed(0)
    unet = build_unet3d("slice001_unet", base_channels=8, norm_groups=4, attention_heads=2, embed_dim=32)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    z = torch.randn(2, 8, 16, 16)
    out = unet(z, torch.tensor([10, 900]))
    assert out.shape == z.shape
    attn_grid = [blk.attn is not None for blocks in unet.down_stages for blk in blocks]
    assert attn_grid == [False, False, True, True, False, False]  # level 1 = 8x8 for 16x16 latents
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_slice004_unet_class_condition_and_cfg():
    torch.manual_seed(0)
    unet = build_unet3d("slice004_unet", base_channels=8, norm_groups=4, attention_heads=2).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    for p in unet.parameters():  # the zero-initialised convs would hide the condition
        if p.dim() > 1 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.05)
    z, t = torch.randn(2, 8, 8, 8), torch.tensor([100, 100])
    with torch.no_grad():
        y0 = unet(z, t, {"class": torch.tensor([0, 0])})
        y1 = unet(z, t, {"class": torch.tensor([1, 1])})
        null = unet(z, t)
        assert not torch.allclose(y0, y1)
        torch.testing.assert_close(null, unet(z, t, {"class": torch.full((2,), unet.null_class)}))
        cond = {"class": torch.tensor([1, 1])}
        torch.testing.assert_close(unet.forward_with_cfg(z, t, cond, 1.0), y1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(unet.forward_with_cfg(z, t, cond, 3.0), null + 3.0 * (y1 - null),
                                   rtol=1e-4, atol=1e-5)
    dropped = unet.drop_conditions({"class": torch.zeros(4000, dtype=torch.long)},
                                   generator=torch.Generator().manual_seed(0))
    assert abs((dropped["class"] == unet.null_class).float().mean().item() - 0.1) < 0.02
    with pytest.raises(ValueError, match="num_classes=0"):
        build_unet3d("slice001_unet", base_channels=8, norm_groups=4, attention_heads=2)(
            torch.randn(1, 8, 8, 8), 1, {"class": torch.tensor([0])})


# ---------------------------------------------------------------------------- FFT loss
def test_fft_loss_against_numpy():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 8, 6, generator=g), torch.randn(3, 2, 8, 6, generator=g)
    fp = np.fft.fftn(pred.double().numpy(), axes=(2, 3), norm="ortho")
    ft = np.fft.fftn(target.double().numpy(), axes=(2, 3), norm="ortho")
    complex_ref = np.mean(np.abs(fp - ft) ** 2)
    amplitude_ref = np.mean((np.abs(fp) - np.abs(ft)) ** 2)
    assert fft_loss(pred, target).item() == pytest.approx(complex_ref, rel=1e-5)
    assert fft_loss(pred, target, mode="amplitude").item() == pytest.approx(amplitude_ref, rel=1e-5)
    per = fft_loss(pred, target, reduction="per_sample")
    np.testing.assert_allclose(per.numpy(), np.mean(np.abs(fp - ft) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    mse = F.mse_loss(pred, target).item()
    assert complex_ref == pytest.approx(mse, rel=1e-6)  # Parseval: Eq. (4) as printed is the MSE
    assert eps_fft_loss(pred, target).item() == pytest.approx(mse + 0.1 * complex_ref, rel=1e-5)
    assert eps_fft_loss(pred, target, mode="amplitude").item() == pytest.approx(mse + 0.1 * amplitude_ref, rel=1e-5)
    # amplitude is blind to a circular shift (a pure phase change), the complex form is not
    shifted = torch.roll(target, shifts=(2, 1), dims=(2, 3))
    assert fft_loss(shifted, target, mode="amplitude").item() < 1e-10 < fft_loss(shifted, target).item()
    pred.requires_grad_(True)
    eps_fft_loss(pred, target, mode="amplitude").backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        fft_loss(pred, target, mode="phase")


# ---------------------------------------------------------------------------- latent CutMix
def _is_box(mask: torch.Tensor) -> bool:
    idx = torch.nonzero(mask)
    if not len(idx):
        return True
    lo, hi = idx.min(0).values, idx.max(0).values
    return int(mask.sum()) == int(torch.prod(hi - lo + 1))


def test_cutmix_replaces_one_box_from_the_partner_in_every_tensor():
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(6, 8, 16, 16, generator=g), torch.randn(6, 8, 16, 16, generator=g)
    mixed = latent_cutmix(z0, noise, p=1.0, generator=torch.Generator().manual_seed(1))
    zm, nm = mixed.tensors
    assert mixed.applied.all() and (mixed.partner != torch.arange(6)).all()
    assert sorted(mixed.partner.tolist()) == list(range(6))
    for b in range(6):
        box = mixed.mask[b, 0]
        assert _is_box(box)
        j = int(mixed.partner[b])
        for orig, out in ((z0, zm), (noise, nm)):
            assert torch.equal(out[b][:, box], orig[j][:, box])     # region replaced exactly
            assert torch.equal(out[b][:, ~box], orig[b][:, ~box])   # outside untouched
    assert mixed.mask.any()
    vol = torch.randn(3, 2, 4, 6, 8, generator=g)  # 3D latents work the same way
    assert all(_is_box(m[0]) for m in latent_cutmix(vol, p=1.0, generator=g).mask)


def test_cutmix_probability_and_edge_cases():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 1, 8, 8)
    applied = torch.cat([latent_cutmix(x, p=0.25, generator=g).applied for _ in range(2000)])
    assert abs(applied.float().mean().item() - 0.25) < 0.015
    none = latent_cutmix(x, p=0.0, generator=g)
    assert not none.applied.any() and torch.equal(none.tensors[0], x)
    single = latent_cutmix(x[:1], p=1.0, generator=g)
    assert not single.applied.any() and torch.equal(single.tensors[0], x[:1])
    with pytest.raises(ValueError, match="does not match"):
        latent_cutmix(x, torch.randn(8, 1, 4, 4))


# ---------------------------------------------------------------------------- adaptive early stop
def test_early_stop_ends_ddim_and_returns_the_x0_estimate():
    process = DDPMProcess(make_schedule("cosine", 1000))
    levels = [1.0, 0.5, 0.2, 0.04, 0.01]
    calls: list[int] = []

    def model(x, t, cond):
        calls.append(len(calls))
        return torch.full_like(x, levels[min(len(calls) - 1, len(levels) - 1)])

    stop = early_stop_callback(0.05)
    seen = []

    def callback(info):
        seen.append((info.t, info.x_t.clone(), info.model_out.clone()))
        return stop(info)

    out = sample(model, (2, 8, 4, 4), process, 50, solver="ddim", eta=0.0,
                 generator=torch.Generator().manual_seed(0), callback=callback)
    assert out.steps_taken == stop.steps_taken == 4 == len(calls) and stop.stopped
    assert stop.norms == pytest.approx(levels[:4])
    t, x_t, eps = seen[-1]
    abar = process.schedule.alphas_cumprod[t].item()
    x0 = (x_t.double() - (1 - abar) ** 0.5 * eps.double()) / abar ** 0.5
    torch.testing.assert_close(out.sample.double(), x0, rtol=1e-5, atol=1e-5)

    never = early_stop_callback(1e-3)
    full = sample(lambda x, t, c: torch.ones_like(x), (1, 2, 2, 2), process, 50, solver="ddim",
                  generator=torch.Generator().manual_seed(0), callback=never)
    assert full.steps_taken == never.steps_taken == 50 and not never.stopped
    with pytest.raises(ConfigError):
        early_stop_callback(0.0)


def test_early_stop_converts_v_predictions_to_epsilon():
    process = DDPMProcess(make_schedule("cosine", 1000), prediction="v_prediction")
    stop = early_stop_callback(0.05, process)
    x = torch.randn(1, 2, 3, 3)
    out = sample(lambda x_t, t, c: torch.zeros_like(x_t), x.shape, process, 20, solver="ddim", x_init=x,
                 callback=stop)
    # v = 0 means eps = sqrt(1 - abar) x_t: large at the first step, so no stop there
    assert stop.norms[0] > 0.05 and out.steps_taken == stop.steps_taken
