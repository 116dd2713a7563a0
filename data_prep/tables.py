"""Small text tables prep reads besides the manifest: a *subject table* (one row per subject).

A subject table gives each subject a label and metadata; the same reader serves BIDS'
``participants.tsv`` and the ``--subjects-table`` / ``--labels`` CSV of a BraTS folder, so the
two behave identically:

* UTF-8 text, tab- or comma-separated (sniffed from the header line; BIDS TSVs are tab-separated
  and unquoted);
* an id column ``participant_id`` (BIDS), ``subject``, ``subject_id`` or ``case``; ids match with
  or without the BIDS ``sub-`` prefix (``01`` and ``sub-01`` are one subject);
* the label column: ``label_column`` (``--label-column COL``, e.g. ``group`` or ``diagnosis``),
  else a column named ``label`` if there is one, else none;
* every column named as one of the 25 metadata fields (``age``, ``sex``, ...) is metadata; its
  values are parsed and validated later by the manifest row builder (one code path, so a bad
  value fails only that subject's volumes, naming the table line). Other columns are ignored
  with one warning, naming the closest known field (``Age`` -> ``age``).

The UTF-8 decoding and the column warnings are shared with the manifest reader.
"""
from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from bsynth_hpc.data.metadata import FIELD_NAMES
from bsynth_hpc.errors import ManifestError

from .report import fixable

ID_COLUMNS: tuple[str, ...] = ("participant_id", "subject", "subject_id", "case")
DEFAULT_LABEL_COLUMN = "label"
BIDS_SUBJECT_PREFIX = "sub-"


