"""Failure families of the training engine and the exit statuses they map to.

Exit statuses are the contract with the batch scripts (launchers/*.slurm): 75 (EX_TEMPFAIL,
"try again") means "a checkpoint was written after a preemption signal: requeue me"; the
others say why a run stopped so a script can decide whether a retry can help.
"""
from __future__ import annotations

from ..errors import BsynthError, ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4
EXIT_HANG = 5
EXIT_REQUEUE = 75


class CheckpointError(BsynthError):
    """A checkpoint or export is missing, incomplete, or does not fit the run that loads it."""


class CheckpointUnusableError(CheckpointError):
    """The checkpoint asked for cannot be resumed, and retrying the same command cannot help (exit 2)."""


class CheckpointDamagedError(CheckpointUnusableError):
    """A checkpoint file fails its checksum, is truncated, missing or unreadable (``--resume auto`` skips it).

    ``problem`` is the short form for a fall-back warning ("models/vae.pt: unreadable (...)").
    """

    def __init__(self, message: str, problem: str | None = None):
        super().__init__(message)
        self.problem = problem or message


class CheckpointMismatchError(CheckpointUnusableError):
    """An intact checkpoint does not fit this run (model shapes, backend, ZeRO layout, EMA): fix the config."""


class DistributedError(BsynthError):
    """The process group could not form, or a peer rank died / a collective timed out (retry may help)."""


class LaunchError(ConfigError):
    """The launch environment is inconsistent (rank variables, GPUs per task): retrying cannot help."""


class TrainingDivergedError(BsynthError):
    """The loss was NaN/inf for more consecutive steps than engine.nan_tolerance allows."""


class MemoryPlanError(ConfigError):
    """No micro-batch / precision / checkpointing / offload combination fits the memory budget."""


__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG", "EXIT_DIVERGED", "EXIT_PEER_LOST", "EXIT_HANG", "EXIT_REQUEUE",
    "CheckpointError", "CheckpointUnusableError", "CheckpointDamagedError", "CheckpointMismatchError",
    "DistributedError", "LaunchError", "TrainingDivergedError", "MemoryPlanError", "ConfigError",
]
