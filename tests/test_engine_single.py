"""Single-process training on the smoke stages: learning, resume, preemption, crash, NaN guard, export."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from bsynth_hpc.engine.checkpoint import CheckpointManager, is_complete, load_torch
from bsynth_hpc.engine.distributed import Comm, DistInfo
from bsynth_hpc.engine.errors import EXIT_DIVERGED, EXIT_REQUEUE, CheckpointError
from bsynth_hpc.engine.export import load_exported
from bsynth_hpc.engine.run import train_main
from engine_support import (COUNTING_MAIN, counting_stage, explain, losses, make_store, metrics, run, subprocess_env,
                            train_args, write_config)

# The reference run: 6 steps, validation (plateau LR on val/l1) and a checkpoint every 2 steps.
REF_ENGINE = {"max_steps": 6, "val_every": 2, "ckpt_every": 2, "keep_last": 5,
              "schedule": {"name": "plateau", "warmup": 2, "plateau_patience": 0, "plateau_threshold": 0.05}}
GAN_KEYS = ("loss/generator", "loss/generator/l1", "loss/generator/adv", "loss/discriminator", "lr/generator",
            "val/l1")


@pytest.fixture(autouse=True)
def _engine_env(monkeypatch):
    monkeypatch.setenv("BSYNTH_DISABLE_TRITON", "1")  # reference kernels in-process (conftest enables the interpreter)
    monkeypatch.delenv("BSYNTH_FAULTS", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("engine-store") / "store.zarr")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store):
    """An uninterrupted smoke-vaegan run (in-process)."""
    import os

    os.environ["BSYNTH_DISABLE_TRITON"] = "1"
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "vaegan.yaml", "smoke-vaegan", engine=REF_ENGINE)
    code = train_main(train_args("smoke-vaegan", config, store, root / "run"))
    assert code == 0
    return config, root / "run"


def _same_losses(a, b, keys=GAN_KEYS):
    for key in keys:
        la, lb = losses(a, key), losses(b, key)
        assert la and la == lb, f"{key}: {la} != {lb}"


def _same_exports(a, b, name="vae"):
    wa, wb = load_file(str(a / "export" / f"{name}.safetensors")), load_file(str(b / "export" / f"{name}.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------- learning
@pytest.mark.parametrize("stage, key", [("smoke-vaegan", "loss/generator/l1"), ("smoke-denoiser", "loss/denoiser")])
def test_smoke_stage_loss_decreases(tmp_path, store, stage, key):
    config = write_config(tmp_path / "c.yaml", stage, engine={"max_steps": 12, "micro_batch": 3, "val_every": 6,
                                                              "tensorboard": True}, data={"num_workers": 2})
    assert train_main(train_args(stage, config, store, tmp_path / "run")) == 0
    values = [v for _, v in sorted(losses(tmp_path / "run", key).items())]
    assert len(values) == 12
    assert sum(values[-3:]) < 0.8 * sum(values[:3]), values
    record = metrics(tmp_path / "run")[-1]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 12
    train_record = [r for r in metrics(tmp_path / "run") if key in r][-1]
    assert len(train_record["peak_mem_mb"]) == 1 and train_record["volumes_per_s"] > 0
    assert any(k.startswith("val/") for k in record)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_grad_accumulation_equals_larger_micro_batch(tmp_path, store):
    results = {}
    for name, micro, accum in (("big", 4, 1), ("accum", 2, 2)):
        config = write_config(tmp_path / f"{name}.yaml", "smoke-denoiser",
                              engine={"max_steps": 4, "micro_batch": micro, "grad_accum": accum})
        assert train_main(train_args("smoke-denoiser", config, store, tmp_path / name)) == 0
        results[name] = losses(tmp_path / name, "loss/denoiser")
    assert results["big"].keys() == results["accum"].keys()
    for step, value in results["big"].items():
        assert results["accum"][step] == pytest.approx(value, rel=1e-5)


def test_activation_checkpointing_gives_the_same_losses(tmp_path, store):
    runs = {}
    for ckpt in (False, True):
        config = write_config(tmp_path / f"{ckpt}.yaml", "smoke-vaegan",
                              engine={"max_steps": 3, "activation_checkpointing": ckpt})
        assert train_main(train_args("smoke-vaegan", config, store, tmp_path / str(ckpt))) == 0
        runs[ckpt] = losses(tmp_path / str(ckpt), "loss/generator")
    for step, value in runs[False].items():
        assert runs[True][step] == pytest.approx(value, rel=1e-6)


# ---------------------------------------------------------------------------- resume, preemption, crashes
def test_sigterm_checkpoints_exits_75_and_resume_reproduces_the_run(tmp_path, store, reference):
    config, ref_run = reference
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", *train_args("smoke-vaegan", config, store, run_dir)]
    proc = run(cmd, env=subprocess_env(BSYNTH_FAULTS="signal@2:sig=TERM"))
    assert proc.returncode == EXIT_REQUEUE, explain(proc)
    assert "SIGTERM received" in proc.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and status["step"] == 3 and status["exit_code"] == EXIT_REQUEUE
    assert is_complete(run_dir / "checkpoints" / "step-00000003")
    assert train_main(train_args("smoke-vaegan", config, store, run_dir, resume=True)) == 0
    _same_losses(ref_run, run_dir)
    _same_exports(ref_run, run_dir)


def test_kill_inside_checkpoint_leaves_previous_and_resume_ignores_partial(tmp_path, store, reference):
    config, ref_run = reference
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bsynth_hpc.engine.run", *train_args("smoke-vaegan", config, store, run_dir)]
    proc = run(cmd, env=subprocess_env(BSYNTH_FAULTS="kill_in_save@4"))
    assert proc.returncode == -9, explain(proc)  # SIGKILL after writing the files of step 4, before the commit
    ckpts = run_dir / "checkpoints"
    partial = ckpts / ".partial-step-00000004"
    assert (partial / "trainer.pt").is_file() and not (ckpts / "step-00000004").exists()
    assert is_complete(ckpts / "step-00000002")
    assert load_torch(ckpts / "step-00000002" / "trainer.pt")["step"] == 2
    assert train_main(train_args("smoke-vaegan", config, store, run_dir, resume=True)) == 0
    assert not partial.exists()
    _same_losses(ref_run, run_dir)
    _same_exports(ref_run, run_dir)


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    comm = Comm(DistInfo(0, 1, 0, 1, "127.0.0.1", 0, "single"), torch.device("cpu"))
    manager = CheckpointManager(tmp_path, comm, keep_last=2)
    manager.save(2, lambda d: (d / "state.pt").write_bytes(b"x" * 10), {"stage": "t"})

    def broken(directory):
        (directory / "state.pt").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(CheckpointError, match="writing checkpoint .*step-00000004 failed.*disk full"):
        manager.save(4, broken, {"stage": "t"})
    assert manager.latest() == tmp_path / "checkpoints" / "step-00000002"
    assert not is_complete(tmp_path / "checkpoints" / ".partial-step-00000004")
    # a damaged file makes a checkpoint incomplete
    (tmp_path / "checkpoints" / "step-00000002" / "state.pt").write_bytes(b"x")
    assert manager.latest() is None


def test_retention_keeps_last_k_and_best(tmp_path):
    comm = Comm(DistInfo(0, 1, 0, 1, "127.0.0.1", 0, "single"), torch.device("cpu"))
    manager = CheckpointManager(tmp_path, comm, keep_last=2)
    for step in (2, 4, 6, 8):
        best = {"metric": "val/l1", "value": 0.1} if step == 2 else None
        manager.save(step, lambda d: (d / "f").write_text("x"), {}, best=best)
    assert [s for s, _ in manager.complete()] == [2, 6, 8]
    assert manager.best()["step"] == 2


def test_fresh_start_into_a_run_with_checkpoints_is_refused(reference, store, capsys):
    config, ref_run = reference
    assert train_main(train_args("smoke-vaegan", config, store, ref_run)) == 1
    assert "already has checkpoints" in capsys.readouterr().err


# ---------------------------------------------------------------------------- NaN guard
def test_nan_losses_are_skipped_and_counted(tmp_path, store, monkeypatch):
    monkeypatch.setenv("BSYNTH_FAULTS", "nan_loss@2-3")
    config = write_config(tmp_path / "c.yaml", "smoke-denoiser",
                          engine={"max_steps": 6, "ckpt_every": 2, "keep_last": 5, "nan_tolerance": 3})
    assert train_main(train_args("smoke-denoiser", config, store, tmp_path / "run")) == 0
    recs = {r["step"]: r for r in metrics(tmp_path / "run") if "loss/denoiser" in r}
    assert [recs[s]["skipped/denoiser"] for s in range(1, 7)] == [0, 0, 1, 1, 0, 0]
    assert recs[3]["loss/denoiser"] == "nan" and recs[6]["nan_skipped_total"] == 2
    ckpt = tmp_path / "run" / "checkpoints"
    w2, w4, w6 = (load_torch(ckpt / f"step-0000000{s}" / "models" / "denoiser.pt")["model"] for s in (2, 4, 6))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)  # skipped steps leave the weights alone
    assert not all(torch.equal(w4[k], w6[k]) for k in w4)  # and training continues afterwards


def test_nan_guard_stops_after_k_consecutive_bad_steps(tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv("BSYNTH_FAULTS", "nan_loss@1-50")
    config = write_config(tmp_path / "c.yaml", "smoke-denoiser", engine={"max_steps": 10, "nan_tolerance": 3})
    assert train_main(train_args("smoke-denoiser", config, store, tmp_path / "run")) == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "for 3 consecutive steps (steps 2..4" in err and "Lower the learning rate" in err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "diverged"


# ---------------------------------------------------------------------------- export
def test_export_round_trip(reference, store):
    _, run_dir = reference
    model, meta = load_exported(run_dir, "vae")
    assert meta["name"] == "vae" and meta["stage"] == "smoke-vaegan" and meta["step"] == 6
    assert meta["factory"] == "smoke-vae" and meta["ema"] is True
    assert meta["factory_kwargs"] == {"channels": 4, "latent_channels": 2, "groups": 2}
    assert meta["latent_scale"] > 0 and meta["config"]["engine"]["max_steps"] == 6
    assert {"bsynth_hpc", "torch", "safetensors"} <= set(meta["versions"])
    # the exported weights are the EMA of the final checkpoint
    ema = load_torch(run_dir / "checkpoints" / "step-00000006" / "trainer.pt")["ema"]["vae"]["shadow"]
    for (name, param), shadow in zip(model.named_parameters(), ema):
        assert torch.equal(param.detach(), shadow), name
    x = torch.rand(1, 1, 16, 16, 16)
    assert model(x)[0].shape == x.shape
    with pytest.raises(CheckpointError, match="no export 'unet'.*exports there: vae"):
        load_exported(run_dir, "unet")


# ---------------------------------------------------------------------------- memory planner (CPU)
def test_memory_planner_fits_refuses_and_extrapolates(store):
    from bsynth_hpc.engine.config import build_run_config
    from bsynth_hpc.engine.planner import GIB, RESERVE_GIB, USABLE_FRACTION, MemoryPlanError, \
        measure_activation_bytes, plan_memory
    from bsynth_hpc.engine.stage import StageInfo
    from smoke_recipe import SmokeDenoiserStage

    c = build_run_config({"stage": "smoke-denoiser", "recipe": {"channels": 8, "time_dim": 16}})
    stage = SmokeDenoiserStage(c.recipe, StageInfo(str(store), None, c.data, c.engine))
    item = stage.dataset("train")[0]
    cpu = torch.device("cpu")
    roomy = plan_memory(stage, item, (16, 16, 16), 64, cpu, target_batch=8)
    assert roomy.chosen.micro_batch == 8 and roomy.chosen.precision == "bf16" and not roomy.chosen.checkpointing
    fit = roomy.fits["bf16/full"]
    # linear in voxels: a third, unseen size lands on the line fitted from the two probes
    measured = measure_activation_bytes(stage, item, (12, 12, 12), cpu, "bf16", False)
    assert fit.at(12 ** 3, 1) == pytest.approx(measured, rel=0.15)
    # a budget where exactly 3 volumes fit without checkpointing -> micro-batch 2 (a divisor of 8), accumulation 4
    need = [roomy.chosen.static_bytes + fit.at(16 ** 3, m) for m in (3, 4)]
    budget = ((need[0] + need[1]) / 2 / GIB + RESERVE_GIB) / USABLE_FRACTION
    tight = plan_memory(stage, item, (16, 16, 16), budget, cpu, target_batch=8)
    assert (tight.chosen.micro_batch, tight.chosen.grad_accum, tight.chosen.checkpointing) == (2, 4, False)
    assert tight.chosen.predicted_bytes <= tight.usable_bytes
    with pytest.raises(MemoryPlanError, match="nothing fits a 0.5 GB card"):
        plan_memory(stage, item, (16, 16, 16), 0.5, cpu, target_batch=8)


# ---------------------------------------------------------------------------- CLI wiring
def test_cli_train_reports_config_errors(tmp_path, capsys):
    from bsynth_hpc.cli import main

    assert main(["train", "smoke-denoiser", "--config", str(tmp_path / "missing.yaml"), "--run-dir",
                 str(tmp_path / "r")]) == 2
    assert "config file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


# ---------------------------------------------------------------------------- precision / one-GPU DeepSpeed path
def test_bf16_and_single_process_deepspeed_offload_track_fp32(tmp_path, store):
    """bf16 autocast (single) and DeepSpeed ZeRO-2 + CPU optimizer offload + bf16 weights in one process (the
    planner's offload choice for one card) follow the fp32 trajectory; bf16 rounding allows ~3 % deviation."""
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["engine.precision=bf16"]),
                        ("ds", ["engine.backend=deepspeed", "engine.zero_stage=2", "engine.offload_optimizer=cpu",
                                "engine.precision=bf16"])):
        config = write_config(tmp_path / "c.yaml", "smoke-denoiser", engine={"max_steps": 4, "micro_batch": 4})
        assert train_main(train_args("smoke-denoiser", config, store, tmp_path / name, *extra)) == 0
        runs[name] = losses(tmp_path / name, "loss/denoiser")
    for name in ("bf16", "ds"):
        for step, value in runs["fp32"].items():
            assert runs[name][step] == pytest.approx(value, rel=3e-2), (name, step)
    meta = json.loads((tmp_path / "ds" / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert meta["backend"] == "deepspeed" and any(f.startswith("deepspeed/denoiser/") for f in meta["files"])
    _, sidecar = load_exported(tmp_path / "ds", "denoiser")
    assert sidecar["ema"] is True


def test_generator_warmup_and_per_phase_schedules(tmp_path, store):
    """The discriminator and the adversarial term switch on at disc_start; each optimizer follows its own schedule."""
    import math

    config = write_config(tmp_path / "c.yaml", "smoke-vaegan",
                          engine={"max_steps": 6, "schedule": {"name": "cosine", "warmup": 0, "min_lr_ratio": 0.0}},
                          recipe={"disc_start": 3, "lr": 2e-3, "disc_lr": 1e-3, "disc_schedule": {"name": "constant"}})
    assert train_main(train_args("smoke-vaegan", config, store, tmp_path / "run")) == 0
    recs = {r["step"]: r for r in metrics(tmp_path / "run") if "loss/generator" in r}
    for s in range(6):  # record s + 1 holds update s
        assert recs[s + 1]["lr/generator"] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * s / 6)))
        assert ("loss/discriminator" in recs[s + 1]) == (s >= 3)
        assert ("loss/generator/adv" in recs[s + 1]) == (s >= 3)
    assert [recs[s]["lr/discriminator"] for s in (4, 5, 6)] == pytest.approx([1e-3] * 3)


