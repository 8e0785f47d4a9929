"""Command-line style inputs: folders and globs expanded into files, and names safe to print.

``pcea classify`` and the torch-free ONNX runner (:mod:`pcea.onnx_runner`) take the same
inputs, so the expansion lives here, beside the readers, where importing it needs no torch.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable
from pathlib import Path

from pcea.io import MESH_EXTENSIONS, POINT_EXTENSIONS

__all__ = ["KNOWN_EXTENSIONS", "expand_inputs", "printable", "unmatched_problem"]

KNOWN_EXTENSIONS = tuple(sorted(set(MESH_EXTENSIONS + POINT_EXTENSIONS)))
_GLOB_CHARS = ("*", "?", "[")


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The files that command-line style inputs name.

    A file is taken as it is (whatever its extension, so that a wrong one is
    reported); a directory contributes every file below it with an extension
    :func:`pcea.io.load_points` reads; a pattern with ``*``, ``?`` or ``[`` is a
    glob (``**`` recursive). Order is kept and duplicates are dropped.

    Returns:
        (the files, the inputs that named nothing: missing paths and empty globs or directories).
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    files: list[Path] = []
    unmatched: list[str] = []
    seen: set[str] = set()  # real paths: a file reached through two links is classified once

    def add(path: Path) -> bool:
        if path.is_dir():
            # os.walk does not follow links into directories, so a symlink loop cannot trap it.
            found = sorted(Path(folder) / name for folder, _, names in os.walk(path) for name in names
                           if Path(name).suffix.lower() in KNOWN_EXTENSIONS)
        else:
            found = [path]
        for p in found:
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                files.append(p)
        return bool(found)

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if _os_problem(path) is not None:  # a name too long, a folder it may not enter: skipped, named
            matched = False
        elif path.exists() or path.is_symlink():
            matched = add(path)
        elif any(char in text for char in _GLOB_CHARS):
            matched = False
            for hit in _glob(text):
                matched = add(Path(hit)) or matched
        else:
            matched = False
        if not matched:
            unmatched.append(text)
    return files, unmatched


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, sorted, except that ``**`` never enters a link to a directory.

    Python's glob follows such links: one ``loop -> .`` repeats every file about 40 times (until
    the path is too long) and two of them never finish. Here ``**`` walks the real directories
    below the pattern's fixed prefix with :func:`os.walk` (which lists a link but does not enter
    it) and matches each path against the pattern, component by component, as glob does
    (hidden names only where the pattern spells the dot).
    """
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    hits = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = [name for name in dirs if not name.startswith(".")]  # ** skips hidden folders, as glob
        below = Path(folder).relative_to(base).parts
        hits += [str(Path(folder) / name) for name in dirs + names
                 if _glob_match((*below, name), parts[fixed:])
                 and not (name in dirs and os.path.islink(os.path.join(folder, name)))]  # nor list one
    return sorted(hits)


def _glob_match(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """Whether path components ``names`` match glob components ``patterns`` (``**``: any number)."""
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        return any(_glob_match(names[skip:], rest) for skip in range(len(names) + 1))
    return (bool(names) and fnmatch.fnmatch(names[0], head)
            and (head.startswith(".") or not names[0].startswith(".")) and _glob_match(names[1:], rest))


def printable(text: str) -> str:
    """``text`` with each unprintable character (newline, tab, escape...) written as its Python escape.

    File names can hold any character but ``/`` and NUL; printed raw, a newline in one would
    forge an extra line of the classify table or of a one-line error.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _os_problem(path: Path) -> str | None:
    """Why the system will not look at ``path`` (``File name too long``, ``Permission denied``), or None
    (a missing file is no such problem: it is ``no such file``)."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        return err.strerror or str(err)
    return None


def unmatched_problem(text: str) -> str:
    """The one-line reason an input of :func:`expand_inputs` named no file (names escaped)."""
    problem = _os_problem(Path(text))
    if problem is not None:
        why = problem
    elif Path(text).is_dir():
        why = f"is a directory holding no file pcea reads ({' '.join(KNOWN_EXTENSIONS)})"
    elif any(char in text for char in _GLOB_CHARS) and not Path(text).exists():
        why = "no files matched"
    else:
        why = "no such file"
    return printable(f"{text}: {why}")
