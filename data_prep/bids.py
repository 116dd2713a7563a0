"""BIDS anatomical files: name parsing, modality mapping, and choosing one file per volume.

Raw BIDS keeps structural scans at ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]
[_<key>-<value>...]_<suffix>.nii[.gz]``. Suffixes map to the store's modalities:

==============================  ==========
``T1w``                         T1w
``T1w`` with a ``ce-`` entity   T1Gd  (e.g. ``sub-01_ce-gadolinium_T1w.nii.gz``)
``T2w``                         T2w
``FLAIR``                       FLAIR
==============================  ==========

Everything else under ``anat/`` (``T2starw``, ``PDw``, ``angio``, defacing masks, a
contrast-enhanced T2w/FLAIR, names that are not BIDS) is *skipped*: listed with the reason,
never an error. So are duplicates: when several files give one (subject, session, modality) —
``acq-`` variants, ``rec-`` reconstructions, repeated ``run-`` — the one with the fewest extra
entities is kept (then the lowest run, then the name), the others are skipped naming the kept
file; a manifest (``bsynth manifest --from``) chooses differently. ``derivatives/``,
``sourcedata/`` and sidecar files (``.json``) are not read.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .loading import is_nifti_name

BIDS_SUFFIXES: dict[str, str] = {"T1w": "T1w", "T2w": "T2w", "FLAIR": "FLAIR"}
CONTRAST_ENTITY = "ce"
NEUTRAL_ENTITIES: frozenset[str] = frozenset({"sub", "ses", "run", CONTRAST_ENTITY})
"""Entities that do not make a file a variant (acq, rec, desc, ... do)."""
DESCRIPTION_FILE = "dataset_description.json"

_KEY_VALUE = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9]+)$")
_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class BidsName:
    """The entities (in file order) and suffix of a BIDS file name."""

    entities: dict[str, str]
    suffix: str

    @property
    def subject(self) -> str:
        return f"sub-{self.entities['sub']}"

    @property
    def session(self) -> str | None:
        return f"ses-{self.entities['ses']}" if "ses" in self.entities else None

    def preference(self) -> tuple[int, int, str]:
        """Sort key among files of one volume: fewest variant entities, lowest run, then name order."""
        variants = sum(k not in NEUTRAL_ENTITIES for k in self.entities)
        run = self.entities.get("run", "0")
        return variants, int(run) if run.isdigit() else 0, "_".join(f"{k}-{v}" for k, v in self.entities.items())


@dataclass(frozen=True)
class Skipped:
    """A file prep found and did not use, with the reason (for the report and the console)."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class BidsFile:
    """One anatomical volume chosen from a BIDS folder."""

    path: Path
    subject: str
    session: str | None
    modality: str
    name: BidsName


def nifti_stem(file_name: str) -> str:
    """The name without ``.nii`` / ``.nii.gz``."""
    lower = file_name.lower()
    return file_name[: -len(".nii.gz")] if lower.endswith(".nii.gz") else file_name[: -len(".nii")]


def parse_bids_name(file_name: str) -> BidsName | None:
    """Entities and suffix of ``sub-01_ses-1_ce-gd_T1w.nii.gz``; None when the name is not BIDS."""
    parts = nifti_stem(file_name).split("_")
    if len(parts) < 2 or not _SUFFIX.match(parts[-1]):
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        match = _KEY_VALUE.match(part)
        if match is None or match.group(1) in entities:
            return None
        entities[match.group(1)] = match.group(2)
    if next(iter(entities)) != "sub":
        return None
    return BidsName(entities, parts[-1])


