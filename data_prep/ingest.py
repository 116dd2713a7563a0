"""Inputs -> work items: manifest CSV, raw BIDS folder, BraTS-layout folder, or 2D slice folders by class.

This step is cheap and runs before any worker starts: it reads the manifest/folders, checks each
row (required fields, modality, metadata against the schema, clinical ratios, path inside the
root folder, file present) and turns every good row into a :class:`WorkItem`. A bad row becomes
a :class:`~bsynth_hpc.prep.report.Failure` and the run goes on; only a source that cannot be read at
all (missing columns, no inputs) raises :class:`ManifestError`. File contents are checked later,
in the workers.

Manifest CSV columns
    required: ``subject, session, dataset, modality, path`` (``session`` may be empty;
    relative paths resolve against the manifest's folder); optional: ``label``, the six clinical
    ratios ``roi_hippocampus_l, roi_hippocampus_r, roi_amygdala_l, roi_amygdala_r,
    roi_ventricle_l, roi_ventricle_r`` (all six or none; the long names of
    ``bsynth_hpc.data.metadata.CLINICAL_ROI_FIELDS`` work too), a brain-mask path column (named
    by ``mask_column``), and any of the 25 metadata fields named as in the schema. Other columns
    are ignored: listed in the report, and warned about on stderr at the start, with the closest
    known field (``agee`` -> ``age``) so a misspelt field is noticed before hours of work.
    The file must be UTF-8 (a BOM is fine) and comma-separated; a Latin-1 file or one delimited by
    semicolons/tabs (a European-locale spreadsheet export) is refused with the fix.

BIDS and BraTS folders
    are scanned into the same manifest-style rows (:class:`RowRules`, :func:`item_from_row`), so
    every check above applies to them too. BIDS: ``sub-*/[ses-*/]anat/*_{T1w,T2w,FLAIR}.nii(.gz)``
    (``ce-`` T1w -> T1Gd; other files skipped with the reason, see :mod:`bsynth_hpc.prep.bids`). Labels
    and metadata per subject come from a subject table (:mod:`bsynth_hpc.prep.tables`): BIDS
    ``participants.tsv`` or ``--subjects-table``, with ``--label-column`` naming the label column.

Paths may not leave the root folder (the manifest's folder, or the BraTS/slice root) after
resolving ``..`` and symlinks unless ``allow_outside_root``: a manifest from elsewhere must not
make a job read arbitrary files.

Volume ids are ``dataset__subject[__session]__modality`` with every part reduced to
``[A-Za-z0-9._-]``: deterministic (reruns find finished volumes) and safe as directory names.
Two rows with the same id are an error for the later row.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from bsynth_hpc.constants import MODALITIES, MODALITY_ALIASES, canonical_modality
from bsynth_hpc.data.metadata import CLINICAL_ROI_FIELDS, FIELD_NAMES, parse_metadata
from bsynth_hpc.errors import ConfigError, InputError, ManifestError, MetadataError

from .bids import dataset_name, find_anat_files
from .loading import is_image_name, is_nifti_name
from .report import Failure, InputRef, failure_from_exception, fixable
from .tables import SubjectTable, column_warnings, decode_utf8, read_subject_table

REQUIRED_COLUMNS: tuple[str, ...] = ("subject", "session", "dataset", "modality", "path")
ROI_COLUMNS: dict[str, str] = {
    "roi_hippocampus_l": "roi_hippocampus_left", "roi_hippocampus_r": "roi_hippocampus_right",
    "roi_amygdala_l": "roi_amygdala_left", "roi_amygdala_r": "roi_amygdala_right",
    "roi_ventricle_l": "roi_lateral_ventricle_left", "roi_ventricle_r": "roi_lateral_ventricle_right",
}
"""Manifest column -> record key (the keys of ``CLINICAL_ROI_FIELDS``)."""
BRATS_SUFFIXES: dict[str, str] = {
    "t1": "T1w", "t1ce": "T1Gd", "t2": "T2w", "flair": "FLAIR",          # BraTS 2018-2021
    "t1n": "T1w", "t1c": "T1Gd", "t2w": "T2w", "t2f": "FLAIR",           # BraTS 2023+
}
BRATS_IGNORED: frozenset[str] = frozenset({"seg", "mask", "brainmask"})
DEFAULT_SLICE_MODALITY = "T1w"
SOURCE_KINDS: tuple[str, ...] = ("manifest", "bids", "brats", "slices")
TABLE_KINDS: tuple[str, ...] = ("bids", "brats")
"""Sources that take a subject table (labels + metadata per subject)."""
PARTICIPANTS_FILE = "participants.tsv"
MAX_LISTED_SKIPPED = 10

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class PrepSource:
    """Which input `bsynth prep` reads. Build with :meth:`manifest`, :meth:`bids`, :meth:`brats` or :meth:`slices`."""

    kind: str
    path: Path
    dataset: str | None = None
    """BIDS/BraTS/slices: dataset name for every item (default: BIDS ``dataset_description.json``
    Name, else the folder's name)."""
    modality: str | None = None
    """Slices: the contrast of the images (the store schema needs one; default T1w)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """BraTS/slices: raw metadata applied to every item (e.g. ``{"tumor": "yes"}`` for BraTS)."""
    fit: str = "pad"
    """Slices: "pad" (keep aspect ratio) or "stretch" (exact resize)."""
    subject_pattern: str | None = None
    """Slices: regex finding the subject id in a file name (first group, else the match), e.g.
    ``r"^(sub-[^_]+)"``, so a patient's slices share one split; None: each image is its own subject."""
    subjects_table: Path | None = None
    """BIDS/BraTS: table of subject, label, metadata (see :mod:`bsynth_hpc.prep.tables`); BIDS default
    ``ROOT/participants.tsv`` when present."""
    label_column: str | None = None
    """BIDS/BraTS: the subject-table column holding each subject's label (default: ``label`` if present)."""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"source kind {self.kind!r} is not supported: use one of {', '.join(SOURCE_KINDS)}")
        if self.kind not in TABLE_KINDS and (self.subjects_table is not None or self.label_column is not None):
            raise ConfigError(f"--subjects-table/--label-column apply to --bids and --brats, not --{self.kind}: "
                              + ("put labels and metadata in the manifest's own columns" if self.kind == "manifest"
                                 else "drop them"))
        if self.kind == "brats" and self.label_column is not None and self.subjects_table is None:
            raise ConfigError("--label-column needs --subjects-table CSV for --brats (a CSV with a subject column, "
                              "the label column and optional metadata columns)")

    @classmethod
    def manifest(cls, path: str | os.PathLike[str]) -> "PrepSource":
        return cls("manifest", Path(path))

    @classmethod
    def bids(cls, path: str | os.PathLike[str], dataset: str | None = None,
             subjects_table: str | os.PathLike[str] | None = None, label_column: str | None = None) -> "PrepSource":
        return cls("bids", Path(path), dataset=dataset, label_column=label_column,
                   subjects_table=Path(subjects_table) if subjects_table is not None else None)

    @classmethod
    def brats(cls, path: str | os.PathLike[str], dataset: str | None = None,
              metadata: Mapping[str, Any] | None = None, subjects_table: str | os.PathLike[str] | None = None,
              label_column: str | None = None) -> "PrepSource":
        return cls("brats", Path(path), dataset=dataset, metadata=dict(metadata or {}), label_column=label_column,
                   subjects_table=Path(subjects_table) if subjects_table is not None else None)

    @classmethod
    def slices(cls, path: str | os.PathLike[str], dataset: str | None = None,
               modality: str = DEFAULT_SLICE_MODALITY, fit: str = "pad",
               metadata: Mapping[str, Any] | None = None, subject_pattern: str | None = None) -> "PrepSource":
        return cls("slices", Path(path), dataset=dataset, modality=modality, fit=fit,
                   metadata=dict(metadata or {}), subject_pattern=subject_pattern)

    @property
    def store_kind(self) -> str:
        """The store kind this source fills: "slice2d" for slices, else "volume3d"."""
        return "slice2d" if self.kind == "slices" else "volume3d"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "dataset": self.dataset, "modality": self.modality,
                "metadata": dict(self.metadata), "fit": self.fit if self.kind == "slices" else None,
                "subject_pattern": self.subject_pattern,
                "subjects_table": str(self.subjects_table) if self.subjects_table else None,
                "label_column": self.label_column}


