"""The SLURM launchers on a real single-node SLURM cluster (tests/slurm_cluster.sh starts one per session).

tests/test_engine_launchers.py checks the batch scripts against fake srun/sbatch; here the project's own
``launchers/wfdm.slurm`` and ``launchers/dit3d.slurm`` run under real slurmctld/slurmd/srun:

* two srun tasks form a gloo process group (DDP on CPU, world size 2);
* ``scancel --signal=USR1`` mid-training: both ranks checkpoint and exit 75, the script requeues the
  job, and the restart (SLURM_RESTART_COUNT=1) resumes from that checkpoint and finishes;
* ``--time=1 --signal=B:USR1@5``: the warning reaches the batch shell before the limit, is forwarded,
  the run checkpoints and is requeued; then a plain ``scancel`` ends the job for good (no requeue);
* ``STAGE=pipeline``: both dependency chains (compressor -> encode -> denoiser -> sampling + eval or
  study) complete in order and write their exports.

Needs root and the Debian packages slurm-wlm + munge (.ci/run installs them: ``tests/slurm_cluster.sh
install``); without them, or when the daemons do not come up, every test here skips with the reason.
The chains are submitted by the first test (the time-limit one) and run while it waits; the node has 8
virtual CPUs, so the jobs overlap on the real cores. Under pytest-xdist's default ``--dist load`` the tests
may land on both workers: each worker then runs its own private cluster (own ports, munge socket, job ids),
which works; ``--dist loadgroup`` keeps them on one (the ``xdist_group`` mark).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm_cluster.sh"
PY = sys.executable

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("slurm")]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE",
            "BOOT_FAIL"}
QUIET_TRAINING = "engine.val_every=0 engine.ckpt_every=0 engine.log_every=1"


# ------------------------------------------------------------------------------------------ cluster
class Slurm:
    """The test cluster: its directory, the client environment and job helpers."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "cluster" / "slurm.conf"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        """Submission environment (sbatch --export=ALL hands it to the jobs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "BSYNTH_FAULTS", "TORCHELASTIC_RUN_ID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
            env.pop(key, None)
        env.update({"SLURM_CONF": str(self.conf), "BSYNTH_REPO": str(REPO), "PYTHON": PY,
                    "BSYNTH_DISABLE_TRITON": "1", "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", "DS_BUILD_OPS": "0", "SBATCH_OUTPUT": str(self.logs / "%x-%j.out")})
        env.update(extra)
        return env

    def cmd(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def sbatch(self, script: str, *options: str, **env: str) -> str:
        proc = subprocess.run(["sbatch", "--parsable", *options, f"launchers/{script}"], cwd=REPO,
                              env=self.env(**env), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = self.cmd("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(re.findall(r"(\w[\w/:]*)=(\S*)", out))

    def log(self, job_id: str) -> str:
        path = next(self.logs.glob(f"*-{job_id}.out"), None)
        return path.read_text(errors="replace") if path else ""

    def report(self, *job_ids: str) -> str:
        parts = []
        for j in job_ids:
            info = self.job(j)
            parts.append(f"--- job {j}: {info.get('JobState')} Reason={info.get('Reason')} "
                         f"Restarts={info.get('Restarts')} ExitCode={info.get('ExitCode')}\n{self.log(j)[-4000:]}")
        tail = subprocess.run(["bash", str(CLUSTER), "logs", str(self.root / "cluster")], capture_output=True,
                              text=True).stdout
        return "\n".join(parts) + "\n" + tail[-3000:]

    def wait_for(self, what: str, predicate, job_ids: tuple[str, ...], timeout: float = 400, poll: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.report(*job_ids)}")

    def wait_done(self, *job_ids: str, timeout: float = 400) -> dict[str, dict[str, str]]:
        def done():
            infos = {j: self.job(j) for j in job_ids}
            return infos if all(i.get("JobState") in TERMINAL for i in infos.values()) else None
        return self.wait_for(f"jobs {', '.join(job_ids)} to end", done, job_ids, timeout=timeout, poll=1.0)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root")
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")
               if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): `tests/slurm_cluster.sh install` "
                    "(apt-get install slurm-wlm munge; .ci/run does it)")
    root = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(CLUSTER), "start", str(root / "cluster")], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode:
        pytest.skip(f"the test SLURM cluster did not start:\n{(proc.stdout + proc.stderr)[-3000:]}")
    cluster = Slurm(root)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(root / "cluster")], capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------------ data
