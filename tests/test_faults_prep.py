"""Fault injection on `bsynth prep` (issue #11): an --out that would overwrite the inputs, memory
bombs (header lies, gzip bombs), a full disk, zero voxel sizes, the local Dask cluster's exposure,
and malformed manifests. Every case ends in a one-line error or a failed-volume entry naming the
file and the fix; nothing prep did not create is ever deleted."""
from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bsynth_hpc.prep.report as report_module
from bsynth_hpc.cli import main as bsynth
from bsynth_hpc.data.finalize import load_index
from bsynth_hpc.data.store import INCOMPLETE_NAME, REPORT_NAME, TABLE_NAME, VolumeStore
from bsynth_hpc.data.summary import format_store_summary
from bsynth_hpc.errors import InputError, ManifestError, StoreError
from bsynth_hpc.prep import cluster as cluster_module
from bsynth_hpc.prep.loading import load_nifti
from bsynth_hpc.prep.pipeline import PrepConfig, PrepSource, run_prep

REPO = Path(__file__).resolve().parents[1]
GRID = {"shape": (12, 14, 10), "spacing": (2.0, 2.0, 2.0)}
FIELDS = ["subject", "session", "dataset", "modality", "path", "age"]


# ---------------------------------------------------------------------------- helpers
def head(seed: int, shape=(14, 16, 10)) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    data[inner] = 50.0 + 50.0 * np.random.default_rng(seed).random(tuple(s - 4 for s in shape))
    return data


