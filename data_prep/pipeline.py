"""`bsynth prep`: inputs -> preprocessed Zarr store, Dask-parallel, resumable, with a failure report.

One run:

1. check the options (:class:`~bsynth_hpc.prep.config.PrepConfig`), resolve parameters
   (:class:`~bsynth_hpc.prep.preprocess.PreprocessParams`) and read the source
   (:mod:`bsynth_hpc.prep.ingest`: cheap row checks, bad rows become failures);
2. check ``out`` (:func:`check_out_path`): prep never deletes or mixes with files it did not
   create, so a file, a non-empty folder that is not a store, the input folder itself, a folder
   that contains the inputs, or (for BIDS/BraTS/slice folders, which are scanned) a folder inside the
   input folder is refused. A new folder next to a manifest, inside its folder, is fine: the
   manifest lists its files, so the store is never read as input;
3. create the store (exclusively: only in a new or empty folder), or reopen it after checking it
   was made with the same parameters, and take its lock (``<store>/prep.lock``: two runs writing
   one store would delete each other's staging files);
4. mark the store incomplete (``prep_incomplete.json``), remove staging leftovers of an
   interrupted run and skip volume ids already published — this is what makes a rerun resume;
5. run one task per remaining input on the chosen cluster (:mod:`bsynth_hpc.prep.cluster`); each
   task loads, validates (within the per-volume memory limit), preprocesses and publishes its
   volume atomically (:mod:`bsynth_hpc.prep.worker`), so a crash at any point leaves only complete
   volumes visible. A full disk stops the run early (every later write would fail too);
6. if no write failed and no worker was lost, finalize the store (splits, metadata statistics,
   ``table.csv``); write ``<store>/prep_report.json`` (or say plainly on stderr why it could not
   be written); only when all of that succeeded remove the incomplete marker. Print the summary.

Errors that stop a run before any work (unreadable manifest, missing columns, an --out that is
unsafe, store made with other parameters, store locked, bad options) raise
ManifestError/StoreError/ConfigError — the CLI exits with 2 for those. Otherwise :class:`PrepResult.exit_code` says 0/1/2.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bsynth_hpc.constants import DEFAULT_SHAPE, DEFAULT_SPACING
from bsynth_hpc.data.finalize import finalize_store
from bsynth_hpc.data.store import (REPORT_NAME, StoreLayout, StoreWriteError, VolumeStore, store_error,
                                   write_failure)
from bsynth_hpc.errors import ConfigError, StoreError

from .cluster import map_unordered
from .config import PrepConfig
from .ingest import Ingested, PrepSource, WorkItem, collect
from .loading import max_volume_bytes
from .preprocess import PreprocessParams
from .report import Failure, PrepResult, failure_from_exception, format_summary, needs_rerun, write_report
from .worker import DONE, SKIPPED, process_item

__all__ = ["PrepConfig", "PrepSource", "PrepResult", "run_prep", "resolve_params", "DEFAULT_SLICE_SHAPE", "LOCK_NAME"]

DEFAULT_SLICE_SHAPE: tuple[int, int] = (256, 256)
SLICE_SPACING: tuple[float, float] = (1.0, 1.0)
"""Slice images carry no physical pixel size; the store records a nominal 1 x 1."""
LOCK_NAME = "prep.lock"
_PARAM_KEYS_THAT_MUST_MATCH = ("shape", "spacing", "normalize", "clip_percentiles", "mask", "mask_column",
                               "foreground_fraction", "antialias", "slice_fit", "version")


def resolve_params(source: PrepSource, shape: Sequence[int] | None, spacing: Sequence[float] | None,
                   normalize: str, clip_percentiles: Sequence[float], mask: bool | str) -> PreprocessParams:
    """PreprocessParams for a source, with per-kind defaults.

    ``mask``: False -> none; True or "foreground" -> foreground threshold; any other string ->
    the manifest column holding brain-mask paths. For slice sources ``spacing`` is ignored
    (pixels have no physical size here) and ``shape`` must be (H, W).
    """
    if mask is False or mask is None or mask == "none":
        mask_mode, mask_column = "none", None
    elif mask is True or mask == "foreground":
        mask_mode, mask_column = "foreground", None
    elif isinstance(mask, str) and mask.strip():
        mask_mode, mask_column = "file", mask.strip()
    else:
        raise ConfigError(f"mask={mask!r}: use False, True/'foreground', or the name of a manifest mask column")
    if source.store_kind == "slice2d":
        shape_t = tuple(int(s) for s in (shape or DEFAULT_SLICE_SHAPE))
        if len(shape_t) != 2:
            raise ConfigError(f"slice folders need a 2D shape (H W), got {shape_t}: pass --shape H W")
        spacing_t: tuple[float, ...] = SLICE_SPACING
    else:
        shape_t = tuple(int(s) for s in (shape or DEFAULT_SHAPE))
        if len(shape_t) != 3:
            raise ConfigError(f"volumes need a 3D shape (X Y Z), got {shape_t}: pass --shape X Y Z")
        spacing_t = tuple(float(s) for s in (spacing or DEFAULT_SPACING))
        if len(spacing_t) == 1:
            spacing_t = spacing_t * 3
    if len(clip_percentiles) != 2:
        raise ConfigError(f"clip_percentiles {tuple(clip_percentiles)}: give two numbers (low, high)")
    return PreprocessParams(shape=shape_t, spacing=spacing_t, normalize=normalize,
                            clip_percentiles=(float(clip_percentiles[0]), float(clip_percentiles[1])),
                            mask=mask_mode, mask_column=mask_column, slice_fit=source.fit)


def _check_store_params(store: VolumeStore, params: PreprocessParams) -> None:
    """StoreError when an existing store was prepared with other parameters (mixing would corrupt it)."""
    have = store.info.get("preprocessing") or {}
    want = json.loads(json.dumps(params.as_dict()))
    diff = [k for k in _PARAM_KEYS_THAT_MUST_MATCH if have.get(k) != want.get(k)]
    if diff:
        detail = ", ".join(f"{k}: store {have.get(k)!r} vs run {want.get(k)!r}" for k in diff)
        raise StoreError(f"{store.path} was prepared with other parameters ({detail}): rerun with the store's "
                         "parameters to add volumes, or write to a new --out store")


def source_root(source: PrepSource) -> Path:
    """The input folder: the manifest's folder, or the BIDS / BraTS / slice root."""
    path = source.path.resolve()
    return path.parent if source.kind == "manifest" else path


