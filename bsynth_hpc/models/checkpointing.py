"""Activation checkpointing shared by the denoisers (DiT-3D, conditional 3D U-Net).

A block that derives from :class:`CheckpointedBlock` implements ``_forward``; when its
``checkpointing`` flag is set and autograd is recording in training mode, ``forward`` runs
``_forward`` under non-reentrant :func:`torch.utils.checkpoint.checkpoint`, so the block's
activations are recomputed in backward instead of stored. Outputs and gradients are the same
with and without the flag (the recomputation is the same computation). Models expose
``set_activation_checkpointing(enabled)`` (the engine's planner calls it) through
:func:`set_activation_checkpointing`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointedBlock", "set_activation_checkpointing"]


class CheckpointedBlock(nn.Module):
    """A block whose activations can be recomputed in backward (flag ``checkpointing``)."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpointing = False

    def _forward(self, *args: Any) -> Any:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def forward(self, *args: Any) -> Any:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Set the flag on every :class:`CheckpointedBlock` inside ``model``; returns how many blocks."""
    count = 0
    for module in model.modules():
        if isinstance(module, CheckpointedBlock):
            module.checkpointing = bool(enabled)
            count += 1
    return count
