"""Launch scripts: SLURM batch scripts (with fake srun/scontrol), the single-GPU wrapper, train.py and its aliases."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

import yaml

from bsynth_hpc.engine.registry import get_recipe
from engine_support import REPO, explain, make_store, metrics, run, subprocess_env, write_config

LAUNCHERS = REPO / "launchers"
SLURM_SCRIPTS = ("wfdm.slurm", "dit3d.slurm", "clinical.slurm", "slice2d.slurm")
SHELL_LIBRARIES = ("slurm_recipe.sh", "slurm_pipeline.sh", "slurm_train.sh", "single_gpu.sh")

FAKE_SRUN = r"""#!/usr/bin/env bash
# Records its command line and rendezvous variables, writes status.json like the engine, exits FAKE_RC.
printf '%s\n' "$@" > "$FAKE_LOG/srun_args"
echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT" > "$FAKE_LOG/srun_env"
run_dir=""; prev=""
for a in "$@"; do [ "$prev" = "--run-dir" ] && run_dir=$a; prev=$a; done
mkdir -p "$run_dir"
if [ "${FAKE_MODE:-}" = "wait_signal" ]; then
    trap 'echo USR1 >> "$FAKE_LOG/signals"; echo "{\"state\": \"preempted\"}" > "$run_dir/status.json"; exit 75' USR1
    touch "$FAKE_LOG/started"
    for _ in $(seq 600); do sleep 0.1; done
    exit 9
fi
echo "{\"state\": \"${FAKE_STATE:-finished}\"}" > "$run_dir/status.json"
exit "${FAKE_RC:-0}"
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then printf 'node01\nnode02\n'; exit 0; fi
echo "$*" >> "$FAKE_LOG/scontrol"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    # the fake cluster trains nothing: the scripts only ask bsynth_hpc for the recipe (no test plug-ins needed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "BSYNTH_PLUGINS"}
    env.update({"PYTHON": sys.executable,
                "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "FAKE_LOG": str(log), "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_NUM_NODES": "2",
                "RUN_DIR": str(tmp_path / "run")})
    return env, log


