"""DiT-3D latent denoiser with real 3D window attention (seed 000 §3.2, §5.2).

Architecture (seed 000 Fig. 2 / §5.2; DiT-3D without voxelisation): the noisy latent
(B, C, X, Y, Z) is cut into patches (default (4, 2, 4): a 4x28x34x28 latent gives 7x17x7
tokens), linearly embedded, fixed 3D sin-cos positional embeddings are added, ``depth`` DiT
blocks with adaLN-Zero conditioning follow, then a final adaLN + linear head predicts the noise
(optionally also the variance, ``learn_sigma``) and the patches are put back together.

Attention. Blocks listed in ``window_blocks`` attend within non-overlapping 3D windows of
``window_size`` tokens through ``bsynth_hpc.ops.window_attention3d`` (the Triton kernel on GPU);
the parameters (qkv, output projection, relative-position bias table) are those of
``bsynth_hpc.nn.WindowAttention3d``. With ``shift_windows`` every second window block uses
Swin's cyclic shift of half a window. A window larger than the token grid on an axis is clipped to
the grid there (and that axis is not shifted), as in Swin. The other blocks attend globally over
all tokens with ``torch.nn.functional.scaled_dot_product_attention`` (flash/efficient kernels on
GPU). Unlike the public DiT-3D code, whose "window" attention attends globally, window blocks
really restrict patch-to-patch attention to the window.

Class conditioning (``class_conditioning``):
  * ``"token"`` (seed 000 §5.2): learnable healthy/TLE embeddings plus a learnable "class
    dropout" (null) embedding; the embedding of each sample's label is *appended to the patch
    tokens* as one extra token that goes through every block (LayerNorm, adaLN modulation,
    attention, MLP) like the patch tokens. The appended token has no place on the 3D grid, so
    window attention cannot contain it. It is attended as follows:
      - global blocks: one softmax over all patch tokens and the class token (plain DiT
        attention over the appended sequence);
      - window blocks: the class token's query attends globally (all patch tokens and itself),
        and every patch token adds a cross-attention over the appended token(s) to its window
        attention output, with the block's own q/k/v/output projections. With one appended token
        that cross-attention's softmax has a single key, so it adds the class token's value
        projection: every window sees the class token, and windows stay real windows between
        patch tokens (no patch token ever reads a patch outside its window in that block).
    This keeps 000's "embeddings appended to the patch tokens" (a token that is updated by
    attention, reads the whole image and is read everywhere) while the window kernel stays exact.
    Within one block, class information reaches patch tokens only through the class token's
    input state, so a single window block's receptive field is exactly the window.
  * ``"adaln"`` (DiT's default): the class embedding is added to the timestep embedding that
    drives the adaLN modulation.

CFG: :meth:`DiT3d.drop_labels` replaces labels by the null id with ``class_dropout_prob`` (the
training stage calls it with its seeded generator; ``forward`` itself is deterministic), and
:meth:`DiT3d.forward_with_cfg` runs the conditional and null branches in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import ConfigError
from ..nn import WindowAttention3d
from .attention import SelfAttention, merge_heads, qkv_heads
from .checkpointing import CheckpointedBlock, set_activation_checkpointing
from .conditioning import (
    ConditionGroup,
    Conditioning,
    LabelEmbedder,
    TimestepEmbedder,
    batch_timesteps,
    classifier_free_guidance,
)
from .embeddings3d import Int3, PatchEmbed3d, as_int3, sincos_pos_embed_3d, token_grid, unpatchify
from .presets import preset_config

__all__ = [
    "DiT3dConfig",
    "DiT3d",
    "DiTBlock3d",
    "WindowedAttention",
    "DIT3D_PRESETS",
    "dit3d_config",
    "build_dit3d",
    "dit3d_s",
    "dit3d_b",
    "dit3d_tle",
]


@dataclass
class DiT3dConfig:
    """DiT-3D hyper-parameters; defaults are seed 000 §5.2's TLE model ("dit3d-tle").

    ``input_size`` is the latent grid (X, Y, Z) and must be divisible by ``patch_size``;
    ``window_size`` is in token units; ``window_blocks`` lists the indices of the blocks that use
    window attention (the others attend globally); ``class_conditioning`` is "token" (appended
    class token, seed 000) or "adaln" (class embedding added to the timestep embedding);
    ``class_dropout_prob`` is the CFG label-dropout rate used by :meth:`DiT3d.drop_labels`.
    """

    input_size: tuple[int, int, int] = (28, 34, 28)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (4, 2, 4)
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 2
    class_conditioning: Literal["token", "adaln"] = "token"
    class_dropout_prob: float = 0.1
    window_size: tuple[int, int, int] = (4, 4, 4)
    window_blocks: tuple[int, ...] = (0, 3, 6, 9)
    shift_windows: bool = True
    rel_pos_bias: bool = True
    qkv_bias: bool = True
    learn_sigma: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "window_size", "window_blocks"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, tuple(value))

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def token_grid(self) -> Int3:
        return token_grid(self.input_size, self.patch_size)

    def validate(self, where: str = "dit3d") -> None:
        """ConfigError naming the field and the fix for inconsistent settings."""
        try:
            as_int3(self.input_size, f"{where}.input_size")
            as_int3(self.patch_size, f"{where}.patch_size")
            as_int3(self.window_size, f"{where}.window_size")
            token_grid(self.input_size, self.patch_size)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        for name in ("in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{where}.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                              f"({self.num_heads})")
        if self.hidden_size % 6:
            raise ConfigError(f"{where}.hidden_size ({self.hidden_size}) must be divisible by 6 (3D sin-cos "
                              "positional embeddings split it over x, y, z)")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"{where}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.class_conditioning not in ("token", "adaln"):
            raise ConfigError(f"{where}.class_conditioning must be 'token' or 'adaln', got "
                              f"{self.class_conditioning!r}")
        if not 0.0 <= self.class_dropout_prob <= 1.0:
            raise ConfigError(f"{where}.class_dropout_prob must lie in [0, 1], got {self.class_dropout_prob}")
        bad = [i for i in self.window_blocks if not isinstance(i, int) or not 0 <= i < self.depth]
        if bad or len(set(self.window_blocks)) != len(self.window_blocks):
            raise ConfigError(f"{where}.window_blocks must be distinct block indices in 0..{self.depth - 1}, got "
                              f"{list(self.window_blocks)}")


# ============================================================================ attention
class WindowedAttention(nn.Module):
    """3D (shifted-)window attention between patch tokens, global attention for appended tokens.

    Input (B, L + K, C): L = gx*gy*gz patch tokens (x-major) followed by K appended tokens.
    Patch tokens: ``ops.window_attention3d`` within windows, plus a cross-attention over the K
    appended tokens (module docstring). Appended tokens: attention over all L + K tokens. The
    qkv/output projections and the relative-position bias table are the ones of the wrapped
    ``bsynth_hpc.nn.WindowAttention3d`` (``self.inner``); with K = 0 this module computes exactly
    ``inner`` on the token grid.
    """

    def __init__(self, dim: int, num_heads: int, grid: Sequence[int], window_size: Sequence[int],
                 shift_size: Sequence[int] = (0, 0, 0), qkv_bias: bool = True, rel_pos_bias: bool = True) -> None:
        super().__init__()
        self.grid = as_int3(tuple(grid), "grid")
        # Swin: a window no smaller than the grid covers the axis whole and is not shifted there.
        window = tuple(min(w, g) for w, g in zip(window_size, self.grid))
        shift = tuple(0 if w >= g else s for w, s, g in zip(window_size, shift_size, self.grid))
        self.inner = WindowAttention3d(dim, num_heads, window, shift, qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias)

    @property
    def window_size(self) -> Int3:
        return self.inner.window_size

    @property
    def shift_size(self) -> Int3:
        return self.inner.shift_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.inner
        num_patches = math.prod(self.grid)
        extra = x.shape[1] - num_patches
        if extra < 0:
            raise ValueError(f"WindowedAttention: {x.shape[1]} tokens for a {self.grid} token grid")
        q, k, v = qkv_heads(inner.qkv, x, inner.num_heads)

        def on_grid(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, :num_patches].unflatten(2, self.grid)   # (B, H, gx, gy, gz, hd) view

        o = ops.window_attention3d(on_grid(q), on_grid(k), on_grid(v), inner.window_size, inner.shift_size,
                                   inner.relative_position_bias(), inner.scale).flatten(2, 4)
        if extra:
            qp, qe = q[:, :, :num_patches], q[:, :, num_patches:]
            ke, ve = k[:, :, num_patches:], v[:, :, num_patches:]
            o = o + F.scaled_dot_product_attention(qp, ke, ve, scale=inner.scale).to(o.dtype)
            oe = F.scaled_dot_product_attention(qe, k, v, scale=inner.scale).to(o.dtype)
            o = torch.cat([o, oe], dim=2)
        return inner.proj(merge_heads(o))


# ============================================================================ blocks
def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DiTBlock3d(CheckpointedBlock):
    """DiT block with adaLN-Zero: x + g1 * attn(LN(x)(1+s1)+b1); x + g2 * mlp(LN(x)(1+s2)+b2).

    (s, b, g) come from SiLU -> Linear of the conditioning vector c (B, C); the Linear is
    zero-initialised by :class:`DiT3d`, so the block starts as the identity.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def _forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class _FinalLayer(nn.Module):
    """adaLN (shift, scale) on LayerNorm, then Linear to the patch values (all zero-initialised)."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


# ============================================================================ model
class DiT3d(nn.Module):
    """DiT-3D noise predictor ``eps(x_t, t, y)`` for latents (B, in_channels, *input_size).

    ``forward(x, t, y=None)``: ``t`` (B,) timesteps (numbers, possibly fractional), ``y`` (B,)
    class ids in 0..num_classes-1 or ``null_id`` (None: all null, i.e. unconditional), or the
    :data:`~bsynth_hpc.models.conditioning.Conditioning` ``{"class": y}`` (the shared interface:
    :meth:`condition_groups`, :meth:`null_condition`). Returns
    (B, out_channels, *input_size); with ``learn_sigma`` the second half of the channels is the
    variance output. See the module docstring for the attention and conditioning design.
    """

    def __init__(self, config: DiT3dConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = replace(config or DiT3dConfig(), **overrides)
        config.validate()
        self.config = config
        dim, grid = config.hidden_size, config.token_grid
        self.grid = grid
        self.x_embedder = PatchEmbed3d(config.in_channels, dim, config.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(dim, grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(config.num_classes, dim)
        self.blocks = nn.ModuleList(
            DiTBlock3d(dim, self._attention(i), config.mlp_ratio) for i in range(config.depth))
        self.final_layer = _FinalLayer(dim, math.prod(config.patch_size) * config.out_channels)
        self._init_weights()
        set_activation_checkpointing(self, config.activation_checkpointing)

    def _attention(self, index: int) -> nn.Module:
        c = self.config
        if index not in c.window_blocks:
            return SelfAttention(c.hidden_size, c.num_heads, c.qkv_bias)
        order = sorted(c.window_blocks).index(index)
        shifted = c.shift_windows and order % 2 == 1
        shift = tuple(w // 2 for w in c.window_size) if shifted else (0, 0, 0)
        return WindowedAttention(c.hidden_size, c.num_heads, self.grid, c.window_size, shift,
                                 qkv_bias=c.qkv_bias, rel_pos_bias=c.rel_pos_bias)

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform block linears, zero adaLN modulation and head
        (adaLN-Zero), N(0, 0.02) embeddings (set by the embedders), Xavier patch embedding."""
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        for mod in [b.adaLN_modulation[-1] for b in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    # ------------------------------------------------------------------ public API
    @property
    def null_id(self) -> int:
        """The class id of the null ("class dropout") embedding."""
        return self.y_embedder.null_id

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each DiT block's activations in backward (saves memory, costs a forward)."""
        set_activation_checkpointing(self, enabled)

    def drop_labels(self, y: torch.Tensor, prob: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """CFG label dropout for training: each label becomes ``null_id`` with probability ``prob``
        (default ``config.class_dropout_prob``)."""
        return self.y_embedder.drop(y, self.config.class_dropout_prob if prob is None else prob, generator)

    def condition_groups(self) -> tuple[ConditionGroup, ...]:
        """One CFG group: the class id, dropped at ``class_dropout_prob``."""
        return (ConditionGroup("class", ("class",), self.config.class_dropout_prob),)

    def null_condition(self, batch: int, device: torch.device | str) -> Conditioning:
        """``{"class": null ids}``: the unconditional input."""
        return {"class": self.y_embedder.null_labels(batch, device)}

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                y: torch.Tensor | Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        c = self.config
        if isinstance(y, Mapping):
            unknown = sorted(set(y) - {"class"})
            if unknown:
                raise ValueError(f"DiT3d: unknown condition key(s) {unknown}; the only key is 'class'")
            y = y.get("class")
        expected = (c.in_channels, *c.input_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DiT3d: expected latents of shape (B, {', '.join(map(str, expected))}), got "
                             f"{tuple(x.shape)}; set input_size/in_channels in the config to the latent shape")
        b = x.shape[0]
        tokens = self.x_embedder(x) + self.pos_embed
        cond = self.t_embedder(batch_timesteps(t, b, x.device))
        labels = self.y_embedder.null_labels(b, x.device) if y is None else y
        y_emb = self.y_embedder(labels)
        if c.class_conditioning == "token":
            tokens = torch.cat([tokens, y_emb[:, None].to(tokens.dtype)], dim=1)
        else:
            cond = cond + y_emb
        for block in self.blocks:
            tokens = block(tokens, cond)
        out = self.final_layer(tokens[:, : math.prod(self.grid)], cond)
        return unpatchify(out, self.grid, c.patch_size, c.out_channels)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor,
                         scale: float) -> torch.Tensor:
        """Classifier-free guided prediction: eps_null + scale * (eps_y - eps_null), both branches
        in one batch of 2B. With ``learn_sigma`` only the noise channels are guided (the
        variance channels are the conditional branch's), as in DiT."""
        b = x.shape[0]
        t = batch_timesteps(t, b, x.device)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, self.y_embedder.null_labels(b, y.device)]))
        cond, uncond = out.chunk(2)
        n = self.config.in_channels
        guided = classifier_free_guidance(cond[:, :n], uncond[:, :n], scale)
        return torch.cat([guided, cond[:, n:]], dim=1)


