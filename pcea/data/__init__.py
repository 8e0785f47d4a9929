"""Datasets (one class per ModelNet40 layout), transforms, the synthetic stand-in, downloads."""

import os
from pathlib import Path


def default_root() -> Path:
    """Where pcea keeps datasets: ``$PCEA_DATA``, or ``datasets/`` in the working directory."""
    return Path(os.environ.get("PCEA_DATA", "datasets"))


from pcea.data.modelnet import (  # noqa: E402
    MODELNET10_CLASSES,
    ModelNet40H5,
    ModelNet40Princeton,
    ModelNet40Resampled,
    dataset_class_names,
    open_dataset,
)

__all__ = [
    "MODELNET10_CLASSES",
    "ModelNet40H5",
    "ModelNet40Princeton",
    "ModelNet40Resampled",
    "dataset_class_names",
    "default_root",
    "open_dataset",
]
