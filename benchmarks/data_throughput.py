"""Data benchmark (`bsynth bench data`): preprocessing and loading throughput, store layout sweep.

Three measurements, each side by side in one process on the same inputs:

1. **Preprocessing** volumes/s: a plain sequential loop (nibabel load -> numpy/scipy
   preprocessing -> store write, one volume after another: what a researcher's script does)
   against `bsynth prep`'s Dask path with 1 and 2 local workers. Wall time includes Dask
   start-up and store finalisation, i.e. what the user waits for. Goal: >= 1.8x the loop at 2
   workers (issue #2).
2. **Loading** samples/s over one epoch: the Zarr store through `VolumeDataset` against
   reading NIfTI every epoch, both (a) the raw inputs preprocessed on the fly (the usual MONAI
   `LoadImage` + transforms pipeline) and (b) already-preprocessed volumes saved as .nii.gz;
   DataLoader with 0 and 2 workers.
3. **Store layout** sweep on the same preprocessed volumes: chunk shape x compressor ->
   bytes on disk, write MB/s, whole-volume reads/s, random axial slice reads/s and random
   64^3 patch reads/s. This is the evidence behind the store defaults in
   `bsynth_hpc/data/store.py`.

Results go to `benchmarks/results/data_throughput_<device>.json`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import environment_info, write_results


# ---------------------------------------------------------------------------- preprocessing
def _prep_items(manifest: Path, spacing: float, shape: tuple[int, int, int]):
    from bsynth_hpc.prep.ingest import collect
    from bsynth_hpc.prep.pipeline import PrepSource, resolve_params

    source = PrepSource.manifest(manifest)
    params = resolve_params(source, shape, (spacing,) * 3, "minmax", (0.5, 99.5), False)
    return source, params, collect(source, mask_column=None, allow_outside_root=False).items


def bench_sequential_loop(manifest: Path, out: Path, spacing: float, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One volume after another in this process: load, preprocess, write; then finalize."""
    from bsynth_hpc.data.finalize import finalize_store
    from bsynth_hpc.data.store import StoreLayout, VolumeStore
    from bsynth_hpc.prep.worker import process_item

    t0 = time.perf_counter()
    source, params, items = _prep_items(manifest, spacing, shape)
    store = VolumeStore.create_or_open(out, StoreLayout(source.store_kind, params.shape, params.spacing),
                                       preprocessing=params.as_dict())
    statuses = [process_item(item, params, str(store.path)).status for item in items]
    finalize_store(store)
    wall = time.perf_counter() - t0
    return {"impl": "sequential loop", "workers": 1, "volumes": len(items), "wall_s": wall,
            "volumes_per_s": len(items) / wall, "statuses": sorted(set(statuses))}


def bench_dask(manifest: Path, out: Path, spacing: float, shape: tuple[int, int, int], workers: int,
               cluster: str = "local") -> dict[str, Any]:
    """`run_prep` with `workers` single-threaded worker processes: a distributed LocalCluster
    ("local", the default) or Dask's multiprocessing scheduler ("processes")."""
    from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep

    t0 = time.perf_counter()
    result = run_prep(PrepSource.manifest(manifest), out,
                      PrepConfig(shape=shape, spacing=(spacing,) * 3, workers=workers,
                      cluster=cluster, progress=False))
    wall = time.perf_counter() - t0
    return {"impl": f"dask {cluster} ({workers} worker{'s' if workers > 1 else ''})", "workers": workers,
            "cluster": cluster,
            "volumes": result.done, "failed": result.failed, "wall_s": wall, "volumes_per_s": result.done / wall}


# ---------------------------------------------------------------------------- loading
class _OnTheFlyNifti:
    """Dataset reading raw NIfTI and preprocessing it every time (the no-store baseline)."""

    def __init__(self, items: list, params: Any):
        self.items, self.params = items, params

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        from bsynth_hpc.prep.loading import load_nifti
        from bsynth_hpc.prep.preprocess import preprocess_volume

        vol = load_nifti(self.items[i].source_path)
        out = preprocess_volume(vol.data, vol.affine, self.params, source=self.items[i].source_path)
        return torch.from_numpy(np.asarray(out.data, dtype=np.float32))[None]


