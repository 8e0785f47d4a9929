"""The training recipe: one dataclass whose defaults are PCT's, read from YAML and CLI flags.

Precedence, lowest first: the dataclass defaults (PCT's ModelNet40 recipe, also
written out in ``configs/pct_modelnet40.yaml``), a ``--config FILE``, then the
command-line flags. The resolved config is stored in the run directory as
``config.yaml`` and inside every checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
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
    too_large_problem,
)
from pcea.model import PRESETS, ModelConfig

__all__ = ["MAX_SEED", "RUNTIME_KEYS", "Setting", "TrainConfig", "load_config_file", "max_threads",
           "max_workers", "parse_model_options", "settings"]

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


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# A setting's check beyond its type: ``check(value, config)`` is None when the value is fine, else the
# problem, which TrainConfig words as ``name=value: problem``. ``config`` is for relations to fields
# above it (warmup_epochs < epochs), which are checked first.
Check = Callable[[Any, "TrainConfig"], "str | None"]
# Group titles of ``pcea train --help``, in the order they are shown.
DATA, OPTIMISATION, AUGMENTATION, SELECTION, RUNNING = (
    "data and model", "optimisation", "augmentation", "model selection", "where and how it runs")


def _setting(default: Any = dataclasses.MISSING, help: str = "", *, group: str, check: Check | None = None,
             metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A :class:`TrainConfig` field with everything that describes it beside it: its ``help`` (the
    setting's documentation and its flag's help), its ``group`` in ``pcea train --help``, its
    ``check`` beyond its type and its flag's ``metavar``. Its type check comes from its annotation."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "group": group, "check": check, "metavar": metavar})


def _count(at_most: int | None = None) -> Check:
    """A count (:func:`pcea.errors.is_positive_int`, worded as every count in pcea), at most ``at_most``."""
    def check(value: Any, config: TrainConfig) -> str | None:
        if not is_positive_int(value):
            return "expected a positive integer"
        return too_large_problem(at_most) if at_most is not None and value > at_most else None

    return check


def _between(low: float, high: float, *, below_high: bool = False, unit: str = "") -> Check:
    """``low <= x <= high`` (``< high`` with ``below_high``); ``unit`` ends the message: " (degrees)"."""
    def check(value: Any, config: TrainConfig) -> str | None:
        ok = low <= value < high if below_high else low <= value <= high
        return None if ok else f"need {low} <= x {'<' if below_high else '<='} {high}{unit}"

    return check


def _seed_check(name: str) -> Check:
    """A seed numpy and scikit-learn accept, ``0 <= x <= MAX_SEED``; None (unset) passes."""
    def check(value: Any, config: TrainConfig) -> str | None:
        ok = value is None or 0 <= value <= MAX_SEED
        return None if ok else f"need 0 <= {name} <= {MAX_SEED} (2**32 - 1)"

    return check


def _at_least_zero(value: Any, config: TrainConfig) -> str | None:
    return None if value >= 0 else "must be 0 or more"


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults reproduce PCT's ModelNet40 recipe.

    Each field is described where it is declared: its annotation is its type check (an
    integer refuses 2.5 and true, a number refuses "1" and inf, a switch refuses "no", a
    Literal its other values), its ``help`` documents it (and is the help of its ``pcea
    train`` flag, ``--batch-size`` for ``batch_size``), and its ``check`` bounds it. A new
    setting is one field; :func:`settings` lists them as the checks and the flags see them.
    """

    data: str = _setting("synthetic", "dataset directory (any layout pcea.data.open_dataset knows), or "
                         "'synthetic' for the generated pcea-shapes stand-in", group=DATA)
    model: str = _setting("pcea", "preset: 'pcea' (external attention), 'pct' (offset attention) or 'pct-sa' "
                          "(self-attention)", group=DATA, metavar="{" + ",".join(PRESETS) + "}",
                          check=lambda value, config: None if value in PRESETS else
                          f"expected one of {', '.join(repr(p) for p in PRESETS)}")
    model_options: dict[str, Any] = _setting(
        help="overrides of pcea.model.ModelConfig fields, e.g. {memory: 32}", group=DATA,
        default_factory=dict)
    points: int = _setting(1024, "points per cloud (also the model's num_points)", group=DATA,
                           check=_count(MAX_POINTS))
    normals: bool = _setting(False, "feed normals as three extra input channels", group=DATA)
    epochs: int = _setting(250, "training epochs", group=OPTIMISATION, check=_count())
    batch_size: int = _setting(32, "clouds per optimiser step, summed over all processes", group=OPTIMISATION,
                               check=lambda value, config: None if value >= 2 else
                               "BatchNorm needs at least 2 per step")
    optimizer: Literal["sgd", "adamw"] = _setting("sgd", "sgd (momentum SGD, PCT's) or adamw (decoupled "
                                                  "weight decay)", group=OPTIMISATION)
    lr: float = _setting(0.01, "peak learning rate", group=OPTIMISATION,
                         check=lambda value, config: None if value > 0 else "must be positive")
    min_lr: float = _setting(1e-4, "final learning rate of the cosine annealing", group=OPTIMISATION,
                             check=_at_least_zero)
    warmup_epochs: float = _setting(
        0.0, "with 0 (PCT's recipe) the learning rate is cosine-annealed once per epoch from lr to min_lr; "
        "above 0 it is set every step instead, rising linearly from lr / 100 to lr over this many epochs "
        "(may be fractional), then cosine-annealed to min_lr at the last step", group=OPTIMISATION,
        check=lambda value, config: None if 0 <= value < config.epochs else
        f"need 0 <= x < epochs ({config.epochs})")
    momentum: float = _setting(0.9, "SGD momentum (AdamW's beta1 stays at 0.9)", group=OPTIMISATION,
                               check=_between(0, 1, below_high=True))
    weight_decay: float = _setting(5e-4, "weight decay (SGD: L2 added to the gradient; AdamW: decoupled)",
                                   group=OPTIMISATION, check=_at_least_zero)
    label_smoothing: float = _setting(0.2, "cross-entropy label smoothing", group=OPTIMISATION,
                                      check=_between(0, 1, below_high=True))
    ema: float = _setting(0.0, "decay of an exponential moving average of the weights and BatchNorm "
                          "statistics, updated after every step (e.g. 0.999); validation, best.pt, the test "
                          "figures and the saved model use the average (0: off)", group=OPTIMISATION,
                          check=_between(0, 1, below_high=True), metavar="DECAY")
    balanced: bool = _setting(False, "class-balanced sampling: each epoch draws as many training clouds as "
                              "the split holds, with replacement, each class equally often (for datasets "
                              "whose classes differ in size; raises mAcc)", group=OPTIMISATION)
    augment: Literal["pct", "none"] = _setting("pct", "pct (anisotropic scale + translation, then "
                                               "shuffling) or none", group=AUGMENTATION)
    scale: float = _setting(1.5, "pct's per-axis scale factors are drawn from [1/S, S] (1.5: PCT's [2/3, "
                            "3/2]); a larger S stretches the shapes further out of proportion, as the "
                            "robustness suite's scale corruption does (up to 2.0)", group=AUGMENTATION,
                            check=_between(1, 4), metavar="S")
    yaw: float = _setting(0.0, "rotate every training cloud about the up axis by an angle drawn from "
                          "[-yaw, yaw] degrees before the other augmentation (0: never; 180: any angle), so "
                          "that the model holds up on files in any yaw (docs/robustness.md)",
                          group=AUGMENTATION, check=_between(0, 180, unit=" (degrees)"), metavar="DEGREES")
    tilt: float = _setting(0.0, "lean every training cloud off the up axis by angles about the two "
                           "horizontal axes, each drawn from [-tilt, tilt] degrees, before the yaw, as a "
                           "scan that was not levelled is (pcea.data.transforms.Tilt; the suite's rotate "
                           "corruption goes to 30); 0: never", group=AUGMENTATION,
                           check=_between(0, 90, unit=" (degrees)"), metavar="DEGREES")
    occlusion: float = _setting(0.0, "probability that a training cloud loses part of its surface, as a "
                                "scan or a damaged file does: a partial view or holes at a random severity "
                                "of the robustness suite (pcea.data.corruptions.Occlude); 0: never",
                                group=AUGMENTATION, check=_between(0, 1, unit=" (a probability)"),
                                metavar="P")
    noise: float = _setting(0.0, "probability that a training cloud gets a sensor's noise, as a scan or a "
                            "reconstruction does: stray points, clusters of extra points or Gaussian noise "
                            "at a random severity of the robustness suite (pcea.data.corruptions.Noise); "
                            "0: never", group=AUGMENTATION, check=_between(0, 1, unit=" (a probability)"),
                            metavar="P")
    wolf: float = _setting(0.0, "probability that a training cloud is deformed by PointWOLF (Kim et al. "
                           "2021): 4 anchors, each with its own small rotation, scaling and shift, blended "
                           "smoothly over the cloud (pcea.data.transforms.PointWOLF); with --rsmix, "
                           "ModelNet-C's WOLFMix against corruptions; 0: never", group=AUGMENTATION,
                           check=_between(0, 1, unit=" (a probability)"), metavar="P")
    rsmix: float = _setting(0.0, "probability that a training batch is mixed by RSMix (Lee et al. 2021): "
                            "each cloud gets a ball of points from another cloud of the batch, and its "
                            "target is both labels weighted by their shares of the points "
                            "(pcea.data.mixing.rsmix; the training accuracy counts the cloud's own label); "
                            "0: never", group=AUGMENTATION, check=_between(0, 1, unit=" (a probability)"),
                            metavar="P")
    init: str | None = _setting(None, "start from the weights of this checkpoint, run directory or built-in "
                                "name (e.g. modelnet40) instead of random ones; the classifier layer is "
                                "replaced when the classes differ (default: random initialisation)",
                                group=DATA, metavar="CHECKPOINT_OR_NAME")
    seed: int = _setting(0, "seeds the validation hold-out (unless --split-seed), the shuffling, the "
                         "augmentation, the dropout and the weights (with --init, together with the "
                         "weights file, so that a run never replays the draws its weights were "
                         "trained with)", group=SELECTION, check=_seed_check("seed"))
    split_seed: int | None = _setting(
        None, "seeds the validation hold-out alone (default: --seed); with --init of weights trained on "
        "this data, keep their hold-out (their seed) so that validation clouds stay unseen",
        group=SELECTION, metavar="SEED", check=_seed_check("split_seed"))
    val_split: float = _setting(0.1, "fraction of the training set held out for model selection "
                                "(stratified); 0 disables validation", group=SELECTION,
                                check=_between(0, 1, below_high=True))
    select_on: SelectOn = _setting(
        "val", "which epoch best.pt holds: best validation OA (val), best test OA (test, the papers' "
        "protocol, for comparison only) or the last epoch (last)", group=SELECTION,
        check=lambda value, config: "needs val_split > 0; use --select-on last or test"
        if value == "val" and config.val_split == 0 else None)
    device: str = _setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", group=RUNNING)
    amp: bool = _setting(False, "bf16 autocast where the device runs bf16 natively (CUDA, AVX512-BF16/AMX "
                         "CPUs; see pcea.precision), float32 elsewhere; measured no faster than float32 for "
                         "training on an AMX CPU (see the README)", group=RUNNING)
    compile: bool = _setting(False, "torch.compile the model, falling back to eager on failure",
                             group=RUNNING)
    threads: int | None = _setting(None, "CPU threads for torch (default: torch's own)", group=RUNNING,
                                   check=lambda value, config: None if value is None or
                                   1 <= value <= max_threads() else
                                   f"need 1 to {max_threads()} on this machine "
                                   f"({os.cpu_count() or 1} CPUs; at most 4 per CPU)")
    workers: int = _setting(4, "DataLoader worker processes", group=RUNNING,
                            check=lambda value, config: None if 0 <= value <= max_workers() else
                            f"need 0 to {max_workers()} on this machine "
                            f"({os.cpu_count() or 1} CPUs; at most 4 per CPU and 64)")

    def __post_init__(self) -> None:
        """Check every value's type, then its range, once, in one wording: ``name=value: problem``.

        Raises:
            PceaError: the first invalid value.
        """
        for setting in _SETTINGS:
            problem = setting.type_problem(getattr(self, setting.name))
            if problem:
                raise PceaError(problem)
        self.model_options = dict(self.model_options or {})
        for setting in _SETTINGS:
            value = getattr(self, setting.name)
            problem = setting.check(value, self) if setting.check else None
            if problem:
                raise PceaError(f"{setting.name}={value!r}: {problem}")
        self._check_model()

    def _check_model(self) -> None:
        """Build the model's config (not the model) now, so that a bad option fails before a run
        directory is created or data is read."""
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