# ---------------------------------------------------------------------------- the stage's own state
def _counting_config(path, stage_name):
    import yaml

    config = write_config(path, "smoke-denoiser", engine={"max_steps": 2, "micro_batch": 2})
    raw = yaml.safe_load(config.read_text())
    raw["stage"] = stage_name
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


@pytest.mark.parametrize("backend", ["single", "deepspeed"])
def test_stage_state_is_checkpointed_and_restored(tmp_path, store, backend):
    """Stage.state_dict() goes into trainer.pt (rank 0, every backend) and comes back before the first resumed step."""
    stage = counting_stage()
    config = _counting_config(tmp_path / "c.yaml", stage.name)
    args = train_args(stage.name, config, store, tmp_path / "run", f"engine.backend={backend}")
    if backend == "single":
        stage.loaded.clear()
        assert train_main(args) == 0
    else:  # DeepSpeed keeps process-wide groups: one DeepSpeed run per process
        cmd = [sys.executable, "-c", COUNTING_MAIN, *args]
        proc = run(cmd)
        assert proc.returncode == 0, explain(proc)
    saved = load_torch(tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer.pt")["stage"]
    assert saved["seen"] == [0, 1] and torch.equal(saved["as_tensor"], torch.tensor([0, 1])) and saved["note"] is None
    if backend == "single":
        assert train_main([*args, "engine.max_steps=4", "--resume", "auto"]) == 0
        assert [s["seen"] for s in stage.loaded] == [[0, 1]]
    else:
        proc = run([*cmd, "engine.max_steps=4", "--resume", "auto"])
        assert proc.returncode == 0, explain(proc)
        meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00000004" / "meta.json").read_text())
        assert meta["backend"] == "deepspeed"
    final = load_torch(tmp_path / "run" / "checkpoints" / "step-00000004" / "trainer.pt")["stage"]
    assert final["seen"] == [0, 1, 2, 3]


def test_checkpoint_without_stage_state_still_resumes(tmp_path, store, capsys):
    """A checkpoint written before stages saved their state (no "stage" in trainer.pt) resumes with a warning."""
    from bsynth_hpc.engine.checkpoint import save_torch

    stage = counting_stage()
    stage.loaded.clear()
    config = _counting_config(tmp_path / "c.yaml", stage.name)
    args = train_args(stage.name, config, store, tmp_path / "run")
    assert train_main(args) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    state = load_torch(ckpt / "trainer.pt")
    del state["stage"]
    save_torch(state, ckpt / "trainer.pt")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"]["trainer.pt"] = (ckpt / "trainer.pt").stat().st_size
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert is_complete(ckpt)
    capsys.readouterr()
    assert train_main([*args, "engine.max_steps=3", "--resume", "auto"]) == 0
    assert stage.loaded == []
    assert "written before stages saved their own state" in capsys.readouterr().out
    final = load_torch(tmp_path / "run" / "checkpoints" / "step-00000003" / "trainer.pt")["stage"]
    assert final["seen"] == [2]


def test_global_batch_sets_the_accumulation_of_a_run(tmp_path, store, capsys):
    config = write_config(tmp_path / "c.yaml", "smoke-denoiser", engine={"max_steps": 1, "micro_batch": 2,
                                                                         "global_batch": 4})
    assert train_main(train_args("smoke-denoiser", config, store, tmp_path / "run")) == 0
    out = capsys.readouterr()
    assert "global batch 4 = 2 x 2 x 1" in out.out + out.err


def test_a_preemption_signal_during_startup_is_not_fatal(tmp_path, store):
    """A SLURM --signal (or scancel --signal=USR1) in a task's first seconds used to kill it (exit 138): the
    handler is now installed before the heavy imports, so the run stops after its first step with a
    checkpoint and asks for requeue (75). The signal is sent while torch is being imported."""
    import subprocess

    config = write_config(tmp_path / "c.yaml", "smoke-denoiser", engine={"max_steps": 50})
    argv = train_args("smoke-denoiser", config, store, tmp_path / "run")
    code = (
        "import builtins, os, signal, sys\n"
        "real = builtins.__import__\n"
        "def hook(name, *a, **k):\n"
        "    if name == 'torch' and not getattr(hook, 'sent', False):\n"
        "        hook.sent = True\n"
        "        os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = hook\n"
        "from bsynth_hpc.engine.run import train_main\n"
        f"sys.exit(train_main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    assert "SIGUSR1 received" in out
    steps = [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")]
    assert steps == ["step-00000001"], (steps, out[-2000:])
