"""SHA-256 of files: the one implementation behind volume checksums (prep), export and checkpoint
integrity, and pretrained-weight verification. Standard library only, so preprocessing workers
that import it load no torch."""
from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]

CHUNK = 4 << 20


def sha256_file(path: str | os.PathLike[str], sync: bool = False, chunk_size: int = CHUNK) -> str:
    """Hex SHA-256 of a file read in chunks (volumes and checkpoints can be GBs); ``sync`` also fsyncs
    it (files another library wrote without fsync, before a checkpoint commit)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
        if sync:
            try:
                os.fsync(fh.fileno())
            except OSError:  # pragma: no cover - file systems refusing fsync on a read-only handle
                pass
    return digest.hexdigest()
