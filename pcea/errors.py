"""Errors a user can cause, as opposed to bugs in pcea, and the warning for what pcea worked around.

Everything pcea raises for bad input derives from :class:`PceaError`; the CLI
prints such an error as one line (``pcea: error: ...``) and exits non-zero,
while any other exception is a bug and keeps its traceback. :class:`PceaWarning`
(also ``pcea.PceaWarning`` and ``pcea.io.PceaWarning``) marks a problem in a user's
file or data that pcea worked around; the CLI prints it as ``pcea: warning: ...``.
"""

from __future__ import annotations

import numbers
import os
import stat


class PceaError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""


class PceaFileError(PceaError, ValueError):
    """A file that cannot be used; the message always starts with its path.

    It is also a ValueError, so library users who catch ValueError for bad
    input keep working.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class PceaWarning(UserWarning):
    """Something pcea worked around in a user's file (the CLI prints these)."""


class MissingSplitError(PceaFileError):
    """A dataset directory without the split asked for (a copy holding only the train split)."""


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer, Python or NumPy, and not a bool: pcea's one strict integer test."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least 1.

    The one test of a count in pcea: :func:`check_positive_int`, :class:`pcea.ModelConfig`,
    :class:`pcea.TrainConfig`, the benchmark settings and the command line's integer options
    all use it, and all word a failure as :func:`positive_int_problem` does.
    """
    return is_int(value) and bool(value >= 1)


def positive_int_problem(name: str, value: object) -> str:
    """The message for a value failing :func:`is_positive_int`: ``votes=0: expected a positive integer``."""
    return f"{name}={value!r}: expected a positive integer"


def check_positive_int(name: str, value: object, error: type[Exception] = PceaError, *,
                       at_most: int | None = None) -> int:
    """``value`` as an int if it is a positive integer; else ``error`` (a :class:`PceaError`) naming it.

    The check of a count a user gives a library function (``top_k``, ``votes``,
    ``num_points``, ...): ``votes=0: expected a positive integer`` (a bool, a float or a
    string is refused too). The configuration dataclasses pass ``error=ValueError``.
    With ``at_most`` (one of the bounds below, :data:`MAX_POINTS` or :data:`MAX_VOTES`) a
    larger value is refused too, before anything of that size is allocated or started.
    """
    if not is_positive_int(value):
        raise error(positive_int_problem(name, value))
    if at_most is not None and value > at_most:
        raise error(f"{name}={value!r}: {too_large_problem(at_most)}")
    return int(value)


# -- Bounds of the counts a user types or a file declares -------------------------------------
# One place for them, so that the command line, the configs, the checkpoints and the library
# refuse the same values in the same words, before anything of that size is allocated or started.

#: Points in one cloud that pcea samples or builds a model for (``--points``, ``num_points``):
#: the file readers' default ``max_points`` (``pcea.io.DEFAULT_MAX_POINTS``), so that no cloud
#: is larger than the largest file pcea reads by default (10 million xyz+normal points are
#: 240 MB per cloud; the presets take 1,024).
MAX_POINTS = 10_000_000
#: Test-time voting copies per cloud (``--votes``): each copy is one more forward pass over the
#: data. PCT votes 10 times and pcea's vote study gained nothing from more, so 100 bounds the
#: time instead of letting ``--votes 1000000000`` run for ever.
MAX_VOTES = 100
_BOUND_NAMES = {MAX_POINTS: "pcea.errors.MAX_POINTS, the file readers' point limit",
                MAX_VOTES: "pcea.errors.MAX_VOTES, one forward pass per vote"}


def too_large_problem(at_most: int) -> str:
    """How a count over one of the bounds above is worded: ``at most 100 (pcea.errors.MAX_VOTES, ...)``."""
    name = _BOUND_NAMES.get(at_most)
    return f"at most {at_most:,}" + (f" ({name})" if name else "")


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say (Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(what: str, nbytes: int, error: type[Exception] = PceaError) -> None:
    """Refuse, before allocating it, an array of ``nbytes`` that this machine cannot hold.

    Args:
        what: what needs the memory and the counts that make it, for the message
            (``"--per-class 10**12 x 10 classes x 2048 points"``).
        nbytes: the bytes it needs.
        error: the exception to raise (a :class:`PceaError` by default).

    Raises:
        error: ``nbytes`` is more than the machine's physical memory.
    """
    total = physical_memory()
    if total is not None and nbytes > total:
        raise error(f"{what} needs at least {nbytes / 2**30:,.1f} GiB of memory, more than this machine's "
                    f"{total / 2**30:,.1f} GiB")


def special_file_kind(mode: int) -> str:
    """What a file that is not a regular file or a directory is, for messages: "a FIFO", "a device"..."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "special"


def open_regular(path: str | os.PathLike, max_bytes: int | None, what: str,
                 limit_name: str = "") -> tuple[int, int]:
    """Open a file the user names for reading, without blocking; ``(fd, size)`` if it is a regular file.

    The one guard for every file pcea reads (checkpoints, config files, point and mesh files,
    dataset files, ``file://`` downloads; :func:`check_regular` for readers that open the file
    themselves): a FIFO would block
    for ever and a device such as ``/dev/zero`` never ends, so only a regular file of at most
    ``max_bytes`` is opened. ``O_NONBLOCK`` lets a FIFO be opened (and refused) without waiting
    for a writer; the descriptor is made blocking again before it is returned.

    Args:
        path: the file.
        max_bytes: larger files are refused before a byte is read; None: no limit.
        what: what the file should be, for the messages ("checkpoint file", "config file").
        limit_name: where ``max_bytes`` is set (or how to raise it), for the message.

    Raises:
        PceaFileError: missing, unreadable, a directory, not a regular file, or too large.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PceaFileError(path, f"no such {what}") from None
    except IsADirectoryError:
        raise PceaFileError(path, f"is a directory, expected a {what}") from None
    except OSError as err:
        raise PceaFileError(path, f"cannot read the {what}: {err.strerror or err}") from None
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = f"is a directory, expected a {what}"
    elif not stat.S_ISREG(info.st_mode):
        problem = f"is {special_file_kind(info.st_mode)}, not a regular file; refusing to read it as a {what}"
    elif max_bytes is not None and info.st_size > max_bytes:
        where = f" ({limit_name})" if limit_name else ""
        problem = (f"{info.st_size:,} bytes, over the {max_bytes:,}-byte limit of a {what}{where}; "
                   "refusing to read it")
    if problem:
        os.close(fd)
        raise PceaFileError(path, problem)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd, info.st_size


def check_regular(path: str | os.PathLike, max_bytes: int | None, what: str, limit_name: str = "") -> int:
    """:func:`open_regular` for a reader that opens the file itself (h5py, trimesh): its size in bytes.

    Raises:
        PceaFileError: as :func:`open_regular`.
    """
    fd, size = open_regular(path, max_bytes, what, limit_name)
    os.close(fd)
    return size
