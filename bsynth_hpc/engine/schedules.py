"""Learning-rate schedules as pure functions of the optimizer step, plus ReduceLROnPlateau.

The engine sets ``lr = base_lr * factor`` on every param group before each optimizer step,
the same way for torch optimizers and DeepSpeed's ZeRO wrappers; the only state is the
plateau tracker, so checkpoints stay tiny and exact. ``s`` is the 0-based index of the
update about to happen and ``total`` the number of updates in the run.

Closed forms (equal to torch's CosineAnnealingLR / CosineAnnealingWarmRestarts with
eta_min = min_lr_ratio * base_lr, applied after the warm-up):
  warm-up   f = (s + 1) / warmup                          for s < warmup
  cosine    f = m + (1 - m) * (1 + cos(pi * u / U)) / 2   u = s - warmup, U = total - warmup
  restarts  same within each period; periods T0, T0*k, T0*k^2, ...
  plateau   f = product of plateau_factor over the reductions so far (floored at m)
"""
from __future__ import annotations

import math
from typing import Any, Literal

from .config import ScheduleConfig


def _restart_position(u: int, period: int, mult: int) -> tuple[int, int]:
    """(position within the current period, period length) for SGDR."""
    if mult == 1:
        return u % period, period
    n = int(math.log(u / period * (mult - 1) + 1, mult))
    start = period * (mult ** n - 1) // (mult - 1)
    length = period * mult ** n
    if u < start:  # float rounding at a boundary
        n -= 1
        start, length = period * (mult ** n - 1) // (mult - 1), period * mult ** n
    elif u >= start + length:
        start, length = start + length, length * mult
    return u - start, length


def schedule_factor(cfg: ScheduleConfig, s: int, total: int) -> float:
    """LR multiplier of update ``s`` (0-based) out of ``total``, before any plateau reductions."""
    if cfg.warmup and s < cfg.warmup:
        return (s + 1) / cfg.warmup
    u = s - cfg.warmup
    m = cfg.min_lr_ratio
    if cfg.name in ("constant", "plateau"):
        return 1.0
    if cfg.name == "cosine":
        span = max(1, total - cfg.warmup)
        u = min(u, span)
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * u / span))
    if cfg.name == "cosine_restarts":
        pos, length = _restart_position(u, cfg.restart_period, cfg.restart_mult)
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * pos / length))
    raise ValueError(f"unknown schedule {cfg.name!r}")


class PlateauTracker:
    """ReduceLROnPlateau on a validation metric (relative threshold, patience, cooldown)."""

    def __init__(self, cfg: ScheduleConfig, mode: Literal["min", "max"]):
        self.cfg = cfg
        self.mode = mode
        self.best: float | None = None
        self.bad = 0
        self.cooldown = 0
        self.scale = 1.0
        self.reductions = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        rel = self.cfg.plateau_threshold
        return value < self.best * (1 - rel) if self.mode == "min" else value > self.best * (1 + rel)

    def observe(self, value: float) -> bool:
        """Record one validation value; True when this caused a reduction."""
        if not math.isfinite(value):
            return False
        if self._improved(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown > 0:
            self.cooldown -= 1
            self.bad = 0
        if self.bad > self.cfg.plateau_patience:
            new = max(self.scale * self.cfg.plateau_factor, self.cfg.min_lr_ratio)
            reduced = new < self.scale
            self.scale, self.bad, self.cooldown = new, 0, self.cfg.plateau_cooldown
            self.reductions += int(reduced)
            return reduced
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "cooldown": self.cooldown, "scale": self.scale,
                "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad, self.cooldown = int(state["bad"]), int(state["cooldown"])
        self.scale, self.reductions = float(state["scale"]), int(state["reductions"])


class LRController:
    """The LR of one phase: schedule factor x plateau scale x base LR of each param group."""

    def __init__(self, cfg: ScheduleConfig, total_updates: int, mode: Literal["min", "max"] = "min"):
        self.cfg = cfg
        self.total = total_updates
        self.plateau = PlateauTracker(cfg, mode) if cfg.name == "plateau" else None

    def factor(self, s: int) -> float:
        scale = self.plateau.scale if self.plateau is not None else 1.0
        return schedule_factor(self.cfg, s, self.total) * scale

    def apply(self, param_groups: list[dict[str, Any]], s: int) -> float:
        """Set every group's lr for update ``s``; returns the factor."""
        f = self.factor(s)
        for group in param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * f
        return f

    def observe(self, value: float) -> bool:
        return self.plateau.observe(value) if self.plateau is not None else False

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
