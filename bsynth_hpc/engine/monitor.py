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


class MetricsLogger:
    """JSONL + TensorBoard + tqdm on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, tensorboard: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = run_dir / "logs" / "metrics.jsonl"
        self.writer = None
        self.bar = None
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
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=None)

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
