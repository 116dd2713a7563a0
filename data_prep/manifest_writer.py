"""`bsynth manifest --from DIR`: write a manifest CSV for one's own folder of NIfTI files.

Every ``.nii`` / ``.nii.gz`` under DIR (hidden folders, ``*.zarr`` stores and, in a BIDS
dataset, ``derivatives/`` and ``sourcedata/`` left out) is classified into subject, session
and modality:

* with ``--pattern REGEX``: ``re.search`` on the path relative to DIR (``/``-separated) with the
  named groups ``(?P<subject>...)`` (required), ``(?P<modality>...)`` (else guessed from the
  file name as below), optionally ``(?P<session>...)`` and ``(?P<dataset>...)``; e.g.
  ``(?P<subject>[^/]+)/(?P<modality>[^/_]+)\\.nii`` for ``P001/T1.nii.gz``;
* otherwise from the name: a BIDS name (``sub-01_ses-1_T1w.nii.gz``, ``ce-`` T1w -> T1Gd), or
  ``<subject>_<modality>.nii.gz`` with a modality spelling prep knows at the end (``t1``,
  ``t1ce``, ``T2w``, ``flair``, ...; ``P001_t1ce.nii.gz``), or ``<subject>/<modality>.nii.gz``.
  A ``ses-*`` folder gives the session.

Files that cannot be classified (masks, segmentations, diffusion, names without a modality)
and duplicates of one (subject, session, modality) are printed with the reason and left out; the
kept duplicate is the one with the fewest extra BIDS entities. Paths are written relative to the
manifest's folder, so the manifest works with ``bsynth prep --manifest`` as it is and moves with
the data; prep refuses paths outside that folder unless ``--allow-outside-root``, so the default
``--out`` is ``DIR/manifest.csv``. Labels and metadata can then be added as columns (see the
manifest format in :mod:`bsynth_hpc.prep.ingest`).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from bsynth_hpc.constants import canonical_modality
from bsynth_hpc.errors import ConfigError, ManifestError

from .bids import DESCRIPTION_FILE, Skipped, bids_modality, dataset_name, nifti_stem, parse_bids_name
from .ingest import BRATS_SUFFIXES, REQUIRED_COLUMNS
from .loading import is_nifti_name
from .report import fixable

MANIFEST_NAME = "manifest.csv"
BIDS_NOT_RAW: frozenset[str] = frozenset({"derivatives", "sourcedata"})
_SEPARATORS = re.compile(r"[_\-.\s]+")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Guess:
    """What a file name says: subject, session, modality (canonical), and optionally the dataset."""

    subject: str
    session: str | None
    modality: str
    dataset: str | None = None
    preference: tuple = ()
    """Sort key among duplicates (smaller is kept)."""


@dataclass
class ManifestDraft:
    """The rows written, the files left out (with reasons) and warnings, for the console."""

    out: Path
    rows: list[dict[str, str]]
    unclassified: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- guessing
def _modality_token(token: str) -> str | None:
    """The canonical modality a name token spells (manifest aliases and BraTS suffixes), else None."""
    try:
        return canonical_modality(token)
    except KeyError:
        return BRATS_SUFFIXES.get(token.lower())


def split_modality(stem: str) -> tuple[str, str | None]:
    """(rest of the name, modality) when the name ends in a modality spelling, else (stem, None).

    Two-token spellings (``t2-flair``, ``t1_gd``) are tried before one-token ones.
    """
    tokens = [t for t in _SEPARATORS.split(stem) if t]
    for n in (2, 1):
        if len(tokens) < n:
            continue
        tail = tokens[-n:]
        for joiner in ("-", "_", ""):
            modality = _modality_token(joiner.join(tail))
            if modality is not None:
                rest = re.sub(r"[_\-.\s]+$", "", stem[: _tail_start(stem, tail)])
                return rest, modality
    return stem, None


def _tail_start(stem: str, tail: list[str]) -> int:
    """Index in ``stem`` where the last ``len(tail)`` tokens begin."""
    pos = len(stem)
    for token in reversed(tail):
        pos = stem.rfind(token, 0, pos)
    return pos


def _session_folder(rel: PurePosixPath) -> str | None:
    return next((p for p in rel.parent.parts if p.startswith("ses-")), None)


def _subject_folder(rel: PurePosixPath) -> str | None:
    """The nearest enclosing folder that is not a session or ``anat`` folder."""
    return next((p for p in reversed(rel.parent.parts) if not p.startswith("ses-") and p != "anat"), None)


def guess_from_name(rel: PurePosixPath) -> Guess | str:
    """Subject/session/modality from a BIDS or ``<subject>_<modality>`` name; else why not (a string)."""
    name = parse_bids_name(rel.name)
    if name is not None:
        modality, why = bids_modality(name)
        modality = modality or (None if "ce" in name.entities else _modality_token(name.suffix))
        if modality is None:
            return why
        return Guess(name.subject, name.session, modality, preference=name.preference())
    rest, modality = split_modality(nifti_stem(rel.name))
    if modality is None:
        return ("no modality at the end of the name (T1w, T2w, T1Gd, FLAIR, or a spelling such as t1, t1ce, "
                "t2, flair); pass --pattern to classify it")
    subject = rest or _subject_folder(rel)
    if not subject:
        return "no subject in the name or its folder; pass --pattern with (?P<subject>...)"
    return Guess(subject, _session_folder(rel), modality, preference=(9, 0, rel.as_posix()))


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """The --pattern regex; ConfigError when invalid or without a ``subject`` group."""
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--pattern {pattern!r} is not a valid regular expression ({exc})") from None
    if "subject" not in regex.groupindex:
        raise ConfigError(f"--pattern {pattern!r} has no (?P<subject>...) group: name the part that is the subject "
                          "(and (?P<modality>...) for the contrast)")
    return regex


def guess_with_pattern(rel: PurePosixPath, regex: re.Pattern[str]) -> Guess | str:
    """Subject/modality/session/dataset from the regex's named groups (modality else from the name)."""
    match = regex.search(rel.as_posix())
    if match is None:
        return f"does not match --pattern {regex.pattern!r}"
    groups = {k: v for k, v in match.groupdict().items() if v}
    if not groups.get("subject"):
        return "--pattern matched an empty subject"
    if "modality" in groups:
        modality = _modality_token(groups["modality"])
        if modality is None:
            return (f"modality {groups['modality']!r} from --pattern is not one prep knows "
                    "(T1w, T2w, T1Gd, FLAIR, or t1, t1ce, t2, flair, ...)")
    else:
        guessed = guess_from_name(rel)
        if isinstance(guessed, str):
            return guessed
        modality = guessed.modality
    return Guess(groups["subject"], groups.get("session") or _session_folder(rel), modality,
                 dataset=groups.get("dataset"), preference=(0, 0, rel.as_posix()))


