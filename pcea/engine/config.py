"""The training recipe: one dataclass whose defaults are PCT's, read from YAML and CLI flags.

Precedence, lowest first: the dataclass defaults (PCT's ModelNet40 recipe, also
written out in ``configs/pct_modelnet40.yaml``), a ``--config FILE``, then the
command-line flags. The resolved config is stored in the run directory as
``config.yaml`` and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pcea.errors import (
    MAX_POINTS,
    PceaError,
    PceaFileError,
    is_positive_int,
    open_regular,
    positive_int_problem,
    too_large_problem,
)
from pcea.model import PRESETS, ModelConfig

__all__ = ["MAX_SEED", "RUNTIME_KEYS", "TrainConfig", "load_config_file", "max_threads", "max_workers",
           "parse_model_options"]

SelectOn = Literal["val", "test", "last"]

# Options that change how a run executes but not what it computes on the CPU;
# the only ones that may differ when a run is resumed.
RUNTIME_KEYS = ("data", "device", "workers", "threads", "compile")
# Seeds reach scikit-learn's random_state (the validation split), which takes 32 bits.
MAX_SEED = 2**32 - 1
# Settings of the model that the recipe sets itself (from the dataset, the preset, --points and
# --normals): an in_channels or num_points of their own would not fit the clouds the run feeds.
_RECIPE_MODEL_KEYS = ("num_classes", "attention", "in_channels", "num_points")


def max_threads() -> int:
    """The most ``--threads`` accepted: 4 per CPU core (more only adds contention)."""
    return 4 * (os.cpu_count() or 1)


def max_workers() -> int:
    """The most ``--workers`` accepted: 4 per CPU core and at most 64 processes."""
    return min(64, 4 * (os.cpu_count() or 1))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults reproduce PCT's ModelNet40 recipe.

    Attributes:
        data: dataset directory (any layout ``pcea.data.open_dataset`` knows) or
            "synthetic" for the generated pcea-shapes stand-in.
        model: preset name, "pcea" (external attention), "pct" or "pct-sa".
        model_options: overrides of :class:`pcea.model.ModelConfig` fields.
        points: points per cloud (also the model's ``num_points``).
        normals: feed normals as three extra input channels.
        epochs: training epochs.
        batch_size: clouds per optimiser step, summed over all ranks.
        optimizer: "sgd" (momentum SGD, PCT's) or "adamw" (decoupled weight decay).
        lr: peak learning rate.
        min_lr: final learning rate of the cosine annealing.
        warmup_epochs: with 0 (PCT's recipe) the learning rate is cosine-annealed once
            per epoch from ``lr`` to ``min_lr``; above 0 it is set every step instead,
            rising linearly from ``lr / 100`` to ``lr`` over this many epochs (may be
            fractional), then cosine-annealed to ``min_lr`` at the last step.
        momentum: SGD momentum (AdamW's beta1 stays at 0.9).
        weight_decay: weight decay (SGD: L2 added to the gradient; AdamW: decoupled).
        label_smoothing: cross-entropy label smoothing.
        augment: "pct" (anisotropic scale + translation, then shuffling) or "none".
        yaw: rotate every training cloud about the up axis by an angle drawn from
            [-yaw, yaw] degrees before the other augmentation (0: never; 180: any angle),
            so that the model holds up on files in any yaw (docs/robustness.md).
        occlusion: probability that a training cloud loses part of its surface, as a
            scan or a damaged file does: a partial view or holes at a random severity of
            the robustness suite (:class:`pcea.data.corruptions.Occlude`); 0: never.
        init: start from the weights of this checkpoint, run directory or built-in name
            (e.g. "modelnet40") instead of random ones; the classifier layer is replaced
            when the classes differ. None: random initialisation.
        seed: seeds the split, the shuffling, the augmentation and the weights.
        val_split: fraction of the training set held out for model selection
            (stratified); 0 disables validation.
        select_on: which epoch ``best.pt`` holds: best validation OA ("val"),
            best test OA ("test", the papers' protocol, for comparison only) or
            the last epoch ("last").
        device: "auto" (CUDA, then MPS, then CPU), or a torch device string.
        amp: bf16 autocast where the device runs bf16 natively (CUDA, AVX512-BF16/AMX
            CPUs; see :mod:`pcea.precision`), float32 elsewhere.
        compile: ``torch.compile`` the model, falling back to eager on failure.
        threads: CPU threads for torch (None leaves torch's default).
        workers: DataLoader worker processes.
    """

    data: str = "synthetic"
    model: str = "pcea"
    model_options: dict[str, Any] = field(default_factory=dict)
    points: int = 1024
    normals: bool = False
    epochs: int = 250
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    min_lr: float = 1e-4
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    augment: Literal["pct", "none"] = "pct"
    yaw: float = 0.0
    occlusion: float = 0.0
    init: str | None = None
    seed: int = 0
    val_split: float = 0.1
    select_on: SelectOn = "val"
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    threads: int | None = None
    workers: int = 4

    def __post_init__(self) -> None:
        """Check every value's type and range, once, with one message style: ``name=value: problem``.

        Raises:
            PceaError: the first invalid value.
        """
        self._check_types()
        self.model_options = dict(self.model_options)
        checks = [
            (is_positive_int(self.points), positive_int_problem("points", self.points)),
            (not is_positive_int(self.points) or self.points <= MAX_POINTS,
             f"points={self.points}: {too_large_problem(MAX_POINTS)}"),
            (is_positive_int(self.epochs), positive_int_problem("epochs", self.epochs)),
            (self.batch_size >= 2, f"batch_size={self.batch_size}: BatchNorm needs at least 2 per step"),
            (self.lr > 0, f"lr={self.lr}: must be positive"),
            (self.min_lr >= 0, f"min_lr={self.min_lr}: must be 0 or more"),
            (self.optimizer in ("sgd", "adamw"), f"optimizer={self.optimizer!r}: expected 'sgd' or 'adamw'"),
            (0 <= self.warmup_epochs < self.epochs,
             f"warmup_epochs={self.warmup_epochs}: need 0 <= x < epochs ({self.epochs})"),
            (0 <= self.momentum < 1, f"momentum={self.momentum}: need 0 <= x < 1"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay}: must be 0 or more"),
            (0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing}: need 0 <= x < 1"),
            (0 <= self.seed <= MAX_SEED, f"seed={self.seed}: need 0 <= seed <= {MAX_SEED} (2**32 - 1)"),
            (0 <= self.val_split < 1, f"val_split={self.val_split}: need 0 <= x < 1"),
            (self.select_on in ("val", "test", "last"),
             f"select_on={self.select_on!r}: expected 'val', 'test' or 'last'"),
            (self.augment in ("pct", "none"), f"augment={self.augment!r}: expected 'pct' or 'none'"),
            (0 <= self.yaw <= 180, f"yaw={self.yaw}: need 0 <= x <= 180 (degrees)"),
            (0 <= self.occlusion <= 1, f"occlusion={self.occlusion}: need 0 <= x <= 1 (a probability)"),
            (0 <= self.workers <= max_workers(),
             f"workers={self.workers}: need 0 to {max_workers()} on this machine "
             f"({os.cpu_count() or 1} CPUs; at most 4 per CPU and 64)"),
            (self.threads is None or 1 <= self.threads <= max_threads(),
             f"threads={self.threads}: need 1 to {max_threads()} on this machine "
             f"({os.cpu_count() or 1} CPUs; at most 4 per CPU)"),
            (self.select_on != "val" or self.val_split > 0,
             "select_on='val' needs val_split > 0; use --select-on last or test"),
        ]
        for ok, message in checks:
            if not ok:
                raise PceaError(message)
        self._check_model()

    def _check_types(self) -> None:
        """Strict types: an integer setting refuses 2.5 and true, a number refuses "1" and inf, a
        switch refuses "no" (a YAML string; unquoted ``no`` is false)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_KINDS[f.name]
            if kind == "int":
                ok, expected = _is_int(value), "an integer"
            elif kind == "int?":
                ok, expected = value is None or _is_int(value), "an integer or null"
            elif kind == "number":
                ok, expected = _is_number(value) and math.isfinite(value), "a finite number"
            elif kind == "bool":
                ok, expected = isinstance(value, bool), "true or false"
            elif kind == "str":
                ok, expected = isinstance(value, str) and value != "", "a non-empty string"
            elif kind == "str?":
                ok, expected = value is None or (isinstance(value, str) and value != ""), \
                    "a non-empty string or null"
            else:  # "dict": model_options
                ok = value is None or (isinstance(value, dict) and all(isinstance(k, str) for k in value))
                expected = "a mapping of model settings, e.g. {memory: 32}"
            if not ok:
                raise PceaError(f"{f.name}={value!r}: expected {expected}")
        if self.model_options is None:
            self.model_options = {}

    def _check_model(self) -> None:
        """Build the model's config (not the model) now, so that a bad option fails before a run
        directory is created or data is read."""
        if self.model not in PRESETS:
            raise PceaError(f"model={self.model!r}: expected one of {', '.join(repr(p) for p in PRESETS)}")
        fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(_RECIPE_MODEL_KEYS)
        unknown = sorted(set(self.model_options) - fields)
        if unknown:
            raise PceaError(f"model_options: unknown model option(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(fields))}")
        options = {"num_points": self.points, "in_channels": 6 if self.normals else 3, **self.model_options}
        try:
            dataclasses.replace(PRESETS[self.model], num_classes=2, **options)  # what build_model builds
        except (ValueError, TypeError) as err:
            raise PceaError(f"model {self.model!r}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping, naming ``source`` for any unknown key.

        Raises:
            PceaError: an unknown key or an invalid value.
        """
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise PceaError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except (TypeError, PceaError) as err:
            raise PceaError(f"{source}: {err}") from None

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def summary(self) -> str:
        """The settings that differ from the defaults (PCT's recipe), as ``key=value`` lines of
        at most ~100 characters: what the start of a run prints instead of the whole config."""
        defaults = TrainConfig().to_dict()
        changed = [f"{key}={_short(value)}" for key, value in self.to_dict().items()
                   if value != defaults[key]]
        lines, line = [], ""
        for item in changed or ["(none: PCT's recipe)"]:
            if line and len(line) + len(item) > 96:
                lines.append(line)
                line = ""
            line = f"{line}  {item}" if line else item
        return "\n".join([*lines, line])


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


