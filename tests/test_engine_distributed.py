"""Two-rank gloo runs (torchrun, mpiexec, the deepspeed launcher) against one process at the same global batch.

Data order, initial weights and every random draw are keyed to the global sample position, so
DDP, ZeRO-2 and ZeRO-3 with 2 ranks x micro-batch 2 must reach the losses of one process with
micro-batch 4. Tolerance: rtol 1e-4 in fp32 (observed differences are ~1e-7, from the order of
floating-point sums in the gradient all-reduce).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bsynth_hpc.engine.checkpoint import is_complete
from bsynth_hpc.engine.errors import EXIT_PEER_LOST, EXIT_REQUEUE
from bsynth_hpc.engine.run import train_main
from engine_support import REPO, VENV_BIN, explain, free_port, losses, make_store, run, subprocess_env, train_args, \
    write_config

pytestmark = pytest.mark.distributed

RTOL = 1e-4
ENGINE = {"max_steps": 6, "micro_batch": 4, "val_every": 2, "ckpt_every": 0,
          "schedule": {"name": "cosine", "warmup": 2, "min_lr_ratio": 0.1}}
KEYS = ("loss/generator", "loss/generator/kl", "loss/generator/adv", "loss/discriminator",
        "grad_norm/generator", "val/l1")
TWO_RANKS = ["engine.micro_batch=2"]  # 2 ranks x 2 = the reference's global batch of 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Store, config and the one-process reference run (in-process)."""
    import os

    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    os.environ.pop("BSYNTH_FAULTS", None)
    root = tmp_path_factory.mktemp("dist")
    store = make_store(root / "store.zarr")
    config = write_config(root / "vaegan.yaml", "smoke-vaegan", engine=ENGINE)
    assert train_main(train_args("smoke-vaegan", config, store, root / "reference")) == 0
    return store, config, root / "reference"


def assert_matches_reference(run_dir, reference):
    for key in KEYS:
        ref, got = losses(reference, key), losses(run_dir, key)
        assert ref and ref.keys() == got.keys(), key
        for step, value in ref.items():
            assert got[step] == pytest.approx(value, rel=RTOL), (key, step, got[step], value)
    a = load_file(str(reference / "export" / "vae.safetensors"))
    b = load_file(str(run_dir / "export" / "vae.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def torchrun(*args: str) -> list[str]:
    return [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]


def status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def test_ddp_mpiexec_preempted_then_resumed_under_torchrun(tmp_path, setup):
    """mpiexec launch; only rank 0 gets SIGUSR1, both ranks stop after the same step and checkpoint;
    the run then continues under torchrun (another launcher) and matches the reference."""
    store, config, reference = setup
    run_dir = tmp_path / "run"
    args = train_args("smoke-vaegan", config, store, run_dir, "engine.backend=ddp", *TWO_RANKS)
    proc = run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "bsynth_hpc.engine.run", *args],
               env=subprocess_env(BSYNTH_FAULTS="signal@2:rank=0:sig=USR1"))
    assert proc.returncode == EXIT_REQUEUE, explain(proc)
    assert status(run_dir)["state"] == "preempted" and status(run_dir)["step"] == 3
    assert is_complete(run_dir / "checkpoints" / "step-00000003")
    proc = run(torchrun("-m", "bsynth_hpc.engine.run", *args, "--resume", "auto"))
    assert proc.returncode == 0, explain(proc)
    assert "resumed from" in proc.stdout + proc.stderr
    assert_matches_reference(run_dir, reference)


def test_zero3_torchrun_preempted_then_resumed(tmp_path, setup):
    """ZeRO-3 (two DeepSpeed engines: generator and discriminator); rank 1 gets SIGTERM; DeepSpeed's sharded
    checkpoint is read back with weights_only=True."""
    store, config, reference = setup
    run_dir = tmp_path / "run"
    args = train_args("smoke-vaegan", config, store, run_dir, "engine.backend=deepspeed", "engine.zero_stage=3",
                      *TWO_RANKS)
    proc = run(torchrun("-m", "bsynth_hpc.engine.run", *args), env=subprocess_env(BSYNTH_FAULTS="signal@3:rank=1"))
    assert proc.returncode != 0, explain(proc)  # torchrun reports any non-zero worker status as its own failure
    assert status(run_dir)["state"] == "preempted" and status(run_dir)["exit_code"] == EXIT_REQUEUE
    ckpt = run_dir / "checkpoints" / "step-00000004"
    assert is_complete(ckpt) and (ckpt / "deepspeed" / "vae").is_dir() and (ckpt / "deepspeed" / "disc").is_dir()
    proc = run(torchrun("-m", "bsynth_hpc.engine.run", *args, "--resume", "auto"))
    assert proc.returncode == 0, explain(proc)
    assert_matches_reference(run_dir, reference)


def test_zero2_under_the_deepspeed_launcher(tmp_path, setup):
    store, config, reference = setup
    run_dir = tmp_path / "run"
    args = train_args("smoke-vaegan", config, store, run_dir, "engine.backend=deepspeed", "engine.zero_stage=2",
                      *TWO_RANKS)
    proc = run([str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                str(REPO / "launchers" / "train_dit3d.py"), *args], timeout=600)
    assert proc.returncode == 0, explain(proc)
    assert "backend deepspeed" in proc.stdout + proc.stderr
    assert_matches_reference(run_dir, reference)


def test_dead_rank_makes_the_other_exit_with_a_clear_error(tmp_path, setup):
    """Two tasks started the way `srun` starts them (SLURM_* variables, no torch launcher). Rank 1 dies at
    step 2 without a word; rank 0 must not hang: it exits 4 well within the timeout."""
    store, config, _ = setup
    run_dir = tmp_path / "run"
    port = free_port()
    args = train_args("smoke-vaegan", config, store, run_dir, "engine.backend=ddp", *TWO_RANKS,
                      "engine.timeouts.collective=60", "engine.timeouts.step=90")
    procs = []
    for rank in (0, 1):
        env = subprocess_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_ID="0", SLURM_JOB_ID="77",
                             SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="2", SLURM_STEP_NODELIST="localhost",
                             MASTER_PORT=str(port), BSYNTH_FAULTS="exit@2:rank=1")
        procs.append(subprocess.Popen([sys.executable, "-m", "bsynth_hpc.engine.run", *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out0, err0 = procs[0].communicate(timeout=240)  # a hang (no timeout handling) fails here
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == 1
    assert procs[0].returncode == EXIT_PEER_LOST, f"{out0}\n{err0}"
    assert "2 rank(s) via slurm on cpu" in err0
    assert "rank 0: a collective operation failed" in err0 and "Another rank most likely died" in err0
    assert status(run_dir)["state"] == "peer_lost"
