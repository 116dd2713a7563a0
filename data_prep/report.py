"""Failure records, the JSON preprocessing report and the console summary of `bsynth prep`.

A bad input never stops a run: each one becomes a :class:`Failure` (which file, which
subject/session/modality, what went wrong, how to fix it). The run's failures, counts and
parameters are written to ``<store>/prep_report.json`` atomically (temporary file + rename), so
a reader never sees half a report, and summarised on the console naming every bad file.

Two kinds of failure: a bad *input* (unreadable, corrupt, too large, bad metadata) stays bad on a
rerun, so the store is finalized without it; a failure of the *run* (writing to the store: disk
full, permissions; a lost worker; out of memory — see :func:`needs_rerun`) leaves the store
incomplete and unfinalized until the same command is rerun.
"""
from __future__ import annotations

import json
import os
import traceback as tb
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from bsynth_hpc.errors import BsynthError

REPORT_VERSION = 1

STAGES: tuple[str, ...] = ("ingest", "load", "preprocess", "write", "worker")
"""Where a failure happened: row/file validation before any work, reading the file, the
transform, publishing to the store, or the worker process itself (crash, lost worker)."""

DEFAULT_FIXES: dict[str, str] = {
    "InputError": "re-export or replace the file, or drop it from the input",
    "ManifestError": "correct the manifest row or the folder layout",
    "MetadataError": "fix the value in the manifest, or leave the cell empty if it was not recorded",
    "StoreError": "check the store's disk space and permissions, then rerun (published volumes are kept)",
    "MemoryError": "give each worker more memory (cluster_options memory / memory_limit; about 4x --max-volume-mb) "
                   "or use fewer workers per node, then rerun",
    "KilledWorker": "the worker process died, usually out of memory: give workers more memory "
                    "(cluster_options memory / memory_limit) or fewer threads, then rerun",
}
UNEXPECTED_FIX = ("unexpected error: rerun with cluster='sync' to debug it in-process and report it "
                  "with the traceback stored in prep_report.json")

E = TypeVar("E", bound=BaseException)


def fixable(exc_type: type[E], problem: str, fix: str) -> E:
    """An exception whose message names the problem and the fix, keeping both apart for the report."""
    exc = exc_type(f"{problem}; fix: {fix}")
    exc.problem = problem  # type: ignore[attr-defined]
    exc.fix = fix  # type: ignore[attr-defined]
    return exc


@dataclass(frozen=True)
class Failure:
    """One input that could not be preprocessed (a row of the report's ``failures`` list)."""

    source_path: str | None
    subject: str | None
    session: str | None
    dataset: str | None
    modality: str | None
    volume_id: str | None
    origin: str
    """Where the input was named, e.g. ``manifest.csv line 7`` or ``case BraTS_001``."""
    stage: str
    error_type: str
    message: str
    fix: str
    traceback: str | None = None
    """Only for unexpected errors (bugs), to report them."""
    errno: int | None = None
    """The OS error number for write failures (e.g. ENOSPC), else None."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InputRef:
    """The identifying fields of an input, for attaching to a failure."""

    source_path: str | None = None
    subject: str | None = None
    session: str | None = None
    dataset: str | None = None
    modality: str | None = None
    volume_id: str | None = None
    origin: str = ""


def failure_from_exception(exc: BaseException, ref: InputRef, stage: str) -> Failure:
    """Turn an exception into a Failure; errors of our own families carry their fix, others get a traceback."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    error_type = type(exc).__name__
    message = getattr(exc, "problem", None) or str(exc) or error_type
    known = isinstance(exc, BsynthError) or error_type in DEFAULT_FIXES
    fix = (getattr(exc, "fix", None) or DEFAULT_FIXES.get(error_type)
           or ("see the message" if known else UNEXPECTED_FIX))
    trace = None if known else "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    code = getattr(exc, "errno", None)
    return Failure(source_path=ref.source_path, subject=ref.subject, session=ref.session, dataset=ref.dataset,
                   modality=ref.modality, volume_id=ref.volume_id, origin=ref.origin, stage=stage,
                   error_type=error_type, message=message, fix=fix, traceback=trace,
                   errno=code if isinstance(code, int) else None)


