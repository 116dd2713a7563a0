"""Classifier-free guidance (Ho & Salimans 2022; seed 004 §V.C, seed 000's "class dropout" token).

Guided output ``out_u + s · (out_c - out_u)``: s = 1 is the conditional model, s = 0 the
unconditional one. It is applied to the raw network output whatever its prediction type: the
ε, x0 and v estimates are affine in the output at fixed (x_t, t) and the weights (1 - s, s)
sum to one, so guiding the output is exactly guiding ε.

Conditions are pytrees: a tensor, a mapping/list/tuple of pytrees, or a non-tensor leaf (None,
int, str) that both branches must share. Tensor leaves carry the batch in dim 0 (an
unconditional leaf with batch 1 is broadcast to the conditional batch). Both branches run as
one forward pass over the concatenated batch [cond; uncond].
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

Cond = Any
ModelFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def concat_conditions(cond: Cond, uncond: Cond, batch: int, path: str = "cond") -> Cond:
    """[cond; uncond] leafwise along dim 0 (structures must match; see the module docstring)."""
    if isinstance(cond, torch.Tensor) or isinstance(uncond, torch.Tensor):
        if not (isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor)):
            raise ValueError(f"{path}: one branch is a tensor, the other {type(cond).__name__} / "
                             f"{type(uncond).__name__}; give both branches the same structure")
        if cond.ndim == 0 or cond.shape[0] != batch:
            raise ValueError(f"{path}: conditional tensor of shape {tuple(cond.shape)} needs batch {batch} in dim 0")
        if uncond.ndim == cond.ndim and uncond.shape[0] == 1 and batch != 1:
            uncond = uncond.expand(batch, *uncond.shape[1:])
        if uncond.shape != cond.shape:
            raise ValueError(f"{path}: unconditional shape {tuple(uncond.shape)} does not match conditional "
                             f"shape {tuple(cond.shape)} (batch 1 broadcasts)")
        return torch.cat([cond, uncond.to(device=cond.device, dtype=cond.dtype)], dim=0)
    if isinstance(cond, Mapping):
        if not isinstance(uncond, Mapping) or set(cond) != set(uncond):
            other = sorted(uncond) if isinstance(uncond, Mapping) else type(uncond).__name__
            raise ValueError(f"{path}: keys {sorted(cond)} differ from the unconditional {other}")
        return {k: concat_conditions(cond[k], uncond[k], batch, f"{path}.{k}") for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(cond) != len(uncond):
            raise ValueError(f"{path}: a sequence of {len(cond)} does not match the unconditional {uncond!r}")
        items = [concat_conditions(c, u, batch, f"{path}[{i}]") for i, (c, u) in enumerate(zip(cond, uncond))]
        return type(cond)(items) if isinstance(cond, tuple) else items
    if cond != uncond:
        raise ValueError(f"{path}: non-tensor leaves must be equal in both branches; got {cond!r} and {uncond!r}")
    return cond


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """out_u + s · (out_c - out_u)."""
    return out_uncond + scale * (out_cond - out_uncond)


def guided_output(model_fn: ModelFn, x_t: torch.Tensor, model_t: torch.Tensor, cond: Cond, uncond: Cond,
                  scale: float) -> torch.Tensor:
    """Classifier-free-guided network output, both branches in one batched call of ``model_fn``."""
    batch = x_t.shape[0]
    both = concat_conditions(cond, uncond, batch)
    out = model_fn(torch.cat([x_t, x_t], dim=0), torch.cat([model_t, model_t], dim=0), both)
    if out.shape[0] != 2 * batch:
        raise ValueError(f"model output batch {out.shape[0]} differs from the guided input batch {2 * batch}")
    out_cond, out_uncond = out.chunk(2, dim=0)
    return cfg_combine(out_cond, out_uncond, scale)


__all__ = ["concat_conditions", "cfg_combine", "guided_output", "Cond", "ModelFn"]