def check_out_is_folder(out: Path) -> None:
    """StoreError (exit 2) when ``out`` names an existing file: a store is a folder."""
    if out.exists() and not out.is_dir():
        raise store_error(f"--out {out} is a file, not a folder (a store is a folder)",
                          "pass a folder path that does not exist yet, e.g. data/store.zarr")


def check_out_path(out: Path, source: PrepSource, items: Sequence[WorkItem]) -> None:
    """StoreError when writing the store at ``out`` could overwrite, delete or mix with the inputs.

    Refused: ``out`` equal to the input folder or containing it, ``out`` containing any input
    file (allow_outside_root inputs included), and for BIDS/BraTS/slice folders ``out`` inside the
    input folder (the next run would scan the store as a case/class folder).
    """
    check_out_is_folder(out)
    target, root = out.resolve(), source_root(source)
    away = f"pass an --out outside {root}, e.g. {root.parent / (root.name + '.zarr')}"
    if target == root or root.is_relative_to(target):
        what = "is" if target == root else "contains"
        raise store_error(f"--out {out} {what} the input folder {root}; prep never writes over its inputs", away)
    if source.kind != "manifest" and target.is_relative_to(root):
        raise store_error(f"--out {out} lies inside the {source.kind} folder {root}, which prep scans for inputs",
                          away)
    inside = [p for it in items for p in (it.source_path, it.mask_path) if p and Path(p).is_relative_to(target)]
    if inside:
        raise store_error(f"--out {out} contains {len(inside)} input file(s), e.g. {inside[0]}; prep never "
                          "writes over its inputs", "pass a new --out path outside the input files")


