"""The library entry points for a trained model: :func:`load_model` and :func:`classify`.

A checkpoint is opened by :func:`pcea.engine.checkpoint.open_checkpoint`, which reads it
with :func:`pcea.engine.checkpoint.load_checkpoint` (``torch.load(weights_only=True)``
after a SHA-256 check), so loading one never runs code from the file; voting is
:func:`pcea.engine.evaluate.vote_probabilities`, the same as ``pcea eval``'s. A user's
files are read with :func:`pcea.io.load_points`, which normalises them like the training data.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from pcea.engine.checkpoint import open_checkpoint
from pcea.engine.evaluate import vote_probabilities
from pcea.errors import PceaError, PceaFileError, check_positive_int
from pcea.fast import accelerate
from pcea.io import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_POINTS,
    DEFAULT_UP,
    MESH_EXTENSIONS,
    POINT_EXTENSIONS,
    PceaWarning,
    load_points,
)
from pcea.model import PCTClassifier
from pcea.precision import autocast, use_amp

__all__ = ["classify", "expand_inputs", "iter_classify", "load_model", "print_classification"]

KNOWN_EXTENSIONS = tuple(sorted(set(MESH_EXTENSIONS + POINT_EXTENSIONS)))
_GLOB_CHARS = ("*", "?", "[")


def load_model(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu") -> PCTClassifier:
    """Load a trained classifier, ready for ``model.predict(points)``.

    Args:
        checkpoint: a ``.pt`` file written by ``pcea train``, a run directory (its
            ``best.pt``, else ``last.pt``), or ``"modelnet40"``: the weights that ship with
            pcea, trained on ModelNet40 (docs/modelnet40.md); opened by
            :func:`pcea.engine.checkpoint.open_checkpoint`.
        device: where the model goes.

    Returns:
        The :class:`pcea.PCTClassifier` in eval mode, accelerated (:func:`pcea.fast.accelerate`:
        the same logits within 1e-5, its BatchNorms folded at inference); ``model.class_names``
        lists the classes in output order and ``model.config.num_points`` is the
        cloud size it was trained with.

    Raises:
        PceaFileError: the file is missing, damaged, or not a safe pcea checkpoint.
    """
    return accelerate(open_checkpoint(checkpoint, device=device)[0])


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
        if path.exists() or path.is_symlink():
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


def unmatched_problem(text: str) -> str:
    """The one-line reason an input of :func:`expand_inputs` named no file (names escaped)."""
    if Path(text).is_dir():
        why = f"is a directory holding no file pcea reads ({' '.join(KNOWN_EXTENSIONS)})"
    elif any(char in text for char in _GLOB_CHARS) and not Path(text).exists():
        why = "no files matched"
    else:
        why = "no such file"
    return printable(f"{text}: {why}")


def _top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(class_names[i], float(probs[i])) for i in order]


def iter_classify(files: Sequence[str | os.PathLike], model: PCTClassifier, *, top_k: int = 5,
                  num_points: int | None = None, votes: int = 1, batch_size: int = 32, seed: int = 0,
                  max_bytes: int = DEFAULT_MAX_BYTES, max_points: int = DEFAULT_MAX_POINTS,
                  amp: bool = False, up: str = DEFAULT_UP) -> Iterator[dict]:
    """Classify files batch by batch, yielding one result per file in order.

    Args:
        files: the files to read with :func:`pcea.io.load_points`.
        model: a classifier with ``class_names`` (see :func:`load_model`).
        top_k: classes reported per file.
        num_points: points sampled per file; the model's training size by default.
        votes: 1 for one pass; K > 1 averages the softmax of K randomly scaled
            copies (:func:`pcea.engine.evaluate.vote_probabilities`).
        batch_size: clouds per forward pass.
        seed: seed of the point sampling and of the voting augmentations.
        max_bytes: larger files are refused.
        max_points: files declaring more points, vertices or faces are refused.
        amp: bf16 autocast (see :mod:`pcea.precision`); the caller checks that it helps.
        up: the files' up axis, "y", "z" or "auto" (y for OBJ/glTF, z otherwise); each
            cloud is turned into the y-up frame the model was trained in.

    Yields:
        ``{"path": str, "top_k": [(class, probability), ...]}`` or, for a file that
        cannot be read, ``{"path": str, "error": "PATH: problem"}``.
    """
    num_points = _check_options(model, top_k=top_k, votes=votes, batch_size=batch_size, num_points=num_points)
    normals = model.config.in_channels >= 6
    class_names = model.class_names or [f"class{i}" for i in range(model.config.num_classes)]
    k = min(top_k, len(class_names))
    model.eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        results: list[dict] = []
        clouds: list[np.ndarray] = []
        for path in chunk:
            try:
                clouds.append(load_points(path, num_points, seed, normals,
                                          max_bytes=max_bytes, max_points=max_points, up=up))
                results.append({"path": os.fspath(path)})
            except PceaFileError as err:
                results.append({"path": os.fspath(path), "error": str(err)})
        if clouds:
            points = torch.from_numpy(np.stack(clouds))  # (B, N, C)
            with autocast(next(model.parameters()).device, amp):
                if votes > 1:
                    probs = vote_probabilities(model, points, votes=votes, keys=[(seed,)] * len(clouds))
                else:
                    probs = model.predict(points)  # (B, num_classes)
            good = iter(probs.numpy())
            for result in results:
                if "error" not in result:
                    result["top_k"] = _top_k(next(good), class_names, k)
        yield from results


def _check_options(model: PCTClassifier, *, top_k: int = 5, votes: int = 1, batch_size: int = 32,
                   num_points: int | None = None, **_) -> int:
    """Refuse bad classify options before any output; returns the points per cloud to sample."""
    for name, value in (("top_k", top_k), ("votes", votes), ("batch_size", batch_size)):
        check_positive_int(name, value)
    num_points = num_points or model.config.num_points
    if num_points < model.config.centers[0]:
        raise PceaError(f"num_points={num_points}: the model's first stage needs at least "
                        f"{model.config.centers[0]} points")
    return num_points


def classify(paths: str | os.PathLike | Iterable[str | os.PathLike],
             checkpoint: str | os.PathLike | PCTClassifier, *, top_k: int = 5,
             num_points: int | None = None, votes: int = 1, batch_size: int = 32, seed: int = 0,
             max_bytes: int = DEFAULT_MAX_BYTES, max_points: int = DEFAULT_MAX_POINTS,
             device: str | torch.device = "cpu", amp: bool = False, up: str = DEFAULT_UP) -> list[dict]:
    """Classify point-cloud or mesh files with a trained model.

    Args:
        paths: files, directories (searched recursively for known extensions) or globs.
        checkpoint: a checkpoint file, a run directory, or an already loaded model.
        top_k: classes reported per file.
        num_points: points sampled per file; the model's training size by default.
        votes: test-time augmentation copies averaged per file (1 = a single pass).
        batch_size: clouds per forward pass.
        seed: seed of the point sampling and of the voting augmentations.
        max_bytes: larger files are refused.
        max_points: files declaring more points, vertices or faces are refused.
        device: where the model runs when it is loaded here.
        amp: bf16 autocast where the device runs it natively (:func:`pcea.precision.amp_support`);
            elsewhere a :class:`pcea.PceaWarning` says why and it runs in float32.
        up: the files' up axis: "y", "z", or "auto" (the default: y for ``.obj``/``.glb``,
            z for every other format); see :func:`pcea.io.load_points`.

    Returns:
        One dict per file: ``{"path": str, "top_k": [(class, probability), ...]}``
        (most likely first) or ``{"path": str, "error": "PATH: problem"}``; an input
        that matched nothing is reported as an error entry too.

    Raises:
        PceaError: no input named any file, or a bad option.
        PceaFileError: the checkpoint cannot be loaded.
    """
    files, unmatched = expand_inputs(paths)
    if not files:
        raise PceaError("no input files: " + ("; ".join(map(unmatched_problem, unmatched)) or "none given"))
    model = checkpoint if isinstance(checkpoint, PCTClassifier) else load_model(checkpoint, device=device)
    amp = use_amp(amp, next(model.parameters()).device, lambda why: warnings.warn(
        f"amp=True ignored, classifying in float32: {why}", PceaWarning, stacklevel=4))
    results = list(iter_classify(files, model, top_k=top_k, num_points=num_points, votes=votes,
                                 batch_size=batch_size, seed=seed, max_bytes=max_bytes,
                                 max_points=max_points, amp=amp, up=up))
    return results + [{"path": text, "error": unmatched_problem(text)}
                      for text in unmatched]


def print_classification(files: Sequence[Path], model: PCTClassifier, *, as_json: bool = False,
                         stdout: TextIO | None = None, stderr: TextIO | None = None, **options) -> int:
    """Classify files and print each result as it comes: the ``pcea classify`` output.

    Args:
        files: the files (see :func:`expand_inputs`).
        model: the loaded classifier.
        as_json: one JSON object per line (``{"path", "top_k": [{"class", "probability"}]}``)
            instead of an aligned table.
        stdout: where results go (``sys.stdout``).
        stderr: where one line per unreadable file goes (``sys.stderr``).
        **options: :func:`iter_classify` options (top_k, num_points, votes, batch_size, ...).

    Returns:
        The number of files that could not be read.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    names = model.class_names or [f"class{i}" for i in range(model.config.num_classes)]
    path_width = max(len(printable(os.fspath(path))) for path in files)
    name_width = max(len(name) for name in names)
    k = min(options.get("top_k", 5), len(names))
    _check_options(model, **options)  # before the table header, so an error is the only output
    if not as_json:
        header = [f"{'file':<{path_width}}"] + [f"{f'top-{i + 1}':<{name_width + 7}}" for i in range(k)]
        print("  ".join(header).rstrip(), file=stdout)
    failed = 0
    for result in iter_classify(files, model, **options):
        if "error" in result:
            failed += 1
            print(f"pcea: skipped {printable(result['error'])}", file=stderr)
        elif as_json:
            print(json.dumps({"path": result["path"], "top_k": [
                {"class": name, "probability": round(prob, 6)} for name, prob in result["top_k"]]}),
                file=stdout)
        else:
            cells = [f"{name:<{name_width}} {prob:6.4f}" for name, prob in result["top_k"]]
            print("  ".join([f"{printable(result['path']):<{path_width}}"] + cells), file=stdout)
        stdout.flush()
    return failed