@dataclass(frozen=True)
class WorkItem:
    """One input to preprocess; small and picklable (it travels to a Dask worker)."""

    volume_id: str
    source_path: str
    subject: str
    session: str | None
    dataset: str
    modality: str
    label: str | None
    clinical: dict[str, float] | None
    metadata: dict[str, Any]
    origin: str
    mask_path: str | None = None

    @property
    def ref(self) -> InputRef:
        return InputRef(source_path=self.source_path, subject=self.subject, session=self.session,
                        dataset=self.dataset, modality=self.modality, volume_id=self.volume_id, origin=self.origin)


@dataclass
class Ingested:
    """Work items, failures found up front, and facts about the source for the report."""

    items: list[WorkItem]
    failures: list[Failure]
    info: dict[str, Any]

    @property
    def total(self) -> int:
        return len(self.items) + len(self.failures)


# ---------------------------------------------------------------------------- helpers
def sanitize(part: str) -> str:
    """One volume-id component: runs of characters outside ``[A-Za-z0-9._-]`` become '-'."""
    cleaned = _UNSAFE.sub("-", part.strip()).strip("-").lstrip(".")
    return cleaned or "x"


def make_volume_id(dataset: str, subject: str, session: str | None, modality: str) -> str:
    parts = [dataset, subject] + ([session] if session else []) + [modality]
    return "__".join(sanitize(p) for p in parts)


