"""Atomic, checksummed training checkpoints under RUN/checkpoints/step-XXXXXXXX/.

Protocol (every rank takes part):

1. rank 0 creates ``RUN/checkpoints/.partial-step-XXXXXXXX/`` (removing a leftover one);
2. every rank writes its files there (rank-local RNG, ZeRO shards, ...); each file is itself
   written to a temporary name, fsynced and renamed;
3. the ranks agree that every write succeeded; then rank 0 reads every file of the staging
   directory back (SHA-256, and an fsync for the files DeepSpeed wrote itself), writes
   ``meta.json`` (step, and per file its size and SHA-256) and renames the directory to
   ``step-XXXXXXXX`` - the one atomic commit;
4. rank 0 prunes: the newest ``keep_last`` intact checkpoints and the best one stay.

A process killed anywhere before step 3's rename leaves only a ``.partial-*`` directory,
which ``latest()`` never returns and the next save removes; the previous checkpoint is
untouched.

Checks, cheap and full. A directory counts as complete (``is_complete``, used for listing and
retention) when its name is ``step-XXXXXXXX`` and its ``meta.json`` lists files that all exist
with the recorded sizes. Before a checkpoint is resumed, ``verify`` also recomputes every
file's SHA-256, so bit rot inside a tensor cannot resume silently; what it finds is one line
naming the file and the damage (missing, truncated, checksum mismatch; the trainer adds
"unreadable" when ``torch.load`` fails). Checkpoints written before checksums existed
(``"files": {name: size}``) are checked by size only.

Damaged checkpoints are never deleted: the manager remembers those found damaged
(``mark_damaged``) and leaves them out of ``complete()``, so retention never counts one as
a checkpoint to keep; a step saved again over a damaged directory moves that directory to
``damaged-step-XXXXXXXX`` first, for inspection.

Contents (written by :class:`~bsynth_hpc.engine.trainer.Trainer`): ``trainer.pt`` (rank 0: step,
data-stream position, LR schedules, unsharded EMA, NaN counters, best metric, the stage's own
state ``Stage.state_dict()`` under ``"stage"``), ``ranks/rank-XXXXX.pt`` (each rank: RNG states,
sharded EMA), and per model either ``models/<model>.pt`` (single/DDP: weights, optimizer, grad
scaler) or ``deepspeed/<model>/`` (ZeRO shards of every rank).

Everything is read back with ``torch.load(weights_only=True)``; a file it cannot read raises
:class:`CheckpointDamagedError` with our own description (never PyTorch's advice to turn the
safe loading off).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ..hashing import sha256_file
from .distributed import Comm
from .errors import CheckpointDamagedError, CheckpointError

STEP_RE = re.compile(r"^step-(\d{8})$")
META = "meta.json"
BEST = "best.json"
DAMAGED_PREFIX = "damaged-"
_HASH_THREADS = max(1, min(8, os.cpu_count() or 1))
_T = TypeVar("_T")
_R = TypeVar("_R")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, fsync, rename: the file is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    """Atomic JSON write (temporary file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- reading torch files
def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an exception text, without terminal colour codes, at most ``limit`` characters."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()
    sentence = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return sentence[:limit] + ("..." if len(sentence) > limit else "")


def describe_load_error(exc: BaseException) -> str:
    """What a failed torch.load means, in our words: PyTorch's own text advises turning the safe
    (weights_only) loading off, which must never reach a user of a possibly tampered file."""
    text = str(exc)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return f"it holds an object of type {unsupported.group(1)}, which safe loading refuses"
    if "zip archive" in text or "PytorchStreamReader" in text or "central directory" in text:
        return f"not a readable zip archive ({_first_sentence(text)})"
    if isinstance(exc, EOFError) or not text.strip():
        return f"its data ends early ({type(exc).__name__})"
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    detail = _first_sentence(unpickler.group(1) if unpickler else text)
    if "weights_only" in detail or "torch.load" in detail:
        detail = ""
    return f"its contents are garbled ({type(exc).__name__}{': ' + detail if detail else ''})"


def _in_checkpoint(path: Path) -> str:
    """``path`` relative to the step-XXXXXXXX directory holding it (just its name outside one)."""
    for parent in path.parents:
        if STEP_RE.match(parent.name):
            return str(path.relative_to(parent))
    return path.name


def load_torch(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """torch.load(weights_only=True); a missing or unreadable file raises CheckpointDamagedError naming it."""
    if not path.is_file():
        raise CheckpointDamagedError(f"checkpoint file {path} is missing: the checkpoint is incomplete or was "
                                     "written by another backend", problem=f"{_in_checkpoint(path)}: missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # `from None`: torch's own text (advising unsafe loading) stays out of tracebacks
        what = describe_load_error(exc)
        raise CheckpointDamagedError(
            f"cannot read {path}: {what}; the file is damaged or was not written by this engine: resume from another "
            "checkpoint (--resume auto takes the newest intact one)",
            problem=f"{_in_checkpoint(path)}: unreadable ({what})") from None


# ---------------------------------------------------------------------------- checksums
def _map_threads(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """``[fn(x) for x in items]`` on a few threads (hashlib and file reads release the GIL)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(_HASH_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def _files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != META]


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``directory`` except meta.json."""
    paths = _files(directory)
    digests = _map_threads(lambda p: sha256_file(p, sync=True), paths)
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": h} for p, h in zip(paths, digests)}


def _entry(value: Any) -> tuple[int, str | None]:
    """(size, sha256 or None) of one meta.json ``files`` entry: new ``{"size", "sha256"}`` or old bare size."""
    if isinstance(value, dict):
        sha = value.get("sha256")
        return int(value["size"]), str(sha) if sha else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"bad entry {value!r}")
    return value, None


def _meta_entries(directory: Path) -> dict[str, tuple[int, str | None]] | str:
    """The files meta.json lists, or a one-line problem with meta.json itself."""
    path = directory / META
    if not path.is_file():
        return f"{META}: missing (the checkpoint was never committed)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not meta.get("complete"):
            return f"{META}: not marked complete"
        return {str(rel): _entry(value) for rel, value in dict(meta.get("files", {})).items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError,
            ValueError) as exc:
        return f"{META}: unreadable ({type(exc).__name__})"


def _size_problem(directory: Path, rel: str, size: int) -> str | None:
    path = directory / rel
    if not path.is_file():
        return f"{rel}: missing"
    actual = path.stat().st_size
    if actual < size:
        return f"{rel}: truncated ({actual} of {size} bytes)"
    if actual > size:
        return f"{rel}: size changed ({actual} bytes, {META} records {size})"
    return None


def _checksum_problem(directory: Path, rel: str, expected: str) -> str | None:
    try:
        actual = sha256_file(directory / rel)
    except OSError as exc:
        return f"{rel}: unreadable ({exc.strerror or type(exc).__name__})"
    if actual != expected:
        return f"{rel}: checksum mismatch (its SHA-256 differs from {META}: the file changed after it was written)"
    return None


def problems(directory: Path, checksums: bool = True) -> list[str]:
    """Everything wrong with a checkpoint directory, one line each (empty: intact). Sizes always;
    SHA-256 too when ``checksums`` and the checkpoint recorded them (old ones did not)."""
    if not STEP_RE.match(directory.name):
        return [f"{directory.name} is not a step-XXXXXXXX checkpoint directory"]
    entries = _meta_entries(directory)
    if isinstance(entries, str):
        return [entries]
    found = [p for rel, (size, _) in entries.items() if (p := _size_problem(directory, rel, size))]
    if found or not checksums:
        return found
    hashed = [(rel, sha) for rel, (_, sha) in entries.items() if sha]
    return [p for p in _map_threads(lambda item: _checksum_problem(directory, *item), hashed) if p]


def verify(directory: Path, checksums: bool = True) -> str | None:
    """None when the checkpoint is intact, else one line: the first problem (and how many more)."""
    found = problems(directory, checksums)
    if not found:
        return None
    return found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")


def is_complete(directory: Path) -> bool:
    """Name step-XXXXXXXX, meta.json present and every listed file present with its size (no hashing)."""
    return not problems(directory, checksums=False)


def read_meta(directory: Path) -> dict[str, Any]:
    problem = verify(directory, checksums=False)
    if problem is not None:
        raise CheckpointDamagedError(f"{directory} is not a complete checkpoint ({problem}): pick another one or "
                                     "use --resume auto")
    return json.loads((directory / META).read_text(encoding="utf-8"))


class CheckpointManager:
    """Writes, lists, prunes and finds checkpoints of one run directory (module docstring)."""

    def __init__(self, run_dir: Path, comm: Comm, keep_last: int = 3, keep_best: bool = True,
                 before_commit: Callable[[int], None] | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.comm = comm
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.before_commit = before_commit
        self.damaged: dict[str, str] = {}  # directory name -> problem, found by this process

    # ------------------------------------------------------------------ listing
    def steps(self) -> list[tuple[int, Path]]:
        """(step, dir) of every ``step-XXXXXXXX`` directory, intact or not, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((int(m.group(1)), d) for d in self.root.iterdir()
                      if (m := STEP_RE.match(d.name)) and d.is_dir())

    def complete(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint not found damaged, oldest first."""
        return [(step, d) for step, d in self.steps() if d.name not in self.damaged and is_complete(d)]

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1][1] if found else None

    def mark_damaged(self, directory: Path, problem: str) -> None:
        """Leave ``directory`` out of listing and retention (it is kept on disk, never deleted)."""
        self.damaged[Path(directory).name] = problem

    def best(self) -> dict[str, Any] | None:
        path = self.root / BEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    # ------------------------------------------------------------------ writing
    def save(self, step: int, write: Callable[[Path], None], meta: dict[str, Any],
             best: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` with ``write(staging_dir)`` on every rank; returns the final dir."""
        staging = self.root / f".partial-{step_dir_name(step)}"
        final = self.root / step_dir_name(step)
        if self.comm.rank == 0:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.comm.barrier()
        error: BaseException | None = None
        try:
            write(staging)
        except Exception as exc:  # every rank must learn that the checkpoint failed
            error = exc
        if self.comm.any(error is not None):
            raise CheckpointError(f"writing checkpoint {final} failed on at least one rank"
                                  + (f": {error}" if error else "; see the other ranks' logs")) from error
        if self.before_commit is not None:
            self.before_commit(step)
        if self.comm.rank == 0:
            self._commit(staging, final, step, meta)
            if best is not None:
                write_json({**best, "step": step, "path": final.name}, self.root / BEST)
            self.prune()
        self.comm.barrier()
        self.damaged.pop(final.name, None)
        return final

    def _commit(self, staging: Path, final: Path, step: int, meta: dict[str, Any]) -> None:
        write_json({**meta, "step": step, "complete": True, "time": time.time(), "files": _manifest(staging)},
                   staging / META)
        _fsync_dir(staging)
        old = None
        if final.exists():  # the same step saved again (e.g. preempted right after a periodic save)
            problem = self.damaged.get(final.name) or verify(final)
            if problem is not None:
                self._set_aside(final, problem)
            else:
                old = final.with_name(f".old-{final.name}-{os.getpid()}")
                os.rename(final, old)
        os.rename(staging, final)
        self.damaged.pop(final.name, None)  # the directory of that name is now the intact new one
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _set_aside(self, directory: Path, problem: str) -> Path:
        """Move a damaged checkpoint out of the way of a new save of its step (kept for inspection)."""
        target = directory.with_name(DAMAGED_PREFIX + directory.name)
        n = 1
        while target.exists():
            n += 1
            target = directory.with_name(f"{DAMAGED_PREFIX}{directory.name}-{n}")
        os.rename(directory, target)
        print(f"[bsynth] warning: checkpoint {directory} is damaged ({problem}); moved to {target} (kept for "
              "inspection, delete it when done) before saving that step again", flush=True)
        return target

    def prune(self) -> list[Path]:
        """Delete intact checkpoints beyond the newest keep_last (the best one stays) and stale partials;
        damaged ones are neither counted nor deleted."""
        found = self.complete()
        keep = {step for step, _ in found[-self.keep_last:]}
        best = self.best() if self.keep_best else None
        if best is not None:
            keep.add(int(best["step"]))
        removed = []
        for step, d in found:
            if step not in keep:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        for d in self.root.glob(".partial-step-*"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        for d in self.root.glob(".old-step-*"):
            shutil.rmtree(d, ignore_errors=True)
        return removed
