"""Observability: progress bar, JSON-lines and TensorBoard metrics, peak memory, run status.

Rank 0 writes ``RUN/logs/metrics.jsonl`` (one JSON object per logged step: loss terms per
phase, learning rates, gradient norms, skipped steps, throughput in volumes/s, peak memory
and CPU seconds per step of every rank) and ``RUN/logs/tensorboard/``; on resume both are cut back to the resumed step
so a crash between the last checkpoint and the failure leaves no duplicate steps. The
progress bar (tqdm, rank 0) goes to stderr. ``RUN/status.json`` tells batch scripts and
people what happened last (running / finished / preempted / failed / diverged / peer_lost).
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import write_json


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressLines:
    """Progress for logs and pipes (no terminal, so no tqdm bar): one line per ~5 % of the run with the
    measured rate and the time left, e.g. ``train step 250/1500 (17%), 3.9 step/s, ~5 min 20 s left``."""

    def __init__(self, total_steps: int, start_step: int, lines: int = 20, clock: Any = time.monotonic):
        self.total, self.step = int(total_steps), int(start_step)
        self.every = max(1, (self.total - self.step) // max(1, lines))
        self.clock = clock
        self.t0, self.step0 = clock(), self.step
        self.next = self.step + self.every

    def advance(self, n: int, postfix: Mapping[str, float] | None = None) -> str | None:
        """Count ``n`` steps; return the line to print when a reporting point was crossed, else None."""
        self.step += int(n)
        if self.step < self.next and self.step < self.total:
            return None
        while self.next <= self.step:
            self.next += self.every
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = (self.step - self.step0) / elapsed
        left = (self.total - self.step) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.step / max(1, self.total)
        extra = "".join(f", {k} {v:.4g}" for k, v in (postfix or {}).items())
        return (f"train step {self.step}/{self.total} ({pct:.0f}%), {rate:.3g} step/s, "
                f"~{format_seconds(left)} left{extra}")


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``3725`` -> ``1 h 2 min``; infinite -> ``?``."""
    if not math.isfinite(seconds):
        return "? s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


class MetricsLogger:
    """JSONL + TensorBoard + tqdm on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, tensorboard: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = run_dir / "logs" / "metrics.jsonl"
        self.writer = None
        self.bar = None
        self.lines: ProgressLines | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "logs" / "tensorboard"), purge_step=start_step or None)
            except ImportError:  # pragma: no cover - tensorboard is optional
                self.info("tensorboard is not installed: metrics go to logs/metrics.jsonl only")
        if progress and _is_terminal(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        elif progress:
            self.lines = ProgressLines(total_steps, start_step)

    def _truncate(self, start_step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", -1)) <= start_step:
                    kept.append(line)
            except (json.JSONDecodeError, TypeError, ValueError):
                continue  # a line cut by a crash
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def info(self, message: str) -> None:
        """A console line that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"[bsynth] {message}", file=sys.stderr)
        else:
            print(f"[bsynth] {message}", file=sys.stderr, flush=True)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
                elif isinstance(value, list):
                    for i, v in enumerate(value):
                        if isinstance(v, (int, float)) and math.isfinite(v):
                            self.writer.add_scalar(f"{key}/rank{i}", v, step)

    def advance(self, n: int, postfix: Mapping[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.lines is not None:
            line = self.lines.advance(n, postfix)
            if line:
                print(f"[bsynth] {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self._fh.close()


def write_status(run_dir: Path, state: str, step: int, exit_code: int, message: str = "",
                 checkpoint: str | None = None, **extra: Any) -> None:
    """Atomically (re)write RUN/status.json."""
    write_json({"state": state, "step": step, "exit_code": exit_code, "message": message, "checkpoint": checkpoint,
                "time": time.time(), **extra}, Path(run_dir) / "status.json")
