"""`bsynth bench gpu`: the one prepared GPU suite (issue 15), inside 8 minutes on one H100/H200.

GPU time is lent rarely and briefly, so everything worth measuring on a GPU runs from this one command:

1. ``kernel_tests``      the kernel tests on the real GPU kernels (``BSYNTH_TEST_GPU=1 pytest``), junit + JSON summary;
2. ``kernel_bench``      the kernel microbenchmarks (benchmarks/kernels): the device copy bandwidth, then Triton vs
                         eager vs torch.compile vs cuDNN/SDPA/flex-attention, GB/s against that copy bandwidth;
3. ``depthwise_conv3d``  the depthwise-conv extension vs cuDNN (benchmarks/depthwise_conv3d.py);
4. ``wfdm_sampling``     seed 003 Table 6: a 192x224x160 volume, 50 RFlow steps, batch 1 (seconds, peak memory);
5. ``dit3d_training``    a DiT-3D training step at the dit3d_tle config (step time, peak memory, window vs global).

Each entry's commands run as subprocesses in their own process group with a hard time budget (the whole group is
killed when it runs past), so a crash, an OOM or a hang loses that command only; the suite summary is rewritten
after every command, so a run killed from outside keeps what it had. The suite never runs past ``--max-total-s``
(default 480 s): a late command gets only the time left. Results go to
``benchmarks/results/gpu/<gpu-name-slug>/`` (each benchmark's JSON, ``logs/<entry>.log``, ``suite_summary.json``).

    bsynth bench gpu --dry-run                 # CPU is fine: the entries, their commands, budgets and total
    bsynth bench gpu                           # on the GPU machine (exit 2 without CUDA)
    bsynth bench gpu --only kernel_bench --only wfdm_sampling
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
GPU_RESULTS_DIR = REPO / "benchmarks" / "results" / "gpu"
MAX_TOTAL_S = 480.0
"""The suite's whole budget: 8 minutes, so one 10-minute device command holds it with room to spare."""
KERNEL_OPS = ("copy_bandwidth", "window_attention3d", "group_norm_silu", "haar_dwt3d")
"""Order matters: the copy bandwidth first (the ceiling the others are read against), the attention kernels next
(what issue 15's compile check flagged), then the memory-bound ops."""
PROJECT_MODULES = ("yaml", "tqdm", "zarr", "numcodecs", "pywt", "nibabel", "monai", "dask", "scipy", "pandas",
                   "safetensors", "deepspeed", "triton")
"""Modules the project or its tests import; the summary lists the ones the machine lacks (carry them as wheels)."""


@dataclass(frozen=True)
class Command:
    """One subprocess of an entry: argv (``{python}`` is replaced by this interpreter), budget, extra env
    (a value of None removes the variable)."""

    label: str
    argv: tuple[str, ...]
    budget_s: float
    env: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """A suite entry: its commands run in order; ``requires_modules`` / ``requires_files`` absent -> "missing"
    (nothing run); ``summarize`` turns the entry's outputs into a JSON-able dict after it ran."""

    name: str
    description: str
    commands: tuple[Command, ...]
    requires_modules: tuple[str, ...] = ()
    requires_files: tuple[str, ...] = ()
    summarize: Callable[[Path], dict[str, Any]] | None = None

    @property
    def budget_s(self) -> float:
        return sum(c.budget_s for c in self.commands)


# ---------------------------------------------------------------------------- the five entries
def kernel_test_files() -> list[str]:
    """The kernel test files that exist in this checkout (repo-relative)."""
    files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("test_kernel_*.py"))
    if (REPO / "tests" / "test_depthwise_conv3d.py").is_file():
        files.append("tests/test_depthwise_conv3d.py")
    return files


