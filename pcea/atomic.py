"""Writing a file so that it is always whole: the old version or the new one, never half.

Every file pcea writes for a user (checkpoints, metrics, reports, dataset lists,
benchmark results) goes through :func:`write_atomic`: the data goes to a
temporary file in the same directory, is flushed to disk, and is renamed over
the destination, which is atomic on POSIX and Windows.

Temporary files and directories that become a user's data (:func:`make_temp_file`,
:func:`make_temp_dir`) get the permissions a plain ``open``/``mkdir`` would give under
the user's umask, not the owner-only 0600/0700 of :mod:`tempfile`, so that others on a
shared machine can read a dataset or a checkpoint when the umask allows it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pcea.errors import PceaFileError

__all__ = ["atomic_write_bytes", "make_temp_dir", "make_temp_file", "write_atomic"]


def make_temp_file(directory: str | os.PathLike, *, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """:func:`tempfile.mkstemp` in ``directory``, with the usual file mode (0666 & ~umask).

    Returns:
        (an open file descriptor, the path), as ``mkstemp``.
    """
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        os.chmod(path, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def make_temp_dir(directory: str | os.PathLike, *, prefix: str, suffix: str = "") -> Path:
    """:func:`tempfile.mkdtemp` in ``directory``, with the usual directory mode (0777 & ~umask)."""
    path = Path(tempfile.mkdtemp(dir=directory, prefix=prefix, suffix=suffix))
    try:
        os.chmod(path, 0o777 & ~_umask())
    except BaseException:
        path.rmdir()
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically; an OSError propagates unchanged.

    Args:
        path: destination file.
        data: the complete new contents.
    """
    path = Path(path)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    """The process's umask; read from /proc on Linux, since setting it to read it races with threads."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
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
