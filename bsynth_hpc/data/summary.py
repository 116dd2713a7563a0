"""Human-readable summary of a volume store (used by `bsynth info` and `bsynth demo`)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .finalize import describe_incomplete
from .store import REPORT_NAME, VolumeStore

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
MAX_FILES_LOOKED_AT = 10_000
"""How many files `bsynth info` looks at to tell a raw folder's layout (a bounded walk)."""


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def split_of(info: dict[str, Any], record: dict[str, Any]) -> str:
    """The split of a record's subject from the store's split assignment ('-' if unassigned)."""
    assignment = ((info.get("splits") or {}).get("assignment")) or {}
    return str(assignment.get(f"{record.get('dataset')}/{record.get('subject')}", "-"))


def _is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _has_nifti(folder: Path) -> bool:
    """Whether a NIfTI file lies under ``folder`` (stops at the first, or after MAX_FILES_LOOKED_AT files)."""
    seen = 0
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(_is_nifti(f) for f in files):
            return True
        seen += len(files)
        if seen > MAX_FILES_LOOKED_AT:
            return False
    return False


BIDS_OTHER_FOLDERS: frozenset[str] = frozenset({"derivatives", "sourcedata", "code", "stimuli", "phenotype"})


def _looks_bids(folder: Path) -> bool:
    """dataset_description.json, or only sub-* folders (one with anat/) and no NIfTI at the top level."""
    if (folder / "dataset_description.json").is_file():
        return True
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and _is_nifti(p.name) for p in entries):
        return False
    folders = [p for p in entries if p.is_dir() and p.name not in BIDS_OTHER_FOLDERS]
    return bool(folders) and all(p.name.startswith("sub-") for p in folders) and any(
        (p / "anat").is_dir() or any(p.glob("ses-*/anat")) for p in folders)


def _looks_brats(folder: Path) -> bool:
    """Case folders holding ``<case>_t1.nii.gz``-style files."""
    for case in (p for p in folder.iterdir() if p.is_dir()):
        if any(f.name.startswith(case.name) and _is_nifti(f.name) for f in case.iterdir()):
            return True
    return False


def _store_next_to(folder: Path) -> str:
    """A store path beside the input folder (never inside it: prep refuses that for scanned folders)."""
    if folder.name and folder.name not in (".", ".."):
        return f"{folder}_store.zarr"
    resolved = folder.resolve()
    return str(resolved.parent / f"{resolved.name}_store.zarr")


def prep_advice(folder: Path) -> str:
    """The `bsynth prep` command that builds a store from a raw input folder (by its layout)."""
    out = _store_next_to(folder)
    if (folder / "manifest.csv").is_file():
        return f"bsynth prep --manifest {folder / 'manifest.csv'} --out {out}"
    if _looks_bids(folder):
        return f"bsynth prep --bids {folder} --out {out}"
    if _looks_brats(folder):
        return f"bsynth prep --brats {folder} --out {out}"
    if _has_nifti(folder):
        manifest = folder / "manifest.csv"
        return f"bsynth manifest --from {folder} --out {manifest}, then bsynth prep --manifest {manifest} --out {out}"
    return ""


def not_a_store_error(path: Path) -> StoreError:
    """Why ``path`` cannot be summarised, with the command that makes a store from it when it is raw data."""
    if not path.exists():
        return StoreError(f"{path} does not exist; fix: pass a store written by `bsynth prep --out STORE`")
    if not path.is_dir():
        return StoreError(f"{path} is a file, not a store (a store is a folder); fix: pass the folder that "
                          "`bsynth prep --out` wrote")
    advice = prep_advice(path)
    if advice:
        return StoreError(f"{path} is not a bsynth store but raw input (no zarr.json); fix: build a store from it "
                          f"with `{advice}` (prep writes the store beside its inputs, never into them), then "
                          "`bsynth info` that store")
    return StoreError(f"{path} is not a bsynth store (no zarr.json); fix: pass a store written by "
                      "`bsynth prep --out STORE`")


