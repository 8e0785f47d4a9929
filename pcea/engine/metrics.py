"""Classification metrics of the ModelNet40 protocol: overall and mean class accuracy, and
``percent_down``, which prints a figure read against a target without rounding it up."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "accuracy_from_counts",
    "class_counts",
    "mean_class_accuracy",
    "overall_accuracy",
    "per_class_accuracy",
    "percent_down",
]


def class_counts(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class correct and total counts, the sufficient statistics of every metric here.

    Kept as counts so that shards (DataLoader batches, distributed ranks) can be
    summed before any division.

    Args:
        y_true: (n,) true labels in [0, num_classes).
        y_pred: (n,) predicted labels.
        num_classes: number of classes.

    Returns:
        correct: (num_classes,) int64, correctly classified samples of each true class.
        total: (num_classes,) int64, samples of each true class.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y_true.min()}..{y_true.max()}")
    total = np.bincount(y_true, minlength=num_classes)
    correct = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    return correct.astype(np.int64), total.astype(np.int64)


def overall_accuracy(y_true, y_pred) -> float:
    """Fraction of samples classified correctly (OA); nan for no samples."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Recall of each class; nan for a class with no samples.

    Returns:
        (num_classes,) float64.
    """
    correct, total = class_counts(y_true, y_pred, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def mean_class_accuracy(y_true, y_pred, num_classes: int) -> float:
    """Mean of the per-class accuracies (mAcc) over the classes that have samples.

    A class absent from ``y_true`` is left out of the mean rather than counted
    as 0 or 1, as in sklearn's ``balanced_accuracy_score``.
    """
    acc = per_class_accuracy(y_true, y_pred, num_classes)
    present = ~np.isnan(acc)
    return float(acc[present].mean()) if present.any() else float("nan")


def accuracy_from_counts(correct: np.ndarray, total: np.ndarray) -> tuple[float, float]:
    """(OA, mAcc) from summed per-class counts, e.g. after an all-reduce across ranks."""
    correct = np.asarray(correct, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    oa = float(correct.sum() / total.sum()) if total.sum() > 0 else float("nan")
    present = total > 0
    macc = float((correct[present] / total[present]).mean()) if present.any() else float("nan")
    return oa, macc


def percent_down(fraction: float, digits: int = 2) -> str:
    """``fraction`` as a percentage with ``digits`` decimals, rounded down, so that a figure
    just under a target never prints as meeting it (0.84997 -> "84.99", not "85.00").

    The 1e-6 absorbs float error in the scaling: 10000 * 0.0029 is 28.999..., which a plain
    floor would print as 0.28 instead of 0.29.
    """
    scale = 10 ** digits
    return f"{math.floor(100 * scale * fraction + 1e-6) / scale:.{digits}f}"
