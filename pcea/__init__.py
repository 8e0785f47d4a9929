"""pcea: point-cloud classification with External Attention in a PCT-style network.

The public API; everything here is importable as ``pcea.<name>``.
"""

from pcea.api import classify, load_model
from pcea.engine.config import TrainConfig
from pcea.engine.train import train
from pcea.errors import PceaError, PceaFileError
from pcea.export import export_onnx
from pcea.fast import accelerate, fuse_batchnorm
from pcea.io import PceaWarning, load_points
from pcea.layers import ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention
from pcea.model import ModelConfig, PCTClassifier, build_model

__version__ = "0.1.0"

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
    "fuse_batchnorm",
    "load_model",
    "load_points",
    "train",
]