def _warn_columns(ingested: Ingested) -> None:
    """Print the source's warnings (e.g. a misspelt metadata column) on stderr before any work."""
    for warning in ingested.info.get("warnings", []):
        print(f"[prep] warning: {warning}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def store_lock(store_path: Path) -> Iterator[Path]:
    """Exclusive lock file for one prep run on a store; a stale lock (dead process, same host) is taken over."""
    lock = store_path / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _pid_alive(holder["pid"]):
                lock.unlink(missing_ok=True)  # the run that held it died: take over
                continue
            raise StoreError(
                f"{store_path} is being written by another prep run (host {holder.get('host')}, pid "
                f"{holder.get('pid')}): wait for it, or if that run is dead delete {lock}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
        except OSError as exc:  # e.g. disk full: an empty lock would block every later run
            lock.unlink(missing_ok=True)
            raise write_failure(exc, f"the lock file {lock}") from None
        break
    else:  # pragma: no cover - only when another run re-creates the lock between our two tries
        raise StoreError(f"could not take the lock {lock}: another prep run started at the same time")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _progress_line(i: int, n: int, failed: int, elapsed: float, since_first: float) -> str:
    """Progress with an ETA from the rate after the first result (cluster start-up excluded)."""
    eta = f", ~{since_first / (i - 1) * (n - i):.0f} s left" if 1 < i < n else ""
    return f"[prep] {i}/{n} processed ({failed} failed), {elapsed:.0f} s{eta}"


@dataclass
class _Executed:
    """What the task loop produced."""

    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    not_attempted: int = 0


def _execute(items: list[WorkItem], params: PreprocessParams, store: VolumeStore, cluster: str, workers: int,
             cluster_options: Mapping[str, Any] | None, progress: bool, max_bytes: int) -> _Executed:
    """Run the tasks; stop early when the disk is full (every later write would fail the same way)."""
    out = _Executed()
    failures = out.failures
    step, t0, t_first = max(1, len(items) // 20), time.perf_counter(), 0.0
    results = map_unordered(process_item, items, (params, str(store.path), max_bytes), kind=cluster,
                            workers=workers, options=cluster_options)
    with closing(results):  # closing it shuts the cluster down, cancelling what did not run
        for i, (item, outcome) in enumerate(results, start=1):
            if isinstance(outcome, BaseException):  # the task could not run (lost worker, ...)
                failures.append(failure_from_exception(outcome, item.ref, "worker"))
            elif outcome.status == DONE:
                out.done += 1
            elif outcome.status == SKIPPED:
                out.skipped += 1
            else:
                failures.append(outcome.failure)
            now = time.perf_counter()
            t_first = t_first or now
            if progress and (i % step == 0 or i == len(items)):
                print(_progress_line(i, len(items), len(failures), now - t0, now - t_first), file=sys.stderr,
                      flush=True)
            if failures and _disk_full(failures[-1]) and i < len(items):
                out.not_attempted = len(items) - i
                print(f"[prep] the store's disk is full: stopping, {out.not_attempted} inputs not attempted",
                      file=sys.stderr, flush=True)
                break
    return out


def _disk_full(failure: Failure) -> bool:
    return failure.stage == "write" and failure.errno in (errno.ENOSPC, errno.EDQUOT)


def _finish(store: VolumeStore, result: PrepResult, source_info: Mapping[str, Any], ready: bool) -> None:
    """Report and completion marker after the finalize step: the marker goes only if all succeeded."""
    result.published = len(store.volume_ids())
    result.complete = ready
    try:
        write_report(result, source_info)
    except OSError as exc:
        result.complete = False
        problem = write_failure(exc, f"the report {result.report_path}")
        result.problems.append(str(problem))
        print(f"[prep] error: {problem}; the store stays marked incomplete", file=sys.stderr, flush=True)
    if result.complete:
        store.mark_complete()
        return
    reason = _incomplete_reason(result)
    try:
        store.mark_incomplete(run_started=result.run_started, inputs=result.total, expected=result.expected,
                              reason=reason)
    except StoreError:
        pass  # the marker from the start of the run is still there: the store reads as incomplete


def _incomplete_reason(result: PrepResult) -> str:
    """Why a run left the store incomplete, in one clause (for `bsynth info`)."""
    rerun = [f for f in result.failures if needs_rerun(f)]
    if rerun:
        return f"{len(rerun)} volume(s) could not be written or processed (first: {rerun[0].message})"
    if result.problems:
        return result.problems[0]
    return "the last prep run did not finish"


def run_prep(source: PrepSource, out: str | os.PathLike[str], config: PrepConfig | None = None) -> PrepResult:
    """Preprocess every input of ``source`` into the store ``out`` with the options ``config``
    (default: ``PrepConfig()``; see the module docstring and :class:`PrepConfig`)."""
    c = config if config is not None else PrepConfig()
    t0 = time.perf_counter()
    c.validate()  # the fields may have been changed after construction
    params = resolve_params(source, c.shape, c.spacing, c.normalize, c.clip_percentiles, c.mask)
    max_bytes = max_volume_bytes(c.max_volume_mb)
    out_path = Path(out).absolute()
    check_out_is_folder(out_path)
    ingested = collect(source, mask_column=params.mask_column, allow_outside_root=c.allow_outside_root)
    _warn_columns(ingested)
    check_out_path(out_path, source, ingested.items)
    layout = StoreLayout(kind=source.store_kind, shape=params.shape, spacing=params.spacing, dtype=c.dtype,
                         chunks=c.chunks, compressor=c.compressor)
    store = VolumeStore.create_or_open(out_path, layout, preprocessing=params.as_dict())
    _check_store_params(store, params)
    parameters = {**params.as_dict(), "dtype": store.dtype, "chunks": store.info.get("chunks"),
                  "compressor": store.info.get("compressor"), "cluster": c.cluster, "workers": c.workers,
                  "allow_outside_root": c.allow_outside_root, "splits": list(c.splits), "seed": c.seed,
                  "stratify": c.stratify, "max_volume_mb": max_bytes / 2**20}

    with store_lock(store.path):
        started = time.time()
        store.mark_incomplete(run_started=started, inputs=ingested.total, expected=len(ingested.items),
                              reason="running")
        store.remove_staging()
        todo = [it for it in ingested.items if not store.has_volume(it.volume_id)]
        skipped = len(ingested.items) - len(todo)
        if c.progress:
            print(f"[prep] {ingested.total} inputs: {len(todo)} to process, {skipped} already in {store.path}, "
                  f"{len(ingested.failures)} rejected up front; cluster={c.cluster}, workers={c.workers}",
                  file=sys.stderr, flush=True)
        run = _execute(todo, params, store, c.cluster, c.workers, c.cluster_options, c.progress, max_bytes)
        store.remove_staging()  # empty unless a task died mid-write; the lock says no one else writes
        # workers finish in any order: sort so the report does not depend on the cluster
        failures = ingested.failures + sorted(run.failures, key=lambda f: f.volume_id or "")
        result = PrepResult(store_path=store.path, kind=store.kind, total=ingested.total, done=run.done,
                            skipped=skipped + run.skipped, failures=failures,
                            report_path=store.path / REPORT_NAME, elapsed_s=0.0, parameters=parameters,
                            complete=False, expected=len(ingested.items), not_attempted=run.not_attempted,
                            run_started=started)
        source_info = {**source.describe(), **ingested.info}
        ready = not run.not_attempted and not any(needs_rerun(f) for f in failures)
        try:
            if ready and store.volume_ids():
                result.finalize = finalize_store(store, fractions=c.splits, seed=c.seed, stratify=c.stratify)
        except (StoreWriteError, OSError) as exc:  # e.g. disk full writing table.csv or the store info
            ready = False
            result.problems.append(f"finalizing the store failed: {exc}")
        except BaseException as exc:  # e.g. a MetadataError: reported, stays incomplete, then raised
            ready = False
            result.problems.append(f"finalizing the store failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            result.elapsed_s = time.perf_counter() - t0
            _finish(store, result, source_info, ready)
    if c.progress:
        print(format_summary(result), flush=True)
    return result
