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

Only a regular file (or a new name) is ever replaced: :func:`check_destination` refuses a
device, a FIFO or a socket at the destination (``--onnx /dev/null`` run as root would otherwise
turn the system's ``/dev/null`` into a regular file). A writer holds a lock on its temporary
file, and :func:`temporary_dir` on a ``.lock`` inside its directory, for as long as it lives; the
kernel drops the lock when the process dies, however it dies, so :func:`remove_stale_temporaries`
and the next :func:`temporary_dir` with the same prefix can tell what a killed writer left (no
lock holder) from a live writer's file, and remove only the former.

Temporary files and directories that become a user's data (:func:`make_temp_file`,
:func:`make_temp_dir`) get the permissions a plain ``open``/``mkdir`` would give under
the user's umask, not the owner-only 0600/0700 of :mod:`tempfile`, so that others on a
shared machine can read a dataset or a checkpoint when the umask allows it.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pcea.errors import PceaFileError, special_file_kind

try:
    import fcntl
except ImportError:  # Windows: no locks, so nothing is ever taken for abandoned
    fcntl = None
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)  # Linux 3.15+; elsewhere temporary files are never stale

__all__ = ["atomic_write_bytes", "check_destination", "make_temp_dir", "make_temp_file",
           "remove_stale_temporaries", "replacing", "replacing_dir", "temporary_dir", "temporary_pattern",
           "write_atomic"]

_LOCK_NAME = ".lock"  # inside a temporary_dir: held by the process using the directory
_UNLOCKED_GRACE_S = 60.0  # a directory without its lock file yet is someone's for this long


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


def check_destination(path: str | os.PathLike) -> None:
    """Refuse a destination that is not a regular file or a new name (a device, a FIFO, a socket, a
    directory); a symbolic link counts as what it points to.

    Raises:
        PceaFileError: naming the path and what it is.
        OSError: the path cannot be looked at (a name too long, a folder the user may not enter),
            unchanged for the caller to word, as :func:`replacing` does.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:  # a new name
        return
    if stat.S_ISDIR(info.st_mode):
        raise PceaFileError(path, "is a directory; give the name of a file to write")
    if not stat.S_ISREG(info.st_mode):
        raise PceaFileError(path, f"is {special_file_kind(info.st_mode)}, not a regular file; pcea writes "
                                  "only to a regular file or a new name")


def _try_lock(fd: int, *, ofd: bool) -> None:
    """Take an exclusive lock on ``fd`` without waiting, held until the descriptor is closed (or its
    process dies); OSError if another open file holds it.

    A temporary file takes an open-file-description record lock (Linux's ``F_OFD_SETLK``), not an
    ``flock``: libraries that write the file by name lock it themselves with ``flock`` (HDF5
    does), and the two kinds do not conflict; unlike a plain POSIX ``lockf``, it is not dropped
    when the writer opens and closes the file by name. A temporary directory's own ``.lock``
    takes an ``flock``.
    """
    if ofd:
        if _OFD_SETLK is None:
            raise OSError(errno.ENOLCK, "no open-file-description locks on this platform")
        # struct flock: l_type, l_whence, l_start, l_len (0: the whole file), l_pid (0 for OFD locks)
        fcntl.fcntl(fd, _OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock(fd: int, *, ofd: bool) -> None:
    """Hold the lock of :func:`_try_lock` while a writer lives (nothing where there are no locks)."""
    if fcntl is not None:
        with suppress(OSError):  # no locks here: the file is just never taken for abandoned
            _try_lock(fd, ofd=ofd)


def _abandoned(path: Path, *, ofd: bool) -> bool:
    """Whether no live process holds ``path``'s lock (see :func:`_try_lock`): its writer was killed."""
    if fcntl is None or (ofd and _OFD_SETLK is None):
        return False
    try:  # a write lock needs a descriptor open for writing; opening one changes nothing in the file
        access = os.O_WRONLY if ofd else os.O_RDONLY
        fd = os.open(path, access | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        _try_lock(fd, ofd=ofd)
        return True
    except OSError:  # held: a live writer
        return False
    finally:
        os.close(fd)  # releases the probe's own lock


def temporary_pattern(name: str) -> str:
    """The glob pattern of :func:`replacing`'s temporary files for a destination named ``name``."""
    return f".{glob.escape(name)}.*.tmp"


def remove_stale_temporaries(directory: str | os.PathLike, patterns: Iterable[str], *,
                             lock_held: bool = False) -> list[Path]:
    """Remove the temporary files that killed writers left in ``directory``.

    Args:
        directory: where to look.
        patterns: glob patterns of the files, e.g. ``[temporary_pattern("model.onnx")]`` for the
            ``.model.onnx.*.tmp`` files of :func:`replacing` (an 11 MB one is what ``kill -9``
            during ``pcea export`` leaves).
        lock_held: the caller holds a lock that keeps every other writer out of ``directory``
            (a training run's ``.lock``), so every match is stale. Otherwise only files that no
            live process holds are removed (a live writer's file is locked, see the module
            docstring).

    Returns:
        The files removed.

    Raises:
        PceaFileError: a stale file cannot be removed.
    """
    removed = []
    for pattern in patterns:
        for stale in Path(directory).glob(pattern):
            if not lock_held and not (stale.is_file() and _abandoned(stale, ofd=True)):
                continue
            try:
                stale.unlink()
                removed.append(stale)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise PceaFileError(stale, f"cannot remove a stale temporary file: {err.strerror or err}"
                                    ) from None
    return removed


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

    Raises:
        PceaFileError: ``path`` is a device, a FIFO, a socket or a directory (:func:`check_destination`).
    """
    path = Path(path)
    check_destination(path)
    fd, name = make_temp_file(path.parent, prefix=f".{path.name}.")
    _lock(fd, ofd=True)  # held until the rename: remove_stale_temporaries leaves the file alone
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
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
    """:func:`make_temp_dir` for the length of a block, deleted with its contents afterwards.

    The directory holds a locked ``.lock`` file while the block runs, and directories with the
    same prefix and suffix that killed processes left (lock not held) are deleted first, so
    ``kill -9`` does not leave one more directory in ``/tmp`` per kill.
    """
    _remove_abandoned_dirs(Path(directory), prefix, suffix)
    tmp = make_temp_dir(directory, prefix=prefix, suffix=suffix)
    fd = None
    try:
        fd = os.open(tmp / _LOCK_NAME, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        _lock(fd, ofd=False)
        yield tmp
    finally:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned_dirs(directory: Path, prefix: str, suffix: str) -> None:
    """Delete ``prefix*suffix`` directories of :func:`temporary_dir` whose process is gone (best effort:
    another user's, or one still starting without its lock file, is left alone)."""
    with suppress(OSError):
        for old in directory.glob(f"{prefix}*{suffix}"):
            if not old.is_dir() or old.is_symlink():
                continue
            lock, stale = old / _LOCK_NAME, False
            if lock.exists():
                stale = _abandoned(lock, ofd=False)
            else:  # a directory made before its lock file, or by an older pcea
                with suppress(OSError):
                    stale = time.time() - old.stat().st_mtime > _UNLOCKED_GRACE_S
            if stale and fcntl is not None:
                shutil.rmtree(old, ignore_errors=True)


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
