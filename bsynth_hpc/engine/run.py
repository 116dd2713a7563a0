"""``bsynth train`` and the launcher scripts: arguments -> config -> ranks -> Trainer -> exit status.

    bsynth train STAGE --config YAML --store STORE.zarr --run-dir RUN [--max-steps N]
                 [--resume auto|CHECKPOINT_DIR] [--gpu-mem-gb GB|auto] [key=value ...]

Works unchanged under plain ``python``, ``torchrun``, the ``deepspeed`` launcher (its
``--local_rank`` argument is accepted and ignored: LOCAL_RANK is read from the environment),
``srun`` and ``mpiexec``; see :mod:`.distributed` for how each is recognised.

Exit statuses (:mod:`.errors`): 0 finished, 75 preempted after writing a checkpoint (requeue),
2 configuration error (or a checkpoint to resume that is damaged or does not fit the model),
3 diverged (NaN guard), 4 a peer rank died or a collective timed out, 5 watchdog (no
progress), 1 anything else. RUN/status.json records the same outcome.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from ..argtypes import int_at_least
from ..errors import BsynthError, ConfigError
from .config import load_run_config
from .faults import FaultInjector
from .signals import PreemptionHandler
from .watchdog import Watchdog
from .errors import (EXIT_CONFIG, EXIT_DIVERGED, EXIT_FAILED, EXIT_HANG, EXIT_PEER_LOST, CheckpointError,
                     CheckpointUnusableError, DistributedError, TrainingDivergedError)


def build_parser(default_stage: str | None = None, prog: str = "bsynth train") -> argparse.ArgumentParser:
    """The train command line (shared by the CLI and launchers/train_*.py)."""
    p = argparse.ArgumentParser(prog=prog, description="Train a recipe stage (single process, DDP or DeepSpeed).",
                                epilog="Extra key=value arguments override config values, e.g. engine.zero_stage=3 "
                                       "engine.micro_batch=2 recipe.lr=1e-4.")
    p.add_argument("stage", nargs="?", default=None,
                   help="registered stage name" + (f" (default: the config's `stage:`, else {default_stage})"
                                                   if default_stage else " (default: the config's `stage:`)"))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--config", help="run config YAML (default: RUN/config.yaml when resuming)")
    p.add_argument("--store", help="training store (Zarr); overrides `store:` in the config")
    p.add_argument("--run-dir", required=True, help="run directory (config, checkpoints, exports, logs)")
    p.add_argument("--max-steps", type=int_at_least(1), help="overrides engine.max_steps")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (engine.progress=false); metrics still go to RUN/logs and TensorBoard")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint, or start fresh) or a checkpoint directory")
    p.add_argument("--gpu-mem-gb", help="single-card memory budget in GB, or 'auto' (the card's size): plan "
                                        "micro-batch, precision, checkpointing and offload to fit (6, 8, 12, 16, 24)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_train_args(argv: Sequence[str] | None, default_stage: str | None = None,
                     prog: str = "bsynth train") -> argparse.Namespace:
    parser = build_parser(default_stage, prog)
    args = parser.parse_intermixed_args(list(argv) if argv is not None else None)
    if args.stage and "=" in args.stage:  # no STAGE given, first override landed in its slot
        args.overrides.insert(0, args.stage)
        args.stage = None
    args.default_stage = default_stage
    return args


def _config_from_args(args: argparse.Namespace):  # -> RunConfig

    run_dir = Path(args.run_dir)
    path = args.config
    if path is None:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError("no --config given and no saved config in the run directory: pass --config "
                              "configs/<stage>.yaml")
        path = saved
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"engine.max_steps={args.max_steps}")
    if getattr(args, "quiet", False):
        overrides.append("engine.progress=false")
    if args.gpu_mem_gb is not None and args.gpu_mem_gb != "auto":
        overrides.append(f"engine.gpu_mem_gb={args.gpu_mem_gb}")
    config = load_run_config(path, args.stage, overrides, default_stage=args.default_stage)
    if args.store:
        config.store = str(args.store)
    config.run_dir = str(run_dir)
    return config


def _failure_kind(exc: BsynthError) -> tuple[str, int, str, bool]:
    """(status state, exit code, console label, whether a peer was lost) of a known training error;
    the first matching class wins, so subclasses come before BsynthError."""
    table: tuple[tuple[type[BsynthError], str, int, str, bool], ...] = (
        (ConfigError, "failed", EXIT_CONFIG, "configuration error: ", False),
        (TrainingDivergedError, "diverged", EXIT_DIVERGED, "training diverged: ", False),
        (CheckpointUnusableError, "failed", EXIT_CONFIG, "checkpoint error: ", False),  # damaged / does not fit
        (CheckpointError, "failed", EXIT_FAILED, "checkpoint error: ", False),
        (DistributedError, "peer_lost", EXIT_PEER_LOST, "", True),
    )
    for cls, state, code, label, lost_peer in table:
        if isinstance(exc, cls):
            return state, code, label, lost_peer
    return "failed", EXIT_FAILED, "error: ", False


def _write_failure(run_dir: Path | None, rank: int, state: str, code: int, message: str, lost_peer: bool) -> None:
    if run_dir is None or (rank != 0 and not lost_peer):
        return
    try:
        from .monitor import write_status  # lazy: torch, after the signal handler

        write_status(run_dir, state, -1, code, message)
    except OSError:  # pragma: no cover - best effort
        pass


def train_main(argv: Sequence[str] | None = None, default_stage: str | None = None,
               prog: str = "bsynth train") -> int:
    """Run one training job; returns the exit status (module docstring)."""
    args = parse_train_args(argv, default_stage, prog)
    run_dir = Path(args.run_dir)
    rank, distributed = int(os.environ.get("RANK", "0") or 0), False

    # installed before the heavy imports: a SLURM --signal or scancel --signal=USR1 in the first seconds
    # of a task is recorded (the run stops after its first step with a checkpoint) instead of killing it
    preemption = PreemptionHandler(rank).install()
    watchdog = None
    code = EXIT_FAILED
    try:
        from .distributed import Comm, discover, init_process_group, select_device  # lazy: torch, after the signal handler
        from .monitor import write_status  # lazy: torch, after the signal handler
        from .trainer import Trainer  # lazy: torch, after the signal handler

        config = _config_from_args(args)
        dist = discover()
        rank, distributed = dist.rank, dist.distributed
        device = select_device(dist, config.engine.device)
        layout = config.engine.batch_layout(dist.world_size)
        if layout:
            config = config.with_engine(**layout)
        plan = None
        if args.gpu_mem_gb == "auto":
            from .planner import detect_gpu_memory_gb  # lazy: torch, after the signal handler

            config = config.with_engine(gpu_mem_gb=detect_gpu_memory_gb(device))
        if config.engine.gpu_mem_gb is not None:
            from .planner import apply_plan  # lazy: torch, after the signal handler

            config, plan = apply_plan(config, dist, device)
        init_process_group(dist, device, config.engine.timeouts.collective, config.engine.timeouts.init,
                           force=config.engine.backend == "deepspeed")
        comm = Comm(dist, device)
        preemption.rank = rank
        watchdog = Watchdog(config.engine.timeouts.step, rank, on_expire=lambda msg: write_status(
            run_dir, "hang", -1, EXIT_HANG, msg)).start()
        trainer = Trainer(config, run_dir, dist, device, comm, resume=args.resume, watchdog=watchdog,
                          faults=FaultInjector(rank), preemption=preemption)
        code = trainer.train()
        if plan is not None and rank == 0:
            from .planner import report_measured  # lazy: torch, after the signal handler

            print(report_measured(plan, device), flush=True)
        return code
    except BsynthError as exc:
        state, code, label, lost_peer = _failure_kind(exc)
        who = "" if isinstance(exc, ConfigError) else f"rank {rank}: "
        print(f"bsynth train: {who}{label}{exc}", file=sys.stderr, flush=True)
        _write_failure(run_dir, rank, state, code, str(exc), lost_peer)
    except Exception as exc:
        from .distributed import is_collective_failure  # lazy: torch, after the signal handler

        if distributed and is_collective_failure(exc):
            message = (f"rank {rank}: a collective operation failed ({type(exc).__name__}: {str(exc).strip()[:300]}). "
                       "Another rank most likely died or stalled (see its log above); this rank stops instead of "
                       "waiting. Resume from the last checkpoint with --resume auto")
            print(f"bsynth train: {message}", file=sys.stderr, flush=True)
            _write_failure(run_dir, rank, "peer_lost", EXIT_PEER_LOST, message, True)
            code = EXIT_PEER_LOST
        else:
            traceback.print_exc()
            _write_failure(run_dir, rank, "failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}", False)
            code = EXIT_FAILED
    finally:
        if watchdog is not None:
            watchdog.stop()
        if preemption is not None:
            preemption.uninstall()
        if code in (0, 75):
            from .distributed import destroy_process_group  # lazy: torch, after the signal handler

            destroy_process_group()
    if distributed and code not in (0, 75):
        # Peers may be gone: leaving through the interpreter's shutdown could block in a collective
        # library's teardown. The status is written and the streams flushed; exit now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main() -> None:
    """Entry point for ``python -m bsynth_hpc.engine.run``."""
    sys.exit(train_main())


if __name__ == "__main__":
    main()