def bids_modality(name: BidsName) -> tuple[str | None, str]:
    """(store modality, "") for a usable suffix, else (None, why it is skipped)."""
    modality = BIDS_SUFFIXES.get(name.suffix)
    if modality is None:
        return None, (f"suffix {name.suffix!r} is not a structural contrast prep stores "
                      f"({', '.join(BIDS_SUFFIXES)}, or ce-<agent>_T1w for T1Gd)")
    if CONTRAST_ENTITY in name.entities:
        if modality == "T1w":
            return "T1Gd", ""
        return None, f"contrast-enhanced {modality} has no store modality (only ce-<agent>_T1w -> T1Gd)"
    return modality, ""


def dataset_name(root: Path) -> tuple[str, str | None]:
    """(name, warning): ``Name`` of dataset_description.json, else the folder's name."""
    description = root / DESCRIPTION_FILE
    if not description.is_file():
        return root.name, None
    try:
        name = json.loads(description.read_text(encoding="utf-8")).get("Name")
    except (OSError, ValueError, AttributeError) as exc:
        return root.name, f"{description} is unreadable ({exc}); using the folder name {root.name!r} as the dataset"
    if not isinstance(name, str) or not name.strip():
        return root.name, None
    return name.strip(), None


def anat_folders(root: Path) -> list[Path]:
    """``sub-*/anat`` and ``sub-*/ses-*/anat`` folders, sorted."""
    folders = []
    for sub in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        folders.append(sub / "anat")
        folders.extend(sorted(s / "anat" for s in sub.glob("ses-*") if s.is_dir()))
    return [f for f in folders if f.is_dir()]


def _classify(path: Path, anat: Path) -> BidsFile | Skipped:
    """A usable BidsFile, or why the file is skipped (not BIDS, wrong folder, other suffix)."""
    name = parse_bids_name(path.name)
    if name is None:
        return Skipped(str(path), "not a BIDS file name (sub-<label>[_ses-<label>][_<key>-<value>]_<suffix>.nii.gz)")
    folder_sub = anat.parent.name if anat.parent.name.startswith("sub-") else anat.parent.parent.name
    folder_ses = anat.parent.name if anat.parent.name.startswith("ses-") else None
    if (name.subject, name.session) != (folder_sub, folder_ses):
        return Skipped(str(path), f"its entities name {_who(name.subject, name.session)} but it lies in "
                                  f"{'/'.join(p for p in (folder_sub, folder_ses) if p)}/")
    modality, why = bids_modality(name)
    if modality is None:
        return Skipped(str(path), why)
    return BidsFile(path, name.subject, name.session, modality, name)


def _who(subject: str, session: str | None) -> str:
    return f"{subject} {session}" if session else subject


def choose_one_per_volume(files: Iterable[BidsFile]) -> tuple[list[BidsFile], list[Skipped]]:
    """Keep the preferred file of each (subject, session, modality); skip the others naming it."""
    groups: dict[tuple[str, str | None, str], list[BidsFile]] = {}
    for f in files:
        groups.setdefault((f.subject, f.session, f.modality), []).append(f)
    kept, skipped = [], []
    for group in groups.values():
        group.sort(key=lambda f: f.name.preference())
        kept.append(group[0])
        skipped += [Skipped(str(f.path), f"another {f.modality} file of {_who(f.subject, f.session)} is used: "
                                         f"{group[0].path.name} (fewest acq/rec/run entities); list the one you "
                                         "want in a manifest to choose") for f in group[1:]]
    return sorted(kept, key=lambda f: str(f.path)), skipped


def find_anat_files(root: Path) -> tuple[list[BidsFile], list[Skipped]]:
    """Every usable anatomical volume of a raw BIDS folder, and the NIfTI files skipped (with reasons)."""
    usable: list[BidsFile] = []
    skipped: list[Skipped] = []
    for anat in anat_folders(root):
        for path in sorted(anat.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not is_nifti_name(path.name):
                continue
            found = _classify(path, anat)
            (usable if isinstance(found, BidsFile) else skipped).append(found)
    kept, duplicates = choose_one_per_volume(usable)
    return kept, sorted(skipped + duplicates, key=lambda s: s.path)