def resolve_inside(raw: str, root: Path, allow_outside_root: bool, what: str = "path") -> Path:
    """Absolute, symlink-free path of ``raw`` (relative to ``root``); ManifestError if it leaves root."""
    candidate = Path(os.path.expanduser(raw))
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not allow_outside_root and not resolved.is_relative_to(root):
        raise fixable(ManifestError, f"{what} {raw!r} resolves to {resolved}, outside the root folder {root}",
                      "move the file under the root folder, or pass --allow-outside-root if this is intended")
    return resolved


def _display_path(raw: str | None, root: Path) -> str | None:
    """The path a row names, absolute and normalised (not resolved) for messages."""
    if _blank(raw):
        return None
    return os.path.normpath(root / os.path.expanduser(raw))  # an absolute raw path replaces root


def _modality(raw: str) -> str:
    try:
        return canonical_modality(raw)
    except KeyError:
        aliases = ", ".join(sorted(MODALITY_ALIASES))
        raise fixable(ManifestError, f"unknown modality {raw!r}",
                      f"use one of {', '.join(MODALITIES)} (also accepted: {aliases}), or drop the row") from None


def _blank(value: str | None) -> bool:
    return value is None or value.strip() == ""


def _clinical(row: Mapping[str, str], columns: Mapping[str, str]) -> dict[str, float] | None:
    """The six ROI ratios as {record key: float}, None when all are empty; ManifestError otherwise."""
    if not columns:
        return None
    filled = {key: row.get(col, "") for col, key in columns.items() if not _blank(row.get(col))}
    if not filled:
        return None
    if len(filled) != len(columns):
        missing = [col for col, key in columns.items() if key not in filled]
        raise fixable(ManifestError, f"clinical ratios partly filled (empty: {', '.join(missing)})",
                      "fill all six roi_* columns for this row, or leave all of them empty")
    out: dict[str, float] = {}
    for key, text in filled.items():
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise fixable(MetadataError, f"clinical ratio {key} = {text!r} is not a finite number >= 0",
                          "give the region volume / whole-brain volume ratio, or leave all roi_* cells empty")
        out[key] = value
    return {k: out[k] for k in CLINICAL_ROI_FIELDS}