class _PreprocessedNifti:
    """Dataset reading already-preprocessed volumes saved as .nii.gz (format cost only)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import nibabel as nib
        import torch

        return torch.from_numpy(np.asarray(nib.load(str(self.paths[i])).get_fdata(dtype=np.float32)))[None]


def _epoch_rate(dataset: Any, workers: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers,
                        persistent_workers=False, collate_fn=lambda b: b[0])
    t0 = time.perf_counter()
    n = 0
    for item in loader:
        img = item["image"] if isinstance(item, dict) else item
        assert isinstance(img, torch.Tensor)
        n += 1
    wall = time.perf_counter() - t0
    return {"samples": n, "wall_s": wall, "samples_per_s": n / wall}


def bench_loading(store_path: Path, manifest: Path, spacing: float, shape: tuple[int, int, int], tmp: Path,
                  worker_counts: tuple[int, ...]) -> list[dict[str, Any]]:
    import nibabel as nib

    from bsynth_hpc.data import VolumeDataset
    from bsynth_hpc.data.store import VolumeStore

    store = VolumeStore(store_path)
    _source, params, items = _prep_items(manifest, spacing, shape)
    nii_dir = tmp / "preprocessed_nifti"
    nii_dir.mkdir(exist_ok=True)
    paths = []
    for vid in store.volume_ids():
        path = nii_dir / f"{vid}.nii.gz"
        nib.save(nib.Nifti1Image(store.read_volume(vid), np.asarray(store.record(vid)["affine"])), str(path))
        paths.append(path)
    rows = []
    for workers in worker_counts:
        for name, ds in (("zarr store (VolumeDataset)", VolumeDataset(store_path, split=None)),
                         ("preprocessed NIfTI each epoch", _PreprocessedNifti(paths)),
                         ("raw NIfTI + preprocessing each epoch", _OnTheFlyNifti(items, params))):
            rows.append({"impl": name, "loader_workers": workers, **_epoch_rate(ds, workers)})
    return rows


# ---------------------------------------------------------------------------- layout sweep
LAYOUT_CHUNKS: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "32^3": lambda s: (32, 32, 32),
    "64^3": lambda s: (64, 64, 64),
    "octants (default)": lambda s: tuple((n + 1) // 2 for n in s),
    "whole volume": lambda s: tuple(s),
    "axial slabs (X,Y,16)": lambda s: (s[0], s[1], 16),
}
LAYOUT_COMPRESSORS: dict[str, dict[str, Any] | None] = {
    "none": {"cname": "none"},
    "lz4 bitshuffle": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "zstd-1 bitshuffle": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"},
    "zstd-3 bitshuffle": {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
    "zstd-3 byte shuffle": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_layouts(store_path: Path, tmp: Path, n_volumes: int, reads: int, seed: int = 0,
                  zero_background: bool = False) -> list[dict[str, Any]]:
    """Sweep chunk shapes x compressors; `zero_background` zeroes everything outside a foreground
    mask first, which is what skull-stripped inputs (BrainScape, BraTS) look like."""
    from bsynth_hpc.data.store import StoreLayout, VolumeStore
    from bsynth_hpc.prep.preprocess import foreground_mask

    src = VolumeStore(store_path)
    ids = src.volume_ids()[:n_volumes]
    vols = [src.read_volume(v, dtype=src.dtype) for v in ids]
    if zero_background:
        vols = [np.where(foreground_mask(v.astype(np.float32)), v, 0).astype(v.dtype) for v in vols]
    shape = src.shape
    rng = np.random.default_rng(seed)
    rows = []
    for chunk_name, chunk_fn in LAYOUT_CHUNKS.items():
        for comp_name, comp in LAYOUT_COMPRESSORS.items():
            path = tmp / "layout.zarr"
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(tmp / "layout.zarr.staging", ignore_errors=True)
            layout = StoreLayout("volume3d", shape, (1.0, 1.0, 1.0), dtype=src.dtype,
                                 chunks=tuple(min(c, s) for c, s in zip(chunk_fn(shape), shape)), compressor=comp)
            store = VolumeStore.create_or_open(path, layout)
            t0 = time.perf_counter()
            for i, v in enumerate(vols):
                store.write_volume(f"v{i}", v, {"i": i})
            write_s = time.perf_counter() - t0
            disk = _dir_bytes(path / "volumes")
            raw = sum(v.nbytes for v in vols)
            arrays = [store.open_volume(f"v{i}") for i in range(len(vols))]
            t0 = time.perf_counter()
            for k in range(reads):
                np.asarray(arrays[k % len(arrays)][...])
            whole_s = (time.perf_counter() - t0) / reads
            t0 = time.perf_counter()
            for k in range(reads * 8):
                z = int(rng.integers(0, shape[2]))
                np.asarray(arrays[k % len(arrays)][:, :, z])
            slice_s = (time.perf_counter() - t0) / (reads * 8)
            p = [min(64, s) for s in shape]
            t0 = time.perf_counter()
            for k in range(reads * 4):
                o = [int(rng.integers(0, s - q + 1)) for s, q in zip(shape, p)]
                np.asarray(arrays[k % len(arrays)][o[0]:o[0] + p[0], o[1]:o[1] + p[1], o[2]:o[2] + p[2]])
            patch_s = (time.perf_counter() - t0) / (reads * 4)
            rows.append({"data": "zero background" if zero_background else "as preprocessed", "chunks": chunk_name, "chunk_shape": list(layout.resolved_chunks()), "compressor": comp_name,
                         "compression_ratio": raw / disk, "bytes_on_disk": disk,
                         "write_mb_per_s": raw / write_s / 1e6, "volume_reads_per_s": 1 / whole_s,
                         "axial_slice_reads_per_s": 1 / slice_s, "patch64_reads_per_s": 1 / patch_s})
    return rows


# ---------------------------------------------------------------------------- main
def _fmt_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    lines += [" | ".join(cell(r.get(c, "")) for c in cols) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bsynth bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12, help="demo-cohort subjects (inputs)")
    parser.add_argument("--spacing", type=float, default=1.5, help="grid spacing in mm for cohort and store")
    parser.add_argument("--manifest", default=None, help="benchmark your own manifest instead of the demo cohort")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts")
    parser.add_argument("--layout-volumes", type=int, default=4)
    parser.add_argument("--layout-reads", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (4 subjects, 4 mm)")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--keep", default=None, help="keep the work folder here instead of a temp dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.spacing, args.layout_volumes, args.layout_reads = 4, 4.0, 2, 2

    shape = tuple(int(round(fov / args.spacing)) for fov in (192, 224, 160))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bsynth-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.manifest:
            manifest = Path(args.manifest)
        else:
            from bsynth_hpc.prep.demo import build_demo_cohort

            t0 = time.perf_counter()
            manifest = build_demo_cohort(work / "cohort", n_subjects=args.subjects, spacing_mm=args.spacing, seed=0)
            print(f"[bench data] cohort of {args.subjects} subjects at {args.spacing:g} mm "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

        prep_rows = [bench_sequential_loop(manifest, work / "seq.zarr", args.spacing, shape)]
        print(f"[bench data] {prep_rows[-1]['impl']}: {prep_rows[-1]['volumes_per_s']:.2f} volumes/s", flush=True)
        for w in args.workers:
            prep_rows.append(bench_dask(manifest, work / f"dask{w}.zarr", args.spacing, shape, w))
            print(f"[bench data] {prep_rows[-1]['impl']}: {prep_rows[-1]['volumes_per_s']:.2f} volumes/s", flush=True)
        w = max(args.workers)
        prep_rows.append(bench_dask(manifest, work / "mp.zarr", args.spacing, shape, w, cluster="processes"))
        print(f"[bench data] {prep_rows[-1]['impl']}: {prep_rows[-1]['volumes_per_s']:.2f} volumes/s", flush=True)
        base = prep_rows[0]["volumes_per_s"]
        for r in prep_rows:
            r["speedup_vs_sequential"] = r["volumes_per_s"] / base

        load_rows = bench_loading(work / f"dask{args.workers[-1]}.zarr", manifest, args.spacing, shape, work, (0, 2))
        zarr_rate = {r["loader_workers"]: r["samples_per_s"] for r in load_rows if r["impl"].startswith("zarr")}
        for r in load_rows:
            r["zarr_speedup"] = zarr_rate[r["loader_workers"]] / r["samples_per_s"]
        print("[bench data] loading done", flush=True)

        layout_rows = [row for zb in (False, True)
                       for row in bench_layouts(work / "seq.zarr", work, args.layout_volumes, args.layout_reads,
                                                zero_background=zb)]
        two = [r for r in prep_rows if r["workers"] == 2 and r.get("cluster") == "local"]
        payload = {
            "benchmark": "data_throughput",
            "environment": environment_info("cpu"),
            "settings": {"subjects": args.subjects, "spacing_mm": args.spacing, "shape": list(shape),
                         "manifest": str(manifest), "quick": args.quick},
            "preprocessing": prep_rows,
            "goal": {"target_speedup_2_workers": 1.8,
                     "measured_speedup_2_workers": two[0]["speedup_vs_sequential"] if two else None},
            "loading": load_rows,
            "layouts": layout_rows,
        }
        path = write_results("data_throughput", payload, args.out_dir)
        print(_fmt_table(prep_rows, ["impl", "volumes", "wall_s", "volumes_per_s", "speedup_vs_sequential"]))
        print()
        print(_fmt_table(load_rows, ["impl", "loader_workers", "samples_per_s", "zarr_speedup"]))
        print()
        print(_fmt_table(layout_rows, ["data", "chunks", "compressor", "compression_ratio", "write_mb_per_s",
                                       "volume_reads_per_s", "axial_slice_reads_per_s", "patch64_reads_per_s"]))
        print(f"\n[bench data] wrote {path}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
