"""Synthetic training inputs of the training benchmarks: a volume store for stage A, a labelled latent
cache for stage B. Both are tiny stand-ins for `bsynth prep` / `bsynth encode` output with the same
layout, so the real recipes train on them unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

CLASSES = ["healthy", "TLE"]
"""The labels of the latent cache (the dit3d recipe's classes)."""


def build_store(path: Path, shape: Sequence[int], n_subjects: int = 16) -> Path:
    """A finalized volume3d store of T1w volumes (smooth blobs + noise in [0, 1]), 87.5 % train."""
    from bsynth_hpc.data.finalize import finalize_store
    from bsynth_hpc.data.store import StoreLayout, VolumeStore

    store = VolumeStore.create_or_open(path, StoreLayout(kind="volume3d", shape=tuple(shape), spacing=(2.0,) * 3))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    for k in range(n_subjects):
        rng = np.random.default_rng(k)
        center = rng.uniform(-0.3, 0.3, size=3)[:, None, None, None]
        blob = np.exp(-((grid - center) ** 2).sum(0) / (2 * rng.uniform(0.3, 0.6) ** 2))
        data = np.clip(0.8 * blob + 0.1 + rng.normal(0, 0.02, size=tuple(shape)), 0, 1).astype(np.float32)
        store.write_volume(f"bench_sub-{k:02d}_T1w", data, {
            "subject": f"sub-{k:02d}", "session": None, "dataset": "bench", "modality": "T1w", "modality_id": 0,
            "source_path": f"/synthetic/{k}.nii.gz", "source_sha256": "0" * 64, "affine": np.eye(4).tolist(),
            "shape": list(shape)})
    finalize_store(store, fractions=(0.875, 0.125, 0.0), seed=0, stratify="dataset")
    return path


def build_latent_cache(path: Path, latent: Sequence[int], n: int = 8) -> Path:
    """A complete labelled latent cache (half healthy, half TLE; all in the train split) of random latents."""
    from bsynth_hpc.data.latent_cache import LatentCache
    from bsynth_hpc.data.metadata import NUM_FIELDS

    cache = LatentCache.create(path, n=n, latent_shape=latent, scale_factor=1.0, dtype="float32",
                               label_names=CLASSES, source_store="synthetic (benchmarks/synthetic.py)")
    for k in cache.pending():
        z = np.random.default_rng(k).standard_normal(tuple(latent)).astype(np.float32)
        cache.write(k, z, volume_id=f"bench_{k:02d}", modality_id=0, metadata=np.zeros(NUM_FIELDS, np.float32),
                    metadata_mask=np.zeros(NUM_FIELDS, np.float32), label=k % 2, split="train")
    return path
