"""Fault injection on the command line (issue #11, item 7's LOW list): every bad argument exits 2
with one line naming the option and the fix, before any model, store or GPU is touched, and
nothing is written."""
from __future__ import annotations

import argparse

import pytest
import torch

from bsynth_hpc.cli import main
from bsynth_hpc.errors import ConfigError
from bsynth_hpc.recipes.common.outputs import decode_latents, decode_tile_from_env


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture()
def sample_args(tmp_path):
    return ["sample", "wfdm", "--run", tmp_path / "no-run", "--out", tmp_path / "out"]


@pytest.mark.parametrize("extra, option, hint", [
    (["--tile", "1"], "--tile", ">= 2"),
    (["--tile", "-3"], "--tile", ">= 2"),
    (["--tile", "0"], "--tile", ">= 2"),
    (["--tile", "x"], "--tile", "not an integer"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--steps", "0"], "--steps", ">= 1"),
    (["--n", "0"], "--n", ">= 1"),
    (["--cfg", "-3"], "--cfg", ">= 0"),
    (["--cfg", "nan"], "--cfg", "finite"),
    (["--seed", "-1"], "--seed", ">= 0"),
    (["--device", "gpu7"], "--device", "cpu, cuda or cuda:N"),
])
def test_sample_ranges_are_checked_before_anything_runs(sample_args, tmp_path, capsys, extra, option, hint):
    line = _refused(sample_args + extra, capsys)
    assert option in line and hint in line, line
    assert not (tmp_path / "out").exists()  # nothing written (--steps 0 used to leave an empty folder)


def test_conditions_file_missing_or_a_folder(sample_args, tmp_path, capsys):
    line = _refused(sample_args + ["--conditions", tmp_path / "missing.csv"], capsys)
    assert "--conditions" in line and "missing.csv not found" in line
    line = _refused(sample_args + ["--conditions", tmp_path], capsys)
    assert "is a folder, not a file" in line


def test_out_pointing_at_a_file(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    line = _refused(["sample", "dit3d", "--run", tmp_path, "--out", f], capsys)
    assert "--out" in line and "is an existing file" in line
    assert f.read_text() == "keep me"
    line = _refused(["eval", "recon", "--compressor", "dwt1", "--store", tmp_path, "--out", f], capsys)
    assert "--out" in line and "is an existing file" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
@pytest.mark.parametrize("argv", [
    ["sample", "wfdm", "--run", "r", "--out", "o", "--device", "cuda"],
    ["encode", "--run", "r", "--store", "s", "--out", "o", "--device", "cuda:1"],
    ["eval", "recon", "--compressor", "dwt1", "--store", "s", "--out", "o", "--device", "cuda"],
    ["study", "augment", "--store", "s", "--synthetic", "x", "--out", "o", "--device", "cuda"],
])
def test_cuda_without_a_gpu_is_refused_up_front(argv, capsys):
    line = _refused(argv, capsys)
    assert "--device" in line and "no usable CUDA GPU" in line and "--device cpu" in line


@pytest.mark.parametrize("argv, option", [
    (["encode", "--run", "r", "--store", "s", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["eval", "recon", "--compressor", "dwt1", "--store", "s", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["eval", "recon", "--compressor", "dwt1", "--store", "s", "--out", "o", "--max-volumes", "0"], "--max-volumes"),
    (["eval", "synth", "--real", "s", "--fake", "f", "--out", "o", "--pairs", "0"], "--pairs"),
    (["study", "augment", "--store", "s", "--synthetic", "x", "--out", "o", "--epochs", "0"], "--epochs"),
    (["study", "augment", "--store", "s", "--synthetic", "x", "--out", "o", "--lr", "-1"], "--lr"),
])
def test_other_commands_check_their_ranges(argv, option, capsys):
    assert option in _refused(argv, capsys)


def test_decode_tile_from_the_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv("BSYNTH_DECODE_TILE", "sixteen")
    with pytest.raises(ConfigError, match="BSYNTH_DECODE_TILE='sixteen'"):
        decode_tile_from_env()
    monkeypatch.setenv("BSYNTH_DECODE_TILE", "1")
    with pytest.raises(ConfigError, match="at least 2"):
        decode_tile_from_env()
    with pytest.raises(ConfigError, match="--tile 1"):
        decode_latents(None, torch.zeros(1), None, tile=1)


def _tiny_store(path):
    import numpy as np

    from bsynth_hpc.data.finalize import finalize_store
    from bsynth_hpc.data.store import StoreLayout, VolumeStore

    st = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=(16, 16, 16), spacing=(4.0,) * 3))
    for k in range(4):
        st.write_volume(f"d_sub-{k}_T1w", np.random.default_rng(k).random((16, 16, 16), dtype=np.float32),
                        {"subject": f"sub-{k}", "session": None, "dataset": "d", "modality": "T1w",
                         "modality_id": 0, "affine": np.diag([4.0, 4.0, 4.0, 1.0]).tolist()})
    finalize_store(st, fractions=(0.5, 0.25, 0.25), seed=0)
    return path


def test_missing_lpips_weights_name_options_the_command_has(tmp_path, monkeypatch, capsys):
    """#12.6: `train` advised --lpips-weights/--allow-random-features, which train rejects."""
    from bsynth_hpc.engine.run import train_main
    from engine_support import REPO

    monkeypatch.delenv("BSYNTH_WEIGHTS_DIR", raising=False)
    store = _tiny_store(tmp_path / "s.zarr")
    code = train_main(["wfdm-vae", "--config", str(REPO / "configs" / "wfdm-vae_tiny.yaml"), "--store", str(store),
                       "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "recipe.allow_random_perceptual=false"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "recipe.perceptual.weights=PATH" in err and "recipe.perceptual.allow_random=true" in err
    assert "--allow-random-features" not in err and "--lpips-weights" not in err
    code = main(["eval", "recon", "--compressor", "dwt1", "--store", str(store), "--split", "all",
                 "--out", str(tmp_path / "recon")])
    err = capsys.readouterr().err
    assert code == 2 and "--no-lpips" in err and "--lpips-weights PATH" in err, err


def test_single_gpu_help_is_the_header_only():
    import subprocess

    from engine_support import REPO

    out = subprocess.run(["bash", str(REPO / "launchers" / "single_gpu.sh"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "launchers/single_gpu.sh STAGE" in out and "set -uo" not in out


@pytest.mark.parametrize("recipe, foreign", [("dit3d", ["--modality", "T1w"]), ("dit3d", ["--meta", "age=50"]),
                                             ("wfdm", ["--class", "TLE"])])
def test_sample_flags_belong_to_their_recipe(tmp_path, capsys, recipe, foreign):
    """Each recipe's own flags come from its Recipe.sample_options: --modality/--meta only under wfdm,
    --class only under dit3d; a flag of the other recipe is refused before anything runs."""
    line = _refused(["sample", recipe, "--run", tmp_path / "r", "--out", tmp_path / "o", *foreign], capsys)
    assert "unrecognized arguments" in line and foreign[0] in line
    assert not (tmp_path / "o").exists()


def test_sample_flags_map_onto_the_recipe_config():
    """`bsynth sample R` flags -> R's typed sample config (flag dest = field name), defaults included."""
    from bsynth_hpc.cli import build_parser
    from bsynth_hpc.engine.registry import get_recipe
    from bsynth_hpc.recipes.dit3d.sampling import DiT3dSampleConfig
    from bsynth_hpc.recipes.wfdm.sampling import WFDMSampleConfig

    args = build_parser().parse_args(["sample", "wfdm", "--run", "R", "--out", "D", "--modality", "T1w",
                                      "--meta", "age=56", "--cfg", "2", "--tile", "8", "--overwrite"])
    config = get_recipe("wfdm").load("sample_config").from_namespace(args)
    assert config == WFDMSampleConfig(run="R", out="D", n=4, modality="T1w", meta="age=56", cfg=2.0, tile=8,
                                      overwrite=True)
    args = build_parser().parse_args(["sample", "dit3d", "--run", "R", "--out", "D", "--class", "TLE",
                                      "--solver", "ddim", "--seed", "3"])
    config = get_recipe("dit3d").load("sample_config").from_namespace(args)
    assert config == DiT3dSampleConfig(run="R", out="D", class_label="TLE", solver="ddim", seed=3)
    with pytest.raises(ConfigError, match="batch_size=0"):
        DiT3dSampleConfig(run="R", out="D", batch_size=0)
    with pytest.raises(ConfigError, match="sample.solver"):
        DiT3dSampleConfig.from_namespace(argparse.Namespace(run="R", out="D", solver="heun"))


def test_train_config_accepts_a_path_or_a_packaged_name(tmp_path, monkeypatch):
    """`bsynth train --config X`: X as a path when that file exists, else the packaged config of that name."""
    from bsynth_hpc.engine.config import packaged_config, read_yaml, resolve_config_path
    from engine_support import REPO

    monkeypatch.chdir(tmp_path)
    packaged = packaged_config("wfdm-vae_tiny.yaml")
    assert packaged.is_file() and packaged.read_bytes() == (REPO / "configs" / "wfdm-vae_tiny.yaml").read_bytes()
    assert resolve_config_path("wfdm-vae_tiny.yaml") == packaged
    assert read_yaml("wfdm-vae_tiny.yaml")["stage"] == "wfdm-vae"
    (tmp_path / "wfdm-vae_tiny.yaml").write_text("stage: wfdm-ldm\n")   # a local file of that name wins
    assert read_yaml("wfdm-vae_tiny.yaml") == {"stage": "wfdm-ldm"}
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml("sub/wfdm-vae_tiny.yaml")   # a path, not a bare name: never swapped for the packaged one
    with pytest.raises(ConfigError, match="packaged configs: .*wfdm-vae_tiny.yaml"):
        packaged_config("nope.yaml")
