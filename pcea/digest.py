"""The SHA-256 of a file: pcea's one implementation, for downloads, ``--init`` streams and built-in weights.

Standard library only, so that :mod:`pcea.weights` (and with it ``pcea info``) can check its
files without importing torch.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The digest as 64 lowercase hex digits.

    Raises:
        OSError: the file cannot be opened or read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
