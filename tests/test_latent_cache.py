"""LatentCache / LatentDataset: resumable, concurrent writes and scaled reads."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bsynth_hpc.data import LatentCache, LatentDataset, VolumeDataset, finalize_store
from bsynth_hpc.data.latent_cache import CONDITIONS_DIM, CONDITIONS_LAYOUT
from bsynth_hpc.data.store import StoreLayout, VolumeStore
from bsynth_hpc.errors import ConfigError, StoreError

LATENT = (2, 3, 4, 2)


def latent(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.normal(0.5, 2.0, LATENT).astype(np.float32)


def conditions(i: int) -> dict:
    return dict(volume_id=f"vol{i}", modality_id=i % 4, metadata=np.full(25, 0.1 * i, np.float32),
                metadata_mask=(np.arange(25) % 2).astype(np.float32), label=i % 3 - 1,
                clinical=np.full(7, 0.01 * i, np.float32), clinical_mask=np.ones(7, np.float32),
                split=("train", "val", "test")[i % 3])


def fill(cache: LatentCache, indices) -> None:
    for i in indices:
        cache.write(i, latent(i), **conditions(i))


def test_round_trip_returns_scaled_latents_and_conditions(tmp_path):
    cache = LatentCache.create(tmp_path / "lat.zarr", 6, LATENT, scale_factor=0.25, source_store="/s.zarr",
                               dtype="float16", encoder_run="runs/vae")
    fill(cache, range(6))
    assert cache.info["encoder_run"] == "runs/vae" and cache.info["stored"] == "unscaled"
    ds = LatentDataset(tmp_path / "lat.zarr")
    assert len(ds) == 6 and ds.scale_factor == 0.25
    for row in range(6):
        item = ds[row]
        expected = latent(row).astype(np.float16).astype(np.float32) * np.float32(0.25)
        np.testing.assert_array_equal(item["latent"].numpy(), expected)
        c = conditions(row)
        assert (item["volume_id"], item["modality_id"], item["label"], item["split"]) == (
            c["volume_id"], c["modality_id"], c["label"], c["split"])
        np.testing.assert_array_equal(item["metadata"].numpy(), c["metadata"])
        np.testing.assert_array_equal(item["metadata_mask"].numpy(), c["metadata_mask"])
        np.testing.assert_array_equal(item["clinical"].numpy(), c["clinical"])
    assert ds.modality_ids == [i % 4 for i in range(6)]
    val = LatentDataset(tmp_path / "lat.zarr", split="val")
    assert [(val[r]["volume_id"], val[r]["index"]) for r in range(len(val))] == [("vol1", 1), ("vol4", 4)]
    assert CONDITIONS_DIM == max(stop for _, stop in CONDITIONS_LAYOUT.values()) == 67


def test_float32_cache_stores_values_exactly(tmp_path):
    cache = LatentCache.create(tmp_path / "f32.zarr", 2, LATENT, scale_factor=1.5, dtype="float32")
    fill(cache, range(2))
    np.testing.assert_array_equal(cache.read_latent(1, scaled=False), latent(1))
    np.testing.assert_array_equal(LatentDataset(tmp_path / "f32.zarr")[1]["latent"].numpy(),
                                  latent(1) * np.float32(1.5))


def test_unwritten_samples_block_reading_and_resume_skips_written(tmp_path):
    path = tmp_path / "partial.zarr"
    cache = LatentCache.create(path, 5, LATENT, scale_factor=1.0)
    fill(cache, [0, 3, 4])
    with pytest.raises(StoreError, match=r"2 of 5 samples .* unwritten \(first: \[1, 2\]\).*bsynth encode"):
        LatentDataset(path)
    assert len(LatentDataset(path, allow_partial=True)) == 3
    resumed = LatentCache.create(path, 5, LATENT, scale_factor=1.0)  # a rerun reopens, keeping written samples
    assert resumed.pending() == [1, 2] and resumed.is_written(3) and not resumed.is_written(1)
    fill(resumed, resumed.pending())
    assert resumed.pending() == [] and len(LatentDataset(path)) == 5
    with pytest.raises(StoreError, match="already holds 5 latents"):
        LatentCache.create(path, 7, LATENT, scale_factor=1.0)


def _write_share(path: str, rank: int, world: int) -> None:
    cache = LatentCache(path)
    fill(cache, range(rank, cache.n, world))


def test_concurrent_writers_of_disjoint_indices_lose_no_flag(tmp_path):
    path = tmp_path / "concurrent.zarr"
    LatentCache.create(path, 24, LATENT, scale_factor=1.0, dtype="float32")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_share, args=(str(path), r, 3)) for r in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = LatentCache(path)
    assert cache.written_mask().all()
    for i in range(24):
        np.testing.assert_array_equal(cache.read_latent(i, scaled=False), latent(i))


def test_scale_factor_can_be_set_after_encoding(tmp_path):
    path = tmp_path / "noscale.zarr"
    cache = LatentCache.create(path, 4, LATENT, scale_factor=None, dtype="float32")
    fill(cache, range(4))
    with pytest.raises(StoreError, match="no scale factor.*set_scale_factor"):
        LatentDataset(path)
    all_z = np.stack([latent(i) for i in range(4)]).astype(np.float64)
    estimate = cache.estimate_scale_factor()
    assert estimate == pytest.approx(1.0 / all_z.std(), rel=1e-9)
    cache.set_scale_factor(estimate)
    item = LatentDataset(path)[2]["latent"].numpy()
    np.testing.assert_allclose(item, latent(2) * estimate, rtol=1e-6)


def test_write_errors(tmp_path):
    cache = LatentCache.create(tmp_path / "err.zarr", 2, LATENT, scale_factor=1.0)
    with pytest.raises(StoreError, match=r"shape \(3, 3, 4, 2\)"):
        cache.write(0, np.zeros((3, 3, 4, 2)), **conditions(0))
    with pytest.raises(StoreError, match="float16 range"):
        cache.write(0, np.full(LATENT, 1e6), **conditions(0))
    with pytest.raises(StoreError, match="non-finite"):
        cache.write(0, np.full(LATENT, np.nan), **conditions(0))
    with pytest.raises(StoreError, match="'metadata' .* 24 values"):
        cache.write(0, latent(0), **{**conditions(0), "metadata": np.zeros(24)})
    with pytest.raises(IndexError, match="out of range"):
        cache.write(2, latent(0), **conditions(0))
    with pytest.raises(ConfigError, match="unknown split"):
        cache.write(0, latent(0), **{**conditions(0), "split": "holdout"})
    assert cache.pending() == [0, 1]  # nothing half-written got flagged


def test_creation_and_open_errors(tmp_path):
    with pytest.raises(ConfigError, match="dtype 'bfloat16'"):
        LatentCache.create(tmp_path / "a.zarr", 2, LATENT, 1.0, dtype="bfloat16")
    with pytest.raises(ConfigError, match="scale_factor"):
        LatentCache.create(tmp_path / "a.zarr", 2, LATENT, -1.0)
    with pytest.raises(ConfigError, match="n >= 1"):
        LatentCache.create(tmp_path / "a.zarr", 0, LATENT, 1.0)
    with pytest.raises(StoreError, match="does not exist"):
        LatentDataset(tmp_path / "missing.zarr")
    with pytest.raises(ConfigError, match="unknown split"):
        LatentDataset(tmp_path / "missing.zarr", split="training")
    store = VolumeStore.create_or_open(tmp_path / "vol.zarr", StoreLayout("volume3d", (2, 2, 2), (1.0,) * 3))
    with pytest.raises(StoreError, match="not a latent cache"):
        LatentCache(store.path)


def test_encode_loop_from_a_volume_dataset(tmp_path):
    """The `bsynth encode` pattern: batches of a VolumeDataset in, conditions carried into the cache."""
    records = [{"volume_id": f"v{i}", "subject": f"s{i}", "dataset": "d", "modality": ["T1w", "FLAIR"][i % 2],
                "label": ["AD", "CN"][i % 2], "metadata": {"age": 30 + i, "sex": "male", "stroke": "no"}}
               for i in range(6)]
    store = VolumeStore.create_or_open(tmp_path / "s.zarr", StoreLayout("volume3d", (4, 4, 4), (1.0,) * 3))
    for i, rec in enumerate(records):
        store.write_volume(rec["volume_id"], np.full((4, 4, 4), i / 8, np.float32), rec)
    finalize_store(store, fractions=(0.5, 0.5, 0.0))
    ds = VolumeDataset(store.path, split=None)
    cache = LatentCache.create(tmp_path / "lat.zarr", len(ds), (1, 2, 2, 2), scale_factor=2.0,
                               source_store=str(store.path))
    for batch in DataLoader(ds, batch_size=4):
        z = torch.nn.functional.avg_pool3d(batch["image"], 2)  # a stand-in encoder: 4^3 -> 2^3
        cache.write_batch(z, batch)
    lat = LatentDataset(tmp_path / "lat.zarr")
    for row in range(len(ds)):
        src, out = ds[row], lat[row]
        assert out["volume_id"] == src["volume_id"] and out["split"] == src["split"]
        assert (out["modality_id"], out["label"]) == (src["modality_id"], src["label"])
        torch.testing.assert_close(out["metadata"], src["metadata"])
        torch.testing.assert_close(out["clinical_mask"], src["clinical_mask"])
        expected = 2.0 * torch.nn.functional.avg_pool3d(src["image"], 2).half().float()
        torch.testing.assert_close(out["latent"], expected)
