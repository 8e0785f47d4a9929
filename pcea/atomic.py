"""Writing a file or a directory so that it is always whole: the old version or the new one, never half.

This is pcea's one implementation of write-to-a-temporary-then-rename. Every file pcea
writes for a user (checkpoints, metrics, reports, dataset lists, benchmark results)
goes through :func:`write_atomic`: the data goes to a temporary file in the same
directory, is flushed to disk, and is renamed over the destination, which is atomic on
POSIX and Windows. Files written by another library (``np.save``, ``h5py``) or linked
into place are written inside :func:`replacing`, which hands out the temporary name and
renames it (or deletes it, on any error); whole directories (a generated or extracted
dataset) are built inside :func:`replacing_dir`. Every temporary name starts with a dot
and the destination's name (``.last.pt.k1ll3d01.tmp``), so one left by a killed process
is recognisable and never mistaken for data.

Temporary files and directories that become a user's data (:func:`make_temp_file`,
:func:`make_temp_dir`) get the permissions a plain ``open``/``mkdir`` would give under
the user's umask, not the owner-only 0600/0700 of :mod:`tempfile`, so that others on a
shared machine can read a dataset or a checkpoint when the umask allows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pcea.errors import PceaFileError

__all__ = ["atomic_write_bytes", "make_temp_dir", "make_temp_file", "replacing", "replacing_dir",
           "temporary_dir", "write_atomic"]


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


@contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """A temporary file next to ``path`` that replaces ``path`` when the block ends without error.

    The temporary file exists, empty and with the umask's mode, when the block starts; the
    block writes it by name (or unlinks it and links another file there). On success it is
    renamed over ``path``; on any exception it is deleted and the exception propagates, so
    ``path`` is untouched. OSErrors propagate unchanged for the caller to word.

    Args:
        path: the destination file.
        durable: also fsync the directory after the rename (the block fsyncs the file's data
            itself, if it must survive a power cut).

    Yields:
        The temporary file's path.
    """
    path = Path(path)
    fd, name = make_temp_file(path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


@contextmanager
def replacing_dir(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary directory next to ``path`` that becomes ``path`` when the block ends without error.

    The directory gets the umask's mode. On success it is renamed to ``path``; a directory
    already there is first renamed aside and deleted after the swap, so ``path`` always holds
    the old tree or the new one. On any exception the temporary tree is deleted and the
    exception propagates. OSErrors (creating the directory included) propagate unchanged.

    Yields:
        The temporary directory's path.
    """
    path = Path(path)
    tmp = make_temp_dir(path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        yield tmp
        if path.exists() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "data")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


@contextmanager
def temporary_dir(directory: str | os.PathLike, *, prefix: str, suffix: str = "") -> Iterator[Path]:
    """:func:`make_temp_dir` for the length of a block, deleted with its contents afterwards."""
    tmp = make_temp_dir(directory, prefix=prefix, suffix=suffix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably; an OSError propagates unchanged.

    Args:
        path: destination file.
        data: the complete new contents.
    """
    with replacing(path, durable=True) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