def summarize_junit(path: Path) -> dict[str, Any]:
    """Counts and the failing test ids of a pytest junit XML file (``{"status": "missing"}`` if absent)."""
    if not path.is_file():
        return {"status": "missing", "junit": str(path)}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing, skipped = [], {}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failing.append({"test": test_id, "kind": tag, "message": (node.get("message") or "")[:300]})
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "")[:200]
            skipped[reason] = skipped.get(reason, 0) + 1
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"status": "ok", "junit": path.name, **counts, "passed": passed, "failing": failing,
            "skip_reasons": skipped}


def _kernel_tests_summary(out_dir: Path) -> dict[str, Any]:
    summary = summarize_junit(out_dir / "kernel_tests.junit.xml")
    _write_json(out_dir / "kernel_tests.json", summary)
    return summary


def suite_entries(out_dir: Path) -> list[Entry]:
    """The five entries, writing into ``out_dir``; budgets sum to at most :data:`MAX_TOTAL_S`."""
    out = str(out_dir)
    gpu_tests_env = {"BSYNTH_TEST_GPU": "1", "TRITON_INTERPRET": None}
    # one hanging test fails alone instead of costing the whole entry (junit is only written when pytest ends)
    per_test = ("--timeout", "30") if importlib.util.find_spec("pytest_timeout") is not None else ()
    kernel_budgets = {"copy_bandwidth": 10, "window_attention3d": 75, "group_norm_silu": 40, "haar_dwt3d": 35}
    return [
        Entry("kernel_tests", "kernel tests on the GPU (BSYNTH_TEST_GPU=1), junit XML + kernel_tests.json",
              (Command("pytest", ("{python}", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
                                  f"--junitxml={out}/kernel_tests.junit.xml", *per_test, *kernel_test_files()),
                       60, gpu_tests_env),),
              requires_modules=("pytest", "triton", "zarr"),  # zarr: tests/conftest.py loads the smoke recipe
              summarize=_kernel_tests_summary),
        Entry("kernel_bench", "Triton vs eager vs torch.compile vs cuDNN/SDPA/flex, GB/s vs measured copy bandwidth",
              tuple(Command(op, ("{python}", "-m", "benchmarks.kernels.run_all", "--device", "cuda", "--ops", op,
                                 "--out-dir", out), kernel_budgets[op]) for op in KERNEL_OPS),
              requires_modules=("triton",)),
        Entry("depthwise_conv3d", "depthwise 3D conv: the bsynth_hpc._C extension vs F.conv3d(groups=C) (cuDNN)",
              (Command("bench", ("{python}", "-m", "benchmarks.depthwise_conv3d", "--out-dir", out), 35),),
              requires_files=("benchmarks/depthwise_conv3d.py",)),
        Entry("wfdm_sampling", "seed 003 Table 6: 192x224x160, 50 RFlow steps, batch 1 (s per volume, peak memory)",
              (Command("rflow50", ("{python}", "-m", "benchmarks.e2e_sampling", "--size", "full", "--device", "cuda",
                                   "--warmup", "1", "--runs", "3", "--steps-rflow", "50", "--steps-ddpm", "0",
                                   "--steps-ddim", "0", "--out-dir", out), 100),),
              requires_modules=("yaml",)),
        Entry("dit3d_training", "DiT-3D (dit3d_tle config) training step: step time, peak memory, window vs global",
              (Command("step", ("{python}", "-m", "benchmarks.dit3d_training", "--size", "full", "--latents",
                                "4x28x34x28", "--modes", "global", "window", "--variants", "single", "--steps", "8",
                                "--warmup", "3", "--timeout", "50", "--out", out), 105),),
              requires_modules=("yaml", "zarr")),
    ]


