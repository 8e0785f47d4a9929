"""The library entry points for a trained model: :func:`load_model` and :func:`classify`.

A checkpoint is opened by :func:`pcea.engine.checkpoint.open_checkpoint`, which reads it
with :func:`pcea.engine.checkpoint.load_checkpoint` (``torch.load(weights_only=True)``
after a SHA-256 check), so loading one never runs code from the file; voting is
:func:`pcea.engine.evaluate.vote_probabilities`, the same as ``pcea eval``'s. A user's
files are read with :func:`pcea.io.load_points`, which normalises them like the training data.
"""

from __future__ import annotations

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
from pcea.errors import MAX_POINTS, MAX_VOTES, PceaError, PceaFileError, check_positive_int
from pcea.fast import accelerate
from pcea.geometry import UP_AXES, check_outliers, choose_up, quarter_turns
from pcea.io import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_POINTS,
    DEFAULT_UP,
    PceaWarning,
    declared_up,
    load_points,
    points_from_array,
)
from pcea.io.inputs import expand_inputs, printable, unmatched_problem
from pcea.model import PRESETS, PCTClassifier
from pcea.precision import autocast, use_amp
from pcea.weights import BUILTIN

__all__ = ["classify", "expand_inputs", "iter_classify", "list_models", "load_model", "print_classification"]


def list_models(pretrained: bool = False) -> list[str]:
    """The names pcea knows, for discovery (as ``timm.list_models``).

    Args:
        pretrained: False: the presets :func:`pcea.build_model` builds (untrained);
            True: the weights that ship with pcea, which :func:`load_model` and :func:`classify`
            take by name (``pcea.weights.builtin_card(name)`` describes each).

    Returns:
        The names, sorted.
    """
    return sorted(BUILTIN if pretrained else PRESETS)


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
    model, _, path = open_checkpoint(checkpoint, device=device)
    model = accelerate(model)
    model.checkpoint_path = str(path)  # named in errors about its outputs
    return model


def _top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(class_names[i], float(probs[i])) for i in order]


def iter_classify(files: Sequence[str | os.PathLike | np.ndarray | torch.Tensor], model: PCTClassifier, *,
                  top_k: int = 5, num_points: int | None = None, votes: int = 1, batch_size: int = 32,
                  seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES, max_points: int = DEFAULT_MAX_POINTS,
                  amp: bool = False, up: str = DEFAULT_UP, outliers: str = "keep") -> Iterator[dict]:
    """Classify files or point arrays batch by batch, yielding one result per input in order.

    Args:
        files: the files to read with :func:`pcea.io.load_points`, or raw ``(N, C)`` point arrays
            (NumPy or torch), read with :func:`pcea.io.points_from_array`.
        model: a classifier with ``class_names`` (see :func:`load_model`).
        top_k: classes reported per input.
        num_points: points sampled per input; the model's training size by default.
        votes: 1 for one pass; K > 1 averages the softmax of K randomly scaled
            copies (:func:`pcea.engine.evaluate.vote_probabilities`).
        batch_size: clouds per forward pass.
        seed: seed of the point sampling and of the voting augmentations.
        max_bytes: larger files are refused.
        max_points: files declaring more points, vertices or faces are refused.
        amp: bf16 autocast (see :mod:`pcea.precision`); the caller checks that it helps.
        up: the inputs' up axis, "y" or "z", or "auto": the axis a file declares
            (:func:`pcea.io.declared_up`), and for an input that declares none (most files, every
            array) the axis the model chooses (:func:`pcea.geometry.choose_up`). Each cloud is turned into the
            y-up frame the model was trained in.
        outliers: "keep", or "remove" the stray points of point files and arrays first (see
            :func:`classify`).

    Yields:
        ``{"path": str, "up": "y" | "z", "up_from": "option" | "file" | "model", "top_k": [(class,
        probability), ...]}`` (``"index": i`` instead of ``"path"`` for an array), or, for an input
        that cannot be read, ``{"path": str, "error": "PATH: problem"}``.
    """
    num_points = _check_options(model, top_k=top_k, votes=votes, batch_size=batch_size, num_points=num_points,
                                up=up, outliers=outliers)
    normals = model.config.in_channels >= 6
    class_names = model.class_labels()
    k = min(top_k, len(class_names))
    model.eval()
    for start in range(0, len(files), batch_size):
        results: list[dict] = []
        clouds: list[np.ndarray] = []   # the y-up reading of each readable input, in order
        for index, item in enumerate(files[start:start + batch_size], start=start):
            result = {"index": index} if _is_array(item) else {"path": os.fspath(item)}
            try:
                cloud, result["up"], result["up_from"] = _read(
                    item, index, num_points=num_points, seed=seed, normals=normals, max_bytes=max_bytes,
                    max_points=max_points, up=up, outliers=outliers)
                clouds.append(cloud)
            except PceaFileError as err:
                result = {**result, "error": str(err)}
            results.append(result)
        readable = [result for result in results if "error" not in result]
        # An undecided input is classified three times more: its other quarter turns about x.
        undecided = [i for i, result in enumerate(readable) if result["up"] is None]
        candidates = clouds + [turned for i in undecided for turned in quarter_turns(clouds[i])[1:]]
        probs = _probabilities(model, candidates, votes=votes, seed=seed, batch_size=batch_size, amp=amp)
        if not np.isfinite(probs).all():  # NaN weights would print "chair nan" for every file
            raise PceaError(f"{getattr(model, 'checkpoint_path', 'the model')}: the model's outputs are "
                            "not finite (NaN or infinity): its weights are damaged")
        for number, i in enumerate(undecided):
            first = len(clouds) + 3 * number
            readable[i]["up"], probs[i] = choose_up(np.stack([probs[i], *probs[first:first + 3]]))
        for result, row in zip(readable, probs, strict=False):  # the first len(clouds) rows
            result["top_k"] = _top_k(row, class_names, k)
        yield from results