def cohort(folder: Path, n: int = 4, extra_rows: list[dict] | None = None, fields: list[str] = FIELDS) -> Path:
    """``n`` good tiny volumes and their manifest (plus ``extra_rows``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        nib.save(nib.Nifti1Image(head(i), np.diag([1.5, 1.5, 1.5, 1.0])), folder / f"s{i}.nii.gz")
        rows.append({"subject": f"s{i}", "session": "", "dataset": "d", "modality": "T1w",
                     "path": f"s{i}.nii.gz", "age": str(60 + i)})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows + (extra_rows or []))
    return folder / "manifest.csv"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def prep(manifest: Path, out: Path, **kwargs):
    return run_prep(PrepSource.manifest(manifest), out,
                    PrepConfig(cluster="sync", progress=False, **{**GRID, **kwargs}))


def raw_nifti(path: Path, shape, *, klass=nib.Nifti1Image, data: bytes = b"", extension: int = 0,
              trailing_zeros_mib: int = 0) -> Path:
    """A .nii.gz written byte by byte: a header declaring ``shape`` (float32), an optional zero-filled
    extension of ``extension`` bytes, ``data`` and optionally MiBs of trailing zeros (a gzip bomb:
    each compresses ~1000:1)."""
    hdr = klass.header_class()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), code=1)
    first = hdr.template_dtype.itemsize + 4
    hdr.set_data_offset(first + extension)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(hdr.binaryblock)
        if extension:
            fh.write(np.array([1, 0, 0, 0], np.uint8).tobytes())
            fh.write(np.array([extension, 0], np.int32).tobytes())
            zeros = bytes(1 << 20)
            left = extension - 8
            while left > 0:
                fh.write(zeros[:min(left, len(zeros))])
                left -= len(zeros)
        else:
            fh.write(bytes(4))
        fh.write(data)
        for _ in range(trailing_zeros_mib):
            fh.write(bytes(1 << 20))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = bsynth(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- 1. --out never deletes
def test_out_equal_to_the_cohort_folder_is_refused_and_nothing_is_deleted(tmp_path, capsys, monkeypatch):
    manifest = cohort(tmp_path / "cohort")
    before = snapshot(tmp_path / "cohort")
    with pytest.raises(StoreError, match="is the input folder"):
        prep(manifest, tmp_path / "cohort")
    monkeypatch.chdir(tmp_path / "cohort")  # `bsynth prep --manifest manifest.csv --out .`
    code, _, err = run_cli(capsys, "prep", "--manifest", "manifest.csv", "--out", ".", "--cluster", "sync",
                           "--quiet")
    assert code == 2 and "input folder" in err and "fix:" in err and err.count("\n") == 1
    assert snapshot(tmp_path / "cohort") == before


def test_non_empty_folder_that_is_not_a_store_is_refused(tmp_path):
    manifest = cohort(tmp_path / "cohort")
    other = tmp_path / "results"
    (other / "sub").mkdir(parents=True)
    (other / "notes.txt").write_text("keep me")
    (other / "sub" / "a.bin").write_bytes(b"\x00\x01")
    before = snapshot(other)
    with pytest.raises(StoreError, match="not a bsynth store and is not empty.*never deletes"):
        prep(manifest, other)
    assert snapshot(other) == before and not (other / "zarr.json").exists()


def test_out_containing_the_inputs_or_inside_a_scanned_folder_is_refused(tmp_path):
    manifest = cohort(tmp_path / "study" / "cohort")
    with pytest.raises(StoreError, match="contains the input folder"):
        prep(manifest, tmp_path / "study")
    brats = tmp_path / "BraTS"
    (brats / "case1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(head(0), np.eye(4)), brats / "case1" / "case1_t1.nii.gz")
    with pytest.raises(StoreError, match="inside the brats folder"):
        run_prep(PrepSource.brats(brats), brats / "store.zarr", PrepConfig(cluster="sync", progress=False, **GRID))
    assert not (brats / "store.zarr").exists()


def test_out_that_is_a_file_exits_2_with_one_line(tmp_path, capsys):
    manifest = cohort(tmp_path / "cohort", n=1)
    target = tmp_path / "store.zarr"
    target.write_text("a file")
    code, _, err = run_cli(capsys, "prep", "--manifest", str(manifest), "--out", str(target), "--cluster", "sync")
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1
    assert target.read_text() == "a file"


def test_empty_folder_new_store_and_resume_still_work_and_foreign_staging_is_kept(tmp_path):
    manifest = cohort(tmp_path / "cohort", n=2)
    out = tmp_path / "empty"
    out.mkdir()
    legacy = tmp_path / "empty.staging"  # a user folder where the store once staged its arrays
    legacy.mkdir()
    (legacy / "mine.txt").write_text("not prep's")
    first = prep(manifest, out)
    assert (first.done, first.exit_code, first.complete) == (2, 0, True)
    again = prep(manifest, out)
    assert (again.done, again.skipped, again.exit_code) == (0, 2, 0)
    assert (legacy / "mine.txt").read_text() == "not prep's"
    assert not VolumeStore(out).staging_dir.exists()


# ---------------------------------------------------------------------------- 2. memory bombs
PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from bsynth_hpc.errors import InputError
    from bsynth_hpc.prep.loading import load_nifti

    load_nifti(sys.argv[1])  # warm-up: imports, nibabel and zlib buffers are in the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_nifti(sys.argv[2])
        message = None
    except InputError as exc:
        message = str(exc)
    except MemoryError as exc:
        message = f"MemoryError {exc}"
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"growth_mib": growth, "message": message}))
""")
LIMIT_MB = 16
BOMBS = {
    # header claims 256^3 float32 = 64 MiB and the gzip really expands to it (zeros, ~70 KiB on disk):
    # the old loader read all of it (and its float32 copy) before any check
    "header_lie": (dict(shape=(256, 256, 256), data=b"", trailing_zeros_mib=64),
                   "above the per-volume limit of 16 MiB"),
    # NIfTI-2 header claiming 10^5 x 10^5 x 100 float32 (3.6 PiB)
    "nifti2_huge": (dict(shape=(100_000, 100_000, 100), klass=nib.Nifti2Image, data=bytes(16)),
                    "above the per-volume limit"),
    # a modest 32^3 volume followed by 128 MiB of zeros (~130 KiB on disk): the old loader accepted it
    "gzip_bomb": (dict(shape=(32, 32, 32), trailing_zeros_mib=128), "holds more data than its header declares"),
    # a 128 MiB zero-filled header extension (~130 KiB on disk) that nibabel would read into memory
    "extension_bomb": (dict(shape=(16, 16, 16), extension=128 << 20), "vox_offset"),
}