def _roi_columns(header: Iterable[str], manifest: Path) -> dict[str, str]:
    """Manifest column -> record key for the ROI ratios; all six or none (ManifestError otherwise)."""
    long_names = {k: k for k in CLINICAL_ROI_FIELDS}
    for names in (ROI_COLUMNS, long_names):
        present = [c for c in names if c in header]
        if present and len(present) != len(names):
            missing = [c for c in names if c not in header]
            raise fixable(ManifestError, f"{manifest}: has {', '.join(present)} but lacks {', '.join(missing)}",
                          "add all six clinical ratio columns (cells may be empty) or none of them")
        if present:
            return {c: names[c] for c in present}
    return {}


class _IdRegistry:
    """Detects two inputs mapping to one volume id (the later one fails)."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def claim(self, volume_id: str, origin: str) -> None:
        first = self._seen.setdefault(volume_id, origin)
        if first != origin:
            raise fixable(ManifestError, f"volume id {volume_id!r} is also produced by {first}",
                          "give each (dataset, subject, session, modality) one row; remove the duplicate")


Row = tuple[InputRef, Callable[[], WorkItem | None]]


def _collect(rows: Iterable[Row]) -> tuple[list[WorkItem], list[Failure]]:
    """Run each row's builder: items for good rows, failures for bad ones, nothing for ignored (None).

    Also checks that volume ids are unique (the later duplicate fails).
    """
    items: list[WorkItem] = []
    failures: list[Failure] = []
    ids = _IdRegistry()
    for ref, build in rows:
        try:
            item = build()
            if item is None:
                continue
            ids.claim(item.volume_id, item.origin)
        except (ManifestError, MetadataError, InputError) as exc:
            failures.append(failure_from_exception(exc, ref, "ingest"))
            continue
        items.append(item)
    return items, failures


def _check_file(path: Path, kind: str) -> None:
    if path.is_dir():
        example = "<name>.nii.gz" if kind == "nifti" else "<name>.png"
        raise fixable(InputError, f"{path}: is a folder, not a file",
                      f"list the file inside it (e.g. {path / example}), one row per volume")
    if not path.is_file():
        raise fixable(InputError, f"{path}: file not found", "correct the path or restore the file")
    ok = is_nifti_name(path) if kind == "nifti" else is_image_name(path)
    if not ok:
        expected = ".nii or .nii.gz" if kind == "nifti" else "a .png/.jpg/.tif image"
        raise fixable(InputError, f"{path}: file name is not {expected}",
                      "convert the file (NIfTI for volumes) and list the converted file")


# ---------------------------------------------------------------------------- manifest-style rows
@dataclass(frozen=True)
class RowRules:
    """How manifest-style rows become work items; one code path for manifests, BIDS and BraTS folders.

    A row is a dict of strings with the manifest's columns (``subject, session, dataset, modality,
    path``, optional ``label``, metadata and ROI columns); the folder readers build the same rows.
    """

    root: Path
    allow_outside_root: bool = False
    meta_columns: tuple[str, ...] = ()
    roi: Mapping[str, str] = field(default_factory=dict)
    """Manifest column -> clinical record key (see :func:`_roi_columns`)."""
    mask_column: str | None = None
    base_metadata: Mapping[str, Any] | None = None
    """Parsed metadata for every row (e.g. ``tumor=yes`` for BraTS); the row's own values win."""


def _merge_metadata(base: Mapping[str, Any] | None, own: dict[str, Any]) -> dict[str, Any]:
    """The row's parsed metadata, with the fields it leaves empty taken from ``base``."""
    if not base:
        return own
    return {k: own[k] if own.get(k) is not None else base.get(k) for k in own}


def _row_mask(row: Mapping[str, str], rules: RowRules) -> Path | None:
    if rules.mask_column is None:
        return None
    if _blank(row.get(rules.mask_column)):
        raise fixable(ManifestError, f"mask column {rules.mask_column!r} is empty",
                      "give this row's brain-mask path, or run without a mask column")
    mask_path = resolve_inside(row[rules.mask_column], rules.root, rules.allow_outside_root, what="mask path")
    _check_file(mask_path, "nifti")
    return mask_path


