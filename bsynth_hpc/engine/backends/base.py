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
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator, Mapping

import torch
from torch import nn

from ..ema import EMA, local_views
from ..errors import CheckpointMismatchError
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


def _shape(value: Any) -> list[int] | None:
    shape = getattr(value, "shape", None)
    return list(shape) if shape is not None else None


def state_mismatch(model_state: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """The differences between a model's state dict and a saved one, in the model's parameter order:
    shape changes, keys the checkpoint lacks, keys only the checkpoint has (empty: they fit)."""
    found = []
    for key, value in model_state.items():
        if key not in saved:
            found.append(f"{key} is missing from the checkpoint")
        elif _shape(saved[key]) != _shape(value):
            found.append(f"{key} has shape {_shape(saved[key])} in the checkpoint but {_shape(value)} in the model")
    found += [f"{key} is in the checkpoint but not in the model" for key in saved if key not in model_state]
    return found


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def parse_load_state_error(text: str) -> list[str]:
    """The items of torch's "Error(s) in loading state_dict" text, in the words of :func:`state_mismatch`."""
    found = []
    for line in (ln.strip() for ln in text.splitlines()[1:]):
        match = _SIZE_MISMATCH.search(line)
        if match:
            found.append(f"{match.group(1)} has shape {match.group(2)} in the checkpoint but {match.group(3)} in "
                         "the model")
        elif line:
            found.append(line[:160].rstrip(". ") + ("..." if len(line) > 160 else ""))
    return found


def run_config_of(directory: Path) -> str:
    """RUN/config.yaml of a checkpoint RUN/checkpoints/step-XXXXXXXX (the config the run was trained with)."""
    directory = Path(directory)
    return str(directory.parent.parent / "config.yaml") if directory.parent.name == "checkpoints" else "RUN/config.yaml"


def mismatch_error(directory: Path, model: str, found: list[str]) -> CheckpointMismatchError:
    """One line: which checkpoint, which model, the first differences, and the fix."""
    shown = "; ".join(found[:2]) + (f" (and {len(found) - 2} more)" if len(found) > 2 else "")
    return CheckpointMismatchError(
        f"checkpoint {directory} does not fit model {model!r} of this run: {shown}. The model config changed since "
        f"it was written: resume with the config the run was trained with ({run_config_of(directory)}) or start a "
        "new --run-dir")


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