@pytest.mark.parametrize("script", SLURM_SCRIPTS + SHELL_LIBRARIES)
def test_scripts_pass_bash_syntax_check(script):
    proc = subprocess.run(["bash", "-n", str(LAUNCHERS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_slurm_directives(script):
    text = (LAUNCHERS / script).read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, flags=re.M)
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert "--requeue" in directives and "--gpus-per-task=1" in directives
    assert any(re.fullmatch(r"--signal=B:USR1@\d+", d) for d in directives)
    assert any(d.startswith("--nodes=") for d in directives) and any(d.startswith("--ntasks-per-node=") for d in
                                                                       directives)


@pytest.mark.parametrize("script, stage, config", [
    ("wfdm.slurm", "wfdm-ldm", "configs/wfdm-ldm.yaml"),
    ("wfdm.slurm", "wfdm-vae", "configs/wfdm-vae.yaml"),
    ("dit3d.slurm", "dit3d", "configs/dit3d_tle.yaml"),
    ("dit3d.slurm", "dit3d-vae", "configs/dit3d-vae.yaml")])
def test_slurm_script_builds_the_srun_command(fake_slurm, script, stage, config):
    env, log = fake_slurm
    env["STAGE"] = stage
    proc = subprocess.run(["bash", str(LAUNCHERS / script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (log / "srun_args").read_text().split("\n")
    assert args[:3] == ["--kill-on-bad-exit=1", sys.executable, "launchers/train.py"]
    assert args[3] == stage and "--resume" in args and args[args.index("--resume") + 1] == "auto"
    assert args[args.index("--config") + 1] == config and (REPO / config).is_file()
    assert (log / "srun_env").read_text().strip() == f"MASTER_ADDR=node01 MASTER_PORT={20000 + 4242}"
    assert not (log / "scontrol").exists()  # finished: no requeue


def test_slurm_script_names_a_missing_config(fake_slurm):
    env, log = fake_slurm
    env["CONFIG"] = "configs/no_such.yaml"
    proc = subprocess.run(["bash", str(LAUNCHERS / "dit3d.slurm")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "configs/no_such.yaml" in proc.stderr and "CONFIG=" in proc.stderr
    assert not (log / "srun_args").exists()


FAKE_SBATCH = r"""#!/usr/bin/env bash
n=$(( $(cat "$FAKE_LOG/sbatch_n" 2>/dev/null || echo 100) + 1 )); echo "$n" > "$FAKE_LOG/sbatch_n"
echo "$*" >> "$FAKE_LOG/sbatch"
echo "$n"
"""


def _pipeline_env(fake_slurm, tmp_path):
    """A fake sbatch, a (marker) store and smoke flags for the eval job: a chain validate_chain accepts."""
    env, log = fake_slurm
    (tmp_path / "bin" / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    store = tmp_path / "store.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    env.update({"STAGE": "pipeline", "STORE": str(store), "EVAL_SYNTH_ARGS": "--allow-random-features",
                "EVAL_RECON_ARGS": "--no-lpips", "PYTHON": sys.executable})
    env.pop("BSYNTH_WEIGHTS_DIR", None)
    return env, log


@pytest.mark.parametrize("script, stages", [("wfdm.slurm", ["wfdm-vae", "encode", "wfdm-ldm", "sample-eval"]),
                                            ("dit3d.slurm", ["dit3d-vae", "encode", "dit3d", "sample-study"]),
                                            ("slice2d.slurm", ["slice2d-vae", "encode", "slice2d-ldm", "sample-eval"])])
def test_slurm_pipeline_submits_a_dependent_chain(fake_slurm, tmp_path, script, stages):
    env, log = _pipeline_env(fake_slurm, tmp_path)
    proc = subprocess.run(["bash", str(LAUNCHERS / script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (log / "sbatch").read_text().splitlines()
    assert [re.search(r"STAGE=(\S+)", c).group(1) for c in calls] == stages
    assert "--dependency" not in calls[0]
    assert all(f"--dependency=afterok:{101 + i}" in c for i, c in enumerate(calls[1:]))
    assert "--nodes=1 --ntasks-per-node=1" in calls[-1] and all("--nodes" not in c for c in calls[:-1])
    assert all(c.endswith(f"launchers/{script}") for c in calls)
    assert proc.stdout.strip().endswith(f"{stages[-1]} 104")


@pytest.mark.parametrize("unset, message", [
    ({"STORE": "/nonexistent.zarr"}, "STORE=/nonexistent.zarr is not a bsynth store"),
    ({"VAE_CONFIG": "configs/no_such.yaml"}, "config configs/no_such.yaml does not exist"),
    ({"EVAL_SYNTH_ARGS": ""}, "needs MedicalNet weights"),
    ({"EVAL_RECON_ARGS": ""}, "needs AlexNet (LPIPS) weights"),
])
def test_slurm_pipeline_is_validated_before_any_sbatch(fake_slurm, tmp_path, unset, message):
    """#12.5: `STORE=/nonexistent.zarr STAGE=pipeline bash launchers/wfdm.slurm` submitted 4 jobs, and the eval job
    without weights failed after the whole chain."""
    env, log = _pipeline_env(fake_slurm, tmp_path)
    env.update(unset)
    proc = subprocess.run(["bash", str(LAUNCHERS / "wfdm.slurm")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "nothing submitted" in proc.stderr, proc.stderr
    assert not (log / "sbatch").exists()


def test_slurm_pipeline_sizes_training_jobs_and_prints_the_global_batch(fake_slurm, tmp_path):
    """dit3d.slurm's default 2 x 4 GPUs with micro_batch 4 trained at 32, not 000's 16: the config states 16 now
    (engine.global_batch) and the chain prints what each stage will run at; NODES/GPUS_PER_NODE size the jobs."""
    env, log = _pipeline_env(fake_slurm, tmp_path)
    proc = subprocess.run(["bash", str(LAUNCHERS / "dit3d.slurm")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "configs/dit3d_tle.yaml on 2 node(s) x 4 GPU(s): global batch 16 = 2 x 1 x 8" in proc.stdout
    (log / "sbatch").unlink()
    proc = subprocess.run(["bash", str(LAUNCHERS / "dit3d.slurm"), "--nodes", "1", "--gpus-per-node", "2"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "global batch 16 = 4 x 2 x 2" in proc.stdout, proc.stdout
    calls = (log / "sbatch").read_text().splitlines()
    assert all("--nodes=1 --ntasks-per-node=2" in c for c in calls[:-1]) and "--ntasks-per-node=1" in calls[-1]
    proc = subprocess.run(["bash", str(LAUNCHERS / "dit3d.slurm"), "--gpus", "x"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "positive integers" in proc.stderr


@pytest.mark.parametrize("rc, state, restarts, requeued, exit_code", [
    (75, "preempted", 0, True, 0),     # checkpoint written after a signal: requeue
    (4, "peer_lost", 2, True, 0),      # a rank died: retry from the checkpoint
    (4, "peer_lost", 10, False, 4),    # ... but not forever (MAX_RESTARTS=10)
    (5, "hang", 0, True, 0),           # watchdog
    (1, "failed", 0, False, 1),        # a real failure is not retried
    (2, "failed", 0, False, 2),        # nor a config error
])
def test_slurm_requeue_logic(fake_slurm, rc, state, restarts, requeued, exit_code):
    env, log = fake_slurm
    env.update(FAKE_RC=str(rc), FAKE_STATE=state, SLURM_RESTART_COUNT=str(restarts))
    proc = subprocess.run(["bash", str(LAUNCHERS / "wfdm.slurm")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    calls = (log / "scontrol").read_text().splitlines() if (log / "scontrol").exists() else []
    assert calls == (["requeue 4242"] if requeued else [])


def test_slurm_script_forwards_usr1_and_requeues(fake_slurm):
    env, log = fake_slurm
    env["FAKE_MODE"] = "wait_signal"
    proc = subprocess.Popen(["bash", str(LAUNCHERS / "dit3d.slurm")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (log / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (log / "started").exists(), "fake srun did not start"
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does before the time limit
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert (log / "signals").read_text().split() == ["USR1"]
    assert (log / "scontrol").read_text().splitlines() == ["requeue 4242"]
    assert "SIGUSR1 received" in out and "requeue: preempted" in out


def test_single_gpu_script_adds_planner_and_resume(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$FAKE_LOG/args"\nexit 75\n')
    fake_python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake_python), "FAKE_LOG": str(tmp_path)}
    cmd = ["bash", str(LAUNCHERS / "single_gpu.sh"), "smoke-denoiser", "--config", "c.yaml", "--run-dir", "r"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 75 and "run the same command again" in proc.stdout
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:3] == ["-m", "bsynth_hpc.engine.run", "smoke-denoiser"]
    assert args[args.index("--gpu-mem-gb") + 1] == "auto" and args[args.index("--resume") + 1] == "auto"
    subprocess.run(cmd + ["--gpu-mem-gb", "8"], env=env, capture_output=True, text=True)
    args = (tmp_path / "args").read_text().split("\n")
    assert args.count("--gpu-mem-gb") == 1 and args[args.index("--gpu-mem-gb") + 1] == "8"


def test_train_launchers_default_stage_and_help(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("engine: {max_steps: 1}\n")
    proc = run([sys.executable, str(LAUNCHERS / "train_wfdm.py"), "no-such-stage", "--config", str(config),
                "--run-dir", str(tmp_path / "r")], env=_smoke_env())
    assert proc.returncode == 2, explain(proc)
    assert "unknown stage 'no-such-stage'" in proc.stderr and "smoke-denoiser, smoke-vaegan" in proc.stderr
    for script, recipe, default in (("train_dit3d.py", "dit3d", "dit3d"), ("train_wfdm.py", "wfdm", "wfdm-ldm")):
        assert get_recipe(recipe).default_stage == default   # the alias's default is the recipe's
        proc = run([sys.executable, str(LAUNCHERS / script), "--help"], env=subprocess_env(), cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {script}")
        assert f"else {default})" in " ".join(proc.stdout.split())
    proc = run([sys.executable, str(LAUNCHERS / "train.py"), "--help"], env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: train.py") and "else " not in proc.stdout


def _smoke_env() -> dict[str, str]:
    """Subprocess environment with the test-only smoke recipe registered (tests/smoke_recipe.py)."""
    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess_env(BSYNTH_PLUGINS="smoke_recipe", PYTHONPATH=path)


def test_train_py_trains_a_stage_for_a_few_steps(tmp_path):
    store = make_store(tmp_path / "store.zarr", n_subjects=4)
    config = write_config(tmp_path / "c.yaml", "smoke-denoiser")
    proc = run([sys.executable, str(LAUNCHERS / "train.py"), "smoke-denoiser", "--config", str(config), "--store",
                str(store), "--run-dir", str(tmp_path / "run"), "--max-steps", "2"], env=_smoke_env(), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert [m["step"] for m in metrics(tmp_path / "run") if "loss/denoiser" in m] == [1, 2]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 2
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["stage"] == "smoke-denoiser"


def test_recipe_alias_trains_the_recipes_default_stage(tmp_path):
    """What train_<recipe>.py does (main(recipe=...)), for the smoke recipe: no STAGE, no `stage:` in the
    config -> the Recipe's default_stage trains."""
    store = make_store(tmp_path / "store.zarr", n_subjects=4)
    cfg = yaml.safe_load(write_config(tmp_path / "c.yaml", "smoke-vaegan").read_text())
    del cfg["stage"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    alias = (f"import sys; sys.path.insert(0, {str(LAUNCHERS)!r}); from train import main; "
             "sys.exit(main(recipe='smoke'))")
    proc = run([sys.executable, "-c", alias, "--config", str(tmp_path / "c.yaml"), "--store", str(store),
                "--run-dir", str(tmp_path / "run"), "--max-steps", "2"], env=_smoke_env(), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["stage"] == "smoke-vaegan" and json.loads((tmp_path / "run" / "status.json").read_text())["step"] == 2
    proc = run([sys.executable, "-c", alias.replace("'smoke'", "'no-such-recipe'"), "--run-dir", str(tmp_path / "r")],
               env=_smoke_env(), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown recipe 'no-such-recipe'" in proc.stderr, explain(proc)


def _chain_in_bash(recipe: str) -> dict[str, list[str]]:
    """The arrays launchers/slurm_query.py gives the shell, as bash sees them after eval."""
    script = (f'eval "$({shlex.quote(sys.executable)} launchers/slurm_query.py chain {recipe})" || exit 9; '
              'echo "$DEFAULT_STAGE"; for a in CHAIN_NAMES CHAIN_KINDS CHAIN_STAGES CHAIN_CONFIGS; do '
              'n="$a[@]"; printf "%s|" "${!n}"; echo; done')
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    default, *arrays = proc.stdout.splitlines()
    keys = ("names", "kinds", "stages", "configs")
    return {"default": [default], **{k: line.split("|")[:-1] for k, line in zip(keys, arrays)}}


@pytest.mark.parametrize("recipe", ["wfdm", "dit3d"])
def test_slurm_scripts_read_the_chain_from_the_recipe(recipe):
    ref = get_recipe(recipe)
    chain = _chain_in_bash(recipe)
    assert chain["default"] == [ref.default_stage]
    assert chain["names"] == [step.name for step in ref.pipeline]
    assert chain["kinds"] == [step.kind for step in ref.pipeline]
    assert chain["stages"] == [step.stage or "" for step in ref.pipeline]
    assert chain["configs"] == [f"configs/{ref.configs[step.stage]['full']}" if step.stage else ""
                                for step in ref.pipeline]
    assert all((REPO / c).is_file() for c in chain["configs"] if c)


@pytest.mark.parametrize("script, recipe, latents", [("wfdm.slurm", "wfdm", "runs/latents.zarr"),
                                                     ("dit3d.slurm", "dit3d", "runs/latents_dit3d.zarr")])
def test_slurm_script_default_stage_trains_on_the_latents(fake_slurm, tmp_path, script, recipe, latents):
    """With no STAGE the script trains the recipe's default stage in RUNS/<stage> on RUNS' latents (RUNS is
    absolute here: the scripts resolve relative paths in the checkout, which a test must not write into)."""
    env, log = fake_slurm
    env.pop("STAGE", None)
    env.pop("RUN_DIR")
    runs = tmp_path / "runs"
    env["RUNS"] = str(runs)
    env["EXTRA_ARGS"] = "engine.max_steps=7"
    proc = subprocess.run(["bash", str(LAUNCHERS / script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (log / "srun_args").read_text().split("\n")
    default = get_recipe(recipe).default_stage
    assert args[3] == default and args[args.index("--run-dir") + 1] == f"{runs}/{default}"
    assert args[-3:-1] == [f"recipe.latents={tmp_path}/{latents}", "engine.max_steps=7"], args
    assert (runs / default / "status.json").is_file()


FAKE_PYTHON = r"""#!/usr/bin/env bash
# `python -m ...` (the encode/sample/eval/study commands): recorded; anything else: the real interpreter
if [ "$1" = "-m" ]; then echo "$*" >> "$FAKE_LOG/python"; exit 0; fi
exec "$REAL_PYTHON" "$@"
"""


@pytest.mark.parametrize("script, stage, commands", [
    ("wfdm.slurm", "encode", ["-m bsynth_hpc.cli encode --run runs/wfdm-vae --store S --out runs/latents.zarr "
                              "--batch-size 1"]),
    ("dit3d.slurm", "encode", ["-m bsynth_hpc.cli encode --run runs/dit3d-vae --store S --out "
                               "runs/latents_dit3d.zarr --batch-size 1"]),
    ("wfdm.slurm", "sample-eval", [
        "-m bsynth_hpc.cli sample wfdm --run runs/wfdm-ldm --n 3 --modality all --out runs/samples --batch-size 2 --x",
        "-m bsynth_hpc.cli eval synth --real S --fake runs/samples --out runs/eval/synth --y",
        "-m bsynth_hpc.cli eval recon --run runs/wfdm-vae --store S --out runs/eval/recon"]),
    ("dit3d.slurm", "sample-study", [
        "-m bsynth_hpc.cli sample dit3d --run runs/dit3d --n 3 --cfg 3.0 --out runs/samples_dit3d --batch-size 4 --x",
        "-m bsynth_hpc.cli study augment --store S --synthetic runs/samples_dit3d --out runs/study --y"]),
])
def test_slurm_encode_and_finishing_jobs(fake_slurm, tmp_path, script, stage, commands):
    """encode runs under srun with the compressor's run; the finishing job runs the recipe's own commands."""
    env, log = fake_slurm
    fake_python = tmp_path / "bin" / "fake-python"
    fake_python.write_text(FAKE_PYTHON)
    fake_python.chmod(0o755)
    env.update(STAGE=stage, STORE="S", RUNS="runs", N_SAMPLES="3", SAMPLE_ARGS="--x", EVAL_SYNTH_ARGS="--y",
               STUDY_ARGS="--y", PYTHON=str(fake_python), REAL_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(LAUNCHERS / script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if stage == "encode":   # through srun: one encoder per task
        assert (log / "srun_args").read_text().split("\n")[:2] == ["--kill-on-bad-exit=1", str(fake_python)]
        assert " ".join((log / "srun_args").read_text().split("\n")[1:]).strip().endswith(commands[0])
    else:
        assert not (log / "srun_args").exists()
        assert (log / "python").read_text().splitlines() == commands