_UP_WIDTH = len("y (option)")  # the widest cell of the table's up column


def _is_array(item: object) -> bool:
    return isinstance(item, np.ndarray | torch.Tensor)


def _read(item, index: int, *, num_points: int, seed: int, normals: bool, max_bytes: int, max_points: int,
          up: str, outliers: str) -> tuple[np.ndarray, str | None, str]:
    """One input as a cloud in pcea's frame, its up axis (None: for the model to choose, the cloud then
    read y-up) and where the axis came from ("option", "file" or "model")."""
    if _is_array(item):
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
            item = item if item.is_complex() else item.to(torch.float64)  # bf16 has no NumPy type
        axis = None if up == "auto" else up
        cloud = points_from_array(item, num_points, seed, normals, up=axis or "y", name=f"array {index}",
                                  outliers=outliers)
        return cloud, axis, "option" if axis else "model"
    axis, source = (declared_up(item), "file") if up == "auto" else (up, "option")
    cloud = load_points(item, num_points, seed, normals, max_bytes=max_bytes, max_points=max_points,
                        up=axis or "y", outliers=outliers)
    return cloud, axis, source if axis else "model"


def _probabilities(model: PCTClassifier, clouds: list[np.ndarray], *, votes: int, seed: int, batch_size: int,
                   amp: bool) -> np.ndarray:
    """(len(clouds), num_classes) class probabilities, ``batch_size`` clouds per forward pass."""
    rows = []
    for start in range(0, len(clouds), batch_size):
        points = torch.from_numpy(np.stack(clouds[start:start + batch_size]))  # (B, N, C)
        with autocast(next(model.parameters()).device, amp):
            if votes > 1:
                rows.append(vote_probabilities(model, points, votes=votes, keys=[(seed,)] * len(points)))
            else:
                rows.append(model.predict(points))  # (B, num_classes)
    return torch.cat(rows).float().numpy() if rows else np.zeros((0, 0), dtype=np.float32)