def store_summary(path: str | Path) -> dict[str, Any]:
    """Counts per modality/dataset/label/split, sizes and the prep report's failures."""
    if not (Path(path) / "zarr.json").exists():
        raise not_a_store_error(Path(path))
    store = VolumeStore(path)
    info = store.info
    records = list(store.records())
    n = len(records)
    raw_bytes = n * int(np.prod(store.shape)) * np.dtype(store.dtype).itemsize
    disk = _dir_bytes(store.path / "volumes")
    report = _read_report(store.path / REPORT_NAME)
    state = store.incomplete_state()
    return {
        "store": str(store.path),
        "kind": store.kind,
        "shape": list(store.shape),
        "spacing": info.get("spacing"),
        "dtype": store.dtype,
        "chunks": info.get("chunks"),
        "compressor": info.get("compressor"),
        "volumes": n,
        "subjects": len({(r.get("dataset"), r.get("subject")) for r in records}),
        "by_modality": dict(Counter(str(r.get("modality")) for r in records)),
        "by_dataset": dict(Counter(str(r.get("dataset")) for r in records)),
        "by_label": dict(Counter(str(r.get("label")) for r in records)),
        "by_split": dict(Counter(split_of(info, r) for r in records)),
        "bytes_on_disk": disk,
        "bytes_uncompressed": raw_bytes,
        "failures": report.get("failures", []),
        "complete": state is None,
        "incomplete": None if state is None else describe_incomplete(store, state),
        "report_current": _report_is_current(report, state),
    }


def _read_report(path: Path) -> dict[str, Any]:
    """The prep report, {} when absent or unreadable (a run that died writing it)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _report_is_current(report: dict[str, Any], state: dict[str, Any] | None) -> bool:
    """Whether the report describes the latest prep run (an interrupted run leaves an older one)."""
    if state is None:
        return bool(report)
    started = state.get("run_started")
    return bool(report) and started is not None and report.get("run_started") == started


def format_store_summary(path: str | Path) -> str:
    """The summary as aligned text lines."""
    s = store_summary(path)
    ratio = s["bytes_uncompressed"] / s["bytes_on_disk"] if s["bytes_on_disk"] else float("nan")

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-"

    lines = [
        f"store       {s['store']}  ({s['kind']}, shape {tuple(s['shape'])}, {s['dtype']}, chunks {s['chunks']})",
        f"volumes     {s['volumes']} from {s['subjects']} subjects",
        f"modalities  {fmt(s['by_modality'])}",
        f"datasets    {fmt(s['by_dataset'])}",
        f"labels      {fmt(s['by_label'])}",
        f"splits      {fmt(s['by_split'])}",
        f"size        {s['bytes_on_disk'] / 2**20:.1f} MiB on disk, {s['bytes_uncompressed'] / 2**20:.1f} MiB raw "
        f"(compression {ratio:.2f}x)",
    ]
    lines.append(f"state       {'complete' if s['complete'] else 'INCOMPLETE: ' + s['incomplete']}")
    lines.extend(_failure_lines(s))
    return "\n".join(lines)


def _failure_lines(s: dict[str, Any]) -> list[str]:
    """The "failed" lines: the latest report's failures, or "unknown" when that run left no report."""
    report = Path(s["store"]) / REPORT_NAME
    if not s["report_current"] and not s["complete"]:
        return ["failed      unknown: the last prep run wrote no report (see state); rerun it to resume"]
    if not s["failures"]:
        return ["failed      none" if s["complete"]
                else "failed      no input failed, yet the store is incomplete (see state)"]
    lines = [f"failed      {len(s['failures'])} input(s), see {report}:"]
    lines += [f"  - {f.get('source_path')}: {f.get('error_type')}: {f.get('message')}" for f in s["failures"]]
    return lines
