"""Exporting a classifier to ONNX: the whole forward pass, sampling and grouping included.

One ``.onnx`` file maps ``points`` (B, N, C) float32 to ``logits`` (B, num_classes):
farthest point sampling, kNN, the gathers, the attention blocks and the head are all
in the graph, so ONNX Runtime (or any ONNX backend) runs the classifier without PyTorch.
The batch axis is dynamic by default; N is fixed at export (``num_points``), because the
FPS loop is unrolled for the model's centre counts. The file's ``metadata_props`` say how
to prepare a cloud for it, each value as JSON (see :data:`METADATA_KEYS`): the class names,
the number of points, the frame (pcea's y-up, and the turn from z-up files), the
normalisation (centre on the mean, scale into the unit sphere), the opset and the batch.
``pcea-onnx`` (:mod:`pcea.onnx_runner`) checks them and classifies files with numpy, trimesh
and onnxruntime only.

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``).
It traces one forward pass, which unrolls the plain FPS loop of :mod:`pcea.ops` into
``m`` steps of Gather, Sub, Mul, ReduceSum, Min, Where and ArgMax (the first maximum, as in PyTorch),
and kNN into Sub, Mul, Add and TopK. It exports the default model in seconds. The dynamo
exporter (``dynamo=True``) gives the same logits here, but needs the onnxscript package,
needs the value checks of :mod:`pcea.ops` kept out of its graph, and took 156 s against 5 s
for the small test model on this project's 2-core machine (it unrolls the same loop through
torch.export; the default model has four times as many FPS steps).

The traced model is the plain one (:mod:`pcea.model` as built, with the weights of the
model given): the CPU speed-ups of :mod:`pcea.fast` serve eager PyTorch only, and give the
same results.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pcea.atomic import (
    check_destination,
    remove_stale_temporaries,
    temporary_dir,
    temporary_pattern,
    write_atomic,
)
from pcea.errors import MAX_POINTS, PceaError, PceaFileError, check_memory, check_positive_int
from pcea.fast import plain
from pcea.fast.layers import fold_weights
from pcea.geometry import CANONICAL_UP, to_canonical
from pcea.io import MESH_EXTENSIONS, POINT_EXTENSIONS, default_up
from pcea.layers import LBR
from pcea.model import PCTClassifier

__all__ = ["DEFAULT_OPSET", "METADATA_KEYS", "MIN_OPSET", "MAX_OPSET", "OnnxExport", "export_onnx",
           "onnx_metadata"]

DEFAULT_OPSET = 17
MIN_OPSET = 11  # TopK with largest=False
MAX_OPSET = 20  # the newest the TorchScript exporter writes (torch.onnx._constants)
INPUT_NAME = "points"
OUTPUT_NAME = "logits"
METADATA_KEYS = ("pcea_version", "class_names", "num_points", "in_channels", "batch", "opset", "input",
                 "output", "frame", "normalization", "sampling", "model_config")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        num_points: N of the input (B, N, C).
        batch: "dynamic" or the fixed batch size.
        opset: the ONNX opset of the graph.
        size_bytes: the file's size.
        seconds: the time the export took (tracing, conversion, check and verification).
        max_abs_error: the largest difference between ONNX Runtime's logits and PyTorch's
            on a random batch, or None without the check (verify=False, or no onnxruntime).
    """

    path: Path
    num_points: int
    batch: str | int
    opset: int
    size_bytes: int
    seconds: float
    max_abs_error: float | None


