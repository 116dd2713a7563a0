"""DeepSpeed units: one ``DeepSpeedEngine`` per phase (ZeRO 0-3, CPU/NVMe offload, bf16/fp16).

Gradient accumulation uses explicit boundaries (``set_gradient_accumulation_boundary``) so
phases that do not run every step (a discriminator starting after warm-up) never drift out
of DeepSpeed's micro-step counting. Non-finite gradients: ZeRO 1-3 already refuse to step
on a non-finite gradient norm (and clean their partitioned buffers); with ZeRO-0 the engine
discards the gradients itself. Checkpoints use DeepSpeed's own sharded format, written by
every rank; they are read back with ``torch.load(weights_only=True)`` through a checkpoint
engine whose allow-list holds only DeepSpeed's plain state classes (loss scaler, ZeRO stage
enum, fragment address).

With offload on a GPU the optimizer is DeepSpeed's CPU Adam when its extension can be
built (much faster than torch's Adam on CPU tensors); otherwise the stage's torch optimizer.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from ...errors import ConfigError
from ..checkpoint import _in_checkpoint, describe_load_error
from ..errors import CheckpointDamagedError, CheckpointMismatchError
from ..stage import Phase
from .base import StepResult, TrainUnit, ema_full_state, mismatch_error, parse_load_state_error

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def import_deepspeed() -> Any:
    """Import deepspeed quietly (its INFO logging is per rank and very chatty)."""
    try:
        import deepspeed
    except ImportError as exc:  # pragma: no cover - deepspeed is a dev/slurm dependency
        raise ConfigError("engine.backend=deepspeed needs DeepSpeed: `pip install -e .[slurm]` "
                          "(or use engine.backend=ddp)") from exc
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    return deepspeed


def _safe_globals() -> list[Any]:
    """DeepSpeed classes that appear in its checkpoints and hold only plain data."""
    found: list[Any] = []
    for module_name, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                               ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                               ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
        try:
            module = __import__(module_name, fromlist=list(names))
        except ImportError:  # pragma: no cover - other DeepSpeed layout
            continue
        found.extend(getattr(module, n) for n in names if hasattr(module, n))
    return found


def _weights_only_engine(base: Any) -> Any:
    """A TorchCheckpointEngine whose load() uses weights_only=True with a fixed allow-list."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):  # type: ignore[misc, valid-type]
        def load(self, path: str, map_location: Any = None) -> Any:
            try:
                with torch.serialization.safe_globals(_safe_globals()):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # `from None`: torch's text advises unsafe loading; ours replaces it
                what = describe_load_error(exc)
                raise CheckpointDamagedError(
                    f"cannot read DeepSpeed checkpoint file {path}: {what}; it is damaged or comes from another "
                    "DeepSpeed version: resume from another checkpoint (--resume auto takes the newest intact one)",
                    problem=f"{_in_checkpoint(Path(path))}: unreadable ({what})") from None

    engine = WeightsOnlyCheckpointEngine(None)
    engine.zipfile_serialization = getattr(base, "zipfile_serialization", True)
    return engine


def _build_optimizer(phase: Phase, module: nn.Module, ds_config: dict[str, Any], on_gpu: bool) -> Any:
    spec = phase.optimizer
    params = phase.optimizer_params(module)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if on_gpu and offload in ("cpu", "nvme") and spec.name in ("adam", "adamw"):
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            from deepspeed.ops.op_builder import CPUAdamBuilder

            if CPUAdamBuilder().is_compatible():
                return DeepSpeedCPUAdam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                        weight_decay=spec.weight_decay, adamw_mode=spec.name == "adamw")
        except Exception:  # pragma: no cover - extension cannot build here: torch optimizer below
            pass
    return spec.build(params)


