"""Atomic training checkpoints under RUN/checkpoints/step-XXXXXXXX/.

Protocol (every rank takes part):

1. rank 0 creates ``RUN/checkpoints/.partial-step-XXXXXXXX/`` (removing a leftover one);
2. every rank writes its files there (rank-local RNG, ZeRO shards, ...); each file is itself
   written to a temporary name, fsynced and renamed;
3. the ranks agree that every write succeeded; then rank 0 writes ``meta.json`` (step, files
   and their sizes) and renames the directory to ``step-XXXXXXXX`` - the one atomic commit;
4. rank 0 prunes: the newest ``keep_last`` complete checkpoints and the best one stay.

A process killed anywhere before step 3's rename leaves only a ``.partial-*`` directory,
which ``latest()`` never returns and the next save removes; the previous checkpoint is
untouched. A directory counts as complete only when its name is ``step-XXXXXXXX`` and its
``meta.json`` lists files that all exist with the recorded sizes.

Contents (written by :class:`~bsynth_hpc.engine.trainer.Trainer`): ``trainer.pt`` (rank 0: step,
data-stream position, LR schedules, unsharded EMA, NaN counters, best metric, the stage's own
state ``Stage.state_dict()`` under ``"stage"``), ``ranks/rank-XXXXX.pt`` (each rank: RNG states,
sharded EMA), and per model either ``models/<model>.pt`` (single/DDP: weights, optimizer, grad
scaler) or ``deepspeed/<model>/`` (ZeRO shards of every rank).

Everything is read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .distributed import Comm
from .errors import CheckpointError

STEP_RE = re.compile(r"^step-(\d{8})$")
META = "meta.json"
BEST = "best.json"


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


def load_torch(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """torch.load(weights_only=True) with a CheckpointError naming the file on failure."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete or was written by "
                              "another backend")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} with weights_only=True: {exc}") from exc


def _listing(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != META}


def is_complete(directory: Path) -> bool:
    """Name step-XXXXXXXX, meta.json present and every listed file present with its size."""
    if not STEP_RE.match(directory.name) or not (directory / META).is_file():
        return False
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    files = meta.get("files", {})
    return bool(meta.get("complete")) and all(
        (directory / rel).is_file() and (directory / rel).stat().st_size == size for rel, size in files.items())


def read_meta(directory: Path) -> dict[str, Any]:
    if not is_complete(directory):
        raise CheckpointError(f"{directory} is not a complete checkpoint (no meta.json or missing files): pick "
                              "another one or use --resume auto")
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

    # ------------------------------------------------------------------ listing
    def complete(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            m = STEP_RE.match(d.name)
            if m and d.is_dir() and is_complete(d):
                out.append((int(m.group(1)), d))
        return sorted(out)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1][1] if found else None

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
        return final

    def _commit(self, staging: Path, final: Path, step: int, meta: dict[str, Any]) -> None:
        write_json({**meta, "step": step, "complete": True, "time": time.time(), "files": _listing(staging)},
                   staging / META)
        _fsync_dir(staging)
        old = None
        if final.exists():  # the same step saved again (e.g. preempted right after a periodic save)
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.rename(final, old)
        os.rename(staging, final)
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def prune(self) -> list[Path]:
        """Delete complete checkpoints beyond the newest keep_last (the best one stays) and stale partials."""
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
