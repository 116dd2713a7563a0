"""Pretrained weights from local files: where to find them, checksum checks, and loading.

No network at run time (docs/design.md, "Conventions"): every backbone an evaluation needs
(MedicalNet, InceptionV3, the AlexNet trunk of LPIPS) is read from a local file, given on the
command line or found under ``$BSYNTH_WEIGHTS_DIR``. A missing file is a :class:`WeightsError`
that names the file that was expected and where to put it; there is no silent fallback to a
random network (that needs the explicit ``allow_random`` switch of each loader).

Checksums. The SHA-256 of every file is computed and recorded in the evaluation output. It is
*verified* against, in this order: an explicit digest (``--weights-sha256``), a sidecar file
``<weights>.sha256`` (``sha256sum`` format), the digest pinned for a known release file name
(:data:`KNOWN_SHA256`), or - for torchvision's own file names - the digest prefix that the file
name carries (torchvision's ``<name>-<sha256[:8]>.pth`` convention, checked by torch.hub).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .errors import ConfigError
from .hashing import sha256_file

WEIGHTS_ENV = "BSYNTH_WEIGHTS_DIR"

KNOWN_SHA256: dict[str, str] = {
    # MedicalNet (Chen et al. 2019, "Med3D") releases as mirrored at huggingface.co/TencentMedicalNet;
    # digests as pinned by medmetric (the package seed 003 §2.5.7 evaluates with), medicalnet.yaml.
    "resnet_10.pth": "2824951eaef30e115929b89bec72342380b08d14792bda1449974ac849e497c0",
    "resnet_10_23dataset.pth": "afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605",
    "resnet_18.pth": "38b3a17444c5c18a795355a868e6a2d9ce9318054067f5373d337f55c0f61da3",
    "resnet_18_23dataset.pth": "61224f9317fcce873366deb3703183e92cc47325b726b69691b33536244e10f4",
    "resnet_34.pth": "977a1be79298602fa35980de9c03789229ad36087fb1f4d9bde468aec653c658",
    "resnet_34_23dataset.pth": "3ea7188e396774e4ef95b66e5e90a78273bb33f6e58d3d717bf24f5f1aaeaa28",
    "resnet_50.pth": "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84",
    "resnet_50_23dataset.pth": "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e",
}
"""Full SHA-256 of known release files, by file name."""

TORCHVISION_HASHED_NAMES: frozenset[str] = frozenset({"alexnet-owt-7be5be79.pth", "inception_v3_google-0cc3c7bd.pth",
                                                   "efficientnet_b0_rwightman-7f5810bc.pth"})
"""torchvision release files whose name carries the first hex digits of their SHA-256."""


class WeightsError(ConfigError):
    """Pretrained weights are missing, fail their checksum, or do not fit the network (a configuration
    problem: the run needs other files or settings, a retry cannot help; `bsynth train` exits 2)."""


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of the weights an evaluation used (written into metrics.json)."""

    network: str
    path: str | None
    sha256: str | None
    verified: str
    """"explicit" | "sidecar" | "known-release" | "filename-prefix" | "unverified" | "random-init"."""

    @property
    def random(self) -> bool:
        return self.path is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "random": self.random}


def random_weights_info(network: str) -> WeightsInfo:
    """Provenance record for a randomly initialised network (smoke tests only)."""
    return WeightsInfo(network=network, path=None, sha256=None, verified="random-init")