# ============================================================================ registry
DIT3D_PRESETS: dict[str, dict[str, Any]] = {
    "dit3d-s": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "dit3d-b": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    # seed 000 §5.2: depth 12, hidden 384, patch (4, 2, 4), 6 heads, healthy/TLE class tokens
    # appended to the patch tokens, on the VAE-GAN's 4x28x34x28 latents.
    "dit3d-tle": {"hidden_size": 384, "depth": 12, "num_heads": 6, "patch_size": (4, 2, 4),
                  "input_size": (28, 34, 28), "in_channels": 4, "num_classes": 2, "class_conditioning": "token"},
}
"""Model sizes (DiT's S/B widths) and seed 000's configuration; any field can be overridden."""


def dit3d_config(preset: str = "dit3d-tle", **overrides: Any) -> DiT3dConfig:
    """The config of a preset with ``overrides`` applied (ConfigError for unknown names/fields)."""
    return preset_config(DiT3dConfig, DIT3D_PRESETS, preset, overrides, "DiT-3D")


def build_dit3d(preset: str = "dit3d-tle", **overrides: Any) -> DiT3d:
    """A :class:`DiT3d` from a preset name and field overrides (the export/registry factory)."""
    return DiT3d(dit3d_config(preset, **overrides))


def dit3d_s(**overrides: Any) -> DiT3d:
    """DiT-3D-S: hidden 384, 6 heads, depth 12."""
    return build_dit3d("dit3d-s", **overrides)


def dit3d_b(**overrides: Any) -> DiT3d:
    """DiT-3D-B: hidden 768, 12 heads, depth 12."""
    return build_dit3d("dit3d-b", **overrides)


def dit3d_tle(**overrides: Any) -> DiT3d:
    """Seed 000 §5.2's healthy/TLE class-token model."""
    return build_dit3d("dit3d-tle", **overrides)
