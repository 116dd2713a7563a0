"""The memory planner on small stores (issue #12.7): its reduced probe volumes used to be smaller than the
discriminator's receptive field (`single_gpu.sh wfdm-vae --config configs/wfdm-vae_tiny.yaml --store
<48x56x40 store> --gpu-mem-gb 8` -> traceback)."""
from __future__ import annotations

import numpy as np
import pytest

from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.engine.planner import _probe_shapes
from bsynth_hpc.engine.run import train_main
from engine_support import REPO

SHAPE = (48, 56, 40)


def test_probe_shapes_stay_at_least_32_voxels_or_the_volume():
    assert all(min(s) >= 32 for s in _probe_shapes((48, 56, 40)))
    assert _probe_shapes((48, 56, 40))[-1] == (48, 56, 40)
    assert _probe_shapes((16, 16, 16)) == [(16, 16, 16), (16, 16, 16)]
    small, large = _probe_shapes((192, 224, 160))
    assert small == (48, 56, 40) and large == (96, 112, 80)


def test_planner_on_the_tiny_wfdm_vae_at_48x56x40(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")
    store = VolumeStore.create_or_open(tmp_path / "s.zarr", StoreLayout(kind="volume3d", shape=SHAPE,
                                                                         spacing=(4.0, 4.0, 4.0)))
    rng = np.random.default_rng(0)
    for k in range(4):
        rec = {"subject": f"sub-{k}", "session": None, "dataset": "d", "modality": "T1w", "modality_id": 0,
               "affine": np.diag([4.0, 4.0, 4.0, 1.0]).tolist()}
        store.write_volume(f"d_sub-{k}_T1w", rng.random(SHAPE, dtype=np.float32), rec)
    finalize_store(store, fractions=(0.5, 0.25, 0.25), seed=0)
    code = train_main(["wfdm-vae", "--config", str(REPO / "configs" / "wfdm-vae_tiny.yaml"), "--store",
                       str(tmp_path / "s.zarr"), "--run-dir", str(tmp_path / "run"), "--gpu-mem-gb", "8",
                       "--max-steps", "1", "engine.val_every=0", "engine.ckpt_every=0"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "memory plan" in (out.out + out.err).lower()