def item_from_row(row: Mapping[str, str], rules: RowRules, origin: str, meta_source: str | None = None) -> WorkItem:
    """Check one manifest-style row and turn it into a WorkItem (ManifestError/MetadataError/InputError).

    ``meta_source`` names where the row's metadata came from in errors (default ``origin``), e.g.
    ``participants.tsv line 4`` for a BIDS file.
    """
    for col in ("subject", "dataset", "modality", "path"):
        if _blank(row.get(col)):
            raise fixable(ManifestError, f"column {col!r} is empty", f"fill in {col} for this row")
    src = resolve_inside(row["path"], rules.root, rules.allow_outside_root)
    _check_file(src, "nifti")
    mask_path = _row_mask(row, rules)
    modality = _modality(row["modality"])
    own = parse_metadata({c: row.get(c) for c in rules.meta_columns}, source=meta_source or origin)
    clinical = _clinical(row, rules.roi)
    session = row.get("session") or None
    return WorkItem(
        volume_id=make_volume_id(row["dataset"], row["subject"], session, modality),
        source_path=str(src), subject=row["subject"], session=session, dataset=row["dataset"],
        modality=modality, label=row.get("label") or None, clinical=clinical,
        metadata=_merge_metadata(rules.base_metadata, own), origin=origin,
        mask_path=str(mask_path) if mask_path else None)


def row_input(row: Mapping[str, str], rules: RowRules, origin: str, meta_source: str | None = None) -> Row:
    """(reference for failures, deferred builder) of one manifest-style row, for :func:`_collect`."""
    ref = InputRef(source_path=_display_path(row.get("path"), rules.root), subject=row.get("subject") or None,
                   session=row.get("session") or None, dataset=row.get("dataset") or None,
                   modality=row.get("modality") or None, origin=origin)
    return ref, lambda: item_from_row(row, rules, origin, meta_source)


# ---------------------------------------------------------------------------- manifest
def _manifest_text(manifest: Path) -> str:
    """The manifest decoded as UTF-8 (BOM dropped); ManifestError naming the byte for any other encoding."""
    return decode_utf8(manifest, what="manifest")


_OTHER_DELIMITERS: dict[str, str] = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _check_delimiter(header: list[str], manifest: Path) -> None:
    """ManifestError when the header only makes sense split by another delimiter than ','."""
    if len(header) > 1 and all(c in header for c in REQUIRED_COLUMNS):
        return
    joined = ",".join(header)
    for delimiter, name in _OTHER_DELIMITERS.items():
        cells = [c.strip() for c in joined.split(delimiter)]
        if sum(c in cells for c in REQUIRED_COLUMNS) >= 2:
            raise fixable(ManifestError, f"the manifest {manifest} looks {name}-delimited; use commas",
                          "re-save it as comma-separated CSV (spreadsheet: 'CSV UTF-8 (comma delimited)')")


def _manifest_header(reader: csv.DictReader, manifest: Path, mask_column: str | None) -> list[str]:
    """The checked header: not empty, comma-separated, no repeated column, required columns present."""
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise fixable(ManifestError, f"manifest {manifest} is empty (no header row)",
                      f"write a header with at least {', '.join(REQUIRED_COLUMNS)}")
    _check_delimiter(header, manifest)
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise fixable(ManifestError, f"manifest {manifest} repeats column(s) {', '.join(duplicated)}",
                      "keep one column of each name")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if mask_column is not None and mask_column not in header:
        missing.append(mask_column)
    if missing:
        raise fixable(ManifestError, f"manifest {manifest} lacks required column(s) {', '.join(missing)}",
                      f"add them (required: {', '.join(REQUIRED_COLUMNS)}; session may be left empty"
                      + (f"; {mask_column} holds the brain-mask paths" if mask_column else "") + ")")
    return header


