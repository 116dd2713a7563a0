"""Where the per-volume tasks run, and streaming their results back.

``cluster`` choices:

* ``"local"`` (default): ``distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
  processes=True)`` — one process per worker (nibabel/scipy hold the GIL for parts of the work,
  and a crashing worker is restarted by its nanny without taking the run down). Secured for
  shared login nodes: every listener is bound to 127.0.0.1 (scheduler, workers, and the
  scheduler's HTTP health endpoint, which Dask would otherwise open on all interfaces), no
  dashboard, and all traffic is mutual TLS with a throw-away certificate that exists only in
  this process and its workers (``Security.temporary()``), so another user of the machine can
  neither submit tasks nor read results. That needs the ``cryptography`` package; without it
  the run falls back to the ``"processes"`` scheduler (no network at all) with a note on stderr.
  ``cluster_options`` are passed on to ``LocalCluster`` (e.g. ``memory_limit``,
  ``local_directory``, ``scheduler_kwargs``).
* ``"slurm"``: a ``dask_jobqueue.SLURMCluster`` scaled to ``workers`` worker processes; each
  worker is (part of) a SLURM job that connects back to the scheduler running in this process.
  ``cluster_options`` go to ``SLURMCluster``; the usual ones (see dask-jobqueue's docs):

  ========================  ===========================================================
  ``queue``                 partition (``#SBATCH -p``)
  ``account``               account to charge (``#SBATCH -A``)
  ``walltime``              job time limit, default ``"02:00:00"``
  ``cores``                 CPUs per job, default 1 (threads per worker = cores / processes)
  ``processes``             worker processes per job, default 1
  ``memory``                memory per job, default ``"8GiB"`` (one 256^3 volume needs ~1 GiB)
  ``job_extra_directives``  extra ``#SBATCH`` lines, e.g. ``["--qos=short"]``
  ``job_script_prologue``   shell lines before the worker starts, e.g.
                            ``["module load python", "source /path/.venv/bin/activate"]``
  ``interface``             network interface the workers and scheduler use (e.g. ``ib0``)
  ``local_directory``       node-local scratch for worker spill files
  ``log_directory``         where the jobs' stdout/stderr go
  ``scheduler_options``     options of the scheduler in this process (default: no
                            dashboard; e.g. ``{"dashboard_address": ":8787"}`` for one)
  ========================  ===========================================================

  ``sbatch`` must be on PATH (checked before anything starts: without it the run stops at once
  with one line instead of retrying the submission for ``wait_timeout_s``),
  plus ``wait_timeout_s`` (ours, default 600): how long to wait for the first worker before
  giving up with a ConfigError naming the job script to check. The store must be on a file
  system the compute nodes see (workers write to it directly).
* ``"processes"``: Dask's multiprocessing scheduler, no cluster. No worker restarts: a process
  that dies aborts the run (rerun to resume).
* ``"sync"``: everything in this process, one input after another — for debugging with pdb.
"""
from __future__ import annotations

import logging
import shutil
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from bsynth_hpc.errors import ConfigError

CLUSTER_KINDS: tuple[str, ...] = ("local", "slurm", "sync", "processes")
SLURM_DEFAULTS: dict[str, Any] = {"cores": 1, "processes": 1, "memory": "8GiB", "walltime": "02:00:00"}
DEFAULT_WAIT_TIMEOUT_S = 600.0
NO_DASHBOARD: dict[str, Any] = {"dashboard": False, "dashboard_address": ":0"}
"""Scheduler options: no dashboard, and its HTTP endpoint (health checks) on a free port, so
several runs on one login node do not fight over port 8787."""
LOCAL_SCHEDULER: dict[str, Any] = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
"""The same for the local cluster, with the HTTP endpoint on loopback only (":0" is all interfaces)."""
NO_SBATCH = "--cluster slurm needs SLURM's sbatch on PATH; on a workstation use --cluster local"
NO_TLS_NOTE = ("[prep] note: the 'cryptography' package is missing, so a local Dask cluster could not use TLS "
               "and other users of this machine could submit tasks to it; running on the 'processes' scheduler "
               "instead (cluster_options ignored). `pip install cryptography` restores cluster='local'.")

T = TypeVar("T")
R = TypeVar("R")


def check_cluster_args(kind: str, workers: int, options: Mapping[str, Any] | None) -> None:
    """ConfigError for an unknown kind, a non-positive worker count, options a kind does not take, or
    "slurm" without ``sbatch`` on PATH."""
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"cluster={kind!r} is not supported: use one of {', '.join(CLUSTER_KINDS)}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r}: give a positive number of worker processes")
    if options and kind in ("sync", "processes"):
        raise ConfigError(f"cluster_options only apply to cluster='local' or 'slurm', not {kind!r}: drop them")
    if kind == "slurm":
        check_sbatch()


