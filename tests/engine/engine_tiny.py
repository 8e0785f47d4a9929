"""A tiny ModelNet40-h5-layout dataset and a tiny model recipe for the engine tests.

A module of its own (not conftest.py) so that test files can import it by a unique name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tiny_models import CLASS_NAMES, TINY

from pcea.engine.config import TrainConfig

# The suite's tiny model (tests/tiny_models.py) as recipe model_options: every field but num_points.
TINY_MODEL = {key: list(value) if isinstance(value, tuple) else value
              for key, value in TINY.items() if key != "num_points"}


def _shape(label: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) points on the surface of one of four easy-to-tell shapes, randomly stretched."""
    if label == 0:  # sphere
        points = rng.normal(size=(count, 3))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    elif label == 1:  # cube surface
        points = rng.uniform(-1, 1, size=(count, 3))
        axis = rng.integers(0, 3, size=count)
        points[np.arange(count), axis] = rng.choice([-1.0, 1.0], size=count)
    elif label == 2:  # flat disc in the xz plane (y up)
        radius, angle = np.sqrt(rng.uniform(0, 1, count)), rng.uniform(0, 2 * np.pi, count)
        points = np.stack([radius * np.cos(angle), rng.normal(0, 0.02, count), radius * np.sin(angle)], 1)
    else:  # thin rod along y
        points = np.stack([rng.normal(0, 0.05, count), rng.uniform(-1, 1, count),
                           rng.normal(0, 0.05, count)], 1)
    points *= rng.uniform(0.7, 1.3, size=3)
    points -= points.mean(axis=0)
    return (points / np.linalg.norm(points, axis=1).max()).astype(np.float32)


def write_tiny_h5(root: Path, *, train_per_class: int | Sequence[int] = 12, test_per_class: int = 4,
                  points: int = 160, seed: int = 0) -> Path:
    """Write the ``modelnet40_ply_hdf5_2048`` layout (data, label, normal) with 4 classes
    (``train_per_class`` clouds of each, or one count per class for an imbalanced set).

    Returns:
        ``root``, ready for ``pcea.data.open_dataset``.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
        rng.shuffle(labels)
        clouds = np.stack([_shape(int(label), points, rng) for label in labels])  # (n, points, 3)
        with h5py.File(root / f"ply_data_{split}0.h5", "w") as h5:
            h5["data"] = clouds
            h5["label"] = labels.astype(np.uint8)[:, None]
            h5["normal"] = np.zeros_like(clouds)
        (root / f"{split}_files.txt").write_text(f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n")
    return root


def tiny_config(data: Path | str, **overrides) -> TrainConfig:
    """A seeded CPU recipe for the tiny model: 128 points, batch 8, 2 epochs, no workers."""
    values = {"data": str(data), "model_options": dict(TINY_MODEL), "points": 128, "epochs": 2,
              "batch_size": 8, "lr": 0.05, "val_split": 0.25, "device": "cpu", "workers": 0,
              "threads": 1, "seed": 0}
    values.update(overrides)
    return TrainConfig(**values)
