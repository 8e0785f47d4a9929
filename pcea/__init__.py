"""pcea: point-cloud classification with External Attention in a PCT-style network.

The public API; everything here is importable as ``pcea.<name>``.

The names are loaded on first use (PEP 562: the module's ``__getattr__``), so that
``import pcea.io`` (and ``pcea.geometry``, ``pcea.errors``, ``pcea.onnx_runner``) does not
import torch: the file readers and the ONNX runner work where torch is not installed.
``from pcea import X`` and ``pcea.X`` work for every name in ``__all__``, and ``pcea.<module>``
for every submodule, as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from pcea.api import classify, list_models, load_model
    from pcea.engine.checkpoint import save_classifier
    from pcea.engine.config import TrainConfig
    from pcea.engine.train import train
    from pcea.errors import PceaError, PceaFileError
    from pcea.export import export_onnx
    from pcea.fast import accelerate
    from pcea.io import PceaWarning, load_points
    from pcea.layers import ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention
    from pcea.model import ModelConfig, PCTClassifier, build_model

__version__ = "0.1.0"

# Each public name and the module that defines it (tests/test_imports.py checks this table
# against __all__ and the imports above).
_EXPORTS = {
    "classify": "pcea.api",
    "list_models": "pcea.api",
    "load_model": "pcea.api",
    "save_classifier": "pcea.engine.checkpoint",
    "TrainConfig": "pcea.engine.config",
    "train": "pcea.engine.train",
    "PceaError": "pcea.errors",
    "PceaFileError": "pcea.errors",
    "export_onnx": "pcea.export",
    "accelerate": "pcea.fast",
    "PceaWarning": "pcea.io",
    "load_points": "pcea.io",
    "ExternalAttention": "pcea.layers",
    "OffsetAttention": "pcea.layers",
    "OffsetBlock": "pcea.layers",
    "SelfAttention": "pcea.layers",
    "ModelConfig": "pcea.model",
    "PCTClassifier": "pcea.model",
    "build_model": "pcea.model",
}


def __getattr__(name: str):
    """A public name, imported from its module on first use; or a submodule (``pcea.model``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":  # the submodule exists but an import inside it failed
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "ExternalAttention",
    "ModelConfig",
    "OffsetAttention",
    "OffsetBlock",
    "PCTClassifier",
    "PceaError",
    "PceaFileError",
    "PceaWarning",
    "SelfAttention",
    "TrainConfig",
    "__version__",
    "accelerate",
    "build_model",
    "classify",
    "export_onnx",
    "list_models",
    "load_model",
    "load_points",
    "save_classifier",
    "train",
]
