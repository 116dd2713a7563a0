"""The data benchmark's measurement functions run on a tiny real cohort and report sane figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import data_throughput as bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bsynth_hpc.prep.demo import build_demo_cohort

    root = tmp_path_factory.mktemp("bench")
    manifest = build_demo_cohort(root / "cohort", n_subjects=2, spacing_mm=8.0, seed=3)
    shape = tuple(int(round(f / 8.0)) for f in (192, 224, 160))
    return root, manifest, shape


def test_sequential_loop_and_layout_sweep(tiny):
    root, manifest, shape = tiny
    row = bench.bench_sequential_loop(manifest, root / "seq.zarr", 8.0, shape)
    n_rows = sum(1 for _ in open(manifest)) - 1
    assert row["volumes"] == n_rows and row["volumes_per_s"] > 0
    assert row["statuses"] == ["done"]

    layouts = bench.bench_layouts(root / "seq.zarr", root, n_volumes=2, reads=1)
    assert len(layouts) == len(bench.LAYOUT_CHUNKS) * len(bench.LAYOUT_COMPRESSORS)
    for r in layouts:
        assert r["compression_ratio"] > 0 and np.isfinite(r["volume_reads_per_s"])
        assert all(c <= s for c, s in zip(r["chunk_shape"], shape))
    # an uncompressed store cannot be smaller than the raw data
    assert all(r["compression_ratio"] <= 1.0 + 1e-9 for r in layouts if r["compressor"] == "none")


def test_loading_compares_the_same_volumes(tiny):
    root, manifest, shape = tiny
    store = root / "seq.zarr"
    if not store.exists():
        bench.bench_sequential_loop(manifest, store, 8.0, shape)
    rows = bench.bench_loading(store, manifest, 8.0, shape, root, worker_counts=(0,))
    counts = {r["impl"]: r["samples"] for r in rows}
    assert len(set(counts.values())) == 1, counts  # every loader saw every volume once
    assert all(r["samples_per_s"] > 0 for r in rows)