def check_sbatch() -> None:
    """ConfigError (one line) when ``sbatch`` is missing: dask-jobqueue would otherwise retry the
    submission with a FileNotFoundError traceback until the wait timeout (600 s) runs out."""
    if shutil.which("sbatch") is None:
        raise ConfigError(NO_SBATCH)


def tls_available() -> bool:
    """Whether ``Security.temporary()`` can make a certificate (it needs ``cryptography``)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def build_local_cluster(workers: int, options: Mapping[str, Any] | None = None):
    """A LocalCluster of ``workers`` single-threaded worker processes, loopback only, mutual TLS.

    ConfigError when ``cryptography`` is missing (callers fall back first, see :func:`local_or_fallback`).
    """
    from distributed import LocalCluster
    from distributed.security import Security

    if not tls_available():
        raise ConfigError("cluster='local' needs the 'cryptography' package for TLS: pip install cryptography, "
                          "or use cluster='processes'")
    kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                              "host": "127.0.0.1", "dashboard_address": None, "silence_logs": logging.ERROR,
                              "scheduler_kwargs": LOCAL_SCHEDULER, "security": Security.temporary(),
                              "protocol": "tls://"}
    kwargs.update(options or {})
    return LocalCluster(**kwargs)


def local_or_fallback(kind: str) -> str:
    """``kind``, or "processes" (with a note on stderr) for "local" when TLS is unavailable."""
    if kind != "local" or tls_available():
        return kind
    print(NO_TLS_NOTE, file=sys.stderr, flush=True)
    return "processes"


def slurm_cluster_kwargs(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], float]:
    """(SLURMCluster keyword arguments with our defaults, wait timeout in s) from cluster_options."""
    opts = dict(options or {})
    wait = float(opts.pop("wait_timeout_s", DEFAULT_WAIT_TIMEOUT_S))
    kwargs = {**SLURM_DEFAULTS, **opts}
    kwargs.setdefault("scheduler_options", NO_DASHBOARD)
    cores, processes = int(kwargs["cores"]), int(kwargs["processes"])
    if processes < 1 or cores < processes:
        raise ConfigError(f"SLURM options cores={cores}, processes={processes}: need cores >= processes >= 1")
    return kwargs, wait


def build_slurm_cluster(options: Mapping[str, Any] | None = None):
    """A SLURMCluster from cluster_options (no job is submitted until it is scaled)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("cluster='slurm' needs dask-jobqueue: pip install -e '.[slurm]'") from None
    kwargs, _ = slurm_cluster_kwargs(options)
    try:
        return SLURMCluster(**kwargs)
    except (TypeError, ValueError) as exc:  # dask-jobqueue reports unknown keywords as ValueError
        raise ConfigError(f"invalid SLURM cluster option: {exc}; "
                          "see the options listed in data_prep/cluster.py") from None


@contextmanager
def dask_client(kind: str, workers: int, options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A distributed Client on a fresh local or SLURM cluster, closed (jobs cancelled) on exit."""
    from distributed import Client

    if kind == "local":
        cluster = build_local_cluster(workers, options)
        wait = None
    else:
        cluster = build_slurm_cluster(options)
        _, wait = slurm_cluster_kwargs(options)
        cluster.scale(n=workers)
    try:
        with Client(cluster) as client:
            if wait is not None:
                try:
                    client.wait_for_workers(1, timeout=wait)
                except TimeoutError:
                    raise ConfigError(
                        f"no SLURM worker connected within {wait:g} s: check `squeue`, the job logs and "
                        f"the job script (partition/account/interface options):\n{cluster.job_script()}"
                    ) from None
            yield client
    finally:
        cluster.close()


def map_unordered(fn: Callable[..., R], items: Sequence[T], args: tuple[Any, ...], *, kind: str,
                  workers: int, options: Mapping[str, Any] | None = None
                  ) -> Iterator[tuple[T, R | BaseException]]:
    """Run ``fn(item, *args)`` for every item; yield ``(item, result)`` as tasks finish.

    A task that could not run (lost worker, unpicklable result) yields its exception instead
    of a result; ``fn`` itself is expected to catch the errors of its input.
    """
    check_cluster_args(kind, workers, options)
    if not items:
        return
    kind = local_or_fallback(kind)
    if kind == "processes":
        options = None
    if kind == "sync":
        for item in items:
            yield item, fn(item, *args)
    elif kind == "processes":
        import dask

        tasks = [dask.delayed(fn, pure=False)(item, *args) for item in items]
        results = dask.compute(*tasks, scheduler="processes", num_workers=workers)
        yield from zip(items, results)
    else:
        from distributed import as_completed

        with dask_client(kind, workers, options) as client:
            futures = {client.submit(fn, item, *args, pure=False): item for item in items}
            for future in as_completed(futures):
                item = futures.pop(future)
                try:
                    yield item, future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: report it, go on
                    yield item, exc
                future.release()