@dataclass(frozen=True)
class Setting:
    """One field of :class:`TrainConfig` as its checks and its ``pcea train`` flag see it."""

    name: str
    default: Any  # dataclasses.MISSING where a factory makes it (model_options)
    help: str
    group: str
    metavar: str | None
    accepts: Callable[[Any], bool]  # the type check, from the annotation
    expected: str  # what ``accepts`` wants, for the message: "an integer"
    check: Check | None  # the range, from the field's metadata
    choices: tuple[str, ...] | None  # a Literal's values
    parse: Callable[[str], Any] | None  # a flag's text -> the value; None: not a typed value (a switch)

    @property
    def flag(self) -> str:
        """The command-line flag: ``--batch-size`` for ``batch_size``."""
        return "--" + self.name.replace("_", "-")

    def type_problem(self, value: Any) -> str | None:
        """``name=value: expected ...`` where ``value`` is not of this setting's type, else None."""
        return None if self.accepts(value) else f"{self.name}={value!r}: expected {self.expected}"


def settings() -> tuple[Setting, ...]:
    """Every :class:`TrainConfig` setting in declaration order: what ``pcea train``'s flags are made from."""
    return _SETTINGS


def _int_text(text: str) -> Any:
    """A flag's text as an int; text that is not one is kept, for the type check to name."""
    with contextlib.suppress(ValueError):
        return int(text)
    return text