# ---------------------------------------------------------------------------- listing
def find_nifti(root: Path) -> Iterator[Path]:
    """NIfTI files under ``root``, sorted, without hidden folders, stores and BIDS non-raw folders."""
    bids = (root / DESCRIPTION_FILE).is_file()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr")
                         and not (bids and here == root and d in BIDS_NOT_RAW))
        for name in sorted(files):
            if not name.startswith(".") and is_nifti_name(name):
                yield here / name


def _classify(root: Path, regex: re.Pattern[str] | None) -> tuple[list[tuple[Path, Guess]], list[Skipped]]:
    found, unclassified = [], []
    for path in find_nifti(root):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        guess = guess_with_pattern(rel, regex) if regex is not None else guess_from_name(rel)
        if isinstance(guess, str):
            unclassified.append(Skipped(rel.as_posix(), guess))
        else:
            found.append((path, guess))
    return found, unclassified


def _one_per_volume(found: list[tuple[Path, Guess]], dataset: str,
                    root: Path) -> tuple[list[tuple[Path, Guess]], list[Skipped]]:
    """Keep the preferred file per (dataset, subject, session, modality); the rest are duplicates."""
    groups: dict[tuple[str, str, str | None, str], list[tuple[Path, Guess]]] = {}
    for path, g in found:
        groups.setdefault((g.dataset or dataset, g.subject, g.session, g.modality), []).append((path, g))
    kept, duplicates = [], []
    for group in groups.values():
        group.sort(key=lambda pg: (pg[1].preference, str(pg[0])))
        kept.append(group[0])
        first = group[0][0].relative_to(root).as_posix()
        duplicates += [Skipped(p.relative_to(root).as_posix(),
                               f"another {g.modality} file of {g.subject} {g.session or ''}".rstrip()
                               + f" is listed: {first}; edit the manifest to choose") for p, g in group[1:]]
    return sorted(kept, key=lambda pg: str(pg[0])), duplicates