def _bomb(tmp_path: Path, name: str) -> Path:
    kwargs, _ = BOMBS[name]
    kwargs = dict(kwargs)
    if "data" not in kwargs:
        n = int(np.prod(kwargs["shape"]))
        kwargs["data"] = np.random.default_rng(0).random(n, dtype=np.float32).tobytes()
    return raw_nifti(tmp_path / f"{name}.nii.gz", **kwargs)


@pytest.mark.parametrize("name", list(BOMBS))
def test_memory_bomb_is_rejected_within_the_limit(tmp_path, name):
    bomb = _bomb(tmp_path, name)
    assert bomb.stat().st_size < 2 << 20  # small on disk
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(head(1, (32, 32, 32)), np.eye(4)), good)
    env = {**os.environ, "BSYNTH_MAX_VOLUME_MB": str(LIMIT_MB),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(good), str(bomb)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["message"] and BOMBS[name][1] in got["message"] and str(bomb) in got["message"], got
    assert "fix:" in got["message"]
    assert got["growth_mib"] < LIMIT_MB + 8, got  # a bomb costs at most the limit


def test_bombs_are_failed_volumes_and_the_run_completes(tmp_path):
    (tmp_path / "cohort").mkdir()
    bombs = [_bomb(tmp_path / "cohort", name) for name in BOMBS]
    rows = [{"subject": p.stem.split(".")[0], "session": "", "dataset": "d", "modality": "T1w", "path": p.name}
            for p in bombs]
    manifest = cohort(tmp_path / "cohort", n=2, extra_rows=rows)
    result = prep(manifest, tmp_path / "store.zarr", max_volume_mb=LIMIT_MB)
    assert (result.done, result.failed, result.exit_code, result.complete) == (2, 4, 1, True)
    for failure in result.failures:
        assert failure.stage == "load" and failure.error_type == "InputError" and failure.traceback is None
        assert failure.source_path and Path(failure.source_path).name in failure.message
    huge = next(f for f in result.failures if f.subject == "header_lie")
    assert "--max-volume-mb" in huge.fix and "16 MiB" in huge.message
    report = json.loads((result.store_path / REPORT_NAME).read_text())
    assert report["parameters"]["max_volume_mb"] == LIMIT_MB and len(report["failures"]) == 4
    _, entries = load_index(result.store_path)
    assert len(entries) == 2


def test_default_limit_rejects_a_1000_cubed_header(tmp_path, monkeypatch):
    monkeypatch.delenv("BSYNTH_MAX_VOLUME_MB", raising=False)
    lie = raw_nifti(tmp_path / "lie.nii.gz", (1000, 1000, 1000), data=bytes(4))
    with pytest.raises(InputError, match=r"3,815 MiB in memory, above the per-volume limit of 512 MiB"):
        load_nifti(lie)


# ---------------------------------------------------------------------------- 3. disk full
def _enospc_after(n_ok: int, monkeypatch) -> None:
    """Let ``n_ok`` volumes be written, then fail like a full disk (after leaving a partial array)."""
    real = VolumeStore._write_staged
    calls = {"n": 0}

    def write(self, tmp, data, record, volume_id):
        calls["n"] += 1
        if calls["n"] > n_ok:
            tmp.mkdir(parents=True)
            (tmp / "c0").write_bytes(b"partial chunk")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "c1"))
        real(self, tmp, data, record, volume_id)

    monkeypatch.setattr(VolumeStore, "_write_staged", write)


def _assert_incomplete(store_path: Path, published: int, expected: int, capsys) -> None:
    assert (store_path / INCOMPLETE_NAME).exists()
    assert not (store_path / TABLE_NAME).exists() and not VolumeStore(store_path).info.get("splits")
    assert not list(store_path.rglob("*.tmp")) and not (store_path / ".staging").exists()
    with pytest.raises(StoreError, match=rf"incomplete.*{published} of {expected} volumes.*rerun the same"):
        load_index(store_path)
    code, out, _ = run_cli(capsys, "info", str(store_path))
    assert code == 0 and f"INCOMPLETE: " in out and f"{published} of {expected} volumes published" in out
    assert "failed      none" not in out and "rerun the same `bsynth prep` command" in out


