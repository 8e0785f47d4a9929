"""Writing a file so that it is always whole: the old version or the new one, never half.

Every file pcea writes for a user (checkpoints, metrics, reports, dataset lists,
benchmark results) goes through :func:`write_atomic`: the data goes to a
temporary file in the same directory, is flushed to disk, and is renamed over
the destination, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pcea.errors import PceaFileError

__all__ = ["atomic_write_bytes", "write_atomic"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically; an OSError propagates unchanged.

    Args:
        path: destination file.
        data: the complete new contents.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` (text is written as UTF-8) atomically.

    Raises:
        PceaFileError: the file cannot be written (no space, no permission, no
            such directory), with the path and the reason in one line.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise PceaFileError(path, f"cannot write: {err.strerror or err}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
