"""Single-process and DDP units: a torch optimizer, AMP autocast, an optional GradScaler.

Single process (CPU or one GPU) and DDP share everything except the wrapper: DDP averages
gradients in backward and skips that communication on all but the last micro-batch
(``no_sync``). Precision: fp32, or autocast to bf16/fp16 with fp32 master weights (fp16 adds
a GradScaler; fp16 autocast needs CUDA). The gradient norm is computed every step (for the
log and the non-finite check) and clipped when ``clip_grad`` > 0. Checkpoints hold the full
model/optimizer/scaler state, identical on every rank, so rank 0 writes it and any world size
can resume it.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from ...errors import ConfigError
from ..checkpoint import load_torch, save_torch
from ..errors import CheckpointDamagedError, CheckpointMismatchError
from ..stage import Phase
from .base import StepResult, TrainUnit, ema_full_state, mismatch_error, run_config_of, state_mismatch

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchUnit(TrainUnit):
    """A phase's model + torch optimizer, optionally DDP-wrapped (module docstring)."""

    def __init__(self, phase: Phase, module: nn.Module, device: torch.device, precision: str, clip_grad: float,
                 ddp: bool):
        super().__init__(phase, module.to(device), device)
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("engine.precision=fp16 needs a CUDA device (fp16 autocast is GPU-only); use bf16 or "
                              "fp32 on CPU")
        self.precision = precision
        self.clip_grad = clip_grad
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = phase.optimizer.build(phase.optimizer_params(self.module))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.ddp = None
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False, gradient_as_bucket_view=True)

    @property
    def forward_module(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.module

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer

    def autocast(self) -> ContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.precision])

    def accumulate(self, last: bool) -> ContextManager[Any]:
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.scaler.scale(loss / accum).backward()

    def _grad_norm(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        if self.clip_grad > 0:
            return float(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad, foreach=True))
        return float(torch.nn.utils.get_total_norm(grads, foreach=True))

    def step(self, skip: bool) -> StepResult:
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(False, None, "non-finite loss")
        self.scaler.unscale_(self.optimizer)
        norm = self._grad_norm()
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale
            reason = "" if applied else "fp16 overflow (loss scale reduced)"
        elif not math.isfinite(norm):
            applied, reason = False, "non-finite gradient norm"
        else:
            self.optimizer.step()
            applied, reason = True, ""
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(applied, norm, reason)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def save(self, directory: Path, is_main: bool) -> None:
        if is_main:
            save_torch(self.state_dict(), directory / "models" / f"{self.phase.model}.pt")

    def load(self, directory: Path) -> None:
        """Weights, optimizer and scaler from ``models/<model>.pt``; a model whose shapes changed since the
        checkpoint was written is refused before anything is copied (CheckpointMismatchError, one line)."""
        model = self.phase.model
        path = directory / "models" / f"{model}.pt"
        if not path.is_file():
            raise CheckpointMismatchError(f"checkpoint {directory} has no weights for model {model!r} (no "
                                          f"models/{model}.pt): it was written by another stage or backend; resume "
                                          "with the stage and backend that wrote it")
        state = load_torch(path, self.device)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "optimizer" not in state:
            raise CheckpointDamagedError(f"{path} holds no model/optimizer state: the file is damaged or was not "
                                         "written by this engine", problem=f"models/{model}.pt: unreadable (no "
                                         "model/optimizer state)")
        found = state_mismatch(self.module.state_dict(), state["model"])
        if found:
            raise mismatch_error(directory, model, found)
        self.module.load_state_dict(state["model"], strict=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointMismatchError(
                f"checkpoint {directory}: the optimizer state of model {model!r} does not fit this run's optimizer "
                f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); resume with the config "
                f"the run was trained with ({run_config_of(directory)}) or start a new --run-dir") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def full_state_dict(self, use_ema: bool) -> dict[str, torch.Tensor]:
        if use_ema and self.ema is not None:
            return ema_full_state(self.module, self.ema)
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.module.state_dict().items()}