def _float_text(text: str) -> Any:
    """A flag's text as a float (inf too, which the type check refuses); text that is not one is kept."""
    with contextlib.suppress(ValueError):
        return float(text)
    return text


def _kind(annotation: Any) -> tuple[Callable[[Any], bool], str, tuple[str, ...] | None, Callable | None]:
    """``(accepts, expected, choices, parse)`` of a TrainConfig annotation.

    Raises:
        TypeError: an annotation without a check here (a new field of a new type), at import.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        expected = ", ".join(repr(a) for a in args[:-1]) + f" or {args[-1]!r}"
        return (lambda value: isinstance(value, str) and value in args), expected, args, str
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        accepts, expected, choices, parse = _kind(next(a for a in args if a is not type(None)))
        return (lambda value: value is None or accepts(value)), f"{expected} or null", choices, parse
    if annotation is bool:
        return (lambda value: isinstance(value, bool)), "true or false", None, None
    if annotation is int:
        return _is_int, "an integer", None, _int_text
    if annotation is float:
        return _is_finite_number, "a finite number", None, _float_text
    if annotation is str:
        return (lambda value: isinstance(value, str) and value != ""), "a non-empty string", None, str
    if origin is dict:  # model_options, which --model-opt KEY=VALUE sets
        return (lambda value: value is None or (isinstance(value, dict)
                                                and all(isinstance(key, str) for key in value)),
                "a mapping of model settings, e.g. {memory: 32}", None, None)
    raise TypeError(f"TrainConfig: no type check for the annotation {annotation!r}")


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(TrainConfig)
    found = []
    for f in dataclasses.fields(TrainConfig):
        accepts, expected, choices, parse = _kind(hints[f.name])
        found.append(Setting(f.name, f.default, f.metadata["help"], f.metadata["group"],
                             f.metadata["metavar"], accepts, expected, f.metadata["check"], choices, parse))
    return tuple(found)


_SETTINGS = _settings()


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