RERUN_STAGES: frozenset[str] = frozenset({"write", "worker"})


def needs_rerun(failure: Failure) -> bool:
    """True when the failure is the run's, not the input's (the store stays incomplete until a rerun)."""
    return failure.stage in RERUN_STAGES or failure.error_type == "MemoryError"


@dataclass
class PrepResult:
    """Outcome of one `bsynth prep` run."""

    store_path: Path
    kind: str
    total: int
    """Inputs found (good and bad)."""
    done: int
    """Volumes preprocessed and published by this run."""
    skipped: int
    """Volumes already in the store (earlier run), left untouched."""
    failures: list[Failure]
    report_path: Path
    elapsed_s: float
    finalize: dict[str, Any] | None = None
    """What finalize_store returned (splits, metadata statistics, labels), None if nothing is stored."""
    parameters: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    """False when the run could not finish the store (write failure, lost worker, report not written):
    the store keeps its ``prep_incomplete.json`` marker and is not finalized."""
    published: int = 0
    """Volumes in the store after the run (earlier runs included)."""
    expected: int = 0
    """Volumes the store should hold: inputs that passed the up-front checks."""
    not_attempted: int = 0
    """Inputs left unprocessed because the run stopped early (disk full)."""
    problems: list[str] = field(default_factory=list)
    """Run-level errors (finalize or report could not be written), for the report and the console."""
    run_started: float | None = None
    """Wall-clock start of the run (ties the report to the store's incomplete marker)."""

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        """0 all inputs are in the store, 1 some failed or the store is incomplete (what could be stored
        is), 2 nothing is stored."""
        stored = self.done + self.skipped > 0 or self.published > 0
        if not self.complete:
            return 1 if stored else 2
        if not self.failures:
            return 0
        return 1 if stored else 2


def write_report(result: PrepResult, source: Mapping[str, Any]) -> Path:
    """Write ``result.report_path`` atomically (JSON) and return it."""
    payload = {
        "report_version": REPORT_VERSION,
        "store": str(result.store_path),
        "kind": result.kind,
        "source": dict(source),
        "parameters": result.parameters,
        "state": "complete" if result.complete else "incomplete",
        "run_started": result.run_started,
        "counts": {"total": result.total, "done": result.done, "skipped": result.skipped,
                   "failed": result.failed},
        "volumes": {"published": result.published, "expected": result.expected,
                    "not_attempted": result.not_attempted},
        "exit_code": result.exit_code,
        "problems": list(result.problems),
        "elapsed_s": round(result.elapsed_s, 3),
        "finalize": _finalize_summary(result.finalize),
        "failures": [f.as_dict() for f in result.failures],
    }
    path = Path(result.report_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written temp file left behind (e.g. disk full)
        raise
    return path


def _finalize_summary(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if info is None:
        return None
    splits = info.get("splits") or {}
    return {"split_counts": splits.get("counts"), "labels": info.get("labels"), "table_csv": info.get("table_csv")}


def format_summary(result: PrepResult, max_listed: int = 50) -> str:
    """Console summary: counts, then one line per failed input with its reason and fix."""
    lines = [
        f"prep: {result.done} written, {result.skipped} already present, {result.failed} failed "
        f"(of {result.total} inputs) in {result.elapsed_s:.1f} s -> {result.store_path}",
    ]
    for failure in result.failures[:max_listed]:
        where = failure.source_path or failure.origin
        lines.append(f"  FAILED {where} [{failure.origin}]: {failure.error_type}: {failure.message}")
        lines.append(f"         fix: {failure.fix}")
    if result.failed > max_listed:
        lines.append(f"  ... and {result.failed - max_listed} more")
    if result.failures:
        lines.append(f"  full list: {result.report_path}")
    lines.extend(f"  ERROR {problem}" for problem in result.problems)
    if not result.complete:
        stopped = f", {result.not_attempted} inputs not attempted" if result.not_attempted else ""
        lines.append(f"  INCOMPLETE: {result.published} of {result.expected} volumes published{stopped}; the store "
                     "is not finalized. Fix the cause above (e.g. free disk space) and rerun the same command to "
                     "resume (published volumes are kept)")
    return "\n".join(lines)

