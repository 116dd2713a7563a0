"""Subject-aware, deterministic train/val/test splits (seed 003 §2.2.1, Table 1).

A *subject* is identified by ``"<dataset>/<subject>"`` because subject ids repeat across
datasets; every volume of a subject (all modalities, all sessions) gets the subject's split,
so no subject leaks between splits.

Two methods:

* ``"hash"`` (default): the split of a subject is a pure function of (key, seed, fractions):
  ``u = sha256(f"{seed}:{key}") / 2**64`` in [0, 1), train if ``u < f_train``, val if
  ``u < f_train + f_val``, else test. Adding subjects never moves existing ones, so a store
  extended with new datasets keeps its old test set. Split sizes match the fractions in
  expectation (binomial spread), which is what large cohorts need. In tiny cohorts a split with
  a positive fraction that hashing left empty gets the nearest subject moved into it
  (`_fill_empty_splits`), so validation always has data; that repair is the one exception to
  stability and only occurs while a split would otherwise be empty.
* ``"stratified"``: within each stratum (e.g. the dataset, or the set of modalities a subject
  has), subjects are ordered by the same hash and cut at largest-remainder quotas, so every
  stratum is split as close to the fractions as integers allow (useful for rare strata such
  as the T1Gd subjects). The price: adding subjects to a stratum may move a few subjects of
  that stratum across splits.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

from ..errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
METHODS: tuple[str, ...] = ("hash", "stratified")


def subject_key(dataset: object, subject: object) -> str:
    """The store-wide subject identity ``"<dataset>/<subject>"``."""
    return f"{dataset}/{subject}"


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) fractions: three non-negative numbers summing to 1."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions {tuple(fractions)} are invalid: give three non-negative numbers "
            "(train, val, test) that sum to 1, e.g. (0.8, 0.1, 0.1)"
        )
    return fr  # type: ignore[return-value]


def check_split(split: str | None) -> str | None:
    """Validate a split name (None = all splits)."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} (or None for all volumes)")
    return split


def hash_unit(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by (seed, key) alone, equal on every platform."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """The hash-method split of one subject key."""
    f_train, f_val, _ = check_fractions(fractions)
    u = hash_unit(key, seed)
    if u < f_train:
        return "train"
    if u < f_train + f_val:
        return "val"
    return "test"


def _quotas(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder integer quotas of n items (ties go to the earlier split)."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _fill_empty_splits(assignment: dict[str, str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Tiny cohorts: give every split with a positive fraction at least one subject.

    Hashing can leave a split empty when there are few subjects (16 subjects at 10% leave
    val empty with probability 0.9^16 = 19%), which breaks validation. The repair moves, from
    a split that keeps at least one member, the subject whose hash lies closest to the empty
    split's interval. It changes nothing when every split is already populated, so the hash
    method stays stable for real cohorts.
    """
    wanted = [name for name, f in zip(SPLITS, fractions) if f > 0]
    if len(assignment) < len(wanted):
        return assignment
    bounds = dict(zip(SPLITS, zip(_cumulative(fractions)[:-1], _cumulative(fractions)[1:])))
    for name in wanted:
        counts = Counter(assignment.values())
        if counts[name]:
            continue
        lo, hi = bounds[name]
        donors = [k for k, s in assignment.items() if s != name and counts[s] > 1]
        best = min(donors, key=lambda k: (min(abs(hash_unit(k, seed) - lo), abs(hash_unit(k, seed) - hi)), k))
        assignment[best] = name
    return assignment


def _cumulative(fractions: Sequence[float]) -> list[float]:
    out = [0.0]
    for f in fractions:
        out.append(out[-1] + f)
    return out


def split_subjects(keys: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                   method: str = "hash", strata: Mapping[str, Hashable] | None = None) -> dict[str, str]:
    """Assign every subject key to "train" | "val" | "test" (see the module docstring).

    ``strata`` maps key -> stratum and is required by (only used with) ``method="stratified"``.
    """
    fr = check_fractions(fractions)
    unique = sorted(set(keys))
    if method == "hash":
        return _fill_empty_splits({k: assign_split(k, fr, seed) for k in unique}, fr, seed)
    if method != "stratified":
        raise ConfigError(f"unknown split method {method!r}: use one of {', '.join(METHODS)}")
    if strata is None:
        raise ConfigError("split method 'stratified' needs strata (a subject key -> stratum mapping)")
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for k in unique:
        if k not in strata:
            raise ConfigError(f"subject {k!r} has no stratum: give every subject key a stratum")
        groups[strata[k]].append(k)
    out: dict[str, str] = {}
    for members in groups.values():
        members.sort(key=lambda k: (hash_unit(k, seed), k))
        start = 0
        for name, count in zip(SPLITS, _quotas(len(members), fr)):
            for k in members[start:start + count]:
                out[k] = name
            start += count
    return out