def _cohort_and_store(out: Path, cohort: list[str], prep: list[str], t1w_only: bool = False) -> subprocess.Popen:
    """`bsynth demo-cohort` then `bsynth prep` (8 mm: a 24 x 28 x 20 grid), in the background."""
    manifest = out / "cohort" / "manifest.csv"
    steps = [[PY, "-m", "bsynth_hpc.cli", "demo-cohort", "--out", str(out / "cohort"), "--spacing", "8",
              "--workers", "1", *cohort]]
    if t1w_only:   # as `bsynth demo --recipe dit3d`: the T1w volumes only
        steps.append([PY, "-c", "import csv,sys; p=sys.argv[1]; rows=list(csv.DictReader(open(p)));"
                      "w=csv.DictWriter(open(p,'w',newline=''),fieldnames=list(rows[0])); w.writeheader();"
                      "w.writerows(r for r in rows if r['modality']=='T1w')", str(manifest)])
    steps.append([PY, "-m", "bsynth_hpc.cli", "prep", "--manifest", str(manifest), "--out", str(out / "store.zarr"),
                  "--cluster", "sync", "--shape", "24", "28", "20", "--spacing", "8", "8", "8", "--quiet", *prep])
    script = " && ".join(shlex.join(step) for step in steps)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BSYNTH_DISABLE_TRITON="1", TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> dict[str, Path]:
    """The multi-modal demo cohort (4 subjects per dataset) for WFDM, the T1w epilepsy cohort (8 subjects,
    label-stratified splits as `bsynth demo --recipe dit3d`) for DiT-3D; built in parallel."""
    root = tmp_path_factory.mktemp("stores")
    procs = {
        "wfdm": _cohort_and_store(root / "wfdm", ["--subjects", "4"], []),
        "dit3d": _cohort_and_store(root / "dit3d", ["--subjects", "8", "--datasets", "demo-epilepsy"],
                                   ["--stratify", "label", "--splits", "0.8", "0.074", "0.126"], t1w_only=True),
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} store: {out}"
    return {name: root / name / "store.zarr" for name in procs}


@pytest.fixture(scope="module")
def timelimit_job(slurm, stores) -> tuple[Path, str]:
    """A long training run (1 task) under --time=1 with the warning signal 5 s before the limit."""
    run = slurm.root / "runs" / "timelimit"
    job = slurm.sbatch("wfdm.slurm", "--job-name=timelimit", "--nodes=1", "--ntasks-per-node=1",
                       "--cpus-per-task=1", "--time=1", "--signal=B:USR1@5",
                       STAGE="wfdm-vae", CONFIG="configs/wfdm-vae_tiny.yaml", STORE=str(stores["wfdm"]),
                       RUN_DIR=str(run), EXTRA_ARGS=f"engine.max_steps=100000 {QUIET_TRAINING}")
    return run, job


@pytest.fixture(scope="module")
def pipelines(slurm, stores) -> dict[str, tuple[Path, list[tuple[str, str]]]]:
    """Both chains (STAGE=pipeline), tiny: one task per job, a few steps per stage, smoke-mode eval/study.
    The first test (the time-limit one) requests them too, so they run while it waits."""
    chain_options = "--cpus-per-task=1"   # the size: NODES / GPUS_PER_NODE below
    out = {}
    for recipe, env in {
        "wfdm": dict(VAE_CONFIG="configs/wfdm-vae_tiny.yaml", LDM_CONFIG="configs/wfdm-ldm_tiny.yaml",
                     VAE_ARGS="engine.max_steps=3", LDM_ARGS="engine.max_steps=3", N_SAMPLES="1",
                     SAMPLE_ARGS="--steps 2 --device cpu",
                     EVAL_SYNTH_ARGS="--real-split all --allow-random-features --depth 10 --pairs 4 --device cpu",
                     EVAL_RECON_ARGS="--allow-random-features --per-plane 2 --device cpu"),
        "dit3d": dict(VAE_CONFIG="configs/dit3d-vae_tiny.yaml", DIT_CONFIG="configs/dit3d_tiny.yaml",
                      # 8 mm: 24x28x20 / 2 = 12x14x10 latents tile into the DiT's 2x2x2 patches
                      VAE_ARGS="engine.max_steps=2 recipe.phase1_steps=1 recipe.downsample_factor=2",
                      DIT_ARGS="engine.max_steps=2", N_SAMPLES="2", SAMPLE_ARGS="--steps 2 --device cpu",
                      STUDY_ARGS="--arch tiny --epochs 1 --n-slices 17 --device cpu"),
    }.items():
        base = slurm.root / "runs" / recipe
        proc = subprocess.run(["bash", f"launchers/{recipe}.slurm"], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env=slurm.env(STAGE="pipeline", STORE=str(stores[recipe]), RUNS=str(base),
                                                         EXTRA_ARGS=QUIET_TRAINING, SBATCH_ARGS=chain_options,
                                                         NODES="1", GPUS_PER_NODE="1", **env))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "on 1 node(s) x 1 GPU(s): global batch" in proc.stdout, proc.stdout  # validate_chain's summary
        submitted = next(line for line in proc.stdout.splitlines() if line.startswith("submitted "))
        out[recipe] = (base, re.findall(r"([\w-]+) (\d+)", submitted.removeprefix("submitted ")))
    return out