_FIELD_KINDS = {"data": "str", "model": "str", "model_options": "dict", "points": "int", "normals": "bool",
                "epochs": "int", "batch_size": "int", "optimizer": "str", "lr": "number", "min_lr": "number",
                "warmup_epochs": "number", "momentum": "number", "weight_decay": "number",
                "label_smoothing": "number", "augment": "str", "yaw": "number", "occlusion": "number",
                "init": "str?", "seed": "int", "val_split": "number",
                "select_on": "str", "device": "str", "amp": "bool", "compile": "bool", "threads": "int?",
                "workers": "int"}
# YAML 1.1 (PyYAML) reads 1e-4 as a string: it wants a dot (1.0e-4). Accept the usual spelling.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_numbers(value: Any) -> Any:
    """``value`` with YAML-1.1 exponent strings like ``"1e-4"`` read as the floats they mean."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    return value


# A config file is a few hundred bytes; 1 MiB stops a /dev/zero or a huge file in its place.
MAX_CONFIG_BYTES = 2**20
# configs/ nests two levels (model_options: {centers: [...]}); 20 levels is any sane config and stops
# thousands of nested brackets long before Python's recursion limit.
MAX_YAML_DEPTH = 20
_MAX_INT_CHARS = 40  # 2**64 has 20 digits; room for underscores and a sign


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without the parts a settings file never needs and an attacker can use.

    Anchors and aliases are refused (a "billion laughs" file of 544 bytes expands without end
    through them), nesting is bounded (the composer recurses once per level), and dates are
    not read as dates (``2001-02-30`` is a string, which the settings' type checks then name,
    rather than a ValueError from datetime).
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not "
                                              "allowed in pcea settings", event.start_mark)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                              event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        # Python refuses int() of more than 4,300 digits with advice a user cannot act on.
        if len(node.value) > _MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} characters (at most {_MAX_INT_CHARS})",
                node.start_mark)
        return super().construct_yaml_int(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_yaml(text: str) -> Any:
    """Parse pcea settings; every failure is a ValueError of one line (the caller names the source).

    Besides YAML syntax errors this turns what PyYAML's constructors may still raise on
    well-formed text (ValueError, OverflowError) into the same one line.
    """
    try:
        return _yaml_numbers(yaml.load(text, Loader=_ConfigLoader))
    except yaml.MarkedYAMLError as err:
        where = f" at line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}" \
            if err.problem_mark else ""
        raise ValueError(f"{err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                         ) from None
    except (ValueError, OverflowError, RecursionError) as err:
        raise ValueError(str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                         ) from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict of settings (not yet validated).

    Only a regular file of at most :data:`MAX_CONFIG_BYTES` is read (a FIFO would block, a device
    never end), and it is parsed by :class:`_ConfigLoader` (no aliases, bounded nesting).

    Raises:
        PceaFileError: missing, not a regular file, too large, unreadable, not YAML, not a mapping,
            or an unknown key (naming it and the file).
    """
    path = Path(path)
    fd, size = open_regular(path, MAX_CONFIG_BYTES, "config file", "pcea.engine.config.MAX_CONFIG_BYTES")
    try:
        with os.fdopen(fd, "rb") as f:
            text = f.read(size).decode("utf-8")  # at most what fstat reported
    except OSError as err:
        raise PceaFileError(path, f"cannot read the config: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PceaFileError(path, "not a text file") from None
    try:
        values = _load_yaml(text)
    except ValueError as err:
        raise PceaFileError(path, f"not valid YAML settings ({err})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PceaFileError(path, f"expected a mapping of settings, got {type(values).__name__}")
    unknown = sorted(str(k) for k in set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise PceaFileError(path, f"unknown setting(s) {', '.join(unknown)}")
    return values


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """``["memory=32", "centers=[256, 128]"]`` -> ``{"memory": 32, "centers": [256, 128]}``.

    Values are parsed as YAML settings (as a config file is), so numbers, lists and strings all
    work; their types and ranges are checked where the config is built (:class:`TrainConfig`).

    Raises:
        PceaError: an item without ``=``, or a value that is not valid YAML.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PceaError(f"--model-opt {item!r}: expected KEY=VALUE, e.g. memory=32")
        try:
            options[key.strip()] = _load_yaml(value)
        except ValueError as err:
            shown = item if len(item) <= 60 else item[:57] + "..."
            raise PceaError(f"--model-opt {shown!r}: cannot parse the value ({err})") from None
    return options
