"""Errors a user can cause, as opposed to bugs in pcea.

Everything pcea raises for bad input derives from :class:`PceaError`; the CLI
prints such an error as one line (``pcea: error: ...``) and exits non-zero,
while any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

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


class MissingSplitError(PceaFileError):
    """A dataset directory without the split asked for (a copy holding only the train split)."""
