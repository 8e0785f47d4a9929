"""Advisory locks that say who holds them, for a run directory and for a download.

The lock is ``filelock.FileLock`` (``fcntl.flock`` on Unix, so the kernel drops it however
its holder ends and a killed run never leaves a stale lock). Once it holds the lock, the
holder writes its pid, host and start time into the lock file, so that a second process
can name it: filelock opens the file without truncating it (read in filelock 4.3.2's
``_native/_unix.py``: ``O_RDWR | O_NONBLOCK``, "existing contents belong to the holder"),
so a contender's attempt leaves that record intact. The holder removes the file while
still holding it; a waiter that then wins the removed file's lock sees it unlinked and
locks the new file instead (filelock checks ``st_nlink``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["HolderLock", "Timeout"]

# flock is missing on this file system (some NFS mounts): the caller goes on unprotected
_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


class HolderLock:
    """An advisory lock on ``path`` whose holder is recorded in the file.

    Args:
        path: the lock file (created when needed, removed on :meth:`release`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # not thread-local: whichever thread took the lock, the object releases it
        self._lock = FileLock(self.path, thread_local=False, on_acquired=_write_holder)

    def acquire(self, *, wait: bool) -> HolderLock:
        """Take the lock; with ``wait=False`` raise :class:`Timeout` at once if another process has it.

        Where the file system has no locks, nothing is locked and the caller goes on unprotected.

        Raises:
            Timeout: ``wait`` is False and the lock is held (:meth:`holder` names who holds it).
            OSError: the lock file cannot be created (a read-only directory).
        """
        try:
            self._lock.acquire(blocking=wait)
        except Timeout:
            raise
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
        return self

    def holder(self) -> str:
        """Who holds the lock, from what its holder wrote: ``pid 12 on host, started 2026-...``."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8", errors="replace") or "{}")
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "held by a process that did not say who it is"

    def release(self) -> None:
        """Remove the lock file while still holding it (see the module's docstring), then unlock."""
        if not self._lock.is_locked:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        self._lock.release()