def weights_dir() -> Path | None:
    """``$BSYNTH_WEIGHTS_DIR`` as a path, or None when unset."""
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def resolve_weights_path(path: str | os.PathLike[str] | None, network: str, default_names: Sequence[str],
                         flag: str, smoke_hint: str = "pass --allow-random-features (outputs then say so)") -> Path:
    """The weights file to use: ``path`` when given, else the first of ``default_names`` found in
    ``$BSYNTH_WEIGHTS_DIR`` (directly or in a sub-folder named after the network).

    ``flag`` and ``smoke_hint`` are the caller's own ways to give weights or run without them (a
    command-line flag, a config key), so the message names options the command really has.

    Raises WeightsError naming the file(s) that were expected and where to put them.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(f"{network} weights {p} do not exist (given by {flag}): check the path")
        return p
    root = weights_dir()
    candidates: list[Path] = []
    if root is not None:
        for name in default_names:
            candidates += [root / name, root / network.lower() / name]
        for c in candidates:
            if c.is_file():
                return c
    where = (f"looked for {', '.join(str(c) for c in candidates)}" if root is not None
             else f"${WEIGHTS_ENV} is not set")
    raise WeightsError(
        f"no {network} weights ({where}). Pretrained weights are never downloaded: put "
        f"{' or '.join(default_names)} in ${WEIGHTS_ENV} (or ${WEIGHTS_ENV}/{network.lower()}/), or pass "
        f"{flag}{'' if flag.endswith('=') else ' '}PATH. For a smoke test without weights {smoke_hint}."
    )


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")


def _normalise_digest(value: str, where: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:").strip()
    if not _HEX64.match(digest):
        raise WeightsError(f"{where}: {value!r} is not a SHA-256 hex digest (64 hex characters)")
    return digest


def expected_sha256(path: Path, explicit: str | None = None) -> tuple[str | None, str]:
    """(expected digest or prefix, source) for a weights file; (None, "unverified") when nothing is known."""
    if explicit:
        return _normalise_digest(explicit, "--weights-sha256"), "explicit"
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        tokens = sidecar.read_text(encoding="utf-8").split()
        if not tokens:
            raise WeightsError(f"checksum sidecar {sidecar} is empty: write the file's SHA-256 into it or delete it")
        return _normalise_digest(tokens[0], f"checksum sidecar {sidecar}"), "sidecar"
    if path.name in KNOWN_SHA256:
        return KNOWN_SHA256[path.name], "known-release"
    if path.name in TORCHVISION_HASHED_NAMES:
        match = _NAME_PREFIX.search(path.name)
        assert match is not None
        return match.group(1), "filename-prefix"
    return None, "unverified"


def verify_weights_file(path: Path, network: str, explicit_sha256: str | None = None) -> WeightsInfo:
    """Hash the file and check it against the expected digest (see the module docstring)."""
    expected, source = expected_sha256(path, explicit_sha256)
    actual = sha256_file(path)
    if expected is not None and not actual.startswith(expected):
        raise WeightsError(
            f"{network} weights {path} fail their checksum ({source}): expected sha256 {expected}, file has "
            f"{actual}. The file is corrupt or not the release it is named after; download it again, or, if you "
            "trust this file, pass --weights-sha256 with its digest (or fix the .sha256 sidecar)."
        )
    return WeightsInfo(network=network, path=str(path), sha256=actual, verified=source)


def load_state_dict_file(path: Path, network: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and return its state dict.

    Accepts a plain state dict or a dict holding one under ``state_dict`` / ``model_state_dict`` /
    ``model`` / ``net`` (MedicalNet's releases use ``state_dict``); strips DataParallel's
    ``module.`` prefix.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise WeightsError(f"cannot read {network} weights {path} with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{network} weights {path} hold a {type(obj).__name__}, not a state dict")
    state: Mapping[str, Any] = obj
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            break
    tensors = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{network} weights {path} contain no tensors (keys: {list(obj)[:8]})")
    return tensors


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], network: str, path: Path,
              hint: str = "") -> None:
    """Load ``state`` into ``module`` exactly (every parameter and buffer, same shapes), or raise a
    WeightsError listing what differs. ``num_batches_tracked`` buffers may be absent (old releases)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})")
        raise WeightsError(f"{network} weights {path} do not fit the network: {'; '.join(parts)}"
                           + (f". {hint}" if hint else ""))
    full = dict(own)
    full.update(state)
    module.load_state_dict(full, strict=True)