def read_manifest(path: str | os.PathLike[str], *, mask_column: str | None = None,
                  allow_outside_root: bool = False) -> Ingested:
    """Validate a manifest CSV row by row (see the module docstring)."""
    manifest = Path(path)
    if not manifest.is_file():
        raise fixable(ManifestError, f"manifest {manifest} does not exist", "check the --manifest path")
    root = manifest.resolve().parent
    with io.StringIO(_manifest_text(manifest), newline="") as fh:
        reader = csv.DictReader(fh)
        header = _manifest_header(reader, manifest, mask_column)
        reader.fieldnames = header
        roi = _roi_columns(header, manifest)
        known = set(REQUIRED_COLUMNS) | {"label"} | set(roi) | set(FIELD_NAMES) | ({mask_column} - {None})
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader]
    if not rows:
        raise fixable(ManifestError, f"manifest {manifest} has no rows", "list at least one volume")
    rules = RowRules(root=root, allow_outside_root=allow_outside_root, roi=roi, mask_column=mask_column,
                     meta_columns=tuple(c for c in header if c in FIELD_NAMES))
    items, failures = _collect(row_input(row, rules, f"{manifest.name} line {line}") for line, row in rows)
    ignored = [c for c in header if c not in known]
    info = {"manifest": str(manifest.resolve()), "rows": len(rows), "ignored_columns": ignored,
            "warnings": column_warnings(ignored, known)}
    return Ingested(items, failures, info)


# ---------------------------------------------------------------------------- subject tables
def _subject_table(source: PrepSource, root: Path) -> SubjectTable | None:
    """The source's subject table: --subjects-table, else BIDS participants.tsv when present, else None."""
    path = source.subjects_table
    if path is None and source.kind == "bids" and (root / PARTICIPANTS_FILE).is_file():
        path = root / PARTICIPANTS_FILE
    if path is None:
        if source.label_column is not None:
            raise fixable(ManifestError, f"--label-column {source.label_column} needs a subject table, but "
                                         f"{root} has no {PARTICIPANTS_FILE}",
                          f"add {PARTICIPANTS_FILE} (participant_id + label column) or pass --subjects-table")
        return None
    return read_subject_table(path, label_column=source.label_column)


def _with_subject_fields(row: dict[str, str], table: SubjectTable | None) -> tuple[dict[str, str], str | None]:
    """The row plus its subject's label/metadata cells, and where those came from (for errors)."""
    if table is None:
        return row, None
    return {**row, **table.fields(row["subject"])}, table.origin(row["subject"])


