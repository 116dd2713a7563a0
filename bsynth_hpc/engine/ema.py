"""Exponential moving average of a model's weights, ZeRO-3 aware.

The shadow is an fp32 copy of each parameter's *local storage*: the full tensor normally,
the rank's partition (``param.ds_tensor``) under ZeRO-3. So the EMA costs the same fraction of
memory as the parameters themselves on every backend, and needs no communication per update.
Validation and exports swap the shadow into the local storage (``swapped``) and back; under
ZeRO-3 the normal parameter gathering then serves EMA weights.

The update after optimizer step s (0-based) is ``shadow += (1 - decay) * (param - shadow)``
from step ``start`` on; before that the shadow tracks the weights exactly.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import CheckpointError


def local_views(module: nn.Module) -> list[torch.Tensor]:
    """The tensors that hold this rank's share of each parameter (ZeRO-3 partition or full data)."""
    return [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in module.parameters()]


class EMA:
    """EMA of the parameters of one model (module docstring)."""

    def __init__(self, views: Callable[[], list[torch.Tensor]], decay: float, every: int = 1, start: int = 0):
        self._views = views
        self.decay = float(decay)
        self.every = int(every)
        self.start = int(start)
        self.shadow = [v.detach().float().clone() for v in views()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the weights after optimizer step ``step`` into the average."""
        views = self._views()
        if step < self.start:
            for s, v in zip(self.shadow, views):
                s.copy_(v)
            return
        if (step - self.start) % self.every:
            return
        weight = 1.0 - self.decay ** self.every
        torch._foreach_lerp_(self.shadow, [v.float() for v in views], weight)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        views = self._views()
        backup = [v.detach().clone() for v in views]
        with torch.no_grad():
            for v, s in zip(views, self.shadow):
                v.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, b in zip(views, backup):
                    v.copy_(b)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, object], where: str) -> None:
        shadow = state["shadow"]
        assert isinstance(shadow, list)
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise CheckpointError(f"{where}: the EMA in the checkpoint does not match the model ({len(shadow)} vs "
                                  f"{len(self.shadow)} tensors or different shapes); the model config changed "
                                  "since the checkpoint was written")
        for s, t in zip(self.shadow, shadow):
            s.copy_(t)
