"""The training loop: runs a Stage's phases on a backend, with EMA, schedules, checkpoints.

One optimizer step (global step t, 0-based):

1. read grad_accum micro-batches of this rank's share of the global batch (:mod:`.data`);
2. for each phase active at t, in order: set its LR for this update; for each micro-batch run
   the stage's loss (other models frozen) and backward, communicating only on the last
   micro-batch; all-reduce the loss terms and a non-finite flag (one collective); step the
   optimizer, or skip it when any rank saw a NaN/inf loss;
3. update the EMA copies; count consecutive bad steps (more than ``engine.nan_tolerance`` in a
   row stops the run with TrainingDivergedError);
4. t += 1; log; validate every ``val_every`` steps (best checkpoint selection, plateau LR);
   checkpoint every ``ckpt_every`` steps, on a new best, at the end, and when any rank
   received a preemption signal - then stop with exit status 75 for the batch script.

Everything random is either seeded per sample (:mod:`.noise`) or restored from the
checkpoint, and so is the stage's own state (``Stage.state_dict``, e.g. a GAN schedule), so a
resumed run reproduces the uninterrupted one step for step.

Resuming first verifies the checkpoint (sizes and SHA-256 of every file, :mod:`.checkpoint`).
``--resume auto`` takes the newest intact checkpoint and names each newer damaged one it skips
(checksum mismatch, truncated, missing, unreadable); ``--resume PATH`` to a damaged checkpoint,
and a checkpoint whose shapes no longer fit the model, stop with a one-line error (exit 2).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn

from ..errors import ConfigError, StoreError
from .registry import get_stage_class
from .backends import TrainUnit, build_units, resolve_backend
from .checkpoint import STEP_RE, CheckpointManager, load_torch, read_meta, save_torch, verify
from .config import RunConfig, save_run_config
from .data import StreamSampler, ValidationSampler, batch_to_device, make_loader
from .distributed import Comm, DistInfo
from .ema import EMA
from .errors import (EXIT_OK, EXIT_REQUEUE, CheckpointDamagedError, CheckpointError, CheckpointMismatchError,
                     CheckpointUnusableError, TrainingDivergedError)
from .export import export_model
from .faults import FaultInjector
from .monitor import MetricsLogger, peak_memory_mb, write_status
from .rng import capture, restore, seed_everything
from .schedules import LRController
from .signals import PreemptionHandler
from .stage import ExportContext, Phase, Stage, StageInfo, StepContext
from .watchdog import Watchdog


class Trainer:
    """Trains one stage of a run (module docstring); ``train()`` returns the exit status."""

    def __init__(self, config: RunConfig, run_dir: Path, dist: DistInfo, device: torch.device, comm: Comm,
                 resume: str | None = None, watchdog: Watchdog | None = None,
                 faults: FaultInjector | None = None, preemption: PreemptionHandler | None = None):
        self.config = config
        self.cfg = config.engine
        self.run_dir = Path(run_dir)
        self.dist = dist
        self.device = device
        self.comm = comm
        self.watchdog = watchdog or Watchdog(0, dist.rank)
        self.faults = faults or FaultInjector(dist.rank, "")
        self.preemption = preemption or PreemptionHandler(dist.rank)
        self.is_main = dist.rank == 0
        self.step = 0
        self.nan_streak = 0
        self.nan_total = 0
        self.best: dict[str, Any] | None = None
        self.last_val_step = -1
        self._state_logged = False

        if self.cfg.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        stage_cls = get_stage_class(config.stage)
        info = StageInfo(store=config.store, volume_shape=None, data=config.data, engine=self.cfg)
        self.stage: Stage = stage_cls(config.recipe, info)
        self.train_set = self.stage.dataset(config.data.train_split)
        shape = getattr(self.train_set, "shape", None)
        self.stage.info = dataclasses.replace(info, volume_shape=tuple(shape) if shape is not None else None)
        self.val_set = self._open_val_set()

        seed_everything(self.cfg.seed)
        models = self.stage.build_models()
        if not models:
            raise ConfigError(f"stage {config.stage} built no models")
        if self.cfg.activation_checkpointing:
            for name, model in models.items():
                if hasattr(model, "set_activation_checkpointing"):
                    model.set_activation_checkpointing(True)
                elif dist.rank == 0:
                    print(f"[bsynth] warning: model {name!r} of stage {config.stage} has no "
                          "set_activation_checkpointing(); it runs without checkpointing", flush=True)
        self.phases: list[Phase] = self.stage.phases()
        self.backend, self.backend_reason = resolve_backend(self.cfg.backend, dist.world_size, models, device)
        self.units: dict[str, TrainUnit] = build_units(self.backend, models, self.phases, self.cfg, device,
                                                       dist.world_size)
        owned = {p.model for p in self.phases}
        self.bare: dict[str, nn.Module] = {k: m.to(device) for k, m in models.items() if k not in owned}
        self.stage.setup(device)
        self.unit_of_model = {u.phase.model: u for u in self.units.values()}
        self._init_ema()
        self.lr = {p.name: LRController(p.schedule or self.cfg.schedule, p.total_updates(self.cfg.max_steps),
                                        self.stage.val_mode) for p in self.phases}
        self.ckpt = CheckpointManager(self.run_dir, comm, self.cfg.keep_last, self.cfg.keep_best,
                                      before_commit=self.faults.before_commit)
        self.input_dtype = next(iter(self.units.values())).input_dtype
        self.global_batch = self.cfg.per_rank_batch * dist.world_size
        self.resumed_from: Path | None = None
        self._resume_rng: dict[str, Any] | None = None
        if resume:
            self._resume(resume)
        elif self.ckpt.steps():  # damaged ones count too: a fresh run would overwrite them
            raise CheckpointError(f"{self.run_dir} already has checkpoints (latest {self.ckpt.steps()[-1][1]}): pass "
                                  "--resume auto to continue that run, or choose a new --run-dir")
        weights = self.stage.sampling_weights(self.train_set)
        self.sampler = StreamSampler(len(self.train_set), self.cfg.micro_batch, self.cfg.grad_accum,  # type: ignore
                                     dist.world_size, dist.rank, self.cfg.seed, weights, start_step=self.step)
        self.loader = make_loader(self.train_set, self.sampler, self.cfg.micro_batch, config.data.num_workers,
                                  pin_memory=device.type == "cuda", persistent=True)
        if self.is_main:
            self._warn_config_changes()
            save_run_config(config, self.run_dir / "config.yaml")
        self.log = MetricsLogger(self.run_dir, self.is_main, self.cfg.max_steps, self.step,
                                 tensorboard=self.cfg.tensorboard, progress=self.cfg.progress)

    # ------------------------------------------------------------------ set-up helpers
    def _warn_config_changes(self) -> None:
        """On resume, name the recipe/data settings that differ from the saved RUN/config.yaml."""
        saved_path = self.run_dir / "config.yaml"
        if self.resumed_from is None or not saved_path.is_file():
            return
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        new = self.config.to_dict()
        changed = [f"{section}.{key}" for section in ("recipe", "data")
                   for key in sorted(set(saved.get(section) or {}) | set(new[section]))
                   if (saved.get(section) or {}).get(key) != new[section].get(key)]
        if changed:
            print(f"[bsynth] warning: resuming with changed settings {', '.join(changed)} (see {saved_path}); "
                  "the run no longer reproduces the original one", flush=True)


    def _open_val_set(self) -> Any:
        split = self.config.data.val_split
        if not split or self.cfg.val_every == 0:
            return None
        try:
            return self.stage.dataset(split)
        except StoreError as exc:
            if self.is_main:
                print(f"[bsynth] validation disabled: {exc}", flush=True)
            return None

    def _init_ema(self) -> None:
        for name in self.stage.ema_models():
            unit = self.unit_of_model.get(name)
            if unit is None:
                raise ConfigError(f"stage {self.config.stage} asks for an EMA of {name!r}, which no phase trains")
            if self.cfg.ema_decay > 0:
                unit.ema = EMA(unit.ema_views, self.cfg.ema_decay, self.cfg.ema_every, self.cfg.ema_start)

    def _models_for(self, phase: Phase | None) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = dict(self.bare)
        for unit in self.units.values():
            own = phase is not None and unit.phase is phase
            out[unit.phase.model] = unit.forward_module if own else unit.module
        return out

    def _set_train(self, training: bool) -> None:
        for module in [u.module for u in self.units.values()] + list(self.bare.values()):
            module.train(training)

    # ------------------------------------------------------------------ one step
    def _run_phase(self, phase: Phase, micro: list[dict[str, Any]], caches: list[dict[str, Any]]
                   ) -> tuple[dict[str, float], bool]:
        unit = self.units[phase.name]
        factor = self.lr[phase.name].apply(unit.param_groups, phase.updates_before(self.step))
        models = self._models_for(phase)
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), device=self.device)
        with contextlib.ExitStack() as stack:
            for other in self.units.values():
                if other is not unit:
                    stack.enter_context(other.frozen())
            for k, batch in enumerate(micro):
                last = k == len(micro) - 1
                with unit.accumulate(last):
                    ctx = StepContext(self.step, phase.name, models, self.device, batch["sample_seed"], caches[k],
                                      True, self.input_dtype)
                    with unit.autocast():
                        terms = self.stage.loss(phase.name, batch, ctx)
                    if "loss" not in terms:
                        raise ConfigError(f"stage {self.config.stage}: loss() for phase {phase.name!r} returned "
                                          f"{sorted(terms)}; it must include 'loss'")
                    loss = terms["loss"]
                    if self.faults.nan_loss(self.step):
                        loss = loss * float("nan")
                    nonfinite = nonfinite + (~torch.isfinite(loss.detach().float())).float()
                    unit.backward(loss, len(micro))
                for key, value in terms.items():
                    v = (loss if key == "loss" else value).detach().float()
                    sums[key] = sums[key] + v if key in sums else v
        keys = sorted(sums)
        local = torch.stack([sums[k] for k in keys] + [nonfinite]).tolist()
        reduced = self.comm.all_reduce_sum(local)
        bad = reduced[-1] > 0
        denom = len(micro) * self.comm.world_size
        result = unit.step(skip=bad)
        out = {f"loss/{phase.name}/{k}" if k != "loss" else f"loss/{phase.name}": v / denom
               for k, v in zip(keys, reduced)}
        out[f"lr/{phase.name}"] = unit.param_groups[0]["lr"]
        out[f"lr_factor/{phase.name}"] = factor
        if result.grad_norm is not None:
            out[f"grad_norm/{phase.name}"] = result.grad_norm
        out[f"skipped/{phase.name}"] = 0.0 if result.applied else 1.0
        counted_bad = bad or (not result.applied and "overflow" not in result.reason)
        return out, counted_bad

    def _train_step(self, it: Iterator[dict[str, Any]]) -> dict[str, float]:
        micro = [batch_to_device(next(it), self.device, self.input_dtype) for _ in range(self.cfg.grad_accum)]
        caches: list[dict[str, Any]] = [{} for _ in micro]
        record: dict[str, float] = {}
        step_bad = False
        for phase in self.phases:
            if phase.active(self.step):
                metrics, bad = self._run_phase(phase, micro, caches)
                record.update(metrics)
                step_bad |= bad
        for unit in self.units.values():
            if unit.ema is not None:
                unit.ema.update(self.step)
        if step_bad:
            self.nan_streak += 1
            self.nan_total += 1
            if self.nan_streak >= self.cfg.nan_tolerance:
                raise TrainingDivergedError(
                    f"the loss was NaN/inf (or the gradients non-finite) for {self.nan_streak} consecutive steps "
                    f"(steps {self.step - self.nan_streak + 2}..{self.step + 1} of metrics.jsonl, engine.nan_tolerance="
                    f"{self.cfg.nan_tolerance}); the steps were skipped, so the weights are those after step "
                    f"{self.step - self.nan_streak + 1}. Lower the learning rate, enable engine.clip_grad, or use "
                    "bf16 instead of fp16; resume from the last checkpoint with --resume auto")
        else:
            self.nan_streak = 0
        record["nan_skipped_total"] = float(self.nan_total)
        return record

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Stage metrics over the validation split (EMA weights where kept), averaged over ranks."""
        if self.val_set is None:
            return {}
        vm = self.config.data.val_micro_batch or self.cfg.micro_batch
        sampler = ValidationSampler(len(self.val_set), vm, self.comm.world_size, self.comm.rank, self.cfg.seed,
                                    self.cfg.val_batches)
        loader = make_loader(self.val_set, sampler, vm, 0)
        sums: dict[str, float] = {}
        weight_sum = 0.0
        self._set_train(False)
        unit0 = next(iter(self.units.values()))
        try:
            with contextlib.ExitStack() as stack:
                for unit in self.units.values():
                    stack.enter_context(unit.ema_swapped())
                models = self._models_for(None)
                for batch in loader:
                    self.watchdog.beat("validation")
                    batch = batch_to_device(batch, self.device, self.input_dtype)
                    ctx = StepContext(self.step, None, models, self.device, batch["sample_seed"], None, False,
                                      self.input_dtype)
                    with unit0.autocast():
                        metrics = self.stage.validation_step(batch, ctx)
                        if not weight_sum and self.comm.rank == 0:
                            self._write_preview(batch, ctx)
                    w = batch["sample_weight"].float()
                    for key, values in metrics.items():
                        sums[key] = sums.get(key, 0.0) + float((values.float().flatten() * w).sum())
                    weight_sum += float(w.sum())
        finally:
            self._set_train(True)
        keys = sorted(sums)
        reduced = self.comm.all_reduce_sum([sums[k] for k in keys] + [weight_sum])
        total = reduced[-1]
        self.last_val_step = self.step
        return {f"val/{k}": v / total for k, v in zip(keys, reduced)} if total > 0 else {}

    def _write_preview(self, batch: dict[str, Any], ctx: StepContext) -> None:
        """The stage's preview of the first validation batch (RUN/logs/previews/step-XXXXXXXX.png); a
        failure to draw is logged, never fatal."""
        path = self.run_dir / "logs" / "previews" / f"step-{self.step:08d}.png"
        try:
            written = self.stage.preview(batch, ctx, path)
        except (OSError, ValueError, RuntimeError) as exc:
            self.log.info(f"preview not written ({type(exc).__name__}: {exc})")
            return
        if written is not None:
            self.log.info(f"preview {written}")

    def _observe_validation(self, metrics: dict[str, float]) -> bool:
        """Feed the plateau schedules; True when the stage's metric improved on the best."""
        key = f"val/{self.stage.val_metric}"
        if key not in metrics:
            return False
        value = metrics[key]
        for ctrl in self.lr.values():
            ctrl.observe(value)
        if not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best["value"] if self.stage.val_mode == "min"
                                       else value > self.best["value"])
        if better:
            self.best = {"metric": key, "value": value, "mode": self.stage.val_mode, "step": self.step}
        return better

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": {"position": self.step * self.global_batch, "global_batch": self.global_batch,
                        "num_items": len(self.train_set), "seed": self.cfg.seed},  # type: ignore[arg-type]
            "lr": {name: ctrl.state_dict() for name, ctrl in self.lr.items()},
            "ema": {u.phase.model: u.ema.state_dict() for u in self.units.values()
                    if u.ema is not None and not u.ema_is_sharded()},
            "nan": {"streak": self.nan_streak, "total": self.nan_total},
            "best": self.best,
            "last_val_step": self.last_val_step,
            "stage": self.stage.state_dict(),
            "backend": self.backend,
            "world_size": self.comm.world_size,
            "config": yaml.safe_dump(self.config.to_dict(), sort_keys=False),
        }

    def _write_checkpoint(self, directory: Path) -> None:
        for unit in self.units.values():
            unit.save(directory, self.is_main)
        rank_state = {"rng": capture(), "ema": {u.phase.model: u.ema.state_dict() for u in self.units.values()
                                                 if u.ema is not None and u.ema_is_sharded()}}
        save_torch(rank_state, directory / "ranks" / f"rank-{self.comm.rank:05d}.pt")
        if self.is_main:
            save_torch(self._trainer_state(), directory / "trainer.pt")

    def save_checkpoint(self, best: bool = False) -> Path:
        self.watchdog.beat("checkpoint")
        meta = {"stage": self.config.stage, "backend": self.backend, "world_size": self.comm.world_size,
                "zero_stage": self.cfg.zero_stage if self.backend == "deepspeed" else None,
                "global_batch": self.global_batch}
        path = self.ckpt.save(self.step, self._write_checkpoint, meta, best=self.best if best else None)
        self.log.info(f"checkpoint {path}" + (" (best)" if best else ""))
        self.watchdog.beat("training")
        return path

    def _resume(self, resume: str) -> None:
        """``--resume PATH``: that checkpoint, or a one-line error if it is damaged or does not fit;
        ``--resume auto``: the newest intact one, naming every newer damaged one skipped (kept on disk)."""
        if resume != "auto":
            self._resume_from(Path(resume))
            return
        skipped: list[str] = []
        for _, path in reversed(self.ckpt.steps()):
            try:
                self._resume_from(path)
                return
            except CheckpointDamagedError as exc:
                self.ckpt.mark_damaged(path, exc.problem)
                skipped.append(f"{path.name}: {exc.problem}")
                if self.is_main:
                    print(f"[bsynth] warning: --resume auto: checkpoint {path} is damaged ({exc.problem}); skipping "
                          "it (it stays on disk) and falling back to the one before", flush=True)
        if skipped:
            raise CheckpointDamagedError(f"--resume auto: no intact checkpoint in {self.ckpt.root} "
                                         f"({'; '.join(skipped)}): restore one from a backup, or start a new "
                                         "--run-dir (the damaged ones are kept)")
        if self.is_main:
            print(f"[bsynth] --resume auto: no complete checkpoint in {self.ckpt.root}; starting from step 0",
                  flush=True)

    def _agreed_problem(self, path: Path) -> str | None:
        """What is wrong with ``path`` (sizes and SHA-256, checked on rank 0), the same answer on every rank."""
        problem = verify(path) if self.is_main else None
        if self.comm.any(problem is not None):
            return problem or "found damaged by rank 0 (see its log)"
        return None

    def _resume_from(self, path: Path) -> None:
        """Verify, check the layout, load (damage -> CheckpointDamagedError, misfit -> CheckpointMismatchError)."""
        if not path.is_dir() or not STEP_RE.match(path.name):
            raise CheckpointUnusableError(f"--resume {path}: {'not' if path.is_dir() else 'no such'} checkpoint "
                                          "directory; pass RUN/checkpoints/step-XXXXXXXX or --resume auto")
        problem = self._agreed_problem(path)
        if problem is not None:
            raise CheckpointDamagedError(f"cannot resume from {path}: it is damaged ({problem}); resume from an intact "
                                         "checkpoint instead (--resume auto takes the newest intact one); the damaged "
                                         "one is left in place", problem=problem)
        meta = read_meta(path)
        self._check_layout(path, meta)
        error: CheckpointDamagedError | None = None
        try:
            self._load_checkpoint(path)
        except CheckpointDamagedError as exc:  # every rank must take the same way out (fall back or stop)
            error = exc
        if self.comm.any(error is not None):
            raise error or CheckpointDamagedError(f"another rank could not read {path} (see its log)",
                                                  problem="unreadable on another rank (see its log)")
        self.resumed_from = path
        if self.is_main:
            print(f"[bsynth] resumed from {path} (step {self.step})", flush=True)

    def _check_layout(self, path: Path, meta: dict[str, Any]) -> None:
        """The checkpoint's backend (and, for DeepSpeed, ranks and ZeRO stage) must be this run's."""
        if (meta["backend"] == "deepspeed") != (self.backend == "deepspeed"):
            raise CheckpointMismatchError(f"{path} was written by the {meta['backend']} backend; this run uses "
                                          f"{self.backend}: set engine.backend={meta['backend']} to resume it")
        if self.backend == "deepspeed" and (meta["world_size"], meta.get("zero_stage")) != \
                (self.comm.world_size, self.cfg.zero_stage):
            raise CheckpointMismatchError(f"{path} holds ZeRO-{meta.get('zero_stage')} shards of {meta['world_size']} "
                                          f"ranks; this run has {self.comm.world_size} ranks and ZeRO-"
                                          f"{self.cfg.zero_stage}: resume with the same layout")

    def _load_checkpoint(self, path: Path) -> None:
        """Read the small files first, then the models (each unit checks its shapes), then apply the state;
        a fall-back to an older checkpoint overwrites everything a failed attempt may have set."""
        state = load_torch(path / "trainer.pt")
        rank_file = path / "ranks" / f"rank-{self.comm.rank:05d}.pt"
        rank_state = load_torch(rank_file) if rank_file.is_file() else None
        for unit in self.units.values():
            unit.load(path)
        try:
            self._apply_state(path, state, rank_state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointDamagedError(
                f"{path / 'trainer.pt'} lacks part of the trainer state ({type(exc).__name__}: {exc}); the file is "
                "damaged or was not written by this engine: resume from another checkpoint",
                problem=f"trainer.pt: unreadable (trainer state incomplete: {type(exc).__name__} {exc})") from None

    def _apply_state(self, path: Path, state: dict[str, Any], rank_state: dict[str, Any] | None) -> None:
        """Step, schedules, EMA, NaN counters, best metric, stage state and data-stream checks from a checkpoint."""
        self.step = int(state["step"])
        for name, ctrl in self.lr.items():
            if name in state["lr"]:
                ctrl.load_state_dict(state["lr"][name])
        for unit in self.units.values():
            if unit.ema is None:
                continue
            source = (rank_state or {}).get("ema", {}) if unit.ema_is_sharded() else state["ema"]
            if unit.phase.model not in source:
                raise CheckpointMismatchError(f"{path} has no EMA for {unit.phase.model!r} (was engine.ema_decay 0 "
                                              "then?); set engine.ema_decay=0 to resume without EMA")
            try:
                unit.ema.load_state_dict(source[unit.phase.model], str(path))
            except CheckpointError as exc:  # shapes changed: as final as a model mismatch (exit 2)
                raise CheckpointMismatchError(f"{exc}: resume with the config the run was trained with "
                                              f"({self.run_dir / 'config.yaml'}) or start a new --run-dir") from None
        self.nan_streak, self.nan_total = int(state["nan"]["streak"]), int(state["nan"]["total"])
        self.best = state.get("best")
        self.last_val_step = int(state.get("last_val_step", -1))
        if "stage" in state:
            self.stage.load_state_dict(state["stage"])
        elif self.is_main and self.stage.state_dict():
            print(f"[bsynth] warning: {path} was written before stages saved their own state; stage "
                  f"{self.config.stage} continues from its initial state (e.g. a GAN schedule restarts its round "
                  "counter), so the run no longer reproduces the uninterrupted one", flush=True)
        sampler = state["sampler"]
        self._resume_rng = rank_state["rng"] if rank_state is not None else None  # restored in _train (see there)
        if self.is_main and (sampler["num_items"] != len(self.train_set)  # type: ignore[arg-type]
                             or sampler["global_batch"] != self.global_batch):
            print(f"[bsynth] warning: the data stream differs from the checkpoint's ({sampler['num_items']} items, "
                  f"global batch {sampler['global_batch']} then; {len(self.train_set)} and {self.global_batch} "  # type: ignore
                  "now): training continues, but not exactly as the uninterrupted run would", flush=True)

    # ------------------------------------------------------------------ exports
    def export(self) -> list[Path]:
        """Write the stage's inference exports (every rank takes part in gathering weights)."""
        ema_states = {n: u.full_state_dict(use_ema=True) for n, u in self.unit_of_model.items()}
        raw_states = {n: u.full_state_dict(use_ema=False) for n, u in self.unit_of_model.items()}
        paths: list[Path] = []
        if not self.is_main:
            return paths
        with torch.random.fork_rng(devices=[]):
            models = self.stage.build_models()
        for name, model in models.items():
            if name in ema_states:
                model.load_state_dict(ema_states[name], strict=True)
            elif name in self.bare:
                model.load_state_dict(self.bare[name].state_dict(), strict=True)
            model.eval()
        batches = None
        source = self.val_set if self.val_set is not None else self.train_set
        if source is not None:
            batches = iter(make_loader(source, ValidationSampler(len(source), self.cfg.micro_batch, 1, 0,
                                                                 self.cfg.seed), self.cfg.micro_batch, 0))
        with torch.no_grad():
            specs = self.stage.exports(models, ExportContext(self.step, batches, self.run_dir))
        config = self.config.to_dict()
        for spec in specs:
            model = models[spec.model]
            if not spec.use_ema and spec.model in raw_states:
                model.load_state_dict(raw_states[spec.model], strict=True)
            paths.append(export_model(self.run_dir, spec.name, model, config, extra={
                "factory": spec.factory, "factory_kwargs": dict(spec.factory_kwargs),
                **dict(spec.sidecar), "latent_scale": spec.latent_scale, "step": self.step,
                "ema": bool(spec.use_ema and self.unit_of_model.get(spec.model) is not None
                            and self.unit_of_model[spec.model].ema is not None)}))
            self.log.info(f"exported {paths[-1]}")
        return paths

    # ------------------------------------------------------------------ main loop
    def _log_step(self, record: dict[str, float], t_last: float, cpu_last: float, steps_since: int) -> None:
        peaks = self.comm.all_gather_float(peak_memory_mb(self.device))
        cpu = self.comm.all_gather_float((time.process_time() - cpu_last) / steps_since)
        elapsed = max(time.perf_counter() - t_last, 1e-9)
        record = {**record, "epoch": self.sampler.epoch_of(self.step), "step_time_s": elapsed / steps_since,
                  "volumes_per_s": steps_since * self.global_batch / elapsed, "peak_mem_mb": peaks,
                  "cpu_s_per_step": cpu}
        if not self._state_logged:  # what ZeRO shards and offloads: weights + optimizer bytes of each rank
            held = [u.state_bytes() for u in self.units.values()]
            for where in ("device", "host"):
                total = float(sum(h[where] for h in held))
                key = "train_state_mb" if where == "device" else "train_state_host_mb"
                record[key] = [b / 2**20 for b in self.comm.all_gather_float(total)]
            self._state_logged = True
        self.log.log(self.step, record)

    def train(self) -> int:
        """Run until max_steps (exit 0) or a preemption request (checkpoint, exit 75)."""
        try:
            return self._train()
        finally:
            self.log.close()

    def _train(self) -> int:
        cfg = self.cfg
        if self.is_main:
            write_status(self.run_dir, "running", self.step, -1, checkpoint=str(self.resumed_from or ""))
            self.log.info(f"stage {self.config.stage}: backend {self.backend} ({self.backend_reason}), "
                          f"{self.comm.world_size} rank(s) via {self.dist.launcher} on {self.device.type}, "
                          f"global batch {self.global_batch} = {cfg.micro_batch} x {cfg.grad_accum} x "
                          f"{self.comm.world_size}, precision {cfg.precision}, steps {self.step}->{cfg.max_steps}")
        self._set_train(True)
        it = iter(self.loader)  # draws the loader's base seed from the global torch RNG
        if self._resume_rng is not None:
            # the RNG states of the interrupted run after its last step: restored only now, so the
            # draw above does not shift global-RNG users (dropout, posterior samples) off the
            # uninterrupted run's sequence
            restore(self._resume_rng)
            self._resume_rng = None
        t_last, cpu_last, steps_since = time.perf_counter(), time.process_time(), 0
        while self.step < cfg.max_steps:
            self.watchdog.beat("training")
            self.faults.at_step_start(self.step)
            record = self._train_step(it)
            self.step += 1
            steps_since += 1
            final = self.step == cfg.max_steps
            self.log.advance(1, {"loss": record.get(f"loss/{self.phases[0].name}", float("nan"))})
            if self.step % cfg.log_every == 0 or final:
                self._log_step(record, t_last, cpu_last, steps_since)
                t_last, cpu_last, steps_since = time.perf_counter(), time.process_time(), 0
            improved = False
            if self.val_set is not None and cfg.val_every and (self.step % cfg.val_every == 0 or final):
                metrics = self.validate()
                improved = self._observe_validation(metrics)
                self.log.log(self.step, metrics)
                self.log.info(f"step {self.step}: " + ", ".join(f"{k}={v:.5g}" for k, v in metrics.items())
                              + (" (best)" if improved else ""))
            stop = self.comm.any(self.preemption.requested)
            periodic = cfg.ckpt_every and self.step % cfg.ckpt_every == 0
            if stop or periodic or improved or final:
                self.save_checkpoint(best=improved)
            if stop and not final:
                if self.is_main:
                    write_status(self.run_dir, "preempted", self.step, EXIT_REQUEUE,
                                 f"signal {self.preemption.received or 'on another rank'}: checkpoint written, "
                                 "requeue to continue", checkpoint=str(self.ckpt.latest()))
                self.log.info(f"preempted at step {self.step}: checkpoint written; exit {EXIT_REQUEUE} (requeue)")
                return EXIT_REQUEUE
        if cfg.export_at_end:
            self.export()
        if self.is_main:
            write_status(self.run_dir, "finished", self.step, EXIT_OK, checkpoint=str(self.ckpt.latest()),
                         best=self.best)
        return EXIT_OK
