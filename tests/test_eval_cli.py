"""`bsynth eval synth` and `bsynth eval recon` end to end on a tiny store and NIfTI folders."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bsynth_hpc.cli import main
from bsynth_hpc.constants import MODALITY_IDS
from bsynth_hpc.data import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.errors import InputError
from bsynth_hpc.eval.features_medicalnet import MedicalNetExtractor
from bsynth_hpc.eval.io import open_volume_set
from bsynth_hpc.weights import WEIGHTS_ENV

SHAPE = (24, 28, 20)
CONTRAST = {"T1w": (0.8, 0.4), "FLAIR": (0.5, 0.9)}


def brain(seed: int, modality: str, shape=SHAPE) -> np.ndarray:
    """An ellipsoidal 'brain' with a darker core whose size varies by subject, plus noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r2 = (grid ** 2).sum(0)
    outer, inner = CONTRAST[modality]
    core = 0.15 + 0.1 * rng.random()
    v = np.where(r2 < 0.75, outer, 0.0) + np.where(r2 < core, inner - outer, 0.0)
    v = v + np.where(r2 < 0.75, rng.normal(0, 0.04, shape), 0.0)
    return np.clip(v, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "tiny.zarr"
    st = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(4.0,) * 3))
    for s in range(8):
        for modality in ("T1w", "FLAIR"):
            rec = {"subject": f"sub-{s:02d}", "session": None, "dataset": "tiny", "modality": modality,
                   "modality_id": MODALITY_IDS[modality], "label": "AD" if s % 2 else "CN",
                   "affine": np.diag([4.0, 4.0, 4.0, 1.0]).tolist()}
            st.write_volume(f"tiny_sub-{s:02d}_{modality}", brain(s, modality), rec)
    finalize_store(st, fractions=(0.5, 0.25, 0.25), seed=0)
    return path


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    """Generated volumes as `bsynth sample` would write them, with a saved denoising trajectory."""
    out = tmp_path_factory.mktemp("samples")
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    for i in range(6):
        modality, label = ("T1w", "FLAIR")[i % 2], ("CN", "AD")[(i // 2) % 2]
        name = f"sample-{i:03d}_class-{label}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(brain(100 + i, modality), affine), out / name)
    (out / "trajectory").mkdir()
    rng = np.random.default_rng(0)
    for t in (1000, 500, 0):
        noisy = brain(100, "T1w") + (t / 1000) * rng.normal(0, 1, SHAPE)
        nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), out / "trajectory" / f"sample-000_t-{t}.nii.gz")
    return out


