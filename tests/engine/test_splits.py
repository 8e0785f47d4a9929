"""pcea.engine.splits: the validation hold-out of a run."""

from __future__ import annotations

import pytest
import torch

from pcea.engine.splits import split_train_val
from pcea.errors import PceaError


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.arange(4).repeat_interleave(10).numpy()
    train_idx, val_idx = split_train_val(labels, 0.2, seed=3)
    assert len(val_idx) == 8 and set(train_idx).isdisjoint(val_idx) and len(train_idx) + len(val_idx) == 40
    assert sorted(labels[val_idx].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (split_train_val(labels, 0.2, seed=3)[1] == val_idx).all()
    assert (split_train_val(labels, 0.2, seed=4)[1] != val_idx).any()
    with pytest.raises(PceaError, match="stratified validation split"):
        split_train_val(labels[9:11], 0.5, seed=0)  # one cloud of each of two classes
