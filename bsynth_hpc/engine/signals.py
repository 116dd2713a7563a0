"""Graceful preemption: SIGTERM / SIGUSR1 / SIGINT -> finish the step, checkpoint, exit 75.

SLURM sends SIGTERM at preemption or the time limit (then SIGKILL after KillWait) and the
signal chosen with ``--signal`` shortly before; torchrun forwards SIGTERM/SIGINT to workers.
The handler only records the request; the trainer asks all ranks at the end of every step
whether any rank saw a request (one small all-reduce), so every rank stops after the same
step and writes the same checkpoint. A second SIGINT interrupts immediately.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionHandler:
    """Records preemption signals (module docstring)."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def install(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
            return self
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            print(f"[bsynth] rank {self.rank}: {name} received: finishing the current step, then writing a "
                  "checkpoint and exiting for requeue", file=sys.stderr, flush=True)
        self.received = self.received or name
