"""Rank discovery for every launch path, and process-group set-up with timeouts.

``discover()`` reads the environment in this order and says which launcher it found:

1. ``torchrun`` / ``deepspeed`` launcher / any env:// launch: RANK, WORLD_SIZE, LOCAL_RANK,
   MASTER_ADDR, MASTER_PORT (torchrun also sets TORCHELASTIC_RUN_ID; the deepspeed launcher
   sets CROSS_RANK/LOCAL_SIZE).
2. SLURM job step (``srun python ...``, one task per GPU): SLURM_PROCID, SLURM_STEP_NUM_TASKS
   (or SLURM_NTASKS), SLURM_LOCALID; the master is the first host of SLURM_STEP_NODELIST /
   SLURM_JOB_NODELIST (expanded here, no ``scontrol`` needed) unless MASTER_ADDR is set; the
   port is MASTER_PORT or derived from the job id so concurrent jobs do not collide. Only a
   job *step* counts (SLURM_STEP_ID set): a plain ``python`` in the batch script is a single
   process even though SLURM_NTASKS says otherwise.
3. MPI (``mpiexec -n N python ...``, ``srun --mpi=pmix`` without SLURM step vars): ranks from
   mpi4py's COMM_WORLD; rank 0 broadcasts its host name and a free port; the local rank is
   the rank within the shared-memory communicator.
4. Otherwise: one process (rank 0 of 1).

``init_process_group`` exports the discovered values as the env:// variables (DeepSpeed
reads them too), picks NCCL on GPUs and gloo on CPUs, and applies the collective timeout: a
rank that dies makes the others raise within that time instead of hanging forever.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import ConfigError
from .errors import DistributedError, LaunchError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM host list: "gpu[01-03,07],login1" -> [gpu01, gpu02, gpu03, gpu07, login1].

    Handles zero padding and several bracket groups per name ("r[1-2]n[01-02]").
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        if not item:
            continue
        hosts.extend(_expand_one(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _expand_one(item: str) -> list[str]:
    match = re.search(r"\[([^\]]+)\]", item)
    if not match:
        return [item]
    prefix, suffix = item[:match.start()], item[match.end():]
    out = []
    for rng in match.group(1).split(","):
        lo, _, hi = rng.partition("-")
        if hi:
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                out.extend(_expand_one(f"{prefix}{n:0{width}d}{suffix}"))
        else:
            out.extend(_expand_one(f"{prefix}{lo}{suffix}"))
    return out


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise LaunchError(f"environment variable {name} is missing; the launcher did not set it")
        return default
    try:
        return int(value.split("(")[0].split(",")[0])
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_port(env: Mapping[str, str]) -> int:
    job = _int(env, "SLURM_JOB_ID", 0)
    return 20000 + job % 20000


def _local_world_from_slurm(env: Mapping[str, str], world: int) -> int:
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        if env.get(name):
            return _int(env, name)
    return world


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def discover(env: Mapping[str, str] | None = None, use_mpi: bool = True) -> DistInfo:
    """This process's rank, world size, local rank and rendezvous address (module docstring)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in env else
                    "deepspeed" if "CROSS_RANK" in env or "LOCAL_SIZE" in env else "env")
        return _checked(DistInfo(
            rank=_int(env, "RANK"), world_size=world, local_rank=_int(env, "LOCAL_RANK", 0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", _int(env, "LOCAL_SIZE", world)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(env, "MASTER_PORT", 29500),
            launcher=launcher))
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        world = _int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", 1))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if env.get("MASTER_ADDR"):
            addr = env["MASTER_ADDR"]
        elif nodelist:
            addr = expand_hostlist(nodelist)[0]
        elif world == 1:
            addr = "127.0.0.1"
        else:
            raise LaunchError("SLURM step without SLURM_STEP_NODELIST/SLURM_JOB_NODELIST: set MASTER_ADDR")
        return _checked(DistInfo(
            rank=_int(env, "SLURM_PROCID"), world_size=world, local_rank=_int(env, "SLURM_LOCALID", 0),
            local_world_size=_local_world_from_slurm(env, world), master_addr=addr,
            master_port=_int(env, "MASTER_PORT", _slurm_port(env)), launcher="slurm"))
    if use_mpi and any(name in env for name in MPI_RANK_VARS):
        return _discover_mpi(env)
    return DistInfo(0, 1, 0, 1, "127.0.0.1", _int(env, "MASTER_PORT", 29500), "single")


def _discover_mpi(env: Mapping[str, str]) -> DistInfo:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise LaunchError(
            "launched under MPI (PMI/OMPI rank variables are set) but mpi4py is not installed: "
            "`pip install mpi4py` built against this MPI, or launch with torchrun/srun"
        ) from exc
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if world == 1:
        return DistInfo(0, 1, 0, 1, "127.0.0.1", _int(env, "MASTER_PORT", 29500), "mpi")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_world = local.Get_rank(), local.Get_size()
    local.Free()
    root = (env.get("MASTER_ADDR") or socket.gethostname(), _int(env, "MASTER_PORT", 0) or _free_port()) \
        if rank == 0 else None
    addr, port = comm.bcast(root, root=0)
    return _checked(DistInfo(rank, world, local_rank, local_world, addr, int(port), "mpi"))


def _checked(info: DistInfo) -> DistInfo:
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise LaunchError(f"{info.launcher} launch gave rank {info.rank} of world size {info.world_size}: "
                               "need 0 <= rank < world size")
    if not 0 <= info.local_rank < max(1, info.local_world_size):
        raise LaunchError(f"{info.launcher} launch gave local rank {info.local_rank} of "
                               f"{info.local_world_size} processes on this node")
    return info


def select_device(info: DistInfo, requested: str = "auto") -> torch.device:
    """cuda:<local_rank> when CUDA is usable (and not refused), else cpu."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise LaunchError(f"local rank {info.local_rank} has no GPU: this node shows {count} GPUs; launch "
                                   f"one task per GPU (e.g. srun --ntasks-per-node={count} --gpus-per-task=1)")
        return torch.device("cuda", info.local_rank)
    if requested == "cuda":
        raise ConfigError("engine.device=cuda but no CUDA device is visible: check the allocation "
                               "(--gpus-per-task, CUDA_VISIBLE_DEVICES) or use engine.device=auto")
    return torch.device("cpu")


def init_process_group(info: DistInfo, device: torch.device, collective_timeout_s: float,
                       init_timeout_s: float | None = None, force: bool = False) -> str | None:
    """Join the process group; returns the torch.distributed backend.

    One process needs no group, except when ``force`` (DeepSpeed on one GPU, e.g. ZeRO-Offload
    chosen by the memory planner): then a one-rank group on a free local port.
    """
    if not info.distributed and not force:
        return None
    import torch.distributed as dist

    if not info.distributed and "MASTER_PORT" not in os.environ:
        info = DistInfo(0, 1, 0, 1, "127.0.0.1", _free_port(), info.launcher)

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.update({"RANK": str(info.rank), "WORLD_SIZE": str(info.world_size),
                       "LOCAL_RANK": str(info.local_rank), "LOCAL_WORLD_SIZE": str(info.local_world_size),
                       "MASTER_ADDR": info.master_addr, "MASTER_PORT": str(info.master_port)})
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if dist.is_initialized():
        return dist.get_backend()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = _dt.timedelta(seconds=collective_timeout_s)
    device_id = device if device.type == "cuda" else None
    try:
        if info.launcher == "torchrun":  # workers share torchrun's agent store (env://)
            dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                    world_size=info.world_size, timeout=timeout, device_id=device_id)
        else:  # own rendezvous store, with its own (start-up) timeout
            store = dist.TCPStore(info.master_addr, info.master_port, info.world_size, is_master=info.rank == 0,
                                  timeout=_dt.timedelta(seconds=init_timeout_s or collective_timeout_s),
                                  wait_for_workers=True)
            dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size,
                                    timeout=timeout, device_id=device_id)
    except Exception as exc:  # rendezvous failures come as RuntimeError/DistError/TimeoutError
        raise DistributedError(
            f"rank {info.rank}/{info.world_size} ({info.launcher}) could not join the process group at "
            f"{info.master_addr}:{info.master_port}: {exc}. Check that every rank was started, that the master "
            "host is reachable and the port is free (set MASTER_PORT to another value)"
        ) from exc
    return backend


def destroy_process_group() -> None:
    """Leave the process group if one is active."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(exc: BaseException) -> bool:
    """Whether an exception looks like a lost peer / collective timeout rather than a bug."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    needles = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe",
               "socket", "peer", "connection refused", "watchdog")
    return isinstance(exc, (RuntimeError, TimeoutError, ConnectionError)) and any(n in text for n in needles)


class Comm:
    """The few collectives the trainer needs, as no-ops for one process.

    Tensors live on ``device`` (NCCL needs CUDA tensors, gloo CPU tensors).
    """

    def __init__(self, info: DistInfo, device: torch.device):
        self.info = info
        self.device = device if info.distributed else torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a float list over ranks (float64)."""
        if not self.info.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def all_gather_float(self, value: float) -> list[float]:
        """``value`` of every rank, in rank order."""
        if not self.info.distributed:
            return [value]
        import torch.distributed as dist

        out = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [float(t.item()) for t in out]

    def barrier(self) -> None:
        if self.info.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()
