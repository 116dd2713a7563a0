"""Group-balanced weighted samplers: modality-balanced (seed 003 §2.5.6) and class-balanced (seed 004).

Each item i in group g(i) gets weight ``count(g(i)) ** -alpha``; with ``alpha = 1`` every
group is drawn equally often in expectation, so the rare T1Gd scans (3 % of BrainScape) are as
frequent as T1w, and ``0 < alpha < 1`` interpolates towards the natural frequencies. The draw
follows ``torch.utils.data.WeightedRandomSampler`` semantics (``torch.multinomial``, with or
without replacement; ``torch.multinomial`` handles up to 2**24 items, far above the 45,880
volumes of seed 003's BrainScape snapshot).

Distributed use: every rank builds the sampler with the same seed and calls ``set_epoch``
each epoch. All ranks then draw the *same* global sequence of ``len(self) * world_size``
indices from a generator seeded by ``(seed, epoch)``, and rank r keeps positions
``r, r + world_size, ...``; the shares are disjoint positions of one draw (disjoint indices
when ``replacement=False``) and their union is exactly the global draw. With one process
(``torch.distributed`` not initialised) rank 0 of 1 is used.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any, Collection, Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed mixing (seed, epoch) through SHA-256.

    Arithmetic mixes such as ``seed * 2**32 + epoch`` collide: torch's CPU generator keeps
    only the low 32 bits of its seed, so every seed would give the same draw.
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if initialised else 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"sampler rank {rank} / world_size {world_size} is invalid: need 0 <= rank < world_size")
    return rank, world_size


class GroupBalancedSampler(Sampler[int]):
    """Weighted sampler over dataset indices with weights ``count(group) ** -alpha`` (see module docstring).

    ``groups[i]`` is item i's group; items whose group is in ``ignore`` get weight 0.
    ``num_samples`` is the global number of draws per epoch (default: the number of
    non-ignored items); each rank yields ``ceil(num_samples / world_size)`` indices.
    """

    def __init__(self, groups: Sequence[Hashable], num_samples: int | None = None, *, replacement: bool = True,
                 alpha: float = 1.0, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 ignore: Collection[Hashable] = ()):
        self.groups = list(groups)
        if not math.isfinite(alpha) or alpha < 0:
            raise ConfigError(f"sampler alpha={alpha} is invalid: use a number >= 0 (1 = fully balanced)")
        counts = Counter(g for g in self.groups if g not in ignore)
        if not counts:
            raise ConfigError(
                f"nothing to sample: all {len(self.groups)} items are in ignored groups {sorted(map(str, ignore))}"
            )
        self.group_counts: dict[Hashable, int] = dict(counts)
        self.weights = torch.tensor(
            [0.0 if g in ignore else counts[g] ** -alpha for g in self.groups], dtype=torch.float64)
        eligible = sum(counts.values())
        self.num_samples = int(num_samples) if num_samples is not None else eligible
        if self.num_samples < 1:
            raise ConfigError(f"num_samples={num_samples} is invalid: draw at least one sample per epoch")
        self.replacement = bool(replacement)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        self.per_rank = math.ceil(self.num_samples / self.world_size)
        if not self.replacement and self.per_rank * self.world_size > eligible:
            raise ConfigError(
                f"cannot draw {self.per_rank * self.world_size} distinct items from {eligible} without replacement "
                "(num_samples rounded up to a multiple of world_size): lower num_samples or use replacement=True"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draw; call with the same epoch on every rank."""
        self.epoch = int(epoch)

    def group_probabilities(self) -> dict[Hashable, float]:
        """Probability that one draw (with replacement) lands in each group."""
        mass = {g: n * n ** -self.alpha for g, n in self.group_counts.items()}
        total = sum(mass.values())
        return {g: m / total for g, m in mass.items()}

    def global_indices(self) -> list[int]:
        """The epoch's draw across all ranks (identical on every rank)."""
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(self.seed, self.epoch))
        total = self.per_rank * self.world_size
        return torch.multinomial(self.weights, total, self.replacement, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices()[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_rank


def _groups_from(source: Any, attribute: str) -> Sequence[Hashable]:
    return list(getattr(source, attribute)) if hasattr(source, attribute) else list(source)


class ModalityBalancedSampler(GroupBalancedSampler):
    """Draws target modalities equally often (alpha=1); ``source`` is a VolumeDataset or a list of modality ids."""

    def __init__(self, source: Any, num_samples: int | None = None, **kwargs: Any):
        super().__init__(_groups_from(source, "modality_ids"), num_samples, **kwargs)


class ClassBalancedSampler(GroupBalancedSampler):
    """Draws labels equally often (alpha=1); ``source`` is a VolumeDataset or a list of label ids.

    Unlabelled items (label -1) are never drawn unless ``include_unlabelled=True``, which
    treats them as one more class.
    """

    def __init__(self, source: Any, num_samples: int | None = None, include_unlabelled: bool = False,
                 **kwargs: Any):
        ignore = () if include_unlabelled else (-1,)
        super().__init__(_groups_from(source, "label_ids"), num_samples, ignore=ignore, **kwargs)
