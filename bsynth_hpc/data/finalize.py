"""Finalize a volume store for training, and read the finalized index back.

``finalize_store`` runs once after preprocessing (and again whenever volumes are added):

* assigns every subject to train/val/test (:mod:`.splits`) and stores the assignment in the
  store-level info as ``info["splits"] = {"method", "fractions", "seed", "stratify",
  "assignment": {"<dataset>/<subject>": split}, "counts": {split: {modality: n}}}``;
* validates every record's metadata against the schema (MetadataError names the volume);
* computes the z-score statistics of the continuous metadata over the *training* split, one
  entry per (subject, session) so a subject scanned in four modalities counts once, and stores
  them as ``info["metadata_stats"]``;
* stores the store-wide label vocabulary ``info["labels"]`` (sorted label names; label id =
  position), so every split and every rank maps labels to the same ids;
* writes ``table.csv``.

``load_index`` gives the training-time view: the store info plus one :class:`VolumeEntry` per
volume, read from ``table.csv`` (one file instead of one ``zarr.json`` per volume, which matters
with 10^5 volumes on a parallel file system). It refuses a store that was never finalized or
whose volume set changed since, and a store that a prep run left incomplete (killed, disk full,
write failure: ``prep_incomplete.json`` present), naming the fix.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from ..constants import MODALITIES, MODALITY_IDS, canonical_modality
from ..errors import ConfigError, StoreError
from .metadata import compute_metadata_stats, parse_metadata
from .splits import DEFAULT_FRACTIONS, SPLITS, check_fractions, split_subjects, subject_key
from .store import TABLE_NAME, VolumeStore

STRATIFY_CHOICES: tuple[str, ...] = ("dataset", "modalities", "label")
_INDEX_COLUMNS = ("volume_id", "dataset", "subject", "session", "modality", "modality_id", "label",
                  "clinical", "metadata")


@dataclass(frozen=True)
class VolumeEntry:
    """The fields of one volume record that training needs."""

    volume_id: str
    dataset: str
    subject: str
    session: str | None
    modality: str
    modality_id: int
    label: str | None = None
    clinical: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        """The subject identity used by the splits."""
        return subject_key(self.dataset, self.subject)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _nested(value: Any, field: str, where: str) -> Mapping[str, Any] | None:
    """A dict field that may arrive as a dict (record) or as JSON text (table.csv)."""
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{where}: field {field!r} is not valid JSON ({exc}): re-run finalize_store") from None
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise StoreError(f"{where}: field {field!r} must be a dict or empty, got {type(value).__name__}")
    return value


def entry_from_record(row: Mapping[str, Any], where: str = "") -> VolumeEntry:
    """Validate one record (or table.csv row) into a VolumeEntry; StoreError names the missing field."""
    vid = row.get("volume_id")
    where = where or f"volume {vid!r}"
    for field in ("volume_id", "dataset", "subject", "modality"):
        if _blank(row.get(field)):
            raise StoreError(f"{where}: record lacks {field!r}; re-run `bsynth prep` for this volume")
    try:
        modality = canonical_modality(str(row["modality"]))
    except KeyError:
        raise StoreError(
            f"{where}: unknown modality {row['modality']!r}; expected one of {', '.join(MODALITIES)}"
        ) from None
    modality_id = MODALITY_IDS[modality]
    if not _blank(row.get("modality_id")) and int(float(row["modality_id"])) != modality_id:
        raise StoreError(
            f"{where}: modality_id {row['modality_id']!r} contradicts modality {modality!r} (id {modality_id})"
        )
    session = row.get("session")
    label = row.get("label")
    return VolumeEntry(
        volume_id=str(vid), dataset=str(row["dataset"]), subject=str(row["subject"]),
        session=None if _blank(session) else str(session), modality=modality, modality_id=modality_id,
        label=None if _blank(label) else str(label),
        clinical=_nested(row.get("clinical"), "clinical", where),
        metadata=_nested(row.get("metadata"), "metadata", where),
    )


def _strata(entries: Sequence[VolumeEntry], stratify: str) -> dict[str, Hashable]:
    if stratify == "dataset":
        return {e.key: e.dataset for e in entries}
    if stratify == "label":   # each class of each dataset is cut at the fractions (a subject's first label)
        strata: dict[str, Hashable] = {}
        for e in entries:
            strata.setdefault(e.key, (e.dataset, e.label or ""))
        return strata
    sets: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        sets[e.key].add(e.modality)
    return {k: "+".join(sorted(v, key=MODALITY_IDS.__getitem__)) for k, v in sets.items()}


def split_counts(entries: Sequence[VolumeEntry], assignment: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Volumes per split and modality (the shape of seed 003 Table 1), with "total" rows/columns."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    for e in entries:
        counts[assignment[e.key]][e.modality] += 1
    out = {name: {m: counts[name][m] for m in MODALITIES} for name in SPLITS}
    for name in SPLITS:
        out[name]["total"] = sum(counts[name].values())
    out["total"] = {m: sum(out[s][m] for s in SPLITS) for m in (*MODALITIES, "total")}
    return out


def finalize_store(store: VolumeStore, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                   stratify: str | None = None) -> dict[str, Any]:
    """Compute splits, training metadata statistics and the label vocabulary; write table.csv.

    ``stratify=None`` uses the stable hash split; "dataset", "modalities" (the set of
    modalities a subject has) or "label" (dataset and label: every class split at the fractions,
    for classifier studies on small cohorts) use the stratified method of :mod:`.splits`. Returns
    ``{"splits", "metadata_stats", "labels", "table_csv"}`` (splits without the per-subject
    assignment, which lives in the store info).
    """
    fr = check_fractions(fractions)
    if stratify is not None and stratify not in STRATIFY_CHOICES:
        raise ConfigError(f"stratify={stratify!r} is not supported: use None or one of {', '.join(STRATIFY_CHOICES)}")
    if not store.volume_ids():
        raise StoreError(f"{store.path} has no published volumes: run `bsynth prep ... --out {store.path}` first")
    # Write the table first and read it back, so finalize and the datasets parse one source alike.
    table = store.write_table_csv()
    entries = _read_table(table)
    method = "hash" if stratify is None else "stratified"
    strata = None if stratify is None else _strata(entries, stratify)
    assignment = split_subjects((e.key for e in entries), fr, seed, method=method, strata=strata)

    train_sessions: dict[tuple[str, str | None], Mapping[str, Any]] = {}
    for e in entries:
        if e.metadata is None:
            continue
        parsed = parse_metadata(e.metadata, f"{store.path}/volumes/{e.volume_id}")  # fail here, not mid-training
        if assignment[e.key] == "train":
            train_sessions.setdefault((e.key, e.session), parsed)
    stats = compute_metadata_stats(train_sessions.values())
    labels = sorted({e.label for e in entries if e.label is not None})
    splits = {"method": method, "fractions": list(fr), "seed": int(seed),
              "stratify": stratify,
              "counts": split_counts(entries, assignment)}
    store.update_info(splits={**splits, "assignment": assignment}, metadata_stats=stats, labels=labels)
    return {"splits": splits, "metadata_stats": stats, "labels": labels, "table_csv": str(table)}


def describe_incomplete(store: VolumeStore, state: Mapping[str, Any]) -> str:
    """One sentence for an incomplete store: what happened, how many volumes are in, the fix."""
    published = len(store.volume_ids())
    expected = state.get("expected")
    count = f"{published} of {expected}" if isinstance(expected, int) else f"{published}"
    reason = state.get("reason") or "the last prep run did not finish (killed, or still running)"
    if reason == "running":
        reason = "the last prep run did not finish (killed, or still running)"
    return (f"{reason}; {count} volumes published, not finalized (no training splits); rerun the same "
            "`bsynth prep` command to resume (published volumes are kept)")


def _published_ids(path: Path) -> set[str]:
    with os.scandir(path / "volumes") as it:
        return {d.name for d in it if d.is_dir() and not d.name.startswith(".")}


def _read_table(table: Path) -> list[VolumeEntry]:
    """Entries of table.csv, sorted by volume id (all columns read as text: ids like "007" stay text)."""
    import pandas as pd

    df = pd.read_csv(table, dtype=str, keep_default_na=False, usecols=lambda c: c in _INDEX_COLUMNS)
    entries = [entry_from_record(row, f"{table} row {i + 2} (volume {row.get('volume_id')!r})")
               for i, row in enumerate(df.to_dict(orient="records"))]
    return sorted(entries, key=lambda e: e.volume_id)


def load_index(store_path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[VolumeEntry]]:
    """(store info, entries sorted by volume id) of a finalized store; StoreError with the fix otherwise."""
    path = Path(store_path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist: check the path or build it with `bsynth prep --out {path}`")
    store = VolumeStore(path)
    state = store.incomplete_state()
    if state is not None:
        raise StoreError(f"store {path} is incomplete: {describe_incomplete(store, state)}")
    info = store.info
    table = path / TABLE_NAME
    if not info.get("splits") or info.get("metadata_stats") is None or not table.exists():
        raise StoreError(
            f"store {path} is not finalized (no splits/metadata statistics/{TABLE_NAME}): run "
            "bsynth_hpc.data.finalize_store(VolumeStore(path)) (`bsynth prep` does this at the end)"
        )
    entries = _read_table(table)
    assignment = info["splits"].get("assignment", {})
    listed = {e.volume_id for e in entries}
    published = _published_ids(path)
    unassigned = [e.volume_id for e in entries if e.key not in assignment]
    if listed != published or unassigned:
        raise StoreError(
            f"store {path} changed since it was finalized ({len(published)} volumes published, {len(listed)} in "
            f"{TABLE_NAME}, {len(unassigned)} without a split): re-run finalize_store on it"
        )
    return info, entries
