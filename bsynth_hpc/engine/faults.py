"""Deterministic fault injection for testing the engine's failure handling.

``BSYNTH_FAULTS`` holds ``;``-separated faults ``KIND@STEPS[:rank=R][:sig=NAME]``; STEPS is a
comma list of steps or ranges (``3,5-7``); without ``rank=`` every rank is affected:

``nan_loss@4-6``          the loss of steps 4..6 becomes NaN (after the stage computed it)
``exit@3:rank=1``         rank 1 exits abruptly (status 1, no cleanup) when step 3 starts: a dead rank
``signal@5:sig=TERM``     the process sends itself SIGTERM (or USR1, INT) when step 5 starts
``kill_in_save@4``        SIGKILL while checkpoint 4 is written, after its files, before the commit
``hang@3:rank=0``         the rank sleeps forever at step 3 (for the watchdog)

Unset in production; the engine only reads it.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

from ..errors import ConfigError

KINDS = ("nan_loss", "exit", "signal", "kill_in_save", "hang")


@dataclass(frozen=True)
class Fault:
    kind: str
    steps: frozenset[int]
    rank: int | None = None
    sig: str = "TERM"

    def hits(self, step: int, rank: int) -> bool:
        return step in self.steps and (self.rank is None or self.rank == rank)


def _steps(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def parse_faults(spec: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        head, *opts = item.split(":")
        kind, _, steps = head.partition("@")
        if kind not in KINDS or not steps:
            raise ConfigError(f"BSYNTH_FAULTS item {item!r}: use KIND@STEPS with KIND in {', '.join(KINDS)}")
        kwargs: dict[str, object] = {}
        for opt in opts:
            key, _, value = opt.partition("=")
            if key == "rank":
                kwargs["rank"] = int(value)
            elif key == "sig":
                kwargs["sig"] = value.upper().removeprefix("SIG")
            else:
                raise ConfigError(f"BSYNTH_FAULTS item {item!r}: unknown option {key!r} (rank=, sig=)")
        try:
            faults.append(Fault(kind, _steps(steps), **kwargs))  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(f"BSYNTH_FAULTS item {item!r}: steps must be integers or ranges like 3-5") from None
    return faults


class FaultInjector:
    """Applies the faults of ``BSYNTH_FAULTS`` for one rank."""

    def __init__(self, rank: int, spec: str | None = None):
        self.rank = rank
        self.faults = parse_faults(spec if spec is not None else os.environ.get("BSYNTH_FAULTS", ""))

    def _hit(self, kind: str, step: int) -> Fault | None:
        return next((f for f in self.faults if f.kind == kind and f.hits(step, self.rank)), None)

    def at_step_start(self, step: int) -> None:
        if self._hit("exit", step):
            print(f"[fault] rank {self.rank}: exiting abruptly at step {step}", file=sys.stderr, flush=True)
            os._exit(1)
        fault = self._hit("signal", step)
        if fault:
            os.kill(os.getpid(), getattr(signal, f"SIG{fault.sig}"))
        if self._hit("hang", step):
            print(f"[fault] rank {self.rank}: hanging at step {step}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    def nan_loss(self, step: int) -> bool:
        return self._hit("nan_loss", step) is not None

    def before_commit(self, step: int) -> None:
        if self._hit("kill_in_save", step):
            print(f"[fault] rank {self.rank}: SIGKILL inside checkpoint {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