@pytest.fixture(autouse=True)
def no_weights_dir(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_synth_end_to_end_with_random_features(store, fake_dir, tmp_path, capsys):
    out = tmp_path / "synth"
    code, err = run(["eval", "synth", "--real", str(store), "--real-split", "all", "--fake", str(fake_dir),
                     "--depth", "10", "--pairs", "5", "--device", "cpu", "--allow-random-features",
                     "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "synth" and metrics["random_features"] is True
    assert "not an evaluation" in metrics["warning"]
    assert metrics["weights"][0]["random"] is True
    assert metrics["fid"] > 0 and metrics["mmd"] >= 0 and 0 < metrics["ms_ssim"] <= 1
    assert set(metrics["by_modality"]) == {"T1w", "FLAIR"} and set(metrics["by_class"]) == {"AD", "CN"}
    t1 = metrics["by_modality"]["T1w"]
    assert t1["n_real"] == 8 and t1["n_fake"] == 3 and t1["ms_ssim_pairs"] == 3
    assert metrics["pooled"]["ms_ssim_pairs"] == 6 and metrics["pooled"]["n_real"] == 16
    assert metrics["inputs"]["generated"]["modalities"] == {"T1w": 3, "FLAIR": 3}
    assert metrics["settings"]["seed"] == 0 and metrics["settings"]["n_pairs_requested"] == 5
    md = (out / "metrics.md").read_text()
    assert "SMOKE TEST" in md.splitlines()[2] and "| T1w |" in md and "| AD |" in md
    for name in ("samples_by_modality.png", "samples_by_class.png", "trajectory.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
            # the red smoke-test banner sits under the title
            assert im.convert("RGB").getpixel((3, 30)) == (200, 0, 0)


def test_synth_identical_sets_with_a_checkpoint_give_zero_fid_and_mmd(store, tmp_path, capsys):
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in MedicalNetExtractor(10).backbone.state_dict().items()}
    ckpt = tmp_path / "medicalnet_r10.pth"
    torch.save({"state_dict": state}, ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    out = tmp_path / "same"
    code, err = run(["eval", "synth", "--real", str(store), "--fake", str(store), "--real-split", "all",
                     "--weights", str(ckpt), "--weights-sha256", digest, "--depth", "10", "--pairs", "3",
                     "--no-real-pairs", "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_features"] is False and "warning" not in metrics
    assert metrics["weights"][0]["sha256"] == digest and metrics["weights"][0]["verified"] == "explicit"
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-6) and metrics["mmd"] == 0.0
    assert all(g["fid"] == pytest.approx(0.0, abs=1e-6) for g in metrics["by_modality"].values())
    assert "SMOKE TEST" not in (out / "metrics.md").read_text()


def test_real_evaluation_without_weights_is_a_clear_error(store, fake_dir, tmp_path, capsys):
    code, err = run(["eval", "synth", "--real", str(store), "--fake", str(fake_dir), "--depth", "10",
                     "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert "BSYNTH_WEIGHTS_DIR" in err and "resnet_10_23dataset.pth" in err and "--allow-random-features" in err
    assert not (tmp_path / "x" / "metrics.json").exists()
    code, err = run(["eval", "recon", "--compressor", "dwt1", "--store", str(store), "--out", str(tmp_path / "y")],
                    capsys)
    assert code == 2 and "alexnet-owt-7be5be79.pth" in err


def test_recon_end_to_end_with_a_wavelet_reference(store, tmp_path, capsys):
    out = tmp_path / "recon"
    code, err = run(["eval", "recon", "--compressor", "dwt1", "--store", str(store), "--split", "all",
                     "--per-plane", "4", "--device", "cpu", "--allow-random-features", "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "recon" and metrics["random_features"] is True
    assert metrics["psnr"] > 100 and metrics["ssim"] == pytest.approx(1.0, abs=1e-4) and metrics["mse"] < 1e-10
    assert metrics["lpips"] == pytest.approx(0.0, abs=1e-5)
    assert set(metrics["by_modality"]) == {"T1w", "FLAIR"} and metrics["pooled"]["n"] == 16
    assert metrics["inputs"]["compressor"]["reference"] == "dwt1"
    with open(out / "per_volume.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and {"volume_id", "modality", "psnr", "ssim", "ms_ssim", "mse", "lpips"} <= set(rows[0])
    md = (out / "metrics.md").read_text()
    assert "SMOKE TEST" in md and "| Pooled | 16 |" in md
    pngs = sorted(out.glob("recon_*.png"))
    assert len(pngs) == 2 and all(Image.open(p).format == "PNG" for p in pngs)


class TinyCompressor(torch.nn.Module):
    """A lossy 'compressor' for the export test: 2x average pooling, a learned gain, upsampling."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.gain = torch.nn.Parameter(torch.tensor(0.9))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.nn.functional.avg_pool3d(x, self.factor)
        return z, torch.ones_like(z)  # (mean, sigma) like a VAE encoder: evaluation uses the mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.gain * torch.nn.functional.interpolate(z, scale_factor=self.factor, mode="nearest")


def test_recon_of_an_exported_compressor(store, tmp_path, capsys):
    from bsynth_hpc.engine.export import export_model

    from bsynth_hpc.models import register_model

    run_dir = tmp_path / "run"
    model = TinyCompressor()
    register_model("test-tiny-compressor", TinyCompressor)  # a user's own network: registered in code, by name
    export_model(run_dir, "vae", model, {"stage": "test-vae"},
                 extra={"factory": "test-tiny-compressor", "factory_kwargs": {"factor": 2}})
    out = tmp_path / "recon_run"
    code, err = run(["eval", "recon", "--run", str(run_dir), "--store", str(store), "--split", "all",
                     "--max-volumes", "4", "--no-lpips", "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_features"] is False and "lpips" not in metrics
    assert metrics["inputs"]["compressor"]["name"] == "vae" and metrics["inputs"]["compressor"]["stage"] == "test-vae"
    vs = open_volume_set(store, split=None, max_volumes=4, seed=0)
    for row, i in zip(metrics["per_volume"], range(len(vs))):
        v = vs.load(i)
        with torch.no_grad():
            rec = model.decode(model.encode(torch.from_numpy(v)[None, None])[0])[0, 0].numpy()
        assert row["volume_id"] == vs.refs[i].volume_id
        assert row["mse"] == pytest.approx(float(((v.astype(np.float64) - rec) ** 2).mean()), rel=1e-5)
    assert "LPIPS: not computed" in (out / "metrics.md").read_text()
    code, err = run(["eval", "recon", "--run", str(run_dir), "--name", "nope", "--store", str(store),
                     "--no-lpips", "--out", str(tmp_path / "r2")], capsys)
    assert code == 2 and "no export 'nope'" in err


def test_nifti_folders_shape_and_intensity_policies(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    nib.save(nib.Nifti1Image(brain(1, "T1w"), np.eye(4)), folder / "a_T1w.nii.gz")
    nib.save(nib.Nifti1Image(brain(2, "T1w", (26, 28, 18)), np.eye(4)), folder / "b_t1.nii.gz")
    with pytest.raises(InputError, match="crop-pad"):
        open_volume_set(folder, target_shape=SHAPE)
    vs = open_volume_set(folder, target_shape=SHAPE, fit="crop-pad")
    assert [r.modality for r in vs.refs] == ["T1w", "T1w"] and vs.load(1).shape == SHAPE
    np.testing.assert_array_equal(vs.load(1)[:, :, 1:19], brain(2, "T1w", (26, 28, 18))[1:25])
    nib.save(nib.Nifti1Image(300 * brain(3, "FLAIR"), np.eye(4)), folder / "c_FLAIR.nii.gz")
    vs = open_volume_set(folder, target_shape=SHAPE, fit="crop-pad", modalities=["FLAIR"])
    with pytest.raises(InputError, match="--rescale minmax"):
        vs.load(0)
    scaled = open_volume_set(folder, target_shape=SHAPE, fit="crop-pad", modalities=["FLAIR"], rescale="minmax")
    assert scaled.load(0).max() == pytest.approx(1.0)
    with open(folder / "samples.csv", "w", newline="") as fh:
        fh.write("path,modality,label\na_T1w.nii.gz,T2w,AD\n")
    vs = open_volume_set(folder)
    assert [(r.modality, r.label) for r in vs.refs] == [("T2w", "AD")]