def test_disk_full_leaves_an_incomplete_store_that_a_rerun_completes(tmp_path, monkeypatch, capsys):
    manifest = cohort(tmp_path / "cohort", n=6)
    out = tmp_path / "store.zarr"
    _enospc_after(2, monkeypatch)
    result = prep(manifest, out)
    assert (result.complete, result.exit_code, result.published, result.not_attempted) == (False, 1, 2, 3)
    [full] = result.failures
    assert (full.stage, full.error_type, full.errno) == ("write", "StoreWriteError", errno.ENOSPC)
    assert "no space left on device" in full.message and "free disk space" in full.fix and full.traceback is None
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["state"] == "incomplete" and report["volumes"] == {"published": 2, "expected": 6,
                                                                     "not_attempted": 3}
    _assert_incomplete(out, 2, 6, capsys)
    assert "1 input(s)" in format_store_summary(out)  # this run's report: the write failure is listed

    monkeypatch.undo()
    again = prep(manifest, out)
    assert (again.complete, again.exit_code, again.done, again.skipped) == (True, 0, 4, 2)
    assert not (out / INCOMPLETE_NAME).exists() and len(load_index(out)[1]) == 6
    assert "state       complete" in format_store_summary(out)


def test_report_that_cannot_be_written_is_said_on_stderr_and_keeps_the_store_incomplete(tmp_path, monkeypatch,
                                                                                          capsys):
    manifest = cohort(tmp_path / "cohort", n=3)
    out = tmp_path / "store.zarr"

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "os", types.SimpleNamespace(**{**vars(os), "fsync": fsync}))
    result = prep(manifest, out)
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "no space left on device" in err and "incomplete" in err
    assert not result.complete and result.exit_code == 1 and not (out / REPORT_NAME).exists()
    assert not list(out.glob(".prep_report*"))  # its temp file is gone
    code, text, _ = run_cli(capsys, "info", str(out))
    assert "INCOMPLETE" in text and "failed      unknown" in text
    monkeypatch.undo()
    assert prep(manifest, out).complete and not (out / INCOMPLETE_NAME).exists()


def test_table_csv_that_cannot_be_written_keeps_the_store_incomplete(tmp_path, monkeypatch, capsys):
    import pandas as pd

    manifest = cohort(tmp_path / "cohort", n=3)
    out = tmp_path / "store.zarr"
    real = pd.DataFrame.to_csv

    def to_csv(self, path, *args, **kwargs):
        real(self.head(1), path, *args, **kwargs)  # a partial temp file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    result = prep(manifest, out)
    assert not result.complete and result.exit_code == 1 and result.published == 3
    assert result.problems and "table.csv" in result.problems[0] and "no space left" in result.problems[0]
    assert json.loads((out / REPORT_NAME).read_text())["state"] == "incomplete"
    _assert_incomplete(out, 3, 3, capsys)
    monkeypatch.undo()
    assert prep(manifest, out).complete


