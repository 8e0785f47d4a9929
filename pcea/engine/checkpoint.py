"""Checkpoint files: atomic writes, a SHA-256 over the payload, loading that never runs code.

A pcea checkpoint file is a short text header followed by the payload, which is
``torch.save`` of a dict of plain types and tensors::

    PCEA-CHECKPOINT/1 <sha256 of payload, hex> <payload length in bytes>\\n
    <payload bytes>

The header lets :func:`load_checkpoint` tell a truncated file (fewer bytes than
announced) from an altered one (a different hash) before unpickling anything,
and the payload is then read with ``torch.load(weights_only=True)``, whose
restricted unpickler refuses any object that is not a tensor or a plain
container, so a file crafted to run code on load is rejected without running it.

Payload keys (the contract with ``pcea.load_model`` and ``pcea eval``):
"format" ("pcea-checkpoint/1"), "model" (state_dict), "model_name",
"model_config" (dict), "class_names" (list[str]), "train_config" (dict),
"epoch" (int, epochs completed), "optimizer", "scheduler", "rng", "stream_seed" (int, what the
run's order, augmentation, mixing and dropout draw from: :func:`pcea.engine.splits.stream_seed`;
files from before it was recorded drew from their seed), "metrics"
(dict), "protocol" (str); a run with ``ema`` adds "train_model" (the weights being trained, a
state_dict; "model" is then their average) and "ema_updates" (int). :func:`check_payload` checks
the keys the code reads as they are (names, epoch, metrics) and the outline of the states that
``load_state_dict`` and :func:`set_rng_state` check in full, so :func:`load_latest` falls back from
a malformed file; the model config is checked by building it, and the weights' shapes against it.

Only regular files of at most :data:`MAX_CHECKPOINT_BYTES` (4 GiB; a checkpoint of the
``pcea`` preset, 2.67 M parameters with their SGD momentum, is 21.5 MB) are read: a FIFO,
a device such as ``/dev/zero`` or a huge sparse file is refused before a byte of it is read.

The model's side of a checkpoint is a symmetric pair: :func:`model_payload` is what a
model contributes to the payload it is saved in ("model", "model_name", "model_config",
"class_names", "up"), and :func:`open_checkpoint` rebuilds the model from exactly those
keys (``pcea.load_model`` and ``pcea eval`` open checkpoints through it);
:func:`resolve_checkpoint` says which file a run directory or a built-in name means.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from pcea.atomic import atomic_write_bytes, replacing
from pcea.engine.distributed import resolve_device
from pcea.errors import PceaFileError, is_int, open_regular
from pcea.geometry import CANONICAL_UP
from pcea.model import PRESETS, ModelConfig, PCTClassifier
from pcea.weights import builtin_path, is_builtin

__all__ = [
    "FORMAT",
    "MAGIC",
    "MAX_CHECKPOINT_BYTES",
    "MODEL_KEYS",
    "PREVIOUS_SUFFIX",
    "RESUME_KEYS",
    "atomic_write_bytes",
    "check_payload",
    "check_resumed_state",
    "load_checkpoint",
    "load_latest",
    "model_payload",
    "open_checkpoint",
    "previous_path",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "save_classifier",
    "set_rng_state",
]

FORMAT = "pcea-checkpoint/1"
MAGIC = b"PCEA-CHECKPOINT/1"
PREVIOUS_SUFFIX = ".prev.pt"
_MAX_HEADER = 128  # magic + space + 64 hex digits + space + length + newline fits easily
MAX_CHECKPOINT_BYTES = 4 * 2**30
MODEL_KEYS = ("model", "model_config")  # what rebuilding the model needs (pcea.load_model, eval)
FED_CHANNELS = (3, 6)  # what pcea's readers and datasets give a model: xyz, or xyz and normals
RESUME_KEYS = ("model", "model_name", "model_config", "class_names", "train_config", "epoch", "optimizer",
               "scheduler", "rng", "metrics")  # what --resume needs

_PLAIN = (type(None), bool, int, float, str, bytes, torch.Tensor)


def _check_plain(obj, where: str = "payload") -> None:
    """Raise TypeError if ``obj`` holds anything the weights-only unpickler would refuse.

    Catching this at save time means a bug in pcea cannot write a checkpoint
    that only fails much later, when somebody tries to load it.
    """
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int | float | bool | type(None)):
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} is not plain")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not a plain type or a tensor")


def previous_path(path: str | os.PathLike) -> Path:
    """Where the previous version of a checkpoint is kept: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(path.stem + PREVIOUS_SUFFIX)


