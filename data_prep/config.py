"""`PrepConfig`: the options of one `bsynth prep` run, checked before any work.

The ``bsynth prep`` flags map onto the fields one to one (``FLAGS``); errors name the flag, so
a message reads the same from the command line and from Python. Checks that need the source
(2D vs 3D shape, the mask column) happen when the run resolves its parameters
(:func:`bsynth_hpc.prep.pipeline.resolve_params`); the per-volume memory limit is read at run time
because it falls back to ``$BSYNTH_MAX_VOLUME_MB``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from bsynth_hpc.data.finalize import STRATIFY_CHOICES
from bsynth_hpc.data.splits import check_fractions
from bsynth_hpc.errors import ConfigError

from .cluster import check_cluster_args

__all__ = ["PrepConfig", "FLAGS"]

FLAGS: dict[str, str] = {
    "shape": "--shape", "spacing": "--spacing", "workers": "--workers", "normalize": "--normalize",
    "clip_percentiles": "--clip-percentiles", "mask": "--mask/--mask-column",
    "allow_outside_root": "--allow-outside-root", "cluster": "--cluster", "cluster_options": "--cluster-config",
    "chunks": "--chunks", "compressor": "(Python only)", "dtype": "--dtype", "splits": "--splits", "seed": "--seed",
    "progress": "--quiet", "stratify": "--stratify", "max_volume_mb": "--max-volume-mb",
}
"""The `bsynth prep` flag of each field (named in error messages)."""


def _tuple(value: Sequence[Any] | None, kind: Callable[[Any], Any]) -> tuple[Any, ...] | None:
    return None if value is None else tuple(kind(v) for v in value)


def _flagged(default: str, check: Callable[..., Any], *args: Any) -> None:
    """Run ``check(*args)``; a ConfigError is raised again with the flag of the field its message starts
    with (else of ``default``) in front, unless it already names a flag."""
    try:
        check(*args)
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith("--"):
            raise
        name = next((n for n in sorted(FLAGS, key=len, reverse=True) if msg.startswith(n)), default)
        raise ConfigError(f"{FLAGS[name]}: {msg}") from None


@dataclass
class PrepConfig:
    """How `run_prep` preprocesses and stores (defaults: the `bsynth prep` defaults).

    shape/spacing default to 192x224x160 at 1 mm for volumes and 256x256 for slices; chunks,
    compressor and dtype apply when the store is created (an existing store keeps its own).
    ``mask``: False none, True/"foreground" a foreground threshold, any other string the manifest
    column of brain-mask paths. ``stratify`` (None = stable hash split, or "dataset" | "modalities"
    | "label") is passed to :func:`bsynth_hpc.data.finalize.finalize_store`. ``max_volume_mb``
    bounds the memory one input may need (None: ``$BSYNTH_MAX_VOLUME_MB`` or 512 MiB); larger
    inputs are reported as failed without being read.
    """

    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    workers: int = 2
    normalize: str = "minmax"
    clip_percentiles: tuple[float, ...] = (0.5, 99.5)
    mask: bool | str = False
    allow_outside_root: bool = False
    cluster: str = "local"
    cluster_options: Mapping[str, Any] | None = None
    chunks: tuple[int, ...] | None = None
    compressor: Mapping[str, Any] | None = None
    dtype: str = "float16"
    splits: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    progress: bool = True
    stratify: str | None = None
    max_volume_mb: float | None = None

    def __post_init__(self) -> None:
        self.shape = _tuple(self.shape, int)
        self.spacing = _tuple(self.spacing, float)
        self.chunks = _tuple(self.chunks, int) if self.chunks else None
        self.clip_percentiles = _tuple(self.clip_percentiles, float) or ()
        self.splits = _tuple(self.splits, float) or ()
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the flag for options that are wrong whatever the source."""
        _flagged("cluster", check_cluster_args, self.cluster, self.workers, self.cluster_options)
        _flagged("splits", check_fractions, self.splits)
        if self.stratify is not None and self.stratify not in STRATIFY_CHOICES:
            raise ConfigError(f"{FLAGS['stratify']}: stratify={self.stratify!r} is not supported: use None or one "
                              f"of {', '.join(STRATIFY_CHOICES)}")