class DeepSpeedUnit(TrainUnit):
    """A phase's model wrapped in a DeepSpeedEngine (module docstring)."""

    def __init__(self, phase: Phase, module: nn.Module, device: torch.device, ds_config: dict[str, Any],
                 precision: str):
        deepspeed = import_deepspeed()
        super().__init__(phase, module, device)
        self.zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        self.precision = precision
        optimizer = _build_optimizer(phase, module, ds_config, device.type == "cuda")
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config,
                                               dist_init_required=False)
        self.engine = engine
        self.module = engine.module
        self.engine.checkpoint_engine = _weights_only_engine(engine.checkpoint_engine)

    @property
    def forward_module(self) -> nn.Module:
        return self.engine

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups

    def base_optimizer(self) -> torch.optim.Optimizer | None:
        wrapper = self.engine.optimizer
        return getattr(wrapper, "optimizer", wrapper)

    @property
    def input_dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def accumulate(self, last: bool) -> ContextManager[Any]:
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        del accum  # DeepSpeed divides by gradient_accumulation_steps itself
        self.engine.backward(loss)

    def step(self, skip: bool) -> StepResult:
        if skip and self.zero_stage == 0:
            self.engine.zero_grad()
            return StepResult(False, None, "non-finite loss")
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm_f = float(norm) if norm is not None else None
        applied = bool(self.engine.was_step_applied())
        if norm_f is not None and not math.isfinite(norm_f):
            applied = False
        reason = "" if applied else ("non-finite loss" if skip else "non-finite gradient norm / fp16 overflow")
        return StepResult(applied, norm_f, reason)

    def save(self, directory: Path, is_main: bool) -> None:
        del is_main  # every rank writes its shard
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=self.phase.model, client_state={},
                                    save_latest=False)

    def load(self, directory: Path) -> None:
        """This rank's share of ``deepspeed/<model>/``; changed model shapes give a one-line CheckpointMismatchError."""
        root = directory / "deepspeed"
        model = self.phase.model
        if not (root / model).is_dir():
            raise CheckpointMismatchError(f"{directory} has no DeepSpeed state for model {model!r}: it was not "
                                          "written by the deepspeed backend; resume with the backend that wrote it")
        try:
            path, _ = self.engine.load_checkpoint(str(root), tag=model, load_module_strict=True,
                                                  load_optimizer_states=True, load_lr_scheduler_states=False)
        except RuntimeError as exc:
            if "Error(s) in loading state_dict" not in str(exc):
                raise
            raise mismatch_error(directory, model, parse_load_state_error(str(exc))) from None
        if path is None:
            raise CheckpointMismatchError(f"DeepSpeed could not load {root / model} (see the messages above); was it "
                                          "written with the same number of ranks and ZeRO stage?")

    def ema_is_sharded(self) -> bool:
        return self.zero_stage == 3

    def ema_swapped(self) -> ContextManager[Any]:
        if self.ema is None or self.zero_stage != 3:
            return super().ema_swapped()
        return self._zero3_ema_swapped()

    @contextlib.contextmanager
    def _zero3_ema_swapped(self) -> Iterator[None]:
        """EMA into the partitions, and into the full data of the small parameters ZeRO-3 keeps
        unpartitioned (``ds_persist``), which forwards read directly."""
        assert self.ema is not None
        params = list(self.module.parameters())
        persistent = [i for i, p in enumerate(params) if getattr(p, "ds_persist", False)]
        full = self._gather_partitions([self.ema.shadow[i] for i in persistent], [params[i] for i in persistent])
        backup = [params[i].data.detach().clone() for i in persistent]
        with self.ema.swapped():
            with torch.no_grad():
                for i, f in zip(persistent, full):
                    params[i].data.copy_(f.to(params[i].data.device, params[i].data.dtype))
            try:
                yield
            finally:
                with torch.no_grad():
                    for i, b in zip(persistent, backup):
                        params[i].data.copy_(b)

    def _gather_partitions(self, partitions: list[torch.Tensor], params: list[Any] | None = None
                           ) -> list[torch.Tensor]:
        """Full tensors from per-rank ZeRO-3 partitions (same layout as param.ds_tensor)."""
        import torch.distributed as dist

        world = dist.get_world_size()
        out = []
        for p, part in zip(params if params is not None else list(self.module.parameters()), partitions):
            pieces = [torch.empty_like(part, device=self.device) for _ in range(world)]
            dist.all_gather(pieces, part.to(self.device).contiguous())
            out.append(torch.cat([x.flatten() for x in pieces])[:p.ds_numel].view(p.ds_shape).float().cpu())
        return out

    def full_state_dict(self, use_ema: bool) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        ema = self.ema if use_ema else None
        if ema is not None and self.zero_stage != 3:
            return ema_full_state(self.module, ema)
        if ema is not None:
            weights = self._gather_partitions(ema.shadow)
        else:
            weights = []
            for p in self.module.parameters():
                full = safe_get_full_fp32_param(p)
                weights.append((full if full is not None else p.data).detach().float().cpu().clone())
        state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()
                 if k not in dict(self.module.named_parameters())}
        for (name, _), w in zip(self.module.named_parameters(), weights):
            state[name] = w
        return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
