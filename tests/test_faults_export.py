"""Fault injection on model exports (issue #11, item 1): an edited sidecar must never run code.

Every loader path that reads ``RUN/export/*.json`` is driven through the real CLI with a hostile
sidecar naming ``os:system``: ``bsynth encode``, ``bsynth eval recon``, ``bsynth sample wfdm`` (the
denoiser's sidecar and the compressor's through ``--compressor-run`` and through the recorded
run), ``bsynth sample dit3d`` (both). The marker file the command would create must not appear,
and each command must exit 2 naming the allow-list. Also: path-escaping export names from a
sidecar, inflated ``factory_kwargs`` refused before any allocation, format-1 sidecars with a
registered import path still load.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bsynth_hpc.cli import main
from bsynth_hpc.constants import MODALITY_IDS
from bsynth_hpc.data import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.engine.errors import CheckpointError
from bsynth_hpc.engine.export import export_model, load_exported
from bsynth_hpc.models import build_model

SHAPE = (16, 16, 16)
UNET_KWARGS = {"in_channels": 2, "out_channels": 2, "base_channels": 4, "channel_mult": (1, 2), "num_res_blocks": 1,
               "attention_levels": (1,), "attention_heads": 2, "norm_groups": 2, "metadata_dim": 8,
               "metadata_field_dim": 4}
DIT_KWARGS = {"input_size": (4, 4, 4), "in_channels": 2, "patch_size": (2, 2, 2), "hidden_size": 12, "depth": 2,
              "num_heads": 2, "window_size": (2, 2, 2), "window_blocks": (1,)}


def _hostile(sidecar: Path, marker: Path, factory: str = "os:system") -> None:
    meta = json.loads(sidecar.read_text())
    meta["factory"] = factory
    meta["factory_kwargs"] = {"command": f"touch {marker}"}
    sidecar.write_text(json.dumps(meta))


@pytest.fixture()
def runs(tmp_path) -> dict[str, Path]:
    """A tiny store plus legitimate compressor, U-Net and DiT exports (random weights)."""
    store = tmp_path / "s.zarr"
    st = VolumeStore.create_or_open(store, StoreLayout(kind="volume3d", shape=SHAPE, spacing=(4.0,) * 3))
    rng = np.random.default_rng(0)
    for s in range(4):
        rec = {"subject": f"sub-{s}", "session": None, "dataset": "tiny", "modality": "T1w",
               "modality_id": MODALITY_IDS["T1w"], "label": "healthy" if s % 2 else "TLE",
               "affine": np.diag([4.0, 4.0, 4.0, 1.0]).tolist()}
        st.write_volume(f"tiny_sub-{s}_T1w", rng.random(SHAPE, dtype=np.float32), rec)
    finalize_store(st, fractions=(0.5, 0.25, 0.25), seed=0)
    vae_run, unet_run, dit_run = tmp_path / "vae", tmp_path / "unet", tmp_path / "dit"
    export_model(vae_run, "vae", build_model("smoke-vae", channels=4, latent_channels=2, groups=2),
                 {"stage": "smoke-vaegan"}, extra={"factory": "smoke-vae", "latent_scale": 1.0,
                                                   "factory_kwargs": {"channels": 4, "latent_channels": 2,
                                                                      "groups": 2}})
    export_model(unet_run, "unet", build_model("unet3d", **UNET_KWARGS), {"stage": "wfdm-ldm"},
                 extra={"factory": "unet3d", "factory_kwargs": UNET_KWARGS, "latent_scale": 1.0,
                        "compressor_run": str(vae_run), "compressor_export": "vae"})
    export_model(dit_run, "dit", build_model("dit3d", **DIT_KWARGS),
                 {"stage": "dit3d", "recipe": {"compressor_run": str(vae_run), "classes": ["healthy", "TLE"]}},
                 extra={"factory": "dit3d", "factory_kwargs": DIT_KWARGS, "latent_scale": 1.0})
    return {"store": store, "vae": vae_run, "unet": unet_run, "dit": dit_run, "tmp": tmp_path}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, marker: Path) -> None:
    assert not marker.exists(), "the hostile sidecar ran a command"
    assert code == 2, err
    assert "not a registered bsynth_hpc model" in err and "Traceback" not in err


def test_every_loader_refuses_a_hostile_compressor_sidecar(runs, capsys):
    marker = runs["tmp"] / "pwned.txt"
    _hostile(runs["vae"] / "export" / "vae.json", marker)
    t = runs["tmp"]
    commands = {
        "encode": ["encode", "--run", runs["vae"], "--store", runs["store"], "--out", t / "lat.zarr",
                   "--device", "cpu"],
        "eval recon": ["eval", "recon", "--run", runs["vae"], "--store", runs["store"], "--no-lpips",
                       "--device", "cpu", "--out", t / "recon"],
        "sample wfdm (recorded compressor)": ["sample", "wfdm", "--run", runs["unet"], "--out", t / "o1",
                                              "--device", "cpu"],
        "sample wfdm --compressor-run": ["sample", "wfdm", "--run", runs["unet"], "--compressor-run", runs["vae"],
                                         "--out", t / "o2", "--device", "cpu"],
        "sample dit3d (recorded compressor)": ["sample", "dit3d", "--run", runs["dit"], "--out", t / "o3",
                                               "--device", "cpu"],
        "sample dit3d --compressor-run": ["sample", "dit3d", "--run", runs["dit"], "--compressor-run", runs["vae"],
                                          "--out", t / "o4", "--device", "cpu"],
    }
    for what, argv in commands.items():
        code, err = _run(argv, capsys)
        _assert_refused(code, err, marker)
        assert "vae.json" in err, (what, err)


@pytest.mark.parametrize("which", ["unet", "dit"])
def test_samplers_refuse_a_hostile_denoiser_sidecar(runs, capsys, which):
    marker = runs["tmp"] / "pwned.txt"
    name = "unet" if which == "unet" else "dit"
    _hostile(runs[which] / "export" / f"{name}.json", marker, factory="builtins:exec")
    recipe = "wfdm" if which == "unet" else "dit3d"
    code, err = _run(["sample", recipe, "--run", runs[which], "--out", runs["tmp"] / "o", "--device", "cpu"], capsys)
    _assert_refused(code, err, marker)


@pytest.mark.parametrize("bad_name", ["../../../etc/passwd", "/tmp/x", "vae/../../y", ".hidden", "a\\b"])
def test_sidecar_export_names_cannot_leave_the_run(runs, capsys, bad_name):
    sidecar = runs["unet"] / "export" / "unet.json"
    meta = json.loads(sidecar.read_text())
    meta["compressor_export"] = bad_name
    sidecar.write_text(json.dumps(meta))
    code, err = _run(["sample", "wfdm", "--run", runs["unet"], "--out", runs["tmp"] / "o", "--device", "cpu"],
                     capsys)
    assert code == 2 and "is not a valid export name" in err, err
    with pytest.raises(CheckpointError, match="not a valid export name"):
        load_exported(runs["vae"], bad_name)


def test_symlinked_export_outside_the_run_is_refused(runs, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "vae.json").write_text((runs["vae"] / "export" / "vae.json").read_text())
    (runs["vae"] / "export" / "evil.json").symlink_to(outside / "vae.json")
    (runs["vae"] / "export" / "evil.safetensors").symlink_to(runs["vae"] / "export" / "vae.safetensors")
    with pytest.raises(CheckpointError, match="resolves outside"):
        load_exported(runs["vae"], "evil")


def test_inflated_kwargs_are_refused_before_allocating(runs):
    sidecar = runs["unet"] / "export" / "unet.json"
    meta = json.loads(sidecar.read_text())
    meta["factory_kwargs"]["base_channels"] = 4096  # ~ 10^10 parameters if it were built for real
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_exported(runs["unet"], "unet")


def test_format1_sidecar_with_a_registered_import_path_still_loads(runs):
    sidecar = runs["vae"] / "export" / "vae.json"
    meta = json.loads(sidecar.read_text())
    meta["format"], meta["factory"] = 1, "smoke_recipe:build_smoke_vae"
    sidecar.write_text(json.dumps(meta))
    model, loaded = load_exported(runs["vae"], "vae")
    assert loaded["factory"] == "smoke_recipe:build_smoke_vae"
    assert model(torch.rand(1, 1, *SHAPE))[0].shape == (1, 1, *SHAPE)
    meta["factory"] = "smoke_recipe:SmokeVAE"  # importable, but not the registered path
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a registered"):
        load_exported(runs["vae"], "vae")


def test_exporting_an_unregistered_factory_fails_at_export_time(tmp_path):
    with pytest.raises(CheckpointError, match="not a registered"):
        export_model(tmp_path, "m", torch.nn.Linear(2, 2), {"stage": "x"}, extra={"factory": "torch.nn:Linear"})
    with pytest.raises(CheckpointError, match="not a valid export name"):
        export_model(tmp_path, "../m", torch.nn.Linear(2, 2), {"stage": "x"}, extra={"factory": "smoke-vae"})


EXPORT_IN_A_FRESH_PROCESS = """
import json, sys, torch
from bsynth_hpc.engine.export import export_model
from bsynth_hpc.models import build_model
torch.manual_seed(0)
kwargs = json.loads(sys.argv[2])
export_model(sys.argv[1], "dit", build_model("dit3d", **kwargs), {"stage": "dit3d"},
             extra={"factory": "dit3d", "factory_kwargs": kwargs})
"""


def test_the_same_weights_export_to_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its header metadata by a per-process hash seed: with two metadata keys, half of the
    re-exports of unchanged weights got another checksum and a resumed demo's encode refused its own latents.
    Six fresh processes (a 2-key header agrees across all six with probability 1/32) must write one file."""
    import subprocess
    import sys

    from safetensors import safe_open

    digests = set()
    for i in range(6):
        run = tmp_path / f"run{i}"
        subprocess.run([sys.executable, "-c", EXPORT_IN_A_FRESH_PROCESS, str(run), json.dumps(DIT_KWARGS)],
                       check=True, timeout=120)
        digests.add(json.loads((run / "export" / "dit.json").read_text())["weights_sha256"])
        with safe_open(str(run / "export" / "dit.safetensors"), framework="pt") as fh:
            assert list(fh.metadata()) == ["bsynth_export"]
        load_exported(run, "dit")   # the checksum still verifies the file
    assert len(digests) == 1, digests
