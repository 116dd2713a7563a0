"""Per-sample random draws keyed by the sample's position in the global data stream.

Every training item carries ``sample_seed``: a 63-bit hash of (run seed, position of the item
in the global stream). Noise, timesteps and reparameterisation draws made from it do not
depend on how the global batch is split over ranks and micro-batches, nor on resuming, so one
process, DDP and ZeRO runs see the same numbers and reach the same losses.

``salt`` separates independent draws for the same item (e.g. the diffusion noise and the
timestep). Draws happen on the target device with a device generator (CPU or CUDA), so the
values are reproducible for a given device type.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

_MASK63 = (1 << 63) - 1


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (SHA-256; torch keeps all 64 bits of a manual_seed)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK63


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _seeds(seeds: torch.Tensor | Sequence[int]) -> list[int]:
    return [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]


def sample_randn(seeds: torch.Tensor | Sequence[int], shape: Sequence[int], salt: int | str = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal draws, row b from ``seeds[b]`` and ``salt``."""
    device = torch.device(device)
    rows = [torch.randn(tuple(shape), generator=_generator(mix_seed(s, "randn", salt), device), device=device,
                        dtype=torch.float32) for s in _seeds(seeds)]
    return torch.stack(rows).to(dtype)


def sample_rand(seeds: torch.Tensor | Sequence[int], salt: int | str = 0,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) uniform [0, 1) draws."""
    device = torch.device(device)
    return torch.cat([torch.rand(1, generator=_generator(mix_seed(s, "rand", salt), device), device=device)
                      for s in _seeds(seeds)])


def sample_randint(seeds: torch.Tensor | Sequence[int], high: int, salt: int | str = 0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) integers in [0, high)."""
    device = torch.device(device)
    return torch.cat([torch.randint(high, (1,), generator=_generator(mix_seed(s, "randint", salt), device),
                                    device=device) for s in _seeds(seeds)])
