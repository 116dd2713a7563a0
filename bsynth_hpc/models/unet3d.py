"""Conditional U-Net latent denoiser of WFDM (seed 003 §2.5.4-2.5.5), 3D or 2D (``spatial_dims``).

``eps = UNet3dConditional(z_t, t, cond)`` predicts the noise of a scaled latent z_t (§2.5.4),
conditioned on c = (target modality tau, metadata values d, availability mask r) (§2.4 eq. 3).

Embedding path (§2.5.5):
  e_tm  = MLP(sinusoid(t)) + E_mod[tau]                         timestep + target-modality embedding
  e_meta = MetadataEncoder(d, r)                                 width ``metadata_dim`` (e_meta)
  emb   = Linear(2E -> E)(concat(e_tm, Linear(e_meta -> E)(e_meta)))
E is the U-Net embedding width (``embed_dim``, default 4 x base channels). The null modality id
(``num_modalities``) and the all-missing metadata mask are the CFG null conditions.
With ``num_classes`` > 0 a class embedding E_cls[y] (condition key ``"class"``, null id
``num_classes``, CFG dropout ``class_dropout_prob``) is added to e_tm as well: seed 004's
normal/tumour conditional U-Net. The WFDM inputs can be switched off (``modality_conditioning`` /
``metadata_conditioning`` False), leaving the timestep (and class) embedding: seed 001's
unconditional latent U-Net (preset ``slice001_unet``) and 004's (``slice004_unet``).

``spatial_dims`` 3 (the default: (B, C, X, Y, Z) latents) or 2 ((B, C, H, W) slice latents, the
2D recipes of seeds 001/004) picks the convolutions, as MONAI's ``DiffusionModelUNet`` does; the
parameter names do not depend on it. ``UNetConditional``/``UNetConfig`` are the same classes.

Network (ADM / MONAI DiffusionModelUNet layout): a 3x3(x3) input convolution; per resolution level
``num_res_blocks`` residual blocks (optionally each followed by self-attention) and a stride-2
convolution down; a middle res-attention-res block; the mirrored up path whose residual blocks
take the concatenated skip features, with nearest-neighbour upsampling to the skip's exact size
(so odd grids work: down-sampling rounds up, up-sampling restores the original size); finally
GroupNorm-SiLU and a zero-initialised 3x3(x3) output convolution.

Residual block: h = conv1(GN-SiLU(x)); h = conv2(dropout(GN-SiLU(h) modulated)); out = skip(x) + h,
where the second norm is ``bsynth_hpc.ops.group_norm_silu`` with the per-sample (scale, shift) =
Linear(SiLU(emb)) - the timestep/condition embedding enters every block as adaptive GroupNorm.
conv2 is zero-initialised (ADM), so each block starts as its skip path.
Attention block: x + proj(MHSA(GroupNorm(x))) over the flattened low-resolution grid, through
torch SDPA; proj zero-initialised.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..vocabulary import NUM_FIELDS
from ..errors import ConfigError
from ..nn import GroupNormSiLU
from .attention import SpatialSelfAttention
from .checkpointing import CheckpointedBlock, set_activation_checkpointing
from .conditioning import (
    ConditionGroup,
    LabelEmbedder,
    MetadataEncoder,
    TimestepEmbedder,
    batch_timesteps,
    classifier_free_guidance,
    drop_groups,
    drop_mask,
)
from .presets import preset_config
from .spatial import check_spatial_dims, conv_nd

__all__ = [
    "UNet3dConfig",
    "UNet3dConditional",
    "UNetConfig",
    "UNetConditional",
    "ResBlock3d",
    "COND_KEYS",
    "UNET3D_PRESETS",
    "unet3d_config",
    "build_unet3d",
    "unet3d_wfdm",
    "slice001_unet",
    "slice004_unet",
]

COND_KEYS = ("modality", "metadata", "metadata_mask", "class")
"""Keys of the condition dict: modality (B,) long, metadata (B, 25) float, metadata_mask (B, 25), class (B,) long."""


@dataclass
class UNet3dConfig:
    """Conditional 3D U-Net hyper-parameters (seed 003 §2.5.4-2.5.5).

    Level i has ``base_channels * channel_mult[i]`` channels and runs at 1/2**i of the input grid;
    ``attention_levels`` lists the levels (0 = full resolution) whose residual blocks are followed
    by global self-attention (keep it to low resolutions: the cost is quadratic in voxels);
    ``attention_heads`` heads there and in the middle block (``mid_attention``). ``embed_dim``
    (None: 4 x base_channels) is the block embedding width E; ``metadata_dim`` is e_meta and
    ``metadata_field_dim`` the width of each discrete field's learned embedding.
    ``modality_dropout_prob`` / ``metadata_dropout_prob`` / ``class_dropout_prob`` are the CFG
    condition-dropout rates of :meth:`UNet3dConditional.drop_conditions`; ``num_classes`` > 0 adds the
    class embedding (0: none, the default, so the WFDM network is unchanged).
    """

    in_channels: int = 4
    out_channels: int | None = None
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2,)
    mid_attention: bool = True
    attention_heads: int = 8
    norm_groups: int = 32
    dropout: float = 0.0
    embed_dim: int | None = None
    num_modalities: int = 4
    modality_conditioning: bool = True
    metadata_conditioning: bool = True
    metadata_dim: int = 64
    metadata_field_dim: int = 8
    modality_dropout_prob: float = 0.1
    metadata_dropout_prob: float = 0.1
    activation_checkpointing: bool = False
    spatial_dims: int = 3
    """3: volume latents (B, C, X, Y, Z); 2: slice latents (B, C, H, W)."""
    num_classes: int = 0
    """Class labels of the ``"class"`` condition (004: normal, tumour); 0 = no class embedding."""
    class_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_levels"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, tuple(value))

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def embedding_width(self) -> int:
        return 4 * self.base_channels if self.embed_dim is None else self.embed_dim

    def level_channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def validate(self, where: str = "unet3d") -> None:
        """ConfigError naming the field and the fix for inconsistent settings."""
        check_spatial_dims(self.spatial_dims, where)
        for name in ("in_channels", "base_channels", "num_res_blocks", "attention_heads", "norm_groups",
                     "num_modalities", "metadata_dim", "metadata_field_dim", "embedding_width", "output_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(f"{where}.channel_mult must be a non-empty list of positive ints, got "
                              f"{list(self.channel_mult)}")
        levels = len(self.channel_mult)
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ConfigError(f"{where}.attention_levels must be level indices in 0..{levels - 1}, got "
                              f"{list(self.attention_levels)}")
        if self.num_classes < 0:
            raise ConfigError(f"{where}.num_classes must be >= 0 (0 = no class embedding), got {self.num_classes}")
        for name in ("dropout", "modality_dropout_prob", "metadata_dropout_prob", "class_dropout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}.{name} must lie in [0, 1], got {getattr(self, name)}")
        chans = self.level_channels()
        # every GroupNorm input is a level width or a sum of two (skip concatenations)
        bad = sorted(c for c in set(chans) if c % self.norm_groups)
        if bad:
            raise ConfigError(f"{where}.norm_groups={self.norm_groups} must divide every level width "
                              f"{chans} (base_channels x channel_mult); it does not divide {bad}")
        attn_chans = {chans[a] for a in self.attention_levels} | ({chans[-1]} if self.mid_attention else set())
        bad = sorted(c for c in attn_chans if c % self.attention_heads)
        if bad:
            raise ConfigError(f"{where}.attention_heads={self.attention_heads} must divide the attention widths "
                              f"{sorted(attn_chans)}; it does not divide {bad}")


# ============================================================================ blocks
class ResBlock3d(CheckpointedBlock):
    """Residual block with the embedding injected as adaptive GroupNorm scale/shift (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int, dropout: float = 0.0,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.norm1 = GroupNormSiLU(groups, in_channels)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_channels))
        self.norm2 = GroupNormSiLU(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        scale, shift = self.emb(emb).chunk(2, dim=1)
        h = self.conv2(self.dropout(self.norm2(h, scale.to(h.dtype), shift.to(h.dtype))))
        return self.skip(x) + h


def _attention(channels: int, heads: int, groups: int) -> SpatialSelfAttention:
    """x + MHSA(GroupNorm(x)) over all positions of a (low-resolution) grid; output projection zero-initialised."""
    return SpatialSelfAttention(channels, heads, groups, eps=1e-5, zero_init=True)


class _Stage(nn.Module):
    """One residual block, optionally followed by attention."""

    def __init__(self, res: ResBlock3d, attn: SpatialSelfAttention | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class _Upsample(nn.Module):
    """Nearest-neighbour resize to the skip's grid, then a 3x3(x3) convolution."""

    def __init__(self, channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


# ============================================================================ model
class UNet3dConditional(nn.Module):
    """Modality- and metadata-conditioned U-Net noise predictor, 3D or 2D (seed 003 §2.5.4-2.5.5).

    ``forward(x, t, cond=None)``: x (B, in_channels, X, Y[, Z]) (any grid size), t (B,) timesteps,
    ``cond`` a dict with keys ``modality`` (B,) long in 0..num_modalities-1 or the null id,
    ``metadata`` (B, 25) float and ``metadata_mask`` (B, 25) (``encode_metadata``'s values and
    mask). A missing key means its null condition (unconditional); a condition the model was
    built without is an error. Returns (B, out_channels, *x's grid).
    """

    def __init__(self, config: UNet3dConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = replace(config or UNet3dConfig(), **overrides)
        config.validate()
        self.config = config
        c, emb_dim, groups, sd = config, config.embedding_width, config.norm_groups, config.spatial_dims
        conv = conv_nd(sd)
        chans = c.level_channels()

        self.time_embed = TimestepEmbedder(emb_dim)
        self.modality_embed = LabelEmbedder(c.num_modalities, emb_dim) if c.modality_conditioning else None
        if c.metadata_conditioning:
            self.metadata_encoder = MetadataEncoder(c.metadata_dim, c.metadata_field_dim)
            self.metadata_proj = nn.Linear(c.metadata_dim, emb_dim)
            self.embed_fuse = nn.Linear(2 * emb_dim, emb_dim)
        if c.num_classes > 0:
            self.class_embed = LabelEmbedder(c.num_classes, emb_dim)

        def stage(cin: int, cout: int, attention: bool) -> _Stage:
            attn = _attention(cout, c.attention_heads, groups) if attention else None
            return _Stage(ResBlock3d(cin, cout, emb_dim, groups, c.dropout, sd), attn)

        ch = chans[0]
        self.conv_in = conv(c.in_channels, ch, 3, padding=1)
        skips = [ch]
        self.down_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, width in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(stage(ch, width, level in c.attention_levels))
                ch = width
                skips.append(ch)
            self.down_stages.append(blocks)
            last = level == len(chans) - 1
            self.downsamplers.append(nn.Identity() if last else conv(ch, ch, 3, stride=2, padding=1))
            if not last:
                skips.append(ch)
        self.mid_res1 = ResBlock3d(ch, ch, emb_dim, groups, c.dropout, sd)
        self.mid_attn = _attention(ch, c.attention_heads, groups) if c.mid_attention else None
        self.mid_res2 = ResBlock3d(ch, ch, emb_dim, groups, c.dropout, sd)
        self.up_stages = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(chans))):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(stage(ch + skips.pop(), chans[level], level in c.attention_levels))
                ch = chans[level]
            self.up_stages.append(blocks)
            self.upsamplers.append(_Upsample(ch, sd) if level > 0 else nn.Identity())
        self.out_norm = GroupNormSiLU(groups, ch)
        self.conv_out = conv(ch, c.output_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        set_activation_checkpointing(self, c.activation_checkpointing)

    # ------------------------------------------------------------------ conditions
    @property
    def null_modality(self) -> int:
        """The null modality id (CFG's unconditional modality)."""
        return self.config.num_modalities

    @property
    def null_class(self) -> int:
        """The null class id (CFG's unconditional class; only with ``num_classes`` > 0)."""
        return self.config.num_classes

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute residual/attention block activations in backward (saves memory, costs a forward)."""
        set_activation_checkpointing(self, enabled)

    def null_condition(self, batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The unconditional condition of the enabled inputs: null modality, all-missing metadata."""
        null: dict[str, torch.Tensor] = {}
        if self.config.modality_conditioning:
            null["modality"] = torch.full((batch,), self.null_modality, dtype=torch.long, device=device)
        if self.config.metadata_conditioning:
            null["metadata"] = torch.zeros(batch, NUM_FIELDS, device=device)
            null["metadata_mask"] = torch.zeros(batch, NUM_FIELDS, device=device)
        if self.config.num_classes > 0:
            null["class"] = torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        return null

    def _complete(self, cond: Mapping[str, torch.Tensor] | None, batch: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
        """Validated condition dict with the null condition filled in for missing keys."""
        cond = dict(cond or {})
        unknown = sorted(set(cond) - set(COND_KEYS))
        if unknown:
            raise ValueError(f"UNet3dConditional: unknown condition key(s) {unknown}; valid keys: "
                             f"{', '.join(COND_KEYS)}")
        if ("metadata" in cond) != ("metadata_mask" in cond):
            raise ValueError("UNet3dConditional: 'metadata' and 'metadata_mask' must be given together (a missing "
                             "field has mask 0; pass an all-zero mask for unknown metadata)")
        if "modality" in cond and not self.config.modality_conditioning:
            raise ValueError("UNet3dConditional: got a 'modality' condition but the model was built with "
                             "modality_conditioning=False")
        if "metadata" in cond and not self.config.metadata_conditioning:
            raise ValueError("UNet3dConditional: got 'metadata' but the model was built with "
                             "metadata_conditioning=False")
        if "class" in cond and self.config.num_classes == 0:
            raise ValueError("UNet3dConditional: got a 'class' condition but the model was built with "
                             "num_classes=0")
        full = self.null_condition(batch, device)
        full.update(cond)
        for key, value in full.items():
            if value.shape[0] != batch:
                raise ValueError(f"UNet3dConditional: condition {key!r} has batch size {value.shape[0]}, "
                                 f"expected {batch}")
        return full

    def drop_conditions(self, cond: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                        modality_prob: float | None = None,
                        metadata_prob: float | None = None,
                        class_prob: float | None = None) -> dict[str, torch.Tensor]:
        """CFG condition dropout for training (independent per sample and condition): the modality
        becomes the null id with ``modality_prob``, the metadata becomes all-missing (values and
        mask zeroed) with ``metadata_prob`` and the class the null class with ``class_prob``
        (defaults: the config's dropout rates)."""
        rates = {"modality": modality_prob, "metadata": metadata_prob, "class": class_prob}
        groups = [g for g in self.condition_groups() if all(k in cond for k in g.keys)]
        if not groups:
            return dict(cond)
        first = cond[groups[0].keys[0]]
        drops = {g.name: drop_mask(first.shape[0], g.dropout_prob if rates[g.name] is None else rates[g.name],
                                   first.device, generator) for g in groups}
        return drop_groups(cond, self.null_condition(first.shape[0], first.device), groups, drops)

    def condition_groups(self) -> tuple[ConditionGroup, ...]:
        """The CFG groups of the enabled inputs (``models.conditioning``): modality, metadata + mask."""
        c = self.config
        groups = []
        if c.modality_conditioning:
            groups.append(ConditionGroup("modality", ("modality",), c.modality_dropout_prob))
        if c.metadata_conditioning:
            groups.append(ConditionGroup("metadata", ("metadata", "metadata_mask"), c.metadata_dropout_prob))
        if c.num_classes > 0:
            groups.append(ConditionGroup("class", ("class",), c.class_dropout_prob))
        return tuple(groups)

    def embed(self, t: torch.Tensor | float, cond: Mapping[str, torch.Tensor] | None, batch: int,
              device: torch.device) -> torch.Tensor:
        """The block embedding (B, E) of timesteps and conditions (module docstring, §2.5.5)."""
        full = self._complete(cond, batch, device)
        emb = self.time_embed(batch_timesteps(t, batch, device))
        if self.modality_embed is not None:
            emb = emb + self.modality_embed(full["modality"])
        if self.config.num_classes > 0:
            emb = emb + self.class_embed(full["class"])
        if self.config.metadata_conditioning:
            meta = self.metadata_proj(self.metadata_encoder(full["metadata"], full["metadata_mask"]))
            emb = self.embed_fuse(torch.cat([emb, meta], dim=1))
        return emb

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                cond: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        sd = self.config.spatial_dims
        if x.dim() != 2 + sd or x.shape[1] != self.config.in_channels:
            layout = ", ".join(("X", "Y", "Z")[:sd])
            raise ValueError(f"UNet3dConditional: expected (B, {self.config.in_channels}, {layout}) latents "
                             f"(spatial_dims={sd}), got {tuple(x.shape)}")
        emb = self.embed(t, cond, x.shape[0], x.device)
        h = self.conv_in(x)
        hs = [h]
        for blocks, down in zip(self.down_stages, self.downsamplers):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid_res1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid_res2(h, emb)
        for blocks, up in zip(self.up_stages, self.upsamplers):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(h, hs[-1].shape[2:])
        return self.conv_out(self.out_norm(h))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor | float, cond: Mapping[str, torch.Tensor],
                         scale: float) -> torch.Tensor:
        """Classifier-free guided prediction eps_null + scale * (eps_cond - eps_null), one batch of 2B."""
        b = x.shape[0]
        full = self._complete(cond, b, x.device)
        null = self.null_condition(b, x.device)
        both = {k: torch.cat([full[k], null[k].to(full[k].dtype)]) for k in null}
        t = batch_timesteps(t, b, x.device)
        cond_out, uncond_out = self(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return classifier_free_guidance(cond_out, uncond_out, scale)


UNetConfig = UNet3dConfig
UNetConditional = UNet3dConditional
"""Dimension-neutral names of the same classes (``spatial_dims`` in the config)."""


# ============================================================================ registry
UNET3D_PRESETS: dict[str, dict[str, Any]] = {
    # WFDM stage B on 4-channel WF-VAE latents (f = 4: 48x56x40 for 192x224x160 volumes).
    "unet3d-wfdm": {"in_channels": 4, "base_channels": 64, "channel_mult": (1, 2, 4), "num_res_blocks": 2,
                    "attention_levels": (2,), "attention_heads": 8, "num_modalities": 4},
    # 001 §III.B.2 on 8x16^2 VAE latents: sinusoidal timestep embedding -> 512, levels [64, 128, 256] with two
    # residual blocks each (time-conditional adaptive GroupNorm), self-attention at 8^2 (level 1), dropout 0.1,
    # unconditional.
    "slice001_unet": {"spatial_dims": 2, "in_channels": 8, "base_channels": 64, "channel_mult": (1, 2, 4),
                      "num_res_blocks": 2, "attention_levels": (1,), "mid_attention": False, "attention_heads": 4,
                      "dropout": 0.1, "embed_dim": 512, "modality_conditioning": False,
                      "metadata_conditioning": False},
    # 004 §V.C-D on 8x32^2 latents: class-conditional (normal, tumour) with label dropout 0.1 for CFG, timestep
    # embeddings in every residual block, self-attention at the bottleneck only. Widths are not given in 004.
    "slice004_unet": {"spatial_dims": 2, "in_channels": 8, "base_channels": 64, "channel_mult": (1, 2, 4),
                      "num_res_blocks": 2, "attention_levels": (), "mid_attention": True, "attention_heads": 4,
                      "modality_conditioning": False, "metadata_conditioning": False, "num_classes": 2,
                      "class_dropout_prob": 0.1},
}
"""Named U-Net configurations; any field can be overridden."""


def unet3d_config(preset: str = "unet3d-wfdm", **overrides: Any) -> UNet3dConfig:
    """The config of a preset with ``overrides`` applied (ConfigError for unknown names/fields)."""
    return preset_config(UNet3dConfig, UNET3D_PRESETS, preset, overrides, "U-Net")


def build_unet3d(preset: str = "unet3d-wfdm", **overrides: Any) -> UNet3dConditional:
    """A :class:`UNet3dConditional` from a preset name and field overrides (export/registry factory)."""
    return UNet3dConditional(unet3d_config(preset, **overrides))


def unet3d_wfdm(**overrides: Any) -> UNet3dConditional:
    """Seed 003's WFDM latent denoiser (modality + metadata conditioned)."""
    return build_unet3d("unet3d-wfdm", **overrides)


def slice001_unet(**overrides: Any) -> UNet3dConditional:
    """Seed 001's unconditional 2D latent U-Net (8x16^2 latents)."""
    return build_unet3d("slice001_unet", **overrides)


def slice004_unet(**overrides: Any) -> UNet3dConditional:
    """Seed 004's class-conditional 2D latent U-Net (8x32^2 latents, condition key "class")."""
    return build_unet3d("slice004_unet", **overrides)
