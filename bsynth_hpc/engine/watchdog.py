"""Last-resort hang detection: no heartbeat for ``timeout`` seconds -> stack dump, exit 5.

Collective timeouts turn a dead peer into an exception, but some hangs never reach a
collective with a timeout (a stuck file system read, a deadlocked DataLoader worker, a
C++ call that ignores the process-group timeout). The watchdog thread makes such a rank
exit with a clear message and the Python stacks of all threads, so the job ends (and the
batch script can requeue it) instead of burning its allocation.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from typing import Callable

from .errors import EXIT_HANG


class Watchdog:
    """Daemon thread that exits the process when ``beat()`` is not called in time."""

    def __init__(self, timeout: float, rank: int, on_expire: Callable[[str], None] | None = None):
        self.timeout = float(timeout)
        self.rank = rank
        self.on_expire = on_expire
        self.what = "start-up"
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        if self.timeout > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bsynth-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, what: str = "") -> None:
        self._last = time.monotonic()
        if what:
            self.what = what

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                message = (f"rank {self.rank}: no progress for {idle:.0f} s (engine.timeouts.step={self.timeout:.0f}) "
                           f"during {self.what}; another rank probably died or a file system hangs. Exiting; "
                           "resume with --resume auto")
                print(f"[bsynth] watchdog: {message}", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                if self.on_expire is not None:
                    try:
                        self.on_expire(message)
                    except Exception:  # pragma: no cover - best effort
                        pass
                os._exit(EXIT_HANG)