def _metrics(run_dir: Path) -> list[dict]:
    """RUN/logs/metrics.jsonl so far (a line rank 0 is still writing is left out)."""
    path = run_dir / "logs" / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _steps(log: str, pattern: str) -> list[int]:
    return [int(s) for s in re.findall(pattern, log)]


# ------------------------------------------------------------------------------------------ tests
def test_time_limit_warning_checkpoints_and_requeues_and_scancel_stops(slurm, timelimit_job, pipelines):
    """--time=1 --signal=B:USR1@5: the batch shell gets USR1 before the limit and forwards it; the run
    checkpoints and is requeued; the restart resumes. A plain scancel then ends the job: not requeued.

    SLURM sends the warning up to its time-limit check period (30 s) early: @5 arrives 25-55 s into the
    minute, after the engine has installed its signal handlers (a USR1 before that would kill the task)."""
    run, job = timelimit_job
    slurm.wait_for("the requeued start to resume", lambda: "resumed from" in slurm.log(job), (job,), timeout=400)
    slurm.cmd("scancel", job)
    info = slurm.wait_done(job, timeout=120)[job]
    log = slurm.log(job)
    assert "[slurm] SIGUSR1 received" in log, log                      # the warning reached the batch shell
    assert "rank 0: SIGUSR1 received" in log, log                      # ... and srun relayed it to the task
    assert "DUE TO TIME LIMIT" not in log.split("[slurm] requeue:")[0], log   # before the limit
    (k, *_) = _steps(log, r"preempted at step (\d+): checkpoint written; exit 75")
    assert "[slurm] requeue: preempted after writing a checkpoint" in log, log
    assert re.search(rf"\[slurm\] job {job} restart 1: wfdm-vae", log), log
    assert f"resumed from {run}/checkpoints/step-{k:08d} (step {k})" in log, log
    # scancel: SIGTERM -> checkpoint -> exit 75, but the job is ending: no requeue, it stays cancelled
    assert "not requeued (preempted after writing a checkpoint): the job is ending" in log, log
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "1", slurm.report(job)
    time.sleep(3)
    assert slurm.job(job)["JobState"] == "CANCELLED", slurm.report(job)