def _check_options(model: PCTClassifier, *, top_k: int = 5, votes: int = 1, batch_size: int = 32,
                   num_points: int | None = None, up: str = DEFAULT_UP, outliers: str = "keep", **_) -> int:
    """Refuse bad classify options before any output; returns the points per cloud to sample."""
    for name, value in (("top_k", top_k), ("votes", votes), ("batch_size", batch_size)):
        check_positive_int(name, value, at_most=MAX_VOTES if name == "votes" else None)
    if up not in ("auto", *UP_AXES):
        raise PceaError(f"up={up!r}: expected auto, {' or '.join(UP_AXES)}")
    check_outliers(outliers, PceaError)
    num_points = model.config.num_points if num_points is None else check_positive_int(
        "num_points", num_points, at_most=MAX_POINTS)
    if num_points < model.config.centers[0]:
        raise PceaError(f"num_points={num_points}: the model's first stage needs at least "
                        f"{model.config.centers[0]} points")
    return num_points


def classify(paths: str | os.PathLike | np.ndarray | torch.Tensor
             | Iterable[str | os.PathLike | np.ndarray | torch.Tensor],
             checkpoint: str | os.PathLike | PCTClassifier, *, top_k: int = 5,
             num_points: int | None = None, votes: int = 1, batch_size: int = 32, seed: int = 0,
             max_bytes: int = DEFAULT_MAX_BYTES, max_points: int = DEFAULT_MAX_POINTS,
             device: str | torch.device = "cpu", amp: bool = False, up: str = DEFAULT_UP,
             outliers: str = "keep") -> list[dict]:
    """Classify point-cloud or mesh files, or raw point arrays, with a trained model.

    The one way from raw points to a prediction: an array goes through the same sampling,
    normalisation and turn into the y-up frame as a file (:func:`pcea.io.points_from_array`),
    which ``model.predict`` does not do.

    Args:
        paths: files, directories (searched recursively for known extensions) or globs; or point
            clouds: an ``(N, C)`` NumPy array or torch tensor (C >= 3: x y z, then normals), a
            ``(B, N, C)`` batch of them, or a list of ``(N, C)`` arrays of any N.
        checkpoint: a checkpoint file, a run directory, "modelnet40" (the built-in weights), or an
            already loaded model.
        top_k: classes reported per input.
        num_points: points sampled per input; the model's training size by default.
        votes: test-time augmentation copies averaged per input (1 = a single pass).
        batch_size: clouds per forward pass.
        seed: seed of the point sampling and of the voting augmentations.
        max_bytes: larger files are refused.
        max_points: files declaring more points, vertices or faces are refused.
        device: where the model runs when it is loaded here.
        amp: bf16 autocast where the device runs it natively (:func:`pcea.precision.amp_support`);
            elsewhere a :class:`pcea.PceaWarning` says why and it runs in float32.
        up: the inputs' up axis: "y", "z", or "auto" (the default): the axis a file declares
            (:func:`pcea.io.declared_up`: glTF, PointNet++'s resampled text layout); for the rest,
            arrays included, the model reads the cloud y-up, z-up and both upside down and the most
            confident reading picks the axis (:func:`pcea.geometry.choose_up`), so that a y-up and a z-up copy
            of a shape get the same axis. Give the axis when you know it: it costs a quarter of
            the work and cannot be fooled by a shape that looks like a surer class on its side.
        outliers: "keep" (the default), or "remove": drop the stray points of point files and
            arrays before sampling (:func:`pcea.geometry.outlier_mask`), for scans with stray
            returns; measured with the robustness suite in docs/robustness.md.

    Returns:
        One dict per input, in order: ``{"path": str, "up": "y" | "z", "up_from": "option" | "file"
        | "model", "top_k": [(class, probability), ...]}`` (most likely first; ``"index": i``
        instead of ``"path"`` for arrays) or ``{"path": str, "error": "PATH: problem"}``
        (``{"index": i, "error": "array i: problem"}``); an input that matched nothing is
        reported as an error entry too.

    Raises:
        PceaError: no input named any file, a mix of arrays and paths, or a bad option.
        PceaFileError: the checkpoint cannot be loaded.
    """
    if not isinstance(paths, str | os.PathLike) and not _is_array(paths) and isinstance(paths, Iterable):
        paths = list(paths)  # read once: a generator is looked at twice
    arrays = _point_arrays(paths)
    files, unmatched = expand_inputs(paths) if arrays is None else (arrays, [])
    if not files:
        raise PceaError("no input files: " + ("; ".join(map(unmatched_problem, unmatched)) or "none given"))
    model = checkpoint if isinstance(checkpoint, PCTClassifier) else load_model(checkpoint, device=device)
    amp = use_amp(amp, next(model.parameters()).device, lambda why: warnings.warn(
        f"amp=True ignored, classifying in float32: {why}", PceaWarning, stacklevel=4))
    results = list(iter_classify(files, model, top_k=top_k, num_points=num_points, votes=votes,
                                 batch_size=batch_size, seed=seed, max_bytes=max_bytes,
                                 max_points=max_points, amp=amp, up=up, outliers=outliers))
    return results + [{"path": text, "error": unmatched_problem(text)}
                      for text in unmatched]


