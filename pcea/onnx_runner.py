"""Classify files with an exported pcea model (ONNX), without PyTorch: the ``pcea-onnx`` command.

    pcea-onnx model.onnx chair.off scans/ 'more/**/*.ply' [--top-k 3] [--json]
    python -m pcea.onnx_runner model.onnx chair.off            # the same

Needs numpy, trimesh, onnx and onnxruntime (``pip install "pcea[export]"``), never torch: this
module imports only the torch-free parts of pcea. Inputs are expanded as ``pcea classify``
expands them (:func:`pcea.io.inputs.expand_inputs`: files, folders, globs) and each file becomes
a cloud through :func:`pcea.io.load_points`, the reader ``pcea classify`` uses (same limits,
same seed, same points). With ``--up auto``, a file that declares its up axis
(:func:`pcea.io.declared_up`) is read that way, and the model picks the axis of any other file
from its four quarter turns (:func:`pcea.geometry.choose_up`), as ``pcea classify`` does.

The model file is untrusted input too. Before ONNX Runtime sees it, it must be a regular file
under the size limit, parse as ONNX, keep its weights inside the file (no external data) and
declare no tensor larger than the file; its metadata (``pcea export`` writes it) must name
the class names, the number of points and channels and pcea's y-up frame, with the right
types and agreeing with the graph's input and output shapes. Each batch runs under a time
limit (``--timeout``; ONNX Runtime's ``terminate`` flag stops a graph that loops for ever).
Every problem is one ``pcea-onnx: error: ...`` line and exit status 1; a file that cannot be
read is skipped in one line and the others are still classified (exit status 1); a bad option
is a usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import reprlib
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from pcea.errors import PceaError, PceaFileError, is_int, open_regular
from pcea.geometry import CANONICAL_UP, UP_AXES, choose_up, quarter_turns, to_canonical
from pcea.io import DEFAULT_MAX_BYTES, DEFAULT_MAX_POINTS, declared_up, load_points
from pcea.io.inputs import expand_inputs, printable, unmatched_problem

__all__ = ["OnnxClassifier", "main", "open_model"]

PROG = "pcea-onnx"
# protobuf cannot parse a larger message, so no valid single-file ONNX model is larger.
MAX_MODEL_BYTES = 2 * 1024**3
DEFAULT_TIMEOUT_S = 600.0
_REQUIRED_KEYS = ("class_names", "num_points", "in_channels", "frame")
_BATCH_BYTES = 1024**3  # input floats per run with a dynamic batch: large batches are split to fit


@dataclass
class OnnxClassifier:
    """An ONNX Runtime session of a pcea export and what its checked metadata says.

    Attributes:
        session: the ``onnxruntime.InferenceSession`` (CPU).
        path: the model file, as the user named it.
        class_names: the output classes, in order.
        num_points: points per cloud (fixed at export).
        in_channels: 3 (xyz) or 6 (xyz and normals).
        batch: the fixed batch size of the graph, or None for a dynamic batch.
    """

    session: object
    path: str
    class_names: list[str]
    num_points: int
    in_channels: int
    batch: int | None

    def probabilities(self, clouds: Sequence[np.ndarray], *, batch_size: int = 32,
                      timeout: float = DEFAULT_TIMEOUT_S) -> np.ndarray:
        """Softmax probabilities (len(clouds), num_classes), ``batch_size`` clouds per run.

        Args:
            clouds: (num_points, in_channels) float32 clouds in pcea's frame (from load_points).
            batch_size: clouds per run when the graph's batch is dynamic.
            timeout: seconds one run may take before it is stopped.

        Raises:
            PceaError: a run failed, took longer than ``timeout``, or gave logits of the wrong
                shape or non-finite logits.
        """
        cloud_bytes = self.num_points * self.in_channels * 4
        step = self.batch or max(1, min(batch_size, _BATCH_BYTES // cloud_bytes))
        rows = []
        for start in range(0, len(clouds), step):
            chunk = np.stack(clouds[start:start + step]).astype(np.float32)  # (B, N, C)
            count = len(chunk)
            if self.batch and count < self.batch:  # a graph with a fixed batch: pad with copies
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - count, axis=0)])
            logits = self._run(chunk, timeout)
            if logits.ndim != 2 or logits.shape[0] < count or logits.shape[1] != len(self.class_names):
                raise PceaError(f"{printable(self.path)}: the model gave logits of shape {logits.shape} for "
                                f"{len(chunk)} clouds; its metadata names {len(self.class_names)} classes")
            logits = logits[:count].astype(np.float64)
            if not np.isfinite(logits).all():
                raise PceaError(f"{printable(self.path)}: the model gave non-finite logits (NaN or "
                                "infinite weights?)")
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            rows.append(exp / exp.sum(axis=1, keepdims=True))
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)))

    def _run(self, chunk: np.ndarray, timeout: float) -> np.ndarray:
        """The first output for one batch, run in a thread that ``terminate`` stops after ``timeout`` s."""
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.log_severity_level = 4  # the error below says it once; ORT would also log it in colour
        result: dict[str, object] = {}
        name = self.session.get_inputs()[0].name

        def run() -> None:
            try:
                result["logits"] = self.session.run(None, {name: chunk}, options)[0]
            except Exception as err:  # ORT raises its own types for every failure inside a graph
                result["error"] = err

        worker = threading.Thread(target=run, name="pcea-onnx-run", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            options.terminate = True  # checked between the graph's nodes, and in a Loop's iterations
            worker.join(10)
            raise PceaError(f"{printable(self.path)}: a run of {len(chunk)} clouds took longer than "
                            f"{timeout:g} s and was stopped (--timeout)")
        if "error" in result:
            err = result["error"]
            kind = "out of memory" if isinstance(err, MemoryError) else _first_line(err)
            raise PceaError(f"{printable(self.path)}: the model failed to run: {kind}")
        logits = result["logits"]
        if not isinstance(logits, np.ndarray) or not np.issubdtype(logits.dtype, np.floating):
            raise PceaError(f"{printable(self.path)}: the model's first output is not a float tensor")
        return logits


def open_model(path: str | os.PathLike, *, threads: int | None = None,
               max_bytes: int = MAX_MODEL_BYTES) -> OnnxClassifier:
    """Check an ``.onnx`` file written by ``pcea export`` and open it with ONNX Runtime on the CPU.

    Args:
        path: the model file.
        threads: ONNX Runtime's intra-op threads (its default: one per core).
        max_bytes: larger files are refused before they are read.

    Returns:
        The session and its checked metadata.

    Raises:
        PceaFileError: naming the file: not a regular file, too large, not ONNX, external data,
            a declared tensor larger than the file, metadata missing, malformed or disagreeing
            with the graph, or a graph ONNX Runtime cannot load.
    """
    import onnx
    import onnxruntime

    path = os.fspath(path)
    fd, _ = open_regular(path, max_bytes, "ONNX model", "pcea.onnx_runner.MAX_MODEL_BYTES")
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read()
    except (OSError, MemoryError) as err:
        raise PceaFileError(path, f"cannot read the ONNX model: {_first_line(err)}") from None
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError, RecursionError on deep nesting, ...
        raise PceaFileError(path, f"not an ONNX model: {_first_line(err)}") from None
    _check_tensors(path, proto, len(data))
    props = {entry.key: entry.value for entry in proto.metadata_props}
    del proto
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # failures are reported once, below
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for every bad graph
        raise PceaFileError(path, f"ONNX Runtime cannot load it: {_first_line(err)}") from None
    return _checked_metadata(path, session, props)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return printable(lines[0][:300]) if lines else type(err).__name__


def _check_tensors(path: str, proto, file_bytes: int) -> None:
    """Refuse external data and any stored tensor whose declared size the file cannot hold.

    A TensorProto declares its dims apart from its data: ``dims=[10**12]`` with 16 bytes of data
    is 4 TB to a runtime that allocates before checking. Embedded data lives in the file, so a
    tensor larger than the file is a lie; external data would be read from other files, which a
    ``pcea export`` never writes.
    """
    import onnx
    from onnx import TensorProto, helper

    stack = [proto.graph] + [node for function in proto.functions for node in function.node]
    while stack:  # a loop, not recursion: subgraphs may nest deeply
        item = stack.pop()
        tensors = []
        if isinstance(item, onnx.GraphProto):
            tensors += list(item.initializer)
            for sparse in item.sparse_initializer:
                tensors += [sparse.values, sparse.indices]
            stack += list(item.node)
        else:  # a NodeProto: Constant tensors and subgraphs (Loop, If, Scan bodies)
            for attribute in item.attribute:
                tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
                stack += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for tensor in tensors:
            if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
                raise PceaFileError(path, f"tensor {printable(tensor.name)!r} keeps its data in another "
                                          "file (external data); pcea export writes one self-contained file")
            if any(dim < 0 for dim in tensor.dims):
                raise PceaFileError(path, f"tensor {printable(tensor.name)!r} has a negative dimension")
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
            except (KeyError, TypeError, ValueError):
                dtype = np.dtype(np.uint8)
            itemsize = 1 if dtype.kind == "O" else dtype.itemsize  # strings: at least a byte each
            declared = math.prod(tensor.dims) * itemsize
            if declared > file_bytes:
                raise PceaFileError(path, f"tensor {printable(tensor.name)!r} declares {declared:,} bytes "
                                          f"(shape {list(tensor.dims)}), more than the {file_bytes:,}-byte "
                                          "file holds")


def _checked_metadata(path: str, session, props: dict[str, str]) -> OnnxClassifier:
    """The pcea metadata of a model, checked for presence, type, range and agreement with the graph."""
    missing = [key for key in _REQUIRED_KEYS if key not in props]
    if missing:
        raise PceaFileError(path, f"not a pcea export: no {', '.join(missing)} in its metadata "
                                  "(write it with pcea export)")
    meta = {}
    for key in (*_REQUIRED_KEYS, "batch"):
        if key not in props:
            continue
        try:
            meta[key] = json.loads(props[key])
        except RecursionError:
            raise PceaFileError(path, f"metadata {key!r} is nested too deeply") from None
        except ValueError as err:
            raise PceaFileError(path, f"metadata {key!r} is not JSON ({_first_line(err)})") from None

    def bad(key: str, expected: str) -> PceaFileError:
        shown = printable(reprlib.repr(meta[key]))  # reprlib: a list of 10**7 names is shown as [...]
        return PceaFileError(path, f"metadata {key!r} is {shown}; expected {expected}")

    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise bad("class_names", "a non-empty list of strings")
    num_points = meta["num_points"]
    if not is_int(num_points) or not 1 <= num_points <= DEFAULT_MAX_POINTS:
        raise bad("num_points", f"an integer from 1 to {DEFAULT_MAX_POINTS:,} (pcea.io's point limit)")
    channels = meta["in_channels"]
    if not is_int(channels) or channels not in (3, 6):
        raise bad("in_channels", "3 (xyz) or 6 (xyz and normals)")
    frame = meta["frame"]
    turn = to_canonical(np.eye(3, dtype=np.float32), "z").T.astype(int).tolist()
    if not isinstance(frame, dict) or frame.get("up") != CANONICAL_UP or \
            frame.get("z_up_to_y_up", turn) != turn:
        raise bad("frame", f"pcea's frame (up {CANONICAL_UP!r}, z-up files turned by {turn})")
    batch = meta.get("batch", "dynamic")
    if batch != "dynamic" and not (is_int(batch) and batch >= 1):
        raise bad("batch", "'dynamic' or a positive integer")

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise PceaFileError(path, f"the graph has {len(inputs)} inputs and {len(outputs)} outputs; "
                                  "a pcea export has one input (points) and one output (logits)")
    shape, out_shape = list(inputs[0].shape or []), list(outputs[0].shape or [])
    expected = [None if batch == "dynamic" else batch, num_points, channels]
    disagree = len(shape) != 3 or any(isinstance(dim, int) and want is not None and dim != want
                                      for dim, want in zip(shape, expected, strict=True))
    if inputs[0].type != "tensor(float)" or len(out_shape) != 2 or disagree:
        raise PceaFileError(path, f"the graph takes {inputs[0].type} {shape} and gives {out_shape}; "
                                  f"its metadata says float (batch, {num_points}, {channels}) -> "
                                  "(batch, classes)")
    if isinstance(out_shape[1], int) and out_shape[1] != len(names):
        raise PceaFileError(path, f"the graph gives {out_shape[1]} classes; its metadata names {len(names)}")
    fixed = batch if batch != "dynamic" else shape[0] if isinstance(shape[0], int) else None
    if fixed and fixed * num_points * channels * 4 > _BATCH_BYTES:
        raise PceaFileError(path, f"a fixed batch of {fixed} clouds of {num_points:,} points needs more "
                                  f"than {_BATCH_BYTES / 2**30:g} GiB per run")
    return OnnxClassifier(session, path, names, num_points, channels, fixed)


# --- the command ---------------------------------------------------------------------------


def _positive(kind):
    """An argparse type: a positive (finite) int or float."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
        return value
    parse.__name__ = kind.__name__
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an .onnx file written by pcea export")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, folders (every file pcea reads below them) or globs ('**' recursive)")
    parser.add_argument("--top-k", type=_positive(int), default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of the point sampling (0, as pcea classify)")
    parser.add_argument("--up", choices=["auto", *UP_AXES], default="auto",
                        help="the files' up axis; auto: what the file declares, else the reading the "
                             "model is more confident in (as pcea classify)")
    parser.add_argument("--batch-size", type=_positive(int), default=32)
    parser.add_argument("--threads", type=_positive(int), help="ONNX Runtime's threads (default: all cores)")
    parser.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT_S,
                        help=f"seconds one batch may run before it is stopped ({DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--max-bytes", type=_positive(int), default=DEFAULT_MAX_BYTES,
                        help="larger input files are refused")
    parser.add_argument("--max-points", type=_positive(int), default=DEFAULT_MAX_POINTS,
                        help="files declaring more points, vertices or faces are refused")
    return parser


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Classify the inputs ``args`` names; the exit status (1 if any input was skipped)."""
    files, unmatched = expand_inputs(args.inputs)
    if not files:
        raise PceaError("no input files: " + "; ".join(map(unmatched_problem, unmatched)))
    model = open_model(args.model, threads=args.threads)
    for text in unmatched:
        print(f"{PROG}: skipped {unmatched_problem(text)}", file=stderr)
    failed = len(unmatched)
    names = [printable(name) for name in model.class_names]
    k = min(args.top_k, len(names))
    for start in range(0, len(files), args.batch_size):
        readings = []  # (path, cloud read y-up or as told, axis or None for the model to choose)
        for path in files[start:start + args.batch_size]:
            axis = declared_up(path) if args.up == "auto" else args.up
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    cloud = load_points(path, model.num_points, args.seed, model.in_channels == 6,
                                        max_bytes=args.max_bytes, max_points=args.max_points, up=axis or "y")
                for warning in caught:
                    print(f"{PROG}: warning: {printable(str(warning.message))}", file=stderr)
                readings.append((path, cloud, axis))
            except PceaError as err:
                failed += 1
                print(f"{PROG}: skipped {printable(str(err))}", file=stderr)
            except MemoryError:
                failed += 1
                print(f"{PROG}: skipped {printable(os.fspath(path))}: out of memory", file=stderr)
        # A file that declares no axis is classified three times more, its other quarter turns, and
        # the model's confidence picks the axis (pcea.geometry.choose_up, as pcea classify does).
        undecided = [i for i, (_, _, axis) in enumerate(readings) if axis is None]
        clouds = [cloud for _, cloud, _ in readings]
        clouds += [turned for i in undecided for turned in quarter_turns(readings[i][1])[1:]]
        probs = model.probabilities(clouds, batch_size=args.batch_size, timeout=args.timeout)
        ups = [(axis, "option" if args.up != "auto" else "file") for _, _, axis in readings]
        for number, i in enumerate(undecided):
            first = len(readings) + 3 * number
            axis, probs[i] = choose_up(np.stack([probs[i], *probs[first:first + 3]]))
            ups[i] = (axis, "model")
        for (path, _, _), (up, up_from), row in zip(readings, ups, probs, strict=False):
            order = np.argsort(-row, kind="stable")[:k]
            if args.json:  # json.dumps escapes control characters itself
                print(json.dumps({"path": os.fspath(path), "up": up, "up_from": up_from, "top_k": [
                    {"class": model.class_names[i], "probability": round(float(row[i]), 6)} for i in order]}),
                    file=stdout)
            else:
                print(printable(os.fspath(path)), f"{up} ({up_from})",
                      "  ".join(f"{names[i]} {row[i]:.4f}" for i in order), file=stdout)
        stdout.flush()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """The ``pcea-onnx`` command: 0, 1 when an input or the model could not be used, 2 for usage."""
    for stream in (sys.stdout, sys.stderr):  # a name the terminal's encoding lacks is escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return run(args, sys.stdout, sys.stderr)
    except PceaError as err:
        print(f"{PROG}: error: {printable(str(err))}", file=sys.stderr)
        return 1
    except ImportError as err:  # onnx or onnxruntime not installed
        print(f"{PROG}: error: {printable(str(err))} (pip install 'pcea[export]')", file=sys.stderr)
        return 1
    except BrokenPipeError:  # | head: the reader has gone; say nothing more
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