def _keep_previous(path: Path) -> None:
    """Make ``previous_path(path)`` a complete copy of the current ``path``, atomically.

    A hard link costs nothing; where links are not supported the file is copied.
    Either way it goes through a temporary name, so a kill at any moment leaves
    a complete ``last.pt`` and a complete (or the older) ``last.prev.pt``.
    """
    if not path.is_file():
        return
    with replacing(previous_path(path)) as tmp:
        tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)


def train_seconds(payload: dict) -> float:
    """The training time a checkpoint records: its epochs' own times summed, to 0.1 s (a run stopped
    and resumed across sessions counts every epoch once; 0 for a checkpoint without a history)."""
    history = payload.get("metrics", {}).get("history", [])
    return round(sum(row.get("time_s", 0.0) for row in history), 1)


def save_checkpoint(path: str | os.PathLike, payload: dict, *, keep_previous: bool = False) -> Path:
    """Serialise ``payload`` with its SHA-256 and write it atomically.

    Args:
        path: destination, e.g. ``runs/NAME/last.pt``.
        payload: dict of plain types and tensors (see the module docstring for the
            keys); "format" is filled in if missing.
        keep_previous: first keep the current file as ``<stem>.prev.pt`` so that
            ``--resume`` has a fallback if the new file is ever found damaged.

    Returns:
        The path written.

    Raises:
        TypeError: the payload holds something that would not load with
            ``weights_only=True`` (a bug in the caller, not a user mistake).
        ValueError: a model tensor holds NaN or infinity (the trainer stops before that).
        PceaFileError: the file cannot be written (read-only directory, disk full).
    """
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    _check_plain(payload)
    for name, tensor in (payload.get("model") or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() \
                and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: refusing to save non-finite weights ({name})")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    header = MAGIC + b" " + digest.encode("ascii") + b" " + str(len(body)).encode("ascii") + b"\n"
    try:
        if keep_previous:
            _keep_previous(path)
        atomic_write_bytes(path, header + body)
    except OSError as err:
        raise PceaFileError(path, f"cannot write the checkpoint: {err.strerror or err}") from None
    return path


def _read_verified(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> bytes:
    """The payload bytes of a checkpoint file after checking its length and SHA-256."""
    fd, size = open_regular(path, max_bytes, "checkpoint file", "pcea.engine.checkpoint.MAX_CHECKPOINT_BYTES")
    try:
        with os.fdopen(fd, "rb") as f:
            header = f.readline(_MAX_HEADER)
            body = f.read(size)  # at most what fstat reported: a file that grows is not followed
    except OSError as err:
        raise PceaFileError(path, f"cannot read the checkpoint: {err.strerror or err}") from None
    parts = header.rstrip(b"\n").split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC or not header.endswith(b"\n"):
        if not header:
            raise PceaFileError(path, "empty file, not a pcea checkpoint")
        raise PceaFileError(
            path, f"not a pcea checkpoint (no '{MAGIC.decode()}' header); only checkpoints "
            "written by pcea are loaded"
        )
    expected_hash, length = parts[1].decode("ascii", "replace"), parts[2]
    if not length.isdigit() or len(expected_hash) != 64:
        raise PceaFileError(path, "damaged checkpoint header")
    if len(body) < int(length):
        raise PceaFileError(path, f"truncated checkpoint: {len(body)} of {int(length)} payload bytes")
    if len(body) > int(length):
        extra = len(body) - int(length)
        raise PceaFileError(path, f"altered checkpoint: {extra} bytes more than its header says")
    if hashlib.sha256(body).hexdigest() != expected_hash:
        raise PceaFileError(path, "altered or corrupted checkpoint: its SHA-256 does not match the header")
    return body


def _refused_global(message: str) -> str:
    """The line of torch's weights-only error that names the refused object, if any.

    The rest of that message suggests retrying with ``weights_only=False``, which
    is exactly what must not be done with an untrusted file, so it is not shown.
    """
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return f" ({line.strip()[:200]})"
    return ""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _state_dict(value) -> bool:
    return _str_dict(value) and all(isinstance(tensor, torch.Tensor) for tensor in value.values())


def _metrics_ok(value) -> bool:
    if not _str_dict(value):
        return False
    history, best = value.get("history"), value.get("best")
    return (isinstance(history, list) and all(_str_dict(row) and is_int(row.get("epoch")) for row in history)
            and _str_dict(best) and (best.get("epoch") is None or is_int(best.get("epoch")))
            and _is_number(best.get("score")))


# What each payload key must hold: (test, description for the error). "format" is compared by
# load_checkpoint, "model_config" checked by ModelConfig, "up" compared by open_checkpoint.
_KEY_TYPES = {
    "model": (_state_dict, "a mapping of parameter names to tensors"),
    "model_name": (lambda v: isinstance(v, str), "a string"),
    "train_model": (_state_dict, "a mapping of parameter names to tensors"),
    "ema_updates": (lambda v: is_int(v) and v >= 0, "a non-negative integer"),
    "class_names": (lambda v: isinstance(v, list | tuple) and all(isinstance(n, str) for n in v),
                    "a list of strings"),
    "train_config": (_str_dict, "a mapping of training settings"),
    "epoch": (lambda v: is_int(v) and v >= 0, "a non-negative integer"),
    "optimizer": (lambda v: _str_dict(v) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), "an optimizer state (state, param_groups)"),
    "scheduler": (_str_dict, "a scheduler state"),
    # The parts' kinds too, so that a malformed file falls back to last.prev.pt before resuming.
    "rng": (lambda v: _str_dict(v) and {"python", "numpy", "torch", "loader"} <= set(v)
            and isinstance(v["python"], tuple | list) and _str_dict(v["numpy"])
            and isinstance(v["torch"], torch.Tensor) and isinstance(v["loader"], torch.Tensor),
            "the random states (python, numpy, torch, loader)"),
    "stream_seed": (lambda v: is_int(v) and v >= 0, "a non-negative integer"),
    "metrics": (_metrics_ok, "metrics with a history of epochs and the best epoch"),
    "protocol": (lambda v: isinstance(v, str), "a string"),
}
_ALWAYS_CHECKED = ("model", "model_name", "class_names", "train_config", "epoch", "protocol", "train_model",
                   "ema_updates", "stream_seed")


def check_payload(payload: dict, path: str | os.PathLike, require: tuple[str, ...] = ()) -> dict:
    """Check that a loaded payload holds the keys a caller needs, each of the right type.

    Args:
        payload: what :func:`load_checkpoint` unpickled.
        path: the file, for the message.
        require: keys that must be present (:data:`MODEL_KEYS`, :data:`RESUME_KEYS`); these
            and the simple keys (names, training config, epoch) are type-checked whenever present.

    Returns:
        ``payload``.

    Raises:
        PceaFileError: a required key is missing or a key holds the wrong type.
    """
    missing = [key for key in require if key not in payload]
    if missing:
        raise PceaFileError(path, f"malformed checkpoint: no {', '.join(repr(k) for k in missing)} entry")
    for key in dict.fromkeys((*_ALWAYS_CHECKED, *require)):
        if key in payload and key in _KEY_TYPES:
            ok, expected = _KEY_TYPES[key]
            if not ok(payload[key]):
                found = type(payload[key]).__name__
                raise PceaFileError(path, f"malformed checkpoint: {key!r} is not {expected} "
                                          f"(found a {found})")
    return payload


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    require: tuple[str, ...] = (), max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Args:
        path: the checkpoint file.
        map_location: where tensors go; the CPU by default.
        require: payload keys the caller needs (see :func:`check_payload`).
        max_bytes: larger files are refused before they are read.

    Returns:
        The payload dict (see the module docstring for its keys).

    Raises:
        PceaFileError: missing, not a regular file, too large, truncated, altered, not a
            pcea checkpoint, holding objects other than tensors and plain types (a file
            crafted to run code on load is refused here, before any of its code runs), or
            a payload without the required keys or with wrongly typed ones.
    """
    path = Path(path)
    body = _read_verified(path, max_bytes)
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise PceaFileError(
            path, "refused: the checkpoint holds objects other than tensors and plain types, "
            f"which could run code when loaded{_refused_global(str(err))}"
        ) from None
    except Exception as err:  # any failure of the reader means a bad file here
        raise PceaFileError(path, f"unreadable checkpoint payload ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise PceaFileError(path, f"unsupported checkpoint format {found!r}, expected {FORMAT!r}")
    return check_payload(payload, path, require)


def model_payload(model: PCTClassifier, *, model_name: str) -> dict:
    """What a model contributes to the checkpoint it is saved in; :func:`open_checkpoint` reads it back.

    Args:
        model: the classifier (plain or accelerated: the state_dict keys are the same), with
            ``class_names`` set.
        model_name: the preset it was built from ("pcea", "pct", "pct-sa").

    Returns:
        ``{"model", "model_name", "model_config", "class_names", "up"}``: the weights, the config
        that rebuilds the module, the class names in output order and the frame it was trained
        in (:data:`pcea.geometry.CANONICAL_UP`). A training run adds its own keys to this.
    """
    return {
        "model": model.state_dict(),
        "model_name": model_name,
        "model_config": model.config.to_dict(),
        "class_names": [str(name) for name in model.class_labels()],
        "up": CANONICAL_UP,
    }


def save_classifier(path: str | os.PathLike, model: PCTClassifier, *, extra: dict | None = None) -> Path:
    """Write ``model`` as a checkpoint that :func:`pcea.load_model` reads back: its inverse.

    Args:
        path: the file, written atomically with its SHA-256 (see :func:`save_checkpoint`).
        model: the classifier, plain or accelerated; a model without ``class_names`` is saved
            with ``class0``, ``class1``, ... (:meth:`PCTClassifier.class_labels`).
        extra: more payload keys ("epoch", "train_config", ...; see the module docstring).

    Returns:
        The path written.
    """
    preset = next(name for name, config in PRESETS.items() if config.attention == model.config.attention)
    return save_checkpoint(path, {**model_payload(model, model_name=preset), **(extra or {})})


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file a path names: the file itself, a run directory's best.pt (else last.pt),
    or the weights shipped with pcea when it is a built-in name such as "modelnet40"
    (:mod:`pcea.weights`; a file or directory of that name takes precedence).

    Raises:
        PceaFileError: the path does not exist, or is a directory without a checkpoint.
    """
    if is_builtin(checkpoint):
        return builtin_path(checkpoint)
    path = Path(checkpoint)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise PceaFileError(path, "run directory without best.pt or last.pt")
    if not path.exists():
        raise PceaFileError(path, "no such checkpoint file or run directory")
    return path


def _check_shapes(model_config: ModelConfig, state: dict, path: Path) -> None:
    """Refuse weights that do not fit the model ``model_config`` builds, before building it.

    The model is first built on PyTorch's "meta" device, which allocates nothing, so a config
    that declares 3 million classes or a huge layer costs no memory unless the file holds
    weights of that size too: the model's memory is bounded by the checkpoint's.
    """
    with torch.device("meta"):
        skeleton = PCTClassifier(model_config)
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    stored = {key: tuple(value.shape) for key, value in state.items()}
    problem = None
    if missing := sorted(set(expected) - set(stored)):
        problem = f"no weights for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    elif extra := sorted(set(stored) - set(expected)):
        problem = f"unexpected weights {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
    else:
        wrong = [key for key in expected if expected[key] != stored[key]]
        if wrong:
            problem = (f"{wrong[0]} is {list(stored[wrong[0]])} in the file, {list(expected[wrong[0]])} "
                       "for the stored model config")
    if problem:
        raise PceaFileError(path, f"the stored weights do not fit the stored model config: {problem}")


def open_checkpoint(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> tuple[PCTClassifier, dict, Path]:
    """Rebuild the model stored in a checkpoint (see :func:`model_payload`), and return the rest too.

    Args:
        checkpoint: a checkpoint file, a run directory or a built-in name (see
            :func:`resolve_checkpoint`).
        device: where the model goes.

    Returns:
        (the plain model in eval mode with ``class_names`` and ``up`` set, the checkpoint
        payload, the file loaded).

    Raises:
        PceaFileError: missing, damaged or unsafe file, weights that do not fit the stored config,
            or a model trained in another frame than pcea's y-up one.
    """
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path, require=MODEL_KEYS)  # keys and their types checked
    try:
        model_config = ModelConfig(**payload["model_config"])
    except (TypeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PceaFileError(path, f"malformed checkpoint: its model_config is invalid: {first_line}"
                            ) from None
    if model_config.in_channels not in FED_CHANNELS:
        raise PceaFileError(path, f"malformed checkpoint: in_channels={model_config.in_channels}, but pcea "
                                  "feeds a model 3 (xyz) or 6 (xyz and normals) channels")
    # A model saved from inside DistributedDataParallel or torch.compile has prefixed keys.
    state = {key.removeprefix("module.").removeprefix("_orig_mod."): value
             for key, value in payload["model"].items()}
    _check_shapes(model_config, state, path)  # before the model is allocated: its size is then the file's
    try:
        model = PCTClassifier(model_config)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PceaFileError(path, f"the stored weights do not fit the stored model config: {first_line}"
                            ) from None
    up = payload.get("up", CANONICAL_UP)  # checkpoints before the frame was recorded: pcea-shapes, y-up
    if up != CANONICAL_UP:
        raise PceaFileError(path, f"trained in a {up}-up frame; pcea feeds models {CANONICAL_UP}-up clouds")
    model.up = up
    names = payload.get("class_names")
    model.class_names = [str(name) for name in names] if names else model.class_labels()
    if len(model.class_names) != model.config.num_classes:
        raise PceaFileError(path, f"{len(model.class_names)} class names for "
                            f"{model.config.num_classes} outputs")
    return model.to(resolve_device(device)).eval(), payload, path


def load_latest(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                require: tuple[str, ...] = ()) -> tuple[Path, dict, list[str]]:
    """Load ``path``, or its ``.prev.pt`` fallback when ``path`` is damaged, malformed or missing.

    Args:
        path: usually ``runs/NAME/last.pt``.
        map_location: where tensors go.
        require: payload keys the caller needs (see :func:`check_payload`).

    Returns:
        (the file actually loaded, its payload, one message per file that was
        skipped, for the caller to show).

    Raises:
        PceaFileError: neither file loads; the message names both problems.
    """
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, previous_path(path)):
        try:
            return candidate, load_checkpoint(candidate, map_location=map_location, require=require), problems
        except PceaFileError as err:
            problems.append(str(err))
    raise PceaFileError(path, "no usable checkpoint to resume from: " + "; ".join(problems))


def check_resumed_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                        path: str | os.PathLike) -> None:
    """After ``load_state_dict``: refuse an optimiser or scheduler state that loaded but would break.

    ``load_state_dict`` checks little (the number of parameters, not their states' shapes or the
    hyperparameters' types), so a crafted state fails only at the first step. This takes that step:
    the optimiser on a copy of its parameters with zero gradients, and the scheduler's next
    learning rates (without stepping it).

    Raises:
        PceaFileError: naming ``path`` and the first problem.
    """
    def refuse(err: Exception | str) -> PceaFileError:
        if not isinstance(err, str):
            err = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"
        return PceaFileError(path, f"malformed checkpoint: its optimizer or scheduler state would break "
                                   f"training ({err})")

    try:  # the optimiser's first step, on copies of the parameters
        copies = [[param.detach().clone().requires_grad_(True) for param in group["params"]]
                  for group in optimizer.param_groups]
        trial = type(optimizer)([{"params": params} for params in copies])  # the state sets the rest
        trial.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # shared tensors would be stepped too
        for params in copies:
            for param in params:
                param.grad = torch.zeros_like(param)
        trial.step()
    except Exception as err:  # any failure of this step would be the first training step's
        raise refuse(err) from None
    if not all(torch.isfinite(param).all() for params in copies for param in params):
        raise refuse("one step makes the weights non-finite")
    epoch = scheduler.last_epoch
    try:  # what the next scheduler.step() computes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "use get_last_lr()": not called from step(), on purpose
            scheduler.last_epoch = epoch + 1
            rates = list(scheduler.get_lr())
    except Exception as err:
        raise refuse(err) from None
    finally:
        scheduler.last_epoch = epoch
    groups = len(optimizer.param_groups)
    for name, values in (("next learning rates", rates), ("base learning rates", scheduler.base_lrs)):
        if not isinstance(values, list) or len(values) != groups or not all(
                isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate)
                and rate >= 0 for rate in values):
            raise refuse(f"{name} {values!r:.80}, expected {groups} finite number(s) >= 0")


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every random state a run depends on (Python, NumPy, torch, CUDA, the loader's
    generator), in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved.

    Raises:
        KeyError, TypeError, ValueError, RuntimeError: a state that is not :func:`rng_state`'s, as
            Python, NumPy and torch refuse it (the caller names the checkpoint).
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    except OverflowError as err:  # an integer beyond C's unsigned long
        raise ValueError(f"Python random state: {err}") from None
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np.asarray(state["numpy"]["key"]).astype(np.uint32), "pos": state["numpy"]["pos"]},
        "has_gauss": state["numpy"]["has_gauss"],
        "gauss": state["numpy"]["gauss"],
    })
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