# ---------------------------------------------------------------------------- running
def child_env(extra: Mapping[str, str | None]) -> dict[str, str]:
    """This environment + unbuffered output + the checkout on PYTHONPATH (benchmarks/ is not installed) + extra."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def resolve_argv(cmd: Command) -> list[str]:
    return [sys.executable if a == "{python}" else a for a in cmd.argv]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - chars))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_command(cmd: Command, log_path: Path, budget_s: float) -> dict[str, Any]:
    """Run one command with a hard wall-clock budget, output appended to ``log_path``. Past the budget the whole
    process group (torchrun ranks, compile workers) is killed and the status is "timeout"."""
    argv = resolve_argv(cmd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}   # budget {budget_s:.0f} s\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(argv, cwd=REPO, env=child_env(cmd.env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return {"label": cmd.label, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0,
                    "budget_s": budget_s}
        try:
            rc: int | None = proc.wait(timeout=budget_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = None, "timeout"
    seconds = round(time.perf_counter() - t0, 2)
    row: dict[str, Any] = {"label": cmd.label, "status": status, "returncode": rc, "seconds": seconds,
                           "budget_s": budget_s}
    if status != "ok":
        row["log_tail"] = _tail(log_path)
    return row


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _missing(entry: Entry) -> list[str]:
    gone = [m for m in entry.requires_modules if importlib.util.find_spec(m) is None]
    return gone + [f for f in entry.requires_files if not (REPO / f).is_file()]


def _worst(statuses: Sequence[str]) -> str:
    for s in ("timeout", "failed", "missing"):
        if s in statuses:
            return s
    return "ok" if statuses else "skipped"


def run_entry(entry: Entry, out_dir: Path, deadline: float, on_progress: Callable[[dict[str, Any]], None]
              ) -> dict[str, Any]:
    """Run an entry's commands in order (each cut to the time left before ``deadline``); ``on_progress`` gets the
    entry's record after every command."""
    record: dict[str, Any] = {"name": entry.name, "description": entry.description, "status": "running",
                              "budget_s": entry.budget_s, "seconds": 0.0, "commands": [],
                              "log": f"logs/{entry.name}.log"}
    missing = _missing(entry)
    if missing:
        record.update(status="missing", missing=missing)
        on_progress(record)
        return record
    log = out_dir / "logs" / f"{entry.name}.log"
    log.unlink(missing_ok=True)
    on_progress(record)  # "running" on disk before the first command starts
    for cmd in entry.commands:
        left = deadline - time.monotonic()
        if left < 1.0:
            row = {"label": cmd.label, "status": "timeout", "seconds": 0.0, "budget_s": cmd.budget_s,
                   "reason": "the suite's total budget was spent before this command"}
        else:
            row = run_command(cmd, log, min(cmd.budget_s, left))
        record["commands"].append(row)
        record["seconds"] = round(sum(r["seconds"] for r in record["commands"]), 2)
        record["status"] = "running"
        on_progress(record)
    record["status"] = _worst([r["status"] for r in record["commands"]])
    if entry.summarize is not None:
        try:
            record["summary"] = entry.summarize(out_dir)
        except Exception as exc:  # noqa: BLE001 - a broken summary must not lose the entry's record
            record["summary"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    on_progress(record)
    return record


def run_suite(entries: Sequence[Entry], out_dir: Path, environment: dict[str, Any],
              max_total_s: float = MAX_TOTAL_S) -> dict[str, Any]:
    """Run ``entries`` in order under one total deadline; ``out_dir/suite_summary.json`` is rewritten after every
    command (entries not reached yet read "pending")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + max_total_s
    summary: dict[str, Any] = {
        "suite": "bsynth bench gpu", "environment": environment, "max_total_s": max_total_s,
        "budget_total_s": sum(e.budget_s for e in entries), "status": "running",
        "entries": [{"name": e.name, "status": "pending", "budget_s": e.budget_s} for e in entries],
    }
    path = out_dir / "suite_summary.json"

    def save(i: int, record: dict[str, Any]) -> None:
        summary["entries"][i] = dict(record)
        summary["wall_s"] = round(time.monotonic() - t0, 2)
        _write_json(path, summary)

    _write_json(path, summary)
    for i, entry in enumerate(entries):
        record = run_entry(entry, out_dir, deadline, lambda r, i=i: save(i, r))
        print(f"[bench gpu] {entry.name:17s} {record['status']:8s} {record['seconds']:7.1f} s "
              f"(budget {entry.budget_s:.0f} s)", flush=True)
    summary["status"] = _worst([e["status"] for e in summary["entries"]])
    summary["wall_s"] = round(time.monotonic() - t0, 2)
    _write_json(path, summary)
    return summary


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- CLI
def gpu_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200' (the same slug rule as benchmarks.common.write_results)."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower() or "gpu"


def select(entries: Sequence[Entry], only: Sequence[str], skip: Sequence[str]) -> list[Entry]:
    names = [e.name for e in entries]
    unknown = [n for n in (*only, *skip) if n not in names]
    if unknown:
        raise SystemExit(f"bsynth bench gpu: unknown entry {', '.join(unknown)}; entries: {', '.join(names)}")
    return [e for e in entries if (not only or e.name in only) and e.name not in skip]


def describe(entries: Sequence[Entry], max_total_s: float) -> str:
    """The --dry-run listing: every entry, its commands with budgets, and the total."""
    lines = []
    for e in entries:
        lines.append(f"{e.name}  [{e.budget_s:.0f} s]  {e.description}")
        for c in e.commands:
            env = " ".join([f"-u {k}" for k, v in c.env.items() if v is None]  # a valid `env` command line
                           + [f"{k}={v}" for k, v in c.env.items() if v is not None])
            lines.append(f"    {c.budget_s:4.0f} s  {c.label:19s} {('env ' + env + ' ') if env else ''}"
                         f"{shlex.join(resolve_argv(c))}")
        if e.requires_files or e.requires_modules:
            lines.append(f"           needs: {', '.join((*e.requires_modules, *e.requires_files))} (else: missing)")
    total = sum(e.budget_s for e in entries)
    lines.append(f"total budget: {total:.0f} s ({total / 60:.1f} min; suite limit {max_total_s:.0f} s)")
    return "\n".join(lines)


def environment(device_name: str) -> dict[str, Any]:
    """Device, versions and the project modules this machine lacks."""
    from benchmarks.common import environment_info  # lazy: imports torch, not needed for --help

    info = environment_info("cuda")
    info["gpu_slug"] = gpu_slug(device_name)
    info["missing_modules"] = [m for m in PROJECT_MODULES if importlib.util.find_spec(m) is None]
    try:
        import torch.backends.cudnn as cudnn  # lazy: torch is already imported by environment_info

        info["cudnn"] = cudnn.version()
    except Exception:  # pragma: no cover
        info["cudnn"] = None
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bsynth bench gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="list entries, commands, budgets and the total; run nothing")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this entry (repeatable)")
    p.add_argument("--skip", action="append", default=[], metavar="NAME", help="skip this entry (repeatable)")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results/gpu/<gpu-name-slug>")
    p.add_argument("--max-total-s", type=float, default=MAX_TOTAL_S, help="hard limit of the whole suite (s)")
    a = p.parse_args(list(argv) if argv is not None else None)

    import torch  # lazy: keeps `--help` instant

    has_cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if has_cuda else "<gpu-name-slug>"
    out_dir = Path(a.out_dir) if a.out_dir else GPU_RESULTS_DIR / (gpu_slug(name) if has_cuda else name)
    entries = select(suite_entries(out_dir), a.only, a.skip)
    if a.dry_run:
        print(f"bsynth bench gpu --dry-run: {len(entries)} entries, results in {out_dir}")
        print(describe(entries, a.max_total_s))
        return 0
    if not has_cuda:
        print("bsynth bench gpu: no CUDA device here (torch.cuda.is_available() is False); this suite needs one "
              "GPU. Use --dry-run to see what it would run.", file=sys.stderr)
        return 2
    summary = run_suite(entries, out_dir, environment(name), a.max_total_s)
    print(f"[bench gpu] {summary['status']} in {summary['wall_s']:.0f} s; summary: {out_dir / 'suite_summary.json'}")
    return 0 if summary["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
