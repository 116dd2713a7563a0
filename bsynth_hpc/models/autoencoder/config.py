"""`CompressorConfig`: one dataclass describing every Stage-A compressor variant, and the presets.

The compressor family (seed 003 §2.5.1-2.5.2 and §3.1, seed 000 §3.1/§5.1) is one network whose
variants differ only by configuration:

``kind="wavelet_fusion"``  WF-VAE / WF-SA-VAE (003 §2.5.2): the stage-1 Haar DWT of the volume is
                           the encoder input (projection Pi_1), the stage-2 DWT of the selected
                           stage-1 subbands S is projected (Pi_2) and fused into the 1/4 encoder
                           stage; the decoder predicts both coefficient stacks and inverts them.
                           The DWT counts as one x2 downsampling, so f = 4 leaves one learned one.
``kind="wavelet"``         Wavelet VAE (003 §3.1): a fixed log2(f)-level DWT (all subbands at every
                           level: 64 channels for f = 4 and one input channel) and a light learned
                           bottleneck at that resolution; no learned spatial downsampling.
``kind="conv"``            plain VAE-GAN (003 §3.1 baseline; 000 §3.1 with 000's sizes): conv
                           encoder/decoder, log2(f) learned downsamplings, no wavelets.

Levels. The trunk runs at ``num_levels = log2(f) - dwt_levels + 1`` resolutions, where
``dwt_levels`` is 0 (conv), 1 (wavelet_fusion) or log2(f) (wavelet); level ``i`` has
``base_channels * channel_mult[i]`` channels and ``num_res_blocks`` ResNet blocks, with a learned
x2 downsampling between levels. ``attention`` adds a global self-attention block after each
ResNet block of the deepest level (WF-SA-VAE).

Dimensions. ``spatial_dims`` 3 (volumes, the default) or 2 (slices: the same trunk with 2D
convolutions, e.g. 1x128^2 -> 8x16^2 with f = 8 for seeds 001/004). The Haar DWT is 3D only (the ops
facade has no 2D kernel), so the wavelet kinds refuse ``spatial_dims=2``: use ``kind="conv"``.

Slice presets (2D, conv kind): ``slice001`` is seed 001's VAE (1x128^2 -> 8x16^2: four levels of
widths 32, 64, 128, 256 with two GroupNorm+SiLU ResNet blocks each, stride-2 3x3 downsampling,
self-attention at the 16^2 bottleneck, 4x4 transposed-convolution upsampling, tanh output);
``slice004`` is seed 004's (1x256^2 -> 8x32^2: stride-2 convolutions, GroupNorm(1, C) = layer
norm over (C, H, W), LeakyReLU in the encoder, ReLU in the decoder, transposed convolutions, tanh).
The options they use (``encoder_activation``/``decoder_activation``, ``upsample``,
``output_activation``) default to the 3D networks' choices, which stay as they were.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigError
from ..spatial import check_spatial_dims
from .blocks import ACTIVATIONS, UPSAMPLE_MODES

CompressorKind = Literal["conv", "wavelet_fusion", "wavelet"]
KINDS: tuple[str, ...] = ("conv", "wavelet_fusion", "wavelet")
OUTPUT_ACTIVATIONS: tuple[str | None, ...] = (None, "tanh")


@dataclass
class CompressorConfig:
    """Architecture of a Stage-A compressor (see the module docstring; defaults = WF-VAE of 003)."""

    kind: CompressorKind = "wavelet_fusion"
    in_channels: int = 1
    """Image channels (the output has the same number)."""
    latent_channels: int = 4
    """Latent channels (003 §2.5.1 and 000 §5.1: 4)."""
    downsample_factor: int = 4
    """f, per spatial axis, a power of two (003 §2.5.1: f = 4; 000 §5.1: 112x136x112 -> 28x34x28)."""
    base_channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    """Per-level width multipliers, one per trunk level; None: conv (1, 2, 4, 4, ...),
    wavelet_fusion (2, 4, 4, ...) (its first level already runs at 1/2), wavelet (1,)."""
    num_res_blocks: int = 2
    """ResNet blocks per level (encoder and decoder)."""
    attention: bool = False
    """Global self-attention in the deepest level (WF-SA-VAE, 003 §3.1)."""
    attention_heads: int = 1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    subbands: tuple[int, ...] = (0,)
    """S of 003 §2.5.2: stage-1 subbands transformed a second time, indices s = 4*a_x + 2*a_y + a_z
    (0 = LLL, the default: the low-pass band, i.e. the classic dyadic second level)."""
    encoder_fusion: Literal["concat", "add"] = "concat"
    """How w2 = Pi_2(c2) joins the 1/4 encoder features: concat + 1x1x1 conv, or addition."""
    decoder_fusion: Literal["conv", "add"] = "conv"
    """How IDWT(c2_hat) joins the decoder's stage-1 prediction of S: a learned 1x1x1 conv over both
    (initialised to their average), or addition."""
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    pad_input: bool = False
    """False: spatial sizes must be multiples of f (clear error otherwise). True: replicate-pad the
    input up to the next multiple of f and crop the reconstruction back."""
    checkpointing: bool = False
    """Activation checkpointing of every ResNet/attention block (recompute in backward)."""
    spatial_dims: int = 3
    """3: volumes (B, C, X, Y, Z); 2: slices (B, C, H, W), conv kind only (module docstring)."""
    encoder_activation: str = "silu"
    """Activation after every encoder GroupNorm: "silu" (fused op), "leaky_relu" (0.2) or "relu"."""
    decoder_activation: str = "silu"
    """Activation after every decoder GroupNorm (same choices)."""
    upsample: str = "nearest"
    """Decoder x2 upsampling: "nearest" + 3x3(x3) conv, or "transposed" 4x4(x4) stride-2 conv (001)."""
    output_activation: str | None = None
    """None: linear output; "tanh": outputs in (-1, 1) for data scaled to [-1, 1] (001, 004)."""

    def __post_init__(self) -> None:
        for name in ("channel_mult", "subbands"):  # YAML/JSON give lists
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(int(v) for v in value))

    # ------------------------------------------------------------------ derived sizes
    @property
    def log2_factor(self) -> int:
        return int(round(math.log2(self.downsample_factor)))

    @property
    def dwt_levels(self) -> int:
        """How many x2 downsamplings fixed Haar DWTs provide (the rest is learned)."""
        return {"conv": 0, "wavelet_fusion": 1, "wavelet": self.log2_factor}[self.kind]

    @property
    def num_levels(self) -> int:
        return self.log2_factor - self.dwt_levels + 1

    @property
    def multipliers(self) -> tuple[int, ...]:
        if self.channel_mult is not None:
            return tuple(self.channel_mult)
        n = self.num_levels
        if self.kind == "wavelet":
            return (1,) * n
        start = 1 if self.kind == "wavelet_fusion" else 0
        return tuple(min(2 ** (i + start), 4) for i in range(n))

    @property
    def channels(self) -> tuple[int, ...]:
        """Trunk width of each level, finest first."""
        return tuple(self.base_channels * m for m in self.multipliers)

    # ------------------------------------------------------------------ checks
    def validate(self, where: str = "compressor") -> None:
        """Range and cross-field checks; raises ConfigError naming the field and the fix."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: {msg}")

        need(self.kind in KINDS, f"kind={self.kind!r} is not one of {', '.join(KINDS)}")
        check_spatial_dims(self.spatial_dims, where)
        need(self.spatial_dims == 3 or self.kind == "conv",
             f"kind={self.kind!r} needs spatial_dims=3 (its Haar DWT is 3D only); use kind='conv' for 2D slices")
        f = self.downsample_factor
        need(isinstance(f, int) and f >= 1 and f & (f - 1) == 0,
             f"downsample_factor={f} must be a power of two (1, 2, 4, 8, ...)")
        if self.kind == "wavelet_fusion":
            need(f >= 4, f"downsample_factor={f}: wavelet_fusion needs f >= 4 (the stage-2 wavelet features "
                         "live at 1/4 resolution); use kind='conv' or 'wavelet' for f = 2")
        if self.kind == "wavelet":
            need(f >= 2, "downsample_factor must be >= 2 for kind='wavelet' (at least one DWT level)")
        need(self.in_channels >= 1, f"in_channels={self.in_channels} must be >= 1")
        need(self.latent_channels >= 1, f"latent_channels={self.latent_channels} must be >= 1")
        need(self.base_channels >= 1, f"base_channels={self.base_channels} must be >= 1")
        need(self.num_res_blocks >= 1, f"num_res_blocks={self.num_res_blocks} must be >= 1")
        mult = self.multipliers
        need(len(mult) == self.num_levels and all(m >= 1 for m in mult),
             f"channel_mult={self.channel_mult} must have {self.num_levels} positive entries for kind={self.kind!r} "
             f"and f={f} (one per trunk level)")
        need(self.norm_groups >= 1, f"norm_groups={self.norm_groups} must be >= 1")
        bad = [c for c in self.channels if c % self.norm_groups]
        need(not bad, f"channel widths {self.channels} must be multiples of norm_groups={self.norm_groups} "
                      f"(offending: {bad}); change base_channels, channel_mult or norm_groups")
        need(self.attention_heads >= 1 and self.channels[-1] % self.attention_heads == 0,
             f"attention_heads={self.attention_heads} must divide the deepest width {self.channels[-1]}")
        sel = self.subbands
        need(len(sel) >= 1 and len(set(sel)) == len(sel) and all(0 <= s < 8 for s in sel),
             f"subbands={sel} must be distinct indices in 0..7 (0 = LLL ... 7 = HHH)")
        need(self.encoder_fusion in ("concat", "add"), f"encoder_fusion={self.encoder_fusion!r}: use 'concat' or 'add'")
        need(self.decoder_fusion in ("conv", "add"), f"decoder_fusion={self.decoder_fusion!r}: use 'conv' or 'add'")
        need(self.logvar_min < self.logvar_max,
             f"logvar_min={self.logvar_min} must be below logvar_max={self.logvar_max}")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        for name in ("encoder_activation", "decoder_activation"):
            need(getattr(self, name) in ACTIVATIONS,
                 f"{name}={getattr(self, name)!r} is not one of {', '.join(ACTIVATIONS)}")
        need(self.upsample in UPSAMPLE_MODES, f"upsample={self.upsample!r}: use one of {', '.join(UPSAMPLE_MODES)}")
        need(self.output_activation in OUTPUT_ACTIVATIONS,
             f"output_activation={self.output_activation!r}: use None or 'tanh'")
        need(self.kind == "conv" or self.output_activation is None,
             f"output_activation={self.output_activation!r} needs kind='conv' (the wavelet kinds output "
             "coefficients that their inverse transform turns into the image)")

    def replace(self, **changes: Any) -> "CompressorConfig":
        """A copy with ``changes`` applied (unknown names raise ConfigError listing the fields)."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ConfigError(f"unknown compressor option(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (tuples as lists): the factory kwargs of an export."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # 003 §2.5.1-2.5.2: WF-VAE, f = 4, 4 latent channels; widths 128 @ 1/2 and 256 @ 1/4.
    "wf-vae": dict(kind="wavelet_fusion"),
    # 003 §3.1: WF-VAE + self-attention in the deepest (bottleneck) stage.
    "wf-sa-vae": dict(kind="wavelet_fusion", attention=True),
    # 003 §3.1: fixed two-stage DWT (64 channels) + a light learned bottleneck to 4 channels.
    "wavelet-vae": dict(kind="wavelet", num_res_blocks=1),
    # 003 §3.1 / Table 3: the BrainScape VAE-GAN baseline, 1/4 and 4 channels, widths matching WF-VAE's.
    "vae-gan": dict(kind="conv"),
    # 000 §5.1: three ResNet-style blocks, the first two downsampling (f = 4), GroupNorm, 4 channels.
    # Widths are not given in 000; MAISI's (64, 128, 256), whose VAE-GAN strategy 000 adopts.
    "tle-vaegan": dict(kind="conv", num_res_blocks=1),
    # 001 §III.B.1: 1x128^2 -> 8x16^2, widths [32, 64, 128, 256], two ResNet blocks (GroupNorm + SiLU) per
    # stage, stride-2 3x3 downsampling, bottleneck self-attention, transposed-conv (k4, s2) decoder, tanh.
    "slice001": dict(kind="conv", spatial_dims=2, in_channels=1, latent_channels=8, downsample_factor=8,
                     base_channels=32, channel_mult=(1, 2, 4, 8), num_res_blocks=2, attention=True,
                     upsample="transposed", output_activation="tanh"),
    # 004 §IV.B / Fig. 2: 1x256^2 -> 8x32^2, stride-2 convolutions 32 -> 64 -> 128, layer norm (GroupNorm with
    # one group), LeakyReLU encoder, ReLU decoder, transposed-conv decoder, tanh. One ResNet block per level
    # (004's network has no residual blocks; one keeps the project's trunk with the fewest layers).
    "slice004": dict(kind="conv", spatial_dims=2, in_channels=1, latent_channels=8, downsample_factor=8,
                     base_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=1, norm_groups=1,
                     encoder_activation="leaky_relu", decoder_activation="relu", upsample="transposed",
                     output_activation="tanh"),
}
"""Named compressor presets (the model registry's names)."""


def preset_config(name: str, **overrides: Any) -> CompressorConfig:
    """The validated config of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown compressor preset {name!r}: use one of {', '.join(PRESETS)}")
    cfg = CompressorConfig(**PRESETS[name]).replace(**overrides)
    cfg.validate(f"compressor preset {name!r}")
    return cfg