def decode_utf8(path: Path, what: str = "manifest") -> str:
    """The file decoded as UTF-8 (BOM dropped); ManifestError naming the byte for any other encoding."""
    raw = path.read_bytes()
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        return raw[3 if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = exc.start + (3 if bom else 0)
        line = raw[:pos].count(b"\n") + 1
        raise fixable(ManifestError, f"{what} {path} is not UTF-8 text (byte 0x{raw[pos]:02x} at byte "
                                     f"position {pos}, line {line}; probably Latin-1/Windows-1252)",
                      "save it as UTF-8 (spreadsheet: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8 in.csv > out.csv`)"
                      ) from None


def column_warnings(ignored: Iterable[str], known: Iterable[str], what: str = "manifest column",
                    hint: str = "") -> list[str]:
    """One warning per ignored column that looks like a misspelt known field, one for the rest."""
    lowered = {k.lower(): k for k in known}
    warnings, unknown = [], []
    for col in ignored:
        match = difflib.get_close_matches(col.lower(), list(lowered), n=1, cutoff=0.75)
        if match:
            warnings.append(f"{what} {col!r} is not a known field and is ignored; did you mean "
                            f"{lowered[match[0]]!r}? (rename the column to use it)")
        else:
            unknown.append(col)
    if unknown:
        warnings.append(f"{what}(s) {', '.join(map(repr, unknown))} are not known fields and are ignored{hint}")
    return warnings


def subject_key(subject: str) -> str:
    """The id a subject table row and an input are matched by: ``sub-01`` and ``01`` are the same."""
    text = subject.strip()
    return text[len(BIDS_SUBJECT_PREFIX):] if text.startswith(BIDS_SUBJECT_PREFIX) else text


@dataclass(frozen=True)
class SubjectTable:
    """Label and raw metadata per subject, read by :func:`read_subject_table`."""

    path: Path
    id_column: str
    label_column: str | None
    meta_columns: tuple[str, ...]
    ignored_columns: tuple[str, ...]
    rows: Mapping[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    """:func:`subject_key` -> (line number, row)."""

    def has(self, subject: str) -> bool:
        return subject_key(subject) in self.rows

    def fields(self, subject: str) -> dict[str, str]:
        """Manifest-style cells for one subject: ``label`` and the metadata columns ({} if absent)."""
        found = self.rows.get(subject_key(subject))
        if found is None:
            return {}
        row = found[1]
        cells = {c: row.get(c, "") for c in self.meta_columns}
        cells["label"] = row.get(self.label_column, "") if self.label_column else ""
        return cells

    def origin(self, subject: str) -> str | None:
        """Where the subject's row is (``participants.tsv line 4``), None when it has none."""
        found = self.rows.get(subject_key(subject))
        return f"{self.path.name} line {found[0]}" if found else None

    def warnings(self) -> list[str]:
        hint = ("; metadata columns must be named as the 25 schema fields (see README), and "
                "--label-column COL makes one of them the label")
        return column_warnings(self.ignored_columns, FIELD_NAMES, what=f"{self.path.name} column", hint=hint)

    def describe(self) -> dict[str, object]:
        """Facts for the prep report."""
        return {"path": str(self.path), "id_column": self.id_column, "label_column": self.label_column,
                "metadata_columns": list(self.meta_columns), "ignored_columns": list(self.ignored_columns),
                "subjects": len(self.rows)}


def _delimiter(header_line: str, path: Path) -> str:
    """Tab or comma, whichever the header uses; ManifestError for semicolon/pipe tables."""
    if header_line.count("\t") >= max(1, header_line.count(",")):
        return "\t"
    if "," in header_line or not any(d in header_line for d in ";|"):
        return ","
    raise fixable(ManifestError, f"subject table {path} looks semicolon/pipe-delimited",
                  "save it tab-separated (.tsv) or comma-separated (.csv)")


def _header(reader: csv.DictReader, path: Path) -> list[str]:
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise fixable(ManifestError, f"subject table {path} is empty (no header row)",
                      f"write a header with an id column ({' or '.join(ID_COLUMNS)})")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise fixable(ManifestError, f"subject table {path} repeats column(s) {', '.join(duplicated)}",
                      "keep one column of each name")
    return header


def _id_column(header: list[str], path: Path) -> str:
    for name in ID_COLUMNS:
        if name in header:
            return name
    raise fixable(ManifestError, f"subject table {path} has no subject id column (columns: {', '.join(header)})",
                  f"name the id column {ID_COLUMNS[0]} (BIDS) or subject")


def _label_column(header: list[str], wanted: str | None, path: Path) -> str | None:
    if wanted is None:
        return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in header else None
    if wanted not in header:
        raise fixable(ManifestError, f"subject table {path} has no column {wanted!r} for --label-column "
                                     f"(columns: {', '.join(header)})",
                      "pass one of those columns to --label-column, or add the column")
    return wanted


def _rows(reader: csv.DictReader, id_column: str, path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """Rows by subject key; ManifestError for a row without an id or a subject listed twice."""
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    for row in reader:
        cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if not any(cells.values()):
            continue  # blank line
        line = reader.line_num
        subject = cells.get(id_column, "")
        if not subject:
            raise fixable(ManifestError, f"{path.name} line {line}: the {id_column} cell is empty",
                          "fill in the subject id or delete the row")
        key = subject_key(subject)
        if key in rows:
            raise fixable(ManifestError, f"{path.name} line {line} repeats subject {subject!r} "
                                         f"(first on line {rows[key][0]})", "keep one row per subject")
        rows[key] = (line, cells)
    return rows


def read_subject_table(path: str | Path, label_column: str | None = None) -> SubjectTable:
    """Read a subject table (see the module docstring); ManifestError when it cannot be used at all."""
    path = Path(path)
    if not path.is_file():
        raise fixable(ManifestError, f"subject table {path} does not exist",
                      "check the --subjects-table path (for BIDS: ROOT/participants.tsv)")
    text = decode_utf8(path, what="subject table")
    delimiter = _delimiter(text.split("\n", 1)[0], path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
        header = _header(reader, path)
        reader.fieldnames = header
        id_column = _id_column(header, path)
        label = _label_column(header, label_column, path)
        rows = _rows(reader, id_column, path)
    meta = tuple(c for c in header if c in FIELD_NAMES and c != id_column)  # a field may also be the label
    ignored = tuple(c for c in header if c not in {id_column, label} and c not in meta)
    return SubjectTable(path=path, id_column=id_column, label_column=label, meta_columns=meta,
                        ignored_columns=ignored, rows=rows)
