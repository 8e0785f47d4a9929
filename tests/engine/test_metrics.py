"""OA, mAcc and per-class accuracy against scikit-learn and hand-counted cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

from pcea.engine.metrics import (
    accuracy_from_counts,
    class_counts,
    mean_class_accuracy,
    overall_accuracy,
    per_class_accuracy,
    percent_down,
)


def test_hand_counted_case():
    y_true = [0, 0, 0, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 0, 2]
    assert overall_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    per_class = per_class_accuracy(y_true, y_pred, num_classes=4)
    assert per_class[:3] == pytest.approx([2 / 3, 1.0, 0.5]) and math.isnan(per_class[3])
    assert mean_class_accuracy(y_true, y_pred, num_classes=4) == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_agrees_with_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(0, 7, size=200)
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 7, size=200))
        assert overall_accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
        balanced = balanced_accuracy_score(y_true, y_pred)
        assert mean_class_accuracy(y_true, y_pred, 7) == pytest.approx(balanced)
        present = np.unique(y_true)
        assert per_class_accuracy(y_true, y_pred, 7)[present] == pytest.approx(
            recall_score(y_true, y_pred, labels=present, average=None, zero_division=0))
        # Summing the counts of two shards gives the figures of the whole (the DDP reduction).
        first, second = class_counts(y_true[:77], y_pred[:77], 7), class_counts(y_true[77:], y_pred[77:], 7)
        oa, macc = accuracy_from_counts(first[0] + second[0], first[1] + second[1])
        assert oa == pytest.approx(accuracy_score(y_true, y_pred))
        assert macc == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        overall_accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        class_counts([0, 2], [0, 1], num_classes=2)
    assert math.isnan(overall_accuracy([], []))


def test_percent_down_never_rounds_up_to_a_target():
    assert percent_down(0.84997) == "84.99"       # segment 12's suite mean: not the 85 % target
    assert percent_down(0.85) == "85.00"
    assert percent_down(0.8851, digits=1) == "88.5"
    assert percent_down(1.0) == "100.00" and percent_down(0.0) == "0.00"
    # every exact two-decimal percentage prints as itself, float error in the scaling or not
    # (a plain floor prints 0.0029 as 0.28)
    for hundredths in range(10_001):
        assert percent_down(hundredths / 10_000) == f"{hundredths / 100:.2f}"