def test_killed_run_is_reported_incomplete_not_failed_none(tmp_path, capsys):
    manifest = cohort(tmp_path / "cohort", n=3)
    out = tmp_path / "store.zarr"
    assert prep(manifest, out).complete
    store = VolumeStore(out)  # what a run killed after its start leaves: the marker, an older report
    store.mark_incomplete(run_started=1.0, inputs=3, expected=3, reason="running")
    text = format_store_summary(out)
    assert "INCOMPLETE: the last prep run did not finish" in text and "3 of 3 volumes" in text
    assert "failed      unknown" in text and "failed      none" not in text


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_real_full_tmpfs(tmp_path):
    """On a real 160 KiB tmpfs (root only): the run stops incomplete, a rerun with space completes."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "160k"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        manifest = cohort(tmp_path / "cohort", n=12)
        result = prep(manifest, disk / "store.zarr")
        assert not result.complete and 0 < result.published < 12
        assert (disk / "store.zarr" / INCOMPLETE_NAME).exists()
        assert not (disk / "store.zarr" / ".staging").exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = prep(manifest, disk / "store.zarr")
        assert again.complete and again.published == 12 and again.exit_code == 0
        assert not (disk / "store.zarr" / INCOMPLETE_NAME).exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---------------------------------------------------------------------------- 4. voxel size
def _no_geometry(path: Path, zooms) -> Path:
    img = nib.Nifti1Image(head(3), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = zooms
    nib.save(img, path)
    return path


@pytest.mark.parametrize("zooms, shown", [((0, 1, 1), "pixdim[1] = 0"), ((1, np.nan, 1), "pixdim[2] = nan"),
                                          ((1, 1, -2), "pixdim[3] = -2")])
def test_zero_negative_or_nan_voxel_size_is_rejected(tmp_path, zooms, shown):
    with pytest.raises(InputError, match=rf"{shown.replace('[', '.').replace(']', '.')}.* not a positive number"):
        load_nifti(_no_geometry(tmp_path / "z.nii.gz", zooms))


def test_pixdim_is_not_policed_when_an_sform_gives_the_geometry(tmp_path):
    img = nib.Nifti1Image(head(3), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["pixdim"][1:4] = 0
    nib.save(img, tmp_path / "s.nii.gz")
    assert load_nifti(tmp_path / "s.nii.gz").spacing == (2.0, 2.0, 2.0)


# ---------------------------------------------------------------------------- 5. the local cluster
def test_local_cluster_is_tls_on_loopback_only():
    import psutil
    from distributed import Client

    def listening_sockets(procs):
        return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
                if c.status == "LISTEN"}

    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}  # e.g. the test SLURM daemons of this worker
    before = listening_sockets([me])
    cluster = cluster_module.build_local_cluster(1)
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        procs = [me] + [p for p in me.children(recursive=True) if p.pid not in before_children]
        listening = {ip for ip, port in listening_sockets(procs) - before}
        assert listening == {"127.0.0.1"}, listening
        with pytest.raises(Exception):  # no certificate: no connection
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=2)
    finally:
        cluster.close()


def test_without_cryptography_local_falls_back_to_processes(monkeypatch, capsys):
    monkeypatch.setattr(cluster_module, "tls_available", lambda: False)
    got = sorted(r for _, r in cluster_module.map_unordered(abs, [-1, -2], (), kind="local", workers=1))
    assert got == [1, 2] and "'processes' scheduler" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 6. manifests
def test_latin1_manifest_is_one_line_naming_the_byte(tmp_path, capsys):
    cohort(tmp_path / "c", n=1)
    man = tmp_path / "c" / "manifest.csv"
    man.write_bytes(man.read_bytes().replace(b"s0,,d", "Jos\u00e9,,d".encode("latin-1")))
    with pytest.raises(ManifestError, match=r"not UTF-8 text \(byte 0xe9 at byte position \d+, line 2.*save it as "
                                            r"UTF-8"):
        run_prep(PrepSource.manifest(man), tmp_path / "s.zarr", PrepConfig(cluster="sync", progress=False))
    code, _, err = run_cli(capsys, "prep", "--manifest", str(man), "--out", str(tmp_path / "s.zarr"))
    assert code == 2 and err.count("\n") == 1 and str(man) in err


def test_semicolon_manifest_says_so(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("subject;session;dataset;modality;path\ns;;d;T1w;a.nii.gz\n")
    with pytest.raises(ManifestError, match="looks semicolon-delimited; use commas"):
        run_prep(PrepSource.manifest(man), tmp_path / "s.zarr", PrepConfig(cluster="sync", progress=False))


def test_folder_listed_as_a_file_and_misspelt_column(tmp_path, capsys):
    (tmp_path / "c" / "scans").mkdir(parents=True)
    rows = [{"subject": "x", "session": "", "dataset": "d", "modality": "T1w", "path": "scans", "agee": "1"}]
    manifest = cohort(tmp_path / "c", n=1, extra_rows=rows, fields=[*FIELDS, "agee"])
    result = prep(manifest, tmp_path / "s.zarr")
    err = capsys.readouterr().err
    assert "warning: manifest column 'agee' is not a known field" in err and "did you mean 'age'" in err
    [folder] = result.failures
    assert "is a folder, not a file" in folder.message and "not found" not in folder.message
    assert "list the file inside it" in folder.fix
