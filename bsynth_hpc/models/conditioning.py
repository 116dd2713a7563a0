"""Conditioning inputs shared by the latent denoisers (DiT-3D and the conditional 3D U-Net).

* :func:`timestep_embedding` / :class:`TimestepEmbedder` - sinusoidal timestep features and the
  DiT/ADM two-layer MLP on top of them.
* :class:`LabelEmbedder` - a learnable embedding per discrete label plus one extra *null*
  embedding (id ``num_labels``) used for classifier-free guidance (CFG). It serves as the
  healthy/TLE class embeddings with the learnable "class dropout" embedding of seed 000 §5.2
  and as the target-modality embedding (T1w, T2w, T1Gd, FLAIR + null) of seed 003 §2.5.5.
* :class:`MetadataEncoder` - seed 003 §2.5.5's metadata encoder over the 25-field schema of
  §2.2.2 (``bsynth_hpc.data.metadata``): normalised numeric fields used directly, categorical and
  binary fields through learned embeddings with a "missing" index, and the availability mask as
  input features; output width ``e_meta``.
* :func:`drop_mask` - the per-sample Bernoulli draw behind CFG condition dropout, and
  :func:`classifier_free_guidance` - the guided combination of conditional/unconditional outputs.

The conditioning interface every latent denoiser offers, so a training stage or a sampler never
special-cases one model's inputs:

* a :data:`Conditioning` is a dict of named (B, ...) tensors - ``{"modality", "metadata",
  "metadata_mask"}`` for the WFDM U-Net, ``{"class"}`` for DiT-3D, ``{"clinical"}`` (a 7-D float
  vector, seed 002) for the next recipe - passed as the denoiser's third argument;
* the model (:class:`ConditionalDenoiser`) names its :class:`ConditionGroup` s (keys that CFG drops
  together, each with its dropout rate) and gives its :meth:`~ConditionalDenoiser.null_condition`;
* :func:`drop_groups` replaces chosen groups by the null condition sample by sample, and
  :func:`cfg_dropout` draws which from one uniform per sample and group (a caller passes the
  engine's per-sample draws, so the drops do not depend on how samples are spread over ranks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..vocabulary import BINARY, CATEGORICAL, CONTINUOUS, FIELDS, FieldSpec

__all__ = [
    "timestep_embedding",
    "batch_timesteps",
    "TimestepEmbedder",
    "LabelEmbedder",
    "MetadataEncoder",
    "drop_mask",
    "classifier_free_guidance",
    "Conditioning",
    "ConditionGroup",
    "ConditionalDenoiser",
    "drop_groups",
    "cfg_dropout",
]

Conditioning = dict[str, torch.Tensor]
"""Named condition tensors, each with the batch as its first axis (see the module docstring)."""


@dataclass(frozen=True)
class ConditionGroup:
    """Condition keys that classifier-free guidance drops together, at rate ``dropout_prob``."""

    name: str
    keys: tuple[str, ...]
    dropout_prob: float


@runtime_checkable
class ConditionalDenoiser(Protocol):
    """What a latent denoiser offers besides ``forward(x, t, cond: Conditioning | None)``."""

    def condition_groups(self) -> tuple[ConditionGroup, ...]:
        """The groups of condition keys the model takes, in a fixed order."""

    def null_condition(self, batch: int, device: torch.device | str) -> Conditioning:
        """The unconditional input of every group (CFG's null branch)."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (B,) -> (B, dim) float32.

    ``[cos(t * f_0..f_{h-1}), sin(t * f_0..f_{h-1})]`` with ``f_i = max_period ** (-i / h)``,
    ``h = dim // 2`` (DiT / ADM ordering); an odd ``dim`` gets one trailing zero.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding: expected timesteps of shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def batch_timesteps(t: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a (B,) tensor on ``device``: a number or one-element tensor is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


class TimestepEmbedder(nn.Module):
    """t -> MLP(sinusoid(t)): Linear(frequency_dim, dim) -> SiLU -> Linear(dim, dim) (DiT, ADM).

    Weights are initialised N(0, 0.02) as in DiT.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_dim, self.max_period)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def drop_mask(batch: int, prob: float, device: torch.device | str,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) bool: True where a sample's condition is dropped (Bernoulli(``prob``) per sample).

    Draws on ``generator``'s device when one is given (so a seeded CPU generator gives the same
    drops whatever the model's device), else on ``device`` from the global RNG.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"drop probability must lie in [0, 1], got {prob}")
    draw_device = generator.device if generator is not None else torch.device(device)
    u = torch.rand(batch, generator=generator, device=draw_device)
    return (u < prob).to(device)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` (Ho & Salimans); scale 1 is the conditional output."""
    return uncond + scale * (cond - uncond)


def drop_groups(cond: Mapping[str, torch.Tensor], null: Mapping[str, torch.Tensor], groups: Sequence[ConditionGroup],
                drops: Mapping[str, torch.Tensor]) -> Conditioning:
    """``cond`` with the keys of each group in ``drops`` replaced by ``null``'s where that group's
    (B,) bool mask is True; groups absent from ``cond`` or ``drops`` are left as they are."""
    out = dict(cond)
    for group in groups:
        if group.name not in drops or not all(k in out for k in group.keys):
            continue
        for key in group.keys:
            value = out[key]
            mask = drops[group.name].to(value.device).reshape(-1, *([1] * (value.dim() - 1)))
            out[key] = torch.where(mask, null[key].to(value.device, value.dtype), value)
    return out


def cfg_dropout(model: ConditionalDenoiser, cond: Mapping[str, torch.Tensor],
                uniform: Callable[[str], torch.Tensor], prob: float | None = None) -> Conditioning:
    """CFG condition dropout for training: group ``g`` of ``model`` is dropped where
    ``uniform(g.name)`` ((B,) in [0, 1), one draw per sample) falls under its rate (``prob`` for
    every group when given)."""
    groups = tuple(model.condition_groups())
    present = [g for g in groups if all(k in cond for k in g.keys)]
    if not present:
        return dict(cond)
    batch = next(iter(cond.values())).shape[0]
    null = model.null_condition(batch, next(iter(cond.values())).device)
    drops = {g.name: uniform(g.name) < (g.dropout_prob if prob is None else prob) for g in present}
    return drop_groups(cond, null, groups, drops)


class LabelEmbedder(nn.Module):
    """Learnable embeddings of ``num_labels`` labels plus a null embedding at id ``num_labels``.

    The null embedding is the condition "no label given": seed 000 §5.2's learnable "class
    dropout" embedding and the null modality of CFG. Labels are replaced by it with
    :meth:`drop` during training and passed explicitly for the unconditional CFG branch.
    """

    def __init__(self, num_labels: int, dim: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"LabelEmbedder: num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.table = nn.Embedding(num_labels + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null_id(self) -> int:
        """The id of the null ("dropped") label."""
        return self.num_labels

    def null_labels(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(B,) long tensor of null ids."""
        return torch.full((batch,), self.null_id, dtype=torch.long, device=device)

    def drop(self, labels: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels with each entry replaced by the null id with probability ``prob``."""
        mask = drop_mask(labels.shape[0], prob, labels.device, generator)
        return torch.where(mask, torch.full_like(labels, self.null_id), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1 or labels.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"LabelEmbedder: labels must be an integer tensor of shape (B,), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        return self.table(labels)


class MetadataEncoder(nn.Module):
    """Seed 003 §2.5.5's metadata encoder: (values d, availability mask r) -> (B, out_dim).

    Inputs follow ``bsynth_hpc.data.metadata.encode_metadata`` (schema order, §2.2.2):
    ``values`` (B, P) float - z-scored continuous values, category indices, three-state binary
    codes (0 missing, 1 no, 2 yes) - and ``mask`` (B, P) with 1 where the field was recorded.

    Features, concatenated and mapped by Linear -> SiLU -> Linear to ``out_dim`` (= e_meta):
      * continuous fields: the normalised value where recorded, 0 where not (used directly);
      * categorical fields: a learned ``field_dim`` embedding of index ``code + 1`` where
        recorded and of the field's "missing" index 0 where not;
      * binary fields: a learned embedding of index ``code`` (1 no, 2 yes) where recorded and
        of the "missing" index 0 where not, so an explicit "no" never looks like "unknown";
      * the availability mask itself (P features).
    A masked-out field contributes nothing that depends on its stored value (NaN included), so
    an all-zero mask is the null metadata condition of CFG. Codes are rounded and clamped to the
    field's range (``encode_metadata`` has validated them upstream).
    """

    def __init__(self, out_dim: int = 64, field_dim: int = 8, hidden_dim: int | None = None,
                 fields: Sequence[FieldSpec] = FIELDS) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.out_dim, self.field_dim = out_dim, field_dim
        kinds = [f.kind for f in self.fields]
        if any(k not in (CONTINUOUS, CATEGORICAL, BINARY) for k in kinds):
            raise ValueError(f"MetadataEncoder: unknown field kind in {sorted(set(kinds))}")
        cont = [j for j, f in enumerate(self.fields) if f.kind == CONTINUOUS]
        disc = [j for j, f in enumerate(self.fields) if f.kind != CONTINUOUS]
        # Table rows per discrete field: row 0 = missing, then one row per recorded code.
        sizes = [f.num_codes + 1 if f.kind == CATEGORICAL else f.num_codes for f in (self.fields[j] for j in disc)]
        shift = [1 if self.fields[j].kind == CATEGORICAL else 0 for j in disc]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.register_buffer("continuous_index", torch.tensor(cont, dtype=torch.long), persistent=False)
        self.register_buffer("discrete_index", torch.tensor(disc, dtype=torch.long), persistent=False)
        self.register_buffer("code_shift", torch.tensor(shift, dtype=torch.long), persistent=False)
        self.register_buffer("code_max", torch.tensor(sizes, dtype=torch.long) - 1, persistent=False)
        self.register_buffer("row_offset", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.embedding = nn.Embedding(sum(sizes), field_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        in_features = len(cont) + len(self.fields) + len(disc) * field_dim
        hidden = hidden_dim or out_dim
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def null_inputs(self, batch: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, mask) of the all-missing metadata (the CFG null condition)."""
        zeros = torch.zeros(batch, self.num_fields, device=device)
        return zeros, zeros.clone()

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.num_fields
        if values.dim() != 2 or values.shape[1] != p or mask.shape != values.shape:
            raise ValueError(f"MetadataEncoder: values and mask must both be (B, {p}), got "
                             f"{tuple(values.shape)} and {tuple(mask.shape)}")
        dtype = self.mlp[0].weight.dtype
        recorded = mask > 0.5
        values = values.float()
        cont = torch.where(recorded[:, self.continuous_index], values[:, self.continuous_index], 0.0)
        codes = torch.nan_to_num(values[:, self.discrete_index]).round().long() + self.code_shift
        codes = torch.where(recorded[:, self.discrete_index], codes.clamp(min=0), 0)
        rows = self.row_offset + torch.minimum(codes, self.code_max)
        emb = self.embedding(rows).flatten(1)
        features = torch.cat([cont.to(dtype), recorded.to(dtype), emb.to(dtype)], dim=1)
        return self.mlp(features)
