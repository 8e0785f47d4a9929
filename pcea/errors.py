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


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least 1.

    The one test of a count in pcea: :func:`check_positive_int`, :class:`pcea.ModelConfig`,
    :class:`pcea.TrainConfig`, the benchmark settings and the command line's integer options
    all use it, and all word a failure as :func:`positive_int_problem` does.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and bool(value >= 1)


def positive_int_problem(name: str, value: object) -> str:
    """The message for a value failing :func:`is_positive_int`: ``votes=0: expected a positive integer``."""
    return f"{name}={value!r}: expected a positive integer"


def check_positive_int(name: str, value: object, error: type[Exception] = PceaError) -> int:
    """``value`` as an int if it is a positive integer; else ``error`` (a :class:`PceaError`) naming it.

    The check of a count a user gives a library function (``top_k``, ``votes``,
    ``num_points``, ...): ``votes=0: expected a positive integer`` (a bool, a float or a
    string is refused too). The configuration dataclasses pass ``error=ValueError``.
    """
    if not is_positive_int(value):
        raise error(positive_int_problem(name, value))
    return int(value)
