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


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is a positive integer; else a :class:`PceaError` naming it.

    The one check of a count a user gives a library function (``top_k``, ``votes``,
    ``num_points``, ...), worded as :class:`pcea.ModelConfig` and
    :class:`pcea.TrainConfig` word theirs: ``votes=0: expected a positive integer``
    (a bool, a float or a string is refused too). The command line refuses such values
    before they get here, as usage errors.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise PceaError(f"{name}={value!r}: expected a positive integer")
    return int(value)
