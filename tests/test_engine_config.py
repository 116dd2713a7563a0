"""Engine configuration, DeepSpeed config generation, schedules, rank discovery, data order, faults."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bsynth_hpc.engine.config import EngineConfig, ScheduleConfig, build_run_config, load_run_config, save_run_config
from bsynth_hpc.engine.data import StreamSampler, ValidationSampler
from bsynth_hpc.engine.distributed import discover, expand_hostlist
from bsynth_hpc.engine.ds_config import build_ds_config
from bsynth_hpc.engine.faults import parse_faults
from bsynth_hpc.engine.schedules import PlateauTracker, schedule_factor
from bsynth_hpc.errors import ConfigError


def cfg(**engine):
    return {"stage": "smoke-denoiser", "engine": engine}


# ---------------------------------------------------------------------------- validation errors
def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as err:
        build_run_config(cfg(zero_stag=3))
    msg = str(err.value)
    assert "engine.zero_stag" in msg and "did you mean 'zero_stage'" in msg and "micro_batch" in msg


def test_unknown_top_level_and_recipe_keys():
    with pytest.raises(ConfigError, match="unknown top-level key 'engin'.*valid keys: stage, store"):
        build_run_config({"stage": "smoke-denoiser", "engin": {}})
    with pytest.raises(ConfigError, match=r"unknown key recipe\.chanels .*did you mean 'channels'"):
        build_run_config({"stage": "smoke-denoiser", "recipe": {"chanels": 8}})


@pytest.mark.parametrize("engine, pattern", [
    ({"micro_batch": "two"}, r"engine\.micro_batch='two' must be an integer"),
    ({"micro_batch": 0}, r"engine\.micro_batch=0 must be >= 1"),
    ({"backend": "tpu"}, r"engine\.backend='tpu' is not allowed: use one of 'auto', 'deepspeed'"),
    ({"zero_stage": 4}, r"engine\.zero_stage=4 must be 0, 1, 2 or 3"),
    ({"offload_param": "cpu", "zero_stage": 2}, r"offload_param=cpu needs engine\.zero_stage=3"),
    ({"offload_optimizer": "nvme", "zero_stage": 2}, r"engine\.nvme_path is required"),
    ({"offload_optimizer": "cpu", "backend": "ddp"}, r"need engine\.backend=deepspeed"),
    ({"ema_decay": 1.0}, r"engine\.ema_decay=1\.0 must be in \[0, 1\)"),
    ({"schedule": {"name": "linear"}}, r"engine\.schedule\.name='linear' is not allowed"),
    ({"timeouts": {"collective": 0}}, r"engine\.timeouts\.collective=0.0 must be > 0"),
    ({"ds_config_override": "/nonexistent/ds.json"}, r"ds_config_override='/nonexistent/ds\.json' does not exist"),
])
def test_engine_field_errors_name_the_field(engine, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_run_config(cfg(**engine))


def test_recipe_validation_and_stage_errors(monkeypatch):
    from bsynth_hpc.engine import registry

    with pytest.raises(ConfigError, match=r"channel count 6 must be a positive multiple of groups=4"):
        build_run_config({"stage": "smoke-denoiser", "recipe": {"channels": 6}})
    with pytest.raises(ConfigError, match=r"unknown stage 'no-such-stage'; registered stages: .*smoke-denoiser, "
                                          r"smoke-vaegan"):
        build_run_config({"stage": "no-such-stage"})
    monkeypatch.setitem(registry.PLANNED, "future-stage", "issue #99")
    with pytest.raises(ConfigError, match=r"unknown stage 'future-stage' \(future-stage arrives with issue #99\)"):
        build_run_config({"stage": "future-stage"})
    monkeypatch.setitem(registry._stages, "broken-stage", "bsynth_hpc.recipes.no_such_module:Stage")
    with pytest.raises(ConfigError, match=r"stage 'broken-stage' is registered as .* but cannot be loaded"):
        build_run_config({"stage": "broken-stage"})
    with pytest.raises(ConfigError, match="is for stage 'smoke-denoiser' but the command asks for 'smoke-vaegan'"):
        build_run_config({"stage": "smoke-denoiser"}, stage="smoke-vaegan")
    with pytest.raises(ConfigError, match="no stage given"):
        build_run_config({})


def test_overrides_are_validated_like_yaml_and_default_stage_is_last_resort():
    c = build_run_config(cfg(), overrides=["engine.zero_stage=3", "engine.schedule.warmup=7", "recipe.lr=1e-4",
                                           "data.val_split=null"])
    assert (c.engine.zero_stage, c.engine.schedule.warmup, c.recipe.lr, c.data.val_split) == (3, 7, 1e-4, None)
    with pytest.raises(ConfigError, match=r"engine\.zero_stage=9 must be 0, 1, 2 or 3"):
        build_run_config(cfg(), overrides=["engine.zero_stage=9"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        build_run_config(cfg(), overrides=["engine.zero_stage"])
    with pytest.raises(ConfigError, match="engine.micro_batch is a value, not a section"):
        build_run_config(cfg(micro_batch=2), overrides=["engine.micro_batch.x=1"])
    assert build_run_config({}, default_stage="smoke-vaegan").stage == "smoke-vaegan"
    assert build_run_config({"stage": "smoke-denoiser"}, default_stage="smoke-vaegan").stage == "smoke-denoiser"


def test_resolved_config_round_trips(tmp_path):
    c = build_run_config(cfg(precision="bf16", schedule={"name": "cosine_restarts", "restart_period": 5}),
                         overrides=["recipe.channels=8"])
    c.store, c.run_dir = "/data/store.zarr", str(tmp_path)
    path = save_run_config(c, tmp_path / "config.yaml")
    raw = yaml.safe_load(path.read_text())
    assert raw["engine"]["precision"] == "bf16" and raw["recipe"]["channels"] == 8 and raw["store"] == c.store
    assert set(raw["engine"]) == set(EngineConfig.__dataclass_fields__)
    again = load_run_config(path)
    assert again.to_dict() == c.to_dict()


# ---------------------------------------------------------------------------- ds_config
def test_ds_config_generation_and_override(tmp_path):
    engine = build_run_config(cfg(zero_stage=3, offload_optimizer="cpu", offload_param="cpu", precision="bf16",
                                  micro_batch=2, grad_accum=3, clip_grad=0.5)).engine
    ds = build_ds_config(engine, world_size=4, on_gpu=True)
    assert ds["train_batch_size"] == 2 * 3 * 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    override = tmp_path / "ds.json"
    override.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 123}, "fp16": {"hysteresis": 4}}))
    engine = build_run_config(cfg(zero_stage=2, ds_config_override=str(override))).engine
    ds = build_ds_config(engine, 2, on_gpu=False)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 123 and ds["zero_optimization"]["stage"] == 2
    assert ds["fp16"]["hysteresis"] == 4 and ds["fp16"]["enabled"] is False
    override.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ConfigError, match="sets 'train_micro_batch_size_per_gpu', which the engine owns: set "
                                          "engine.micro_batch"):
        build_ds_config(engine, 2, on_gpu=False)


# ---------------------------------------------------------------------------- schedules
def _torch_lrs(make_sched, steps: int, base: float = 1.0) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = make_sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_torch_after_warmup():
    c = ScheduleConfig(name="cosine", warmup=3, min_lr_ratio=0.1)
    total = 20
    ours = [schedule_factor(c, s, total) for s in range(total)]
    assert ours[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - 3, eta_min=0.1), total - 3)
    assert ours[3:] == pytest.approx(ref, rel=1e-9)


def test_cosine_restarts_matches_torch_sgdr():
    for mult in (1, 2):
        c = ScheduleConfig(name="cosine_restarts", restart_period=4, restart_mult=mult, min_lr_ratio=0.05)
        ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=mult,
                                                                                         eta_min=0.05), 40)
        assert [schedule_factor(c, s, 40) for s in range(40)] == pytest.approx(ref, rel=1e-9)


def test_plateau_matches_torch_reduce_on_plateau():
    c = ScheduleConfig(name="plateau", plateau_factor=0.5, plateau_patience=1, plateau_threshold=0.01,
                       plateau_cooldown=1, min_lr_ratio=0.1)
    values = [1.0, 0.9, 0.895, 0.894, 0.7, 0.71, 0.705, 0.7, 0.699, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, threshold=0.01,
                                                     threshold_mode="rel", cooldown=1, min_lr=0.1)
    ours = PlateauTracker(c, "min")
    for v in values:
        ref.step(v)
        ours.observe(v)
        assert ours.scale == pytest.approx(opt.param_groups[0]["lr"])
    assert ours.reductions >= 2


# ---------------------------------------------------------------------------- rank discovery
def test_discover_torchrun_deepspeed_slurm_mpi_single():
    tr = discover({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n1",
                   "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"})
    assert (tr.rank, tr.world_size, tr.local_rank, tr.master_addr, tr.master_port, tr.launcher) == \
        (3, 8, 1, "n1", 1234, "torchrun")
    ds = discover({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CROSS_RANK": "0", "LOCAL_SIZE": "2",
                   "MASTER_ADDR": "h", "MASTER_PORT": "29500"})
    assert ds.launcher == "deepspeed" and ds.local_world_size == 2
    slurm = discover({"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
                      "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
                      "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "123456"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.local_world_size, slurm.master_addr,
            slurm.master_port, slurm.launcher) == (5, 8, 1, 4, "gpu007", 20000 + 123456 % 20000, "slurm")
    # a plain `python` in the batch script is one process even though the job has 8 tasks
    batch = discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[1-2]"}, use_mpi=False)
    assert (batch.world_size, batch.launcher) == (1, "single")
    assert discover({}, use_mpi=False).launcher == "single"


def test_expand_hostlist():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("r[1-2]n[08-09]") == ["r1n08", "r1n09", "r2n08", "r2n09"]
    assert expand_hostlist("node5") == ["node5"]


# ---------------------------------------------------------------------------- data order
def test_global_batches_do_not_depend_on_layout():
    """The union of all ranks' micro-batches of a step is the single-process global batch."""
    n, seed = 11, 7
    single = StreamSampler(n, micro_batch=6, grad_accum=1, world_size=1, rank=0, seed=seed)
    it = iter(single)
    ref = [sorted(next(it) for _ in range(6)) for _ in range(5)]
    for micro, accum, world in ((3, 1, 2), (1, 3, 2), (2, 3, 1), (1, 2, 3)):
        samplers = [iter(StreamSampler(n, micro, accum, world, r, seed)) for r in range(world)]
        steps = [sorted(x for s in samplers for x in [next(s) for _ in range(micro * accum)]) for _ in range(5)]
        assert steps == ref, (micro, accum, world)
    # resuming at step 3 continues the same stream
    resumed = iter(StreamSampler(n, 6, 1, 1, 0, seed, start_step=3))
    assert sorted(next(resumed) for _ in range(6)) == ref[3]
    # every epoch is a permutation of the items
    order = [single.item(p)[0] for p in range(2 * n)]
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))