def _table_info(table: SubjectTable | None, subjects: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Report facts and warnings: ignored columns, subjects with images but no table row."""
    if table is None:
        return {"subject_table": None}, []
    missing = sorted({s for s in subjects if not table.has(s)})
    warnings = table.warnings()
    if missing:
        warnings.append(f"{len(missing)} subject(s) have images but no row in {table.path} (e.g. {missing[0]}): "
                        "their label and metadata stay empty")
    return {"subject_table": {**table.describe(), "subjects_without_row": missing}}, warnings


# ---------------------------------------------------------------------------- BIDS
def _skipped_warnings(skipped: list[Any]) -> list[str]:
    """One warning per skipped file (at most MAX_LISTED_SKIPPED), then a count."""
    lines = [f"skipped {s.path}: {s.reason}" for s in skipped[:MAX_LISTED_SKIPPED]]
    if len(skipped) > MAX_LISTED_SKIPPED:
        lines.append(f"... and {len(skipped) - MAX_LISTED_SKIPPED} more skipped file(s), all listed in the "
                     "store's prep_report.json (source.skipped)")
    return lines


def scan_bids(source: PrepSource, *, allow_outside_root: bool = False) -> Ingested:
    """Work items of a raw BIDS folder (see :mod:`bsynth_hpc.prep.bids`), labels/metadata from participants.tsv."""
    root = source.path.resolve()
    if not root.is_dir():
        raise fixable(ManifestError, f"BIDS folder {source.path} does not exist", "check the --bids path")
    files, skipped = find_anat_files(root)
    named, warning = dataset_name(root)
    dataset = source.dataset or named
    table = _subject_table(source, root)
    rules = RowRules(root=root, allow_outside_root=allow_outside_root,
                     meta_columns=table.meta_columns if table else ())
    rows: list[Row] = []
    for f in files:
        base = {"subject": f.subject, "session": f.session or "", "dataset": dataset, "modality": f.modality,
                "path": str(f.path)}
        row, meta_source = _with_subject_fields(base, table)
        rows.append(row_input(row, rules, str(f.path.relative_to(root)), meta_source))
    items, failures = _collect(rows)
    if not items and not failures:
        raise fixable(ManifestError, f"BIDS folder {source.path} holds no sub-*/[ses-*/]anat/*_T1w|_T2w|_FLAIR"
                                     f".nii(.gz) files ({len(skipped)} other NIfTI file(s) skipped)",
                      "point --bids at the dataset root (the folder with dataset_description.json and sub-*)")
    table_info, table_warnings = _table_info(table, (f.subject for f in files))
    info = {"root": str(root), "dataset": dataset, "subjects": len({f.subject for f in files}),
            "skipped": [s.as_dict() for s in skipped], **table_info,
            "warnings": [w for w in [warning] if w] + table_warnings + _skipped_warnings(skipped)}
    return Ingested(items, failures, info)


# ---------------------------------------------------------------------------- BraTS
def _brats_modality(case: str, file_name: str) -> str | None:
    """Modality of ``<case>_<suffix>.nii(.gz)`` (or ``-<suffix>``); None for ignored files (seg)."""
    stem = file_name[: -len(".nii.gz")] if file_name.lower().endswith(".nii.gz") else file_name[: -len(".nii")]
    if not (stem.startswith(case) and len(stem) > len(case) + 1 and stem[len(case)] in "_-"):
        raise fixable(ManifestError, f"file name {file_name!r} does not follow <case>_<modality>.nii.gz "
                                     f"for case {case!r}", "rename it (e.g. <case>_t1.nii.gz) or move it out")
    suffix = stem[len(case) + 1:].lower()
    if suffix in BRATS_IGNORED:
        return None
    if suffix not in BRATS_SUFFIXES:
        raise fixable(ManifestError, f"unknown modality suffix {suffix!r} in {file_name!r}",
                      f"use one of {', '.join(BRATS_SUFFIXES)} (seg files are ignored), or move the file out")
    return BRATS_SUFFIXES[suffix]


def _brats_input(f: Path, case: str, dataset: str, rules: RowRules, table: SubjectTable | None) -> Row:
    """One BraTS file as a manifest-style row (modality from the suffix; None = ignored, e.g. seg)."""
    origin = f"case {case}"
    ref = InputRef(source_path=str(f), subject=case, dataset=dataset, origin=origin)

    def build() -> WorkItem | None:
        modality = _brats_modality(case, f.name)
        if modality is None:
            return None
        base = {"subject": case, "session": "", "dataset": dataset, "modality": modality, "path": str(f)}
        row, meta_source = _with_subject_fields(base, table)
        return item_from_row(row, rules, origin, meta_source)

    return ref, build


def scan_brats(source: PrepSource, *, allow_outside_root: bool = False) -> Ingested:
    """Work items of a BraTS folder: ``<root>/<case>/<case>_{t1,t1ce,t2,flair}.nii(.gz)``.

    With a subject table (``source.subjects_table``: a CSV ``subject,label[,metadata...]``), each
    case gets its row's label and metadata; the dataset-wide ``source.metadata`` fills the rest.
    """
    root = source.path.resolve()
    if not root.is_dir():
        raise fixable(ManifestError, f"BraTS folder {source.path} does not exist", "check the --brats path")
    dataset = source.dataset or root.name or "brats"
    metadata = parse_metadata(source.metadata, source=f"metadata for {dataset}")
    table = _subject_table(source, root)
    rules = RowRules(root=root, allow_outside_root=allow_outside_root, base_metadata=metadata,
                     meta_columns=table.meta_columns if table else ())
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [_brats_input(f, case_dir.name, dataset, rules, table) for case_dir in cases
            for f in sorted(case_dir.iterdir()) if not f.name.startswith(".") and is_nifti_name(f.name)]
    items, failures = _collect(rows)
    if not items and not failures:
        raise fixable(ManifestError, f"BraTS folder {source.path} holds no <case>/<case>_<modality>.nii.gz files",
                      "point --brats at the folder that contains the case folders")
    table_info, warnings = _table_info(table, (i.subject for i in items))
    return Ingested(items, failures, {"root": str(root), "cases": len(cases), "dataset": dataset, **table_info,
                                      "warnings": warnings})


# ---------------------------------------------------------------------------- slices
def scan_slices(source: PrepSource, *, allow_outside_root: bool = False) -> Ingested:
    """Work items of 2D slice folders: ``<root>/<class>/*.png|jpg|jpeg|tif|tiff``; label = class.

    Image folders carry no patient ids: unless ``source.subject_pattern`` extracts one from the
    file name, each image is its own subject for the subject-aware split, and slices of one
    patient spread over several files can land in different splits.
    """
    root = source.path.resolve()
    if not root.is_dir():
        raise fixable(ManifestError, f"slice folder {source.path} does not exist", "check the --slices path")
    dataset = source.dataset or root.name or "slices"
    modality = _modality(source.modality or DEFAULT_SLICE_MODALITY)
    metadata = parse_metadata(source.metadata, source=f"metadata for {dataset}")
    pattern = _compile(source.subject_pattern)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: list[Row] = []
    for class_dir in classes:
        label = class_dir.name
        for f in sorted(class_dir.iterdir()):
            if f.name.startswith(".") or f.is_dir() or not is_image_name(f.name):
                continue
            ref = InputRef(source_path=str(f), dataset=dataset, modality=modality, origin=f"class {label}")

            def build(f: Path = f, label: str = label, ref: InputRef = ref) -> WorkItem:
                subject = _slice_subject(f, label, pattern)
                src = resolve_inside(str(f), root, allow_outside_root)
                if not src.is_file():
                    raise fixable(InputError, f"{f}: file not found (dangling link?)",
                                  "restore the file or remove the link")
                return WorkItem(volume_id="__".join(sanitize(p) for p in (dataset, label, f.stem)),
                                source_path=str(src), subject=subject, session=None, dataset=dataset,
                                modality=modality, label=label, clinical=None, metadata=metadata,
                                origin=ref.origin)

            rows.append((ref, build))
    items, failures = _collect(rows)
    if not items and not failures:
        raise fixable(ManifestError, f"slice folder {source.path} holds no <class>/<image> files "
                                     "(.png/.jpg/.jpeg/.tif/.tiff)",
                      "point --slices at the folder that contains one sub-folder per class")
    return Ingested(items, failures, {"root": str(root), "classes": [c.name for c in classes], "dataset": dataset})


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"subject_pattern {pattern!r} is not a valid regular expression ({exc})") from None


def _slice_subject(path: Path, label: str, pattern: re.Pattern[str] | None) -> str:
    """Subject id of a slice image: the pattern's first group (or match) in the file stem, else class/stem."""
    if pattern is None:
        return f"{label}/{path.stem}"
    match = pattern.search(path.stem)
    if match is None or not (match.group(1) if pattern.groups else match.group(0)):
        raise fixable(ManifestError, f"file name {path.name!r} has no subject id matching {pattern.pattern!r}",
                      "rename the file or adjust subject_pattern")
    return match.group(1) if pattern.groups else match.group(0)


def collect(source: PrepSource, *, mask_column: str | None = None, allow_outside_root: bool = False) -> Ingested:
    """Dispatch on the source kind."""
    if source.kind == "manifest":
        return read_manifest(source.path, mask_column=mask_column, allow_outside_root=allow_outside_root)
    if mask_column is not None:
        raise fixable(ManifestError, f"a mask column ({mask_column!r}) needs a manifest source",
                      "use mask=True (foreground threshold) for BIDS, BraTS or slice folders")
    if source.kind == "bids":
        return scan_bids(source, allow_outside_root=allow_outside_root)
    if source.kind == "brats":
        return scan_brats(source, allow_outside_root=allow_outside_root)
    return scan_slices(source, allow_outside_root=allow_outside_root)
