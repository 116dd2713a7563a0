"""What every backend provides: a TrainUnit per phase (one model + its optimizer).

A unit hides how gradients are synchronised and how the optimizer steps:

``forward_module``   what the phase calls (DDP wrapper / DeepSpeed engine / the module)
``module``           the bare model (other phases call it with its parameters frozen)
``accumulate(last)`` context for one micro-batch: communication only on the last one
``backward(loss)``   backward of one micro-batch's loss (averaging over micro-batches inside)
``step(skip)``       clip + optimizer step (or discard the gradients when ``skip``)
``save/load``        the unit's share of a checkpoint (rank-local files where sharded)
``full_state_dict``  the complete weights (optionally the EMA) as CPU fp32 tensors on rank 0
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from ..ema import EMA, local_views
from ..stage import Phase


@dataclass
class StepResult:
    """Outcome of one optimizer step."""

    applied: bool
    grad_norm: float | None = None
    reason: str = ""


class TrainUnit(ABC):
    """One phase's model and optimizer on a backend (module docstring)."""

    def __init__(self, phase: Phase, module: nn.Module, device: torch.device):
        self.phase = phase
        self.module = module
        self.device = device
        self.ema: EMA | None = None

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    @abstractmethod
    def forward_module(self) -> nn.Module: ...

    @property
    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]: ...

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype of floating inputs the model expects (bf16/fp16 for DeepSpeed half precision)."""
        return torch.float32

    def autocast(self) -> ContextManager[Any]:
        """Mixed-precision context for forwards of this unit."""
        return contextlib.nullcontext()

    @abstractmethod
    def accumulate(self, last: bool) -> ContextManager[Any]: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor, accum: int) -> None: ...

    @abstractmethod
    def step(self, skip: bool) -> StepResult: ...

    @abstractmethod
    def save(self, directory: Path, is_main: bool) -> None: ...

    @abstractmethod
    def load(self, directory: Path) -> None: ...

    @abstractmethod
    def full_state_dict(self, use_ema: bool) -> dict[str, torch.Tensor]:
        """Complete fp32 weights (+ buffers) on CPU; called on every rank, meaningful on rank 0."""

    def base_optimizer(self) -> torch.optim.Optimizer | None:
        """The torch optimizer doing the update (inside DeepSpeed's ZeRO wrapper, if any)."""
        return None

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds for the unit's weights and optimizer (master copies + moments).

        Counts the local parameter storage (the ZeRO-3 partition when sharded) and the optimizer's
        parameters and state tensors, each storage once; gradients are transient and left out.
        ``device`` is what lives on the training device, ``host`` what was offloaded to CPU memory
        (on a CPU run everything is ``device``).
        """
        seen: set[int] = set()
        out = {"device": 0, "host": 0}
        tensors = list(self.ema_views())
        opt = self.base_optimizer()
        if opt is not None:
            tensors += [p for g in opt.param_groups for p in g["params"] if isinstance(p, torch.Tensor)]
            tensors += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            storage = t.untyped_storage()
            if t.numel() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                out["device" if t.device.type == self.device.type else "host"] += storage.nbytes()
        return out

    def ema_views(self) -> list[torch.Tensor]:
        return local_views(self.module)

    def ema_swapped(self) -> ContextManager[Any]:
        """Context in which the model computes with its EMA weights (no-op without EMA)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def ema_is_sharded(self) -> bool:
        """Whether each rank holds a different part of the EMA (ZeRO-3)."""
        return False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Parameters do not require grad inside (the model is used by another phase)."""
        flags = [p.requires_grad for p in self.module.parameters()]
        for p in self.module.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(self.module.parameters(), flags):
                p.requires_grad_(f)


def ema_full_state(module: nn.Module, ema: EMA) -> dict[str, torch.Tensor]:
    """State dict with the (unsharded) EMA shadow in place of the parameters."""
    state = {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
             for k, v in module.state_dict().items()}
    for (name, _), shadow in zip(module.named_parameters(), ema.shadow):
        state[name] = shadow.detach().float().cpu().clone()
    return state


def adam_state_bytes(models: dict[str, nn.Module]) -> int:
    """Bytes of fp32 weights + grads + Adam moments of all models (ZeRO's target)."""
    return sum(p.numel() for m in models.values() for p in m.parameters()) * 16


def resolve_backend(requested: str, world_size: int, models: dict[str, nn.Module],
                    device: torch.device) -> tuple[str, str]:
    """(backend, reason). See EngineConfig: auto picks single / ddp / deepspeed."""
    if requested != "auto":
        return requested, "requested"
    if world_size == 1:
        return "single", "one process"
    state = adam_state_bytes(models)
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
        if state > capacity // 4:
            return "deepspeed", (f"weights+grads+Adam state {state / 2**30:.2f} GiB > 1/4 of the "
                                 f"{capacity / 2**30:.0f} GiB device: ZeRO sharding pays off")
    return "ddp", (f"weights+grads+Adam state {state / 2**20:.1f} MiB is small: plain DDP avoids ZeRO's "
                   "per-parameter hook overhead")