def test_validation_shards_cover_each_item_once():
    n = 7
    shards = [list(ValidationSampler(n, micro_batch=2, world_size=3, rank=r, seed=0)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # equal forwards on every rank (ZeRO-3)
    real = sorted(idx for s in shards for idx, _, w in s if w > 0)
    assert real == list(range(n))


def test_fault_spec_parsing():
    faults = parse_faults("nan_loss@2,4-5; exit@3:rank=1;signal@6:sig=USR1")
    assert faults[0].steps == frozenset({2, 4, 5}) and faults[0].rank is None
    assert faults[1].hits(3, 1) and not faults[1].hits(3, 0)
    assert faults[2].sig == "USR1"
    with pytest.raises(ConfigError, match="use KIND@STEPS"):
        parse_faults("explode@3")
    assert parse_faults(" ; ") == []


def test_inconsistent_launch_environment_is_a_launch_error():
    from bsynth_hpc.engine.errors import LaunchError

    with pytest.raises(LaunchError, match="WORLD_SIZE='two' is not an integer"):
        discover({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(LaunchError, match="rank 4 of world size 4"):
        discover({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError):  # LaunchError is a ConfigError: exit 2, never requeued
        discover({"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"})


def test_phase_param_groups_keep_their_lr_ratios_under_the_schedule():
    from bsynth_hpc.engine.backends.torch_native import TorchUnit
    from bsynth_hpc.engine.schedules import LRController
    from bsynth_hpc.engine.stage import OptimSpec, Phase

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    phase = Phase("main", "m", OptimSpec(lr=1e-3), param_groups=lambda m: [
        {"params": list(m[0].parameters())}, {"params": list(m[1].parameters()), "lr": 1e-4}])
    unit = TorchUnit(phase, model, torch.device("cpu"), "fp32", clip_grad=1.0, ddp=False)
    LRController(ScheduleConfig(name="cosine"), total_updates=10).apply(unit.param_groups, 5)
    assert [g["lr"] for g in unit.param_groups] == pytest.approx([0.5e-3, 0.5e-4])


def test_gradient_clipping_bounds_the_update():
    """SGD with lr 1: the applied update equals the clipped gradient, whose norm is clip_grad."""
    from bsynth_hpc.engine.backends.torch_native import TorchUnit
    from bsynth_hpc.engine.stage import OptimSpec, Phase

    model = torch.nn.Linear(3, 2)
    unit = TorchUnit(Phase("p", "m", OptimSpec("sgd", lr=1.0, momentum=0.0)), model, torch.device("cpu"), "fp32",
                     clip_grad=0.5, ddp=False)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    result = unit.step(skip=False)
    assert result.applied and result.grad_norm == pytest.approx(3.0 * math.sqrt(8))  # norm before clipping
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert float(delta.norm()) == pytest.approx(0.5, rel=1e-5)


def test_ema_follows_the_closed_form():
    from bsynth_hpc.engine.ema import EMA

    w = torch.zeros(4)
    ema = EMA(lambda: [w], decay=0.9, start=2)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        w.fill_(value)
        ema.update(step)
        expected = value if step < 2 else 0.9 * expected + 0.1 * value
        assert float(ema.shadow[0][0]) == pytest.approx(expected)
    with ema.swapped():
        assert float(w[0]) == pytest.approx(expected)
    assert float(w[0]) == 5.0


def test_train_quiet_turns_the_progress_bar_off_and_tiny_configs_keep_it_on():
    """#12.9: the tiny configs had progress and TensorBoard off (~45 s of silence); --quiet is the switch."""
    import yaml

    from bsynth_hpc.engine.run import _config_from_args, parse_train_args
    from engine_support import REPO

    for cfg in sorted((REPO / "configs").glob("*_tiny.yaml")):
        engine = yaml.safe_load(cfg.read_text())["engine"]
        assert engine["progress"] is True and engine["tensorboard"] is True, cfg.name
    cfg = str(REPO / "configs" / "wfdm-vae_tiny.yaml")
    loud = _config_from_args(parse_train_args(["wfdm-vae", "--config", cfg, "--run-dir", "r"]))
    quiet = _config_from_args(parse_train_args(["wfdm-vae", "--config", cfg, "--run-dir", "r", "--quiet"]))
    assert loud.engine.progress is True and quiet.engine.progress is False and quiet.engine.tensorboard is True


def test_global_batch_holds_on_every_launch_layout():
    """#12.5: dit3d.slurm's 2 nodes x 4 GPUs with micro_batch 4 trained at batch 32, not the config's 16."""
    from bsynth_hpc.engine.config import EngineConfig
    from bsynth_hpc.errors import ConfigError

    cfg = EngineConfig(micro_batch=4, global_batch=16)
    for world, expected in {1: (4, 4), 2: (4, 2), 4: (4, 1), 8: (2, 1), 16: (1, 1)}.items():
        layout = cfg.batch_layout(world)
        assert (layout["micro_batch"], layout["grad_accum"]) == expected
        assert layout["micro_batch"] * layout["grad_accum"] * world == 16
    with pytest.raises(ConfigError, match="cannot be split evenly over 6 ranks: launch 1, 2, 4, 8, 16"):
        cfg.batch_layout(6)
    assert EngineConfig(micro_batch=3).batch_layout(4) == {}
    import yaml

    from engine_support import REPO

    assert yaml.safe_load((REPO / "configs" / "dit3d_tle.yaml").read_text())["engine"]["global_batch"] == 16
