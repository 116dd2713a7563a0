"""Data order independent of the launch layout, resumable at any step.

Training reads one endless *global stream*: position p (0, 1, 2, ...) holds item
``order(epoch)[p % N]`` with ``epoch = p // N`` and ``order(epoch)`` a permutation of the N
items (or, when the stage gives sampling weights, N weighted draws with replacement) seeded
by (seed, epoch). Optimizer step t consumes positions [t*G, (t+1)*G), G = micro_batch *
grad_accum * world_size: rank r takes positions t*G + i*world_size + r for i < micro_batch *
grad_accum, in micro-batches of ``micro_batch``. The union over ranks and micro-batches is the
same G items whatever the world size or accumulation, so one process, DDP and ZeRO see the
same global batches; resuming at step t starts at position t*G (the "sampler position" in a
checkpoint) with no replay of earlier data.

Each item also carries ``sample_seed`` = hash(seed, p), the key of all its random draws
(:mod:`.noise`). Validation covers the split once per evaluation, sharded over ranks and
padded to equal length with zero-weight items (``sample_weight``) so every rank runs the same
number of forwards (needed by ZeRO-3) and the metric counts each real item once.
"""
from __future__ import annotations

import math
import signal
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.samplers import epoch_seed
from .noise import mix_seed


class StreamSampler(Sampler[tuple[int, int]]):
    """This rank's (index, sample_seed) pairs from ``start_step`` on (module docstring)."""

    def __init__(self, num_items: int, micro_batch: int, grad_accum: int, world_size: int, rank: int, seed: int,
                 weights: Sequence[float] | None = None, start_step: int = 0):
        if num_items < 1:
            raise ValueError("the training split is empty")
        self.n = num_items
        self.per_rank = micro_batch * grad_accum
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.global_batch = self.per_rank * world_size
        self.weights = None if weights is None else torch.as_tensor(list(weights), dtype=torch.float64)
        if self.weights is not None and (len(self.weights) != num_items or not bool((self.weights >= 0).all())
                                         or float(self.weights.sum()) <= 0):
            raise ValueError(f"sampling weights must be {num_items} non-negative numbers with a positive sum")
        self.start_step = start_step
        self._cached: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        """The item order of one epoch (identical on every rank)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(self.seed, epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen).tolist()
        self._cached = (epoch, order)
        return order

    def position(self, step: int, i: int) -> int:
        """Global stream position of this rank's i-th item of ``step``."""
        return step * self.global_batch + i * self.world_size + self.rank

    def item(self, position: int) -> tuple[int, int]:
        epoch, k = divmod(position, self.n)
        return self.order(epoch)[k], mix_seed(self.seed, "sample", position)

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached at the start of ``step``."""
        return step * self.global_batch / self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            for i in range(self.per_rank):
                yield self.item(self.position(step, i))
            step += 1


class ValidationSampler(Sampler[tuple[int, int, float]]):
    """This rank's share of one pass over the validation split, padded with zero weights."""

    def __init__(self, num_items: int, micro_batch: int, world_size: int, rank: int, seed: int,
                 max_batches: int | None = None):
        chunk = micro_batch * world_size
        total = math.ceil(num_items / chunk) * chunk
        if max_batches is not None:
            total = min(total, max_batches * chunk)
        self.n, self.total, self.world_size, self.rank, self.seed = num_items, total, world_size, rank, seed

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        for p in range(self.rank, self.total, self.world_size):
            index = p % self.n
            yield index, mix_seed(self.seed, "val", index), 1.0 if p < self.n else 0.0

    def __len__(self) -> int:
        return self.total // self.world_size


class KeyedItems(Dataset):
    """Adds ``sample_seed`` (and ``sample_weight``) to the items of a map-style dataset."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple) -> dict[str, Any]:
        item = dict(self.dataset[key[0]])
        item["sample_seed"] = int(key[1])
        item["sample_weight"] = float(key[2]) if len(key) > 2 else 1.0
        return item


def _quiet_worker(_: int) -> None:
    """DataLoader workers leave preemption signals to the main process (which shuts them down)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, num_workers: int,
                pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    """A DataLoader over ``KeyedItems(dataset)`` driven by one of the samplers above."""
    return DataLoader(KeyedItems(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False, worker_init_fn=_quiet_worker if num_workers else None,
                      persistent_workers=persistent and num_workers > 0,
                      prefetch_factor=2 if num_workers else None)


def batch_to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype) -> dict[str, Any]:
    """Move tensors to ``device``; floating tensors take ``float_dtype`` (the model's input dtype)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if value.is_floating_point() and key != "sample_weight":
                value = value.to(float_dtype)
        out[key] = value
    return out