# ---------------------------------------------------------------------------- writing
def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _write_csv(rows: list[dict[str, str]], out: Path) -> None:
    """Write the manifest atomically (a temporary file renamed over ``out``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(REQUIRED_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise fixable(ManifestError, f"--out {out} is a folder", f"name the CSV file, e.g. {out / MANIFEST_NAME}")
    if out.exists() and not overwrite:
        raise fixable(ManifestError, f"--out {out} exists", "pass --force to replace it, or another --out path")


def _no_rows_error(root: Path, unclassified: list[Skipped]) -> ManifestError:
    if not unclassified:
        return fixable(ManifestError, f"no .nii/.nii.gz files under {root}", "check the --from folder")
    examples = "; ".join(f"{s.path}: {s.reason}" for s in unclassified[:MAX_EXAMPLES])
    return fixable(ManifestError, f"none of the {len(unclassified)} NIfTI files under {root} could be classified "
                                  f"(e.g. {examples})",
                   "pass --pattern with (?P<subject>...) and (?P<modality>...) groups, or rename the files")


def manifest_from_folder(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                         pattern: str | None = None, dataset: str | None = None,
                         overwrite: bool = False) -> ManifestDraft:
    """Classify the NIfTI files under ``root`` and write the manifest (see the module docstring)."""
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise fixable(ManifestError, f"--from {root} is not a folder", "pass the folder that holds the NIfTI files")
    out_path = Path(out) if out is not None else root_path / MANIFEST_NAME
    _check_out(out_path, overwrite)
    regex = compile_pattern(pattern)
    name, warning = dataset_name(root_path)
    dataset = dataset or name
    found, unclassified = _classify(root_path, regex)
    kept, duplicates = _one_per_volume(found, dataset, root_path)
    unclassified = sorted(unclassified + duplicates, key=lambda s: s.path)
    if not kept:
        raise _no_rows_error(root_path, unclassified)
    base = out_path.absolute().parent
    rows = [{"subject": g.subject, "session": g.session or "", "dataset": g.dataset or dataset,
             "modality": g.modality, "path": _relative(p, base)} for p, g in kept]
    warnings = [w for w in [warning] if w]
    if any(r["path"].startswith("../") for r in rows):
        warnings.append(f"the manifest lies outside {root_path}: `bsynth prep --manifest` needs --allow-outside-root "
                        f"for it (or write it into {root_path})")
    _write_csv(rows, out_path)
    return ManifestDraft(out_path, rows, unclassified, warnings)


def format_draft(draft: ManifestDraft) -> str:
    """Console summary: what was written, each file left out with its reason, the next command."""
    subjects = len({(r["dataset"], r["subject"]) for r in draft.rows})
    counts: dict[str, int] = {}
    for r in draft.rows:
        counts[r["modality"]] = counts.get(r["modality"], 0) + 1
    per = ", ".join(f"{m}: {n}" for m, n in sorted(counts.items()))
    lines = [f"manifest: {len(draft.rows)} volume(s) of {subjects} subject(s) ({per}) -> {draft.out}"]
    lines += [f"  warning: {w}" for w in draft.warnings]
    if draft.unclassified:
        lines.append(f"  not classified ({len(draft.unclassified)} file(s), left out):")
        lines += [f"    {s.path}: {s.reason}" for s in draft.unclassified]
    store = draft.out.absolute().parent.with_name(draft.out.absolute().parent.name + "_store.zarr")
    lines.append(f"next: bsynth prep --manifest {draft.out} --out {store}")
    return "\n".join(lines)