def test_two_srun_ranks_usr1_checkpoint_requeue_resume(slurm, stores):
    """srun starts 2 tasks (gloo, world size 2); scancel --signal=USR1 -> both ranks finish the step and
    checkpoint, exit 75 -> scontrol requeue -> the restart (SLURM_RESTART_COUNT=1) resumes and finishes."""
    run = slurm.root / "runs" / "two-ranks"
    job = slurm.sbatch("wfdm.slurm", "--job-name=tworanks", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                       STAGE="wfdm-vae", CONFIG="configs/wfdm-vae_tiny.yaml", STORE=str(stores["wfdm"]),
                       RUN_DIR=str(run), EXTRA_ARGS=f"engine.max_steps=40 {QUIET_TRAINING}")
    slurm.wait_for("two training steps", lambda: len(_metrics(run)) >= 2, (job,), timeout=300, poll=0.2)
    slurm.cmd("scancel", "--signal=USR1", job)   # the tasks only (not the batch shell)
    info = slurm.wait_done(job)[job]
    log = slurm.log(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", slurm.report(job)
    assert info["Restarts"] == "1", slurm.report(job)
    # first start: 2 ranks over srun, both got USR1 from SLURM directly, one checkpoint, exit 75, requeue
    assert re.search(rf"\[slurm\] job {job} restart 0: wfdm-vae on 1 node\(s\), 2 tasks", log), log
    assert len(re.findall(r"2 rank\(s\) via slurm", log)) == 2, log   # world size 2, both starts
    assert "rank 0: SIGUSR1 received" in log and "rank 1: SIGUSR1 received" in log, log
    assert "[slurm] SIGUSR1 received" not in log, log   # not the batch shell: scancel --signal goes to the steps
    (k,) = _steps(log, r"preempted at step (\d+): checkpoint written; exit 75")
    assert 2 <= k < 40, log
    # exit 75 from srun, or 143 when one rank's exit 75 made srun (--kill-on-bad-exit) stop the other rank
    # after the checkpoint was committed: the run state decides
    assert re.search(r"tasks ended with exit (75|143), run state 'preempted'", log), log
    assert "[slurm] requeue: preempted" in log, log
    # the restart resumes from that checkpoint and finishes the run
    assert re.search(rf"\[slurm\] job {job} restart 1: wfdm-vae on 1 node\(s\), 2 tasks", log), log
    assert f"resumed from {run}/checkpoints/step-{k:08d} (step {k})" in log and f"steps {k}->40" in log, log
    assert log.rstrip().endswith("[slurm] finished"), log
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 40
    assert (run / "checkpoints" / f"step-{k:08d}").is_dir() and (run / "export" / "vae.safetensors").is_file()
    metrics = _metrics(run)
    steps = [m["step"] for m in metrics]
    assert steps[-1] == 40 and set(range(k + 1, 41)) <= set(steps)   # the restart continued after step k
    assert all(len(m["peak_mem_mb"]) == 2 for m in metrics)            # per-rank values: two ranks


def _check_chain(slurm, chain: list[tuple[str, str]], stages: list[str]) -> None:
    assert [s for s, _ in chain] == stages
    ids = tuple(j for _, j in chain)
    infos = slurm.wait_done(*ids, timeout=480)
    for stage, j in chain:
        assert infos[j]["JobState"] == "COMPLETED" and infos[j]["ExitCode"] == "0:0", \
            f"stage {stage}:\n{slurm.report(*ids)}"
    for (_, before), (_, after) in zip(chain, chain[1:]):   # afterok: each starts after the one before ended
        assert infos[after]["StartTime"] >= infos[before]["EndTime"], slurm.report(*ids)
    last = infos[ids[-1]]
    assert last["NumNodes"] == "1" and last["NumTasks"] == "1"


def test_wfdm_pipeline_chain_completes(slurm, pipelines):
    base, chain = pipelines["wfdm"]
    _check_chain(slurm, chain, ["wfdm-vae", "encode", "wfdm-ldm", "sample-eval"])
    assert (base / "wfdm-vae" / "export" / "vae.safetensors").is_file()
    assert (base / "latents.zarr").is_dir()
    assert (base / "wfdm-ldm" / "export" / "unet.safetensors").is_file()
    with (base / "samples" / "samples.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all((base / "samples" / r["path"]).is_file() for r in rows)   # one per modality
    assert (base / "eval" / "synth" / "metrics.json").is_file() and (base / "eval" / "recon" / "metrics.json").is_file()


def test_dit3d_pipeline_chain_completes(slurm, pipelines):
    base, chain = pipelines["dit3d"]
    _check_chain(slurm, chain, ["dit3d-vae", "encode", "dit3d", "sample-study"])
    assert (base / "dit3d-vae" / "export" / "vae.safetensors").is_file()
    assert (base / "latents_dit3d.zarr").is_dir()
    assert (base / "dit3d" / "export" / "dit.safetensors").is_file()
    with (base / "samples_dit3d" / "samples.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["label"] for r in rows) == ["TLE", "TLE", "healthy", "healthy"]
    report = json.loads((base / "study" / "metrics.json").read_text())
    assert report["config"]["arch"] == "tiny" and "real" in report["conditions"]