def _point_arrays(inputs) -> list | None:
    """The clouds ``inputs`` holds, one array each, or None when it names files."""
    if _is_array(inputs):
        if inputs.ndim == 3 and len(inputs) != 1:   # (B, N, C): a batch; (1, N, C) is one cloud
            return list(inputs)
        if inputs.ndim not in (2, 3):
            raise PceaError(f"an array of shape {tuple(inputs.shape)}: expected (N, C) points or "
                            "(B, N, C) clouds")
        return [inputs]
    if isinstance(inputs, str | os.PathLike) or not isinstance(inputs, Iterable):
        return None
    items = list(inputs)
    if not items or not any(_is_array(item) for item in items):
        return None
    if not all(_is_array(item) for item in items):
        raise PceaError("inputs mix point arrays and paths; classify them in two calls")
    return items


def print_classification(files: Sequence[Path], model: PCTClassifier, *, as_json: bool = False,
                         stdout: TextIO | None = None, stderr: TextIO | None = None, **options) -> int:
    """Classify files and print each result as it comes: the ``pcea classify`` output.

    Args:
        files: the files (see :func:`expand_inputs`).
        model: the loaded classifier.
        as_json: one JSON object per line (``{"path", "up", "up_from", "top_k": [{"class",
            "probability"}]}``) instead of an aligned table.
        stdout: where results go (``sys.stdout``).
        stderr: where one line per unreadable file goes (``sys.stderr``).
        **options: :func:`iter_classify` options (top_k, num_points, votes, batch_size, ...).

    Returns:
        The number of files that could not be read.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    names = model.class_labels()
    path_width = max(len(printable(os.fspath(path))) for path in files)
    name_width = max(len(printable(name)) for name in names)  # names from a checkpoint: escaped too
    k = min(options.get("top_k", 5), len(names))
    _check_options(model, **options)  # before the table header, so an error is the only output
    if not as_json:
        header = ([f"{'file':<{path_width}}", f"{'up':<{_UP_WIDTH}}"]
                  + [f"{f'top-{i + 1}':<{name_width + 7}}" for i in range(k)])
        print("  ".join(header).rstrip(), file=stdout)
    failed = 0
    for result in iter_classify(files, model, **options):
        if "error" in result:
            failed += 1
            print(f"pcea: skipped {printable(result['error'])}", file=stderr)
        elif as_json:
            print(json.dumps({"path": result["path"], "up": result["up"], "up_from": result["up_from"],
                              "top_k": [{"class": name, "probability": round(prob, 6)}
                                        for name, prob in result["top_k"]]}), file=stdout)
        else:
            cells = [f"{printable(name):<{name_width}} {prob:6.4f}" for name, prob in result["top_k"]]
            up = f"{result['up']} ({result['up_from']})"   # z (model): the axis and who chose it
            print("  ".join([f"{printable(result['path']):<{path_width}}", f"{up:<{_UP_WIDTH}}"] + cells),
                  file=stdout)
        stdout.flush()
    return failed