def onnx_metadata(model: PCTClassifier, num_points: int, batch: str | int, opset: int) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: each value JSON-encoded.

    Args:
        model: the classifier (its config and ``class_names``).
        num_points: N of the exported input.
        batch: "dynamic" or the fixed batch size.
        opset: the graph's opset.

    Returns:
        ``{key: json string}`` for every key in :data:`METADATA_KEYS`.
    """
    config = model.config
    names = model.class_labels()
    columns = ["x", "y", "z", "nx", "ny", "nz"][:config.in_channels]
    extensions = sorted(set(MESH_EXTENSIONS + POINT_EXTENSIONS))
    # to_canonical computes p @ R.T; turning the unit vectors gives R.T, hence the transpose.
    z_up_to_y_up = to_canonical(np.eye(3, dtype=np.float32), "z").T.astype(int).tolist()
    batch_dim = "batch" if batch == "dynamic" else batch  # the input's dim_param when dynamic
    values = {
        "pcea_version": _pcea_version(),
        "class_names": names,
        "num_points": num_points,
        "in_channels": config.in_channels,
        "batch": batch,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": [batch_dim, num_points, config.in_channels],
                  "dtype": "float32",
                  "columns": columns + [f"extra{i}" for i in range(config.in_channels - len(columns))]},
        "output": {"name": OUTPUT_NAME, "shape": [batch_dim, config.num_classes], "dtype": "float32",
                   "meaning": "logits in class_names order; softmax gives probabilities"},
        "frame": {"up": CANONICAL_UP, "z_up_to_y_up": z_up_to_y_up,
                  "note": "points (and normals) are turned into the y-up frame: p' = R p with R = "
                          "z_up_to_y_up, i.e. (x, y, z) -> (x, z, -y), for files whose up axis is z",
                  "default_up": {ext: default_up("file" + ext) for ext in extensions}},
        "normalization": {"center": "mean", "scale": "unit_sphere", "columns": [0, 1, 2],
                          "note": "xyz -= xyz.mean(axis=0); xyz /= max |xyz| (float32); normals unchanged; "
                                  "applied after sampling, before the turn into the y-up frame"},
        "sampling": {"points": "num_points rows drawn without replacement (with replacement when the "
                               "file has fewer), numpy default_rng(seed).choice",
                     "meshes": "num_points points uniform over the surface (faces by area), with "
                               "their face normals"},
        "model_config": config.to_dict(),
    }
    return {key: json.dumps(values[key]) for key in METADATA_KEYS}


def export_onnx(model: PCTClassifier, path: str | os.PathLike, *, num_points: int | None = None,
                batch: str | int = "dynamic", opset: int = DEFAULT_OPSET, verify: bool = True) -> OnnxExport:
    """Write a classifier as one ONNX graph, points (B, N, C) to logits (B, num_classes).

    The model is copied, so the caller's model is not changed; the copy is exported in
    eval mode, in float32 on the CPU, as the plain model with its BatchNorms folded into
    the Linears (see :func:`_plain_copy`).
    The file is written whole or not at all (a temporary file, then a rename).

    Args:
        model: a :class:`pcea.PCTClassifier` (e.g. from :func:`pcea.load_model`).
        path: the ``.onnx`` file to write.
        num_points: N of the input; the model's training size by default.
        batch: "dynamic" (any batch size) or a fixed batch size.
        opset: ONNX opset, :data:`MIN_OPSET` to :data:`MAX_OPSET`.
        verify: compare ONNX Runtime's logits with PyTorch's on a random batch before
            writing (skipped when onnxruntime is not installed).

    Returns:
        An :class:`OnnxExport` describing the file.

    Raises:
        PceaError: a bad option, a model that cannot take ``num_points``, a model the
            exporter cannot convert at this opset, a graph that disagrees with PyTorch, or
            the onnx package missing.
        PceaFileError: the path cannot be written.
    """
    start_time = time.perf_counter()
    if not isinstance(model, PCTClassifier):
        raise PceaError(f"export_onnx takes a pcea.PCTClassifier, got {type(model).__name__}")
    config = model.config
    num_points = config.num_points if num_points is None else check_positive_int("num_points", num_points,
                                                                                 at_most=MAX_POINTS)
    smallest = max(config.centers[0], config.neighbors[0])
    if num_points < smallest:
        raise PceaError(f"num_points={num_points}: the model needs at least {smallest} points per cloud "
                        f"(centers={list(config.centers)}, neighbors={list(config.neighbors)})")
    if batch != "dynamic" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise PceaError(f"batch={batch!r}: expected 'dynamic' or a positive integer")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise PceaError(f"opset={opset}: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET}")
    # The trace and the check each run a batch: its clouds and the first stage's kNN distances
    # (batch, centers[0], num_points) are the least they hold.
    fixed = 3 if batch == "dynamic" else batch
    check_memory(f"exporting with batch {fixed} x {num_points} points",
                 fixed * num_points * (config.in_channels + config.centers[0]) * 4)
    path = Path(path)
    _check_writable(path)
    # What a killed export left: the .NAME.*.tmp beside the output (its scratch directory in /tmp
    # goes with the next temporary_dir below).
    remove_stale_temporaries(path.parent, [temporary_pattern(path.name)])
    try:
        import onnx
    except ImportError:
        raise PceaError("ONNX export needs the onnx package: pip install 'pcea[export]'") from None

    plain = _plain_copy(model)
    trace_batch = 2 if batch == "dynamic" else batch  # 2, not 1: nothing may specialise on a batch of one
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(trace_batch, num_points, config.in_channels, generator=generator) * 2 - 1
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" else None
    with temporary_dir(tempfile.gettempdir(), prefix="pcea-export-") as scratch:
        traced_path = Path(scratch) / "model.onnx"
        try:
            with _quiet_tracing():
                torch.onnx.export(plain, (example,), str(traced_path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
        except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as err:
            raise PceaError(f"the {config.attention}-attention model cannot be exported at opset {opset}: "
                            f"{_first_line(err)}") from None
        proto = onnx.load(str(traced_path))
    proto.doc_string = (f"pcea {config.attention}-attention point-cloud classifier: "
                        f"{INPUT_NAME} (batch, {num_points}, {config.in_channels}) -> "
                        f"{OUTPUT_NAME} (batch, {config.num_classes})")
    for key, value in onnx_metadata(plain, num_points, batch, opset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    max_abs_error = None
    if verify:  # against the model as built, BatchNorms unfolded: the check covers the folding too
        verify_batch = 3 if batch == "dynamic" else batch  # 3: not the traced batch, to catch a fixed one
        max_abs_error = _verify(_plain_copy(model, fold=False), data, verify_batch, num_points)
    write_atomic(path, data)
    return OnnxExport(path=path, num_points=num_points, batch=batch, opset=opset, size_bytes=len(data),
                      seconds=time.perf_counter() - start_time, max_abs_error=max_abs_error)


def _plain_copy(model: PCTClassifier, *, fold: bool = True) -> PCTClassifier:
    """A copy of ``model`` as the plain model (and its BatchNorms folded): float32, CPU, eval mode.

    A copy, so the caller's model is left as it is; :func:`pcea.fast.plain` gives an
    accelerated model (as :func:`pcea.load_model` returns) its plain classes back: the
    fast modules are CPU speed-ups of eager PyTorch with the same results, and the graph
    holds the plain operations.
    """
    exported = plain(copy.deepcopy(model)).float().cpu().eval().requires_grad_(False)
    for module in exported.modules():
        if fold and isinstance(module, LBR):
            _fold_batchnorm(module)
    return exported


def _fold_batchnorm(lbr: LBR) -> None:
    """Fold an eval-mode LBR's BatchNorm into its Linear in place: ``W' = s W``, ``b' = s (b - mean) + beta``.

    ONNX Runtime does not fold a BatchNormalization that follows a MatMul and a Reshape
    (checked with onnxruntime 1.32), so the graph would make one more pass over every
    activation. ``s = gamma / sqrt(var + eps)`` scales output channels, so the neighbour
    embedding's split of the first weight along its input channels stays valid.
    """
    folded = nn.Linear(lbr.linear.in_features, lbr.linear.out_features, bias=True)
    folded.weight, folded.bias = fold_weights(lbr.linear, lbr.bn)  # no grad: the copy's are off
    lbr.linear = folded
    lbr.bn = nn.Identity()  # layers.batch_norm then only reshapes


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Trace in float32 without the warnings that are not the user's concern.

    The tracer's warnings about Python booleans are the shape checks of pcea's ops and
    model (constant for a fixed N); the exporter's notice says it is the TorchScript one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(TorchScript-based ONNX export|feature will be removed)")
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            yield


def _verify(model: PCTClassifier, data: bytes, batch: int, num_points: int) -> float | None:
    """The largest |ONNX Runtime - PyTorch| logit on a random batch; PceaError above 1e-4."""
    try:
        import onnxruntime
    except ImportError:
        return None
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(batch, num_points, model.config.in_channels, generator=generator) * 2 - 1
    with torch.no_grad():
        expected = model(points).numpy()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: points.numpy()})[0]
    error = float(np.abs(got - expected).max())
    if not error <= 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise PceaError(f"the exported graph's logits differ from PyTorch's by {error:.3g} on a random "
                        f"batch of {batch}; nothing was written")
    return error


def _check_writable(path: Path) -> None:
    """PceaFileError now, before minutes of work, unless ``path`` can be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PceaFileError(path, "is a directory; give the .onnx file to write")
    check_destination(path)  # a device, a FIFO or a socket is never replaced
    if not parent.is_dir():
        raise PceaFileError(path, f"cannot write: no such directory {os.fspath(parent)}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PceaFileError(path, f"cannot write: directory {os.fspath(parent)} is not writable")


def _pcea_version() -> str:
    # Not pcea.__version__: pcea/__init__.py imports this module.
    try:
        return importlib.metadata.version("pcea")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
