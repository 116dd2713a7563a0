"""The small slice classifier that scores conditioning in 004's CFG sweep: trained on real slices of a slice
store (its class labels), then asked which class each generated slice shows (conditioning accuracy)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["SliceClassifier", "train_classifier", "predict"]


class SliceClassifier(nn.Module):
    """Three stride-2 conv blocks (16, 32, 64 channels, GroupNorm + SiLU), global average pool, linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 1
        for width in (16, 32, 64):
            layers += [nn.Conv2d(ch, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.SiLU()]
            ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _tensor(slices: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack([np.asarray(s, dtype=np.float32) for s in slices]))[:, None]


def train_classifier(slices: Sequence[np.ndarray], labels: Sequence[int], num_classes: int, epochs: int = 10,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     device: torch.device | str = "cpu") -> SliceClassifier:
    """A :class:`SliceClassifier` trained with class-weighted cross-entropy (classes may be unbalanced)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SliceClassifier(num_classes).to(device)
    x, y = _tensor(slices), torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).float()
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / counts / num_classes).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(max(1, epochs)):
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch_size):
            idx = order[k:k + batch_size]
            flip = torch.rand(len(idx), generator=gen) < 0.5   # left-right flips: the class does not depend on side
            xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx]).to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), y[idx].to(device)).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: SliceClassifier, slices: Sequence[np.ndarray], batch_size: int = 64,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted class of each slice."""
    x = _tensor(slices)
    out = [model(x[k:k + batch_size].to(device)).argmax(1).cpu() for k in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
