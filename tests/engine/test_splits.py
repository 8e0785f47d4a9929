"""pcea.engine.splits: the validation hold-out of a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcea.engine.splits import holdout_seed, recorded_split, split_train_val, stream_seed
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


def test_a_small_dataset_holds_out_one_cloud_per_class_and_says_so():
    # 10 classes x 6 training shapes (pcea synth --classes 10 --per-class 8): 10 % of 60 is 6 clouds,
    # fewer than the classes, which scikit-learn refuses.
    labels = np.repeat(np.arange(10), 6)
    notes: list[str] = []
    train_idx, val_idx = split_train_val(labels, 0.1, seed=0, log=notes.append)
    assert sorted(labels[val_idx].tolist()) == list(range(10))  # one of each class
    assert len(train_idx) == 50 and set(train_idx).isdisjoint(val_idx)
    assert len(notes) == 1 and "holding out one cloud per class instead (10 clouds" in notes[0]
    assert (split_train_val(labels, 0.1, seed=0)[1] == val_idx).all()  # seeded
    assert (split_train_val(labels, 0.1, seed=1)[1] != val_idx).any()


def test_a_split_that_cannot_work_gives_the_right_advice():
    with pytest.raises(PceaError, match=r"label 1\) have a single training cloud.*--val-split 0 "
                                        r"--select-on last"):
        split_train_val(np.array([0, 0, 1, 2, 2]), 0.4, seed=0)
    labels = np.repeat(np.arange(4), 3)  # 12 clouds: holding out 10 leaves fewer than one per class
    with pytest.raises(PceaError, match=r"use a smaller --val-split \(at most 0.66\)"):
        split_train_val(labels, 0.8, seed=0)
    train_idx, val_idx = split_train_val(labels, 0.66, seed=0)  # the advice holds
    assert len(val_idx) == 8 and len(train_idx) == 4


def test_the_hold_out_seed_is_split_seed_when_set_else_the_runs_seed():
    assert holdout_seed({"seed": 3}) == 3                       # runs from before split_seed
    assert holdout_seed({"seed": 3, "split_seed": None}) == 3
    assert holdout_seed({"seed": 3, "split_seed": 0}) == 0


def test_the_recorded_split_is_the_one_the_run_drew_with_its_hold_out_seed():
    labels = np.repeat(np.arange(4), 10)
    cases = (({"val_split": 0.25, "seed": 3}, 3), ({"val_split": 0.25, "seed": 3, "split_seed": 7}, 7))
    for config, seed in cases:
        train_idx, val_idx = recorded_split(labels, config)
        expected = split_train_val(labels, 0.25, seed)
        assert np.array_equal(train_idx, expected[0]) and np.array_equal(val_idx, expected[1])
    assert not np.array_equal(recorded_split(labels, {"val_split": 0.25, "seed": 3})[1],
                              recorded_split(labels, {"val_split": 0.25, "seed": 3, "split_seed": 7})[1])
    assert len(recorded_split(labels, {"val_split": 0, "seed": 3})[1]) == 0  # a run that held out none


def test_the_stream_seed_is_the_seed_alone_without_init_and_mixes_in_the_init_files_digest():
    digest, other = "ab" * 32, "ab" * 31 + "ac"
    assert stream_seed(5) == stream_seed(5, None) == 5                  # from random weights: as before
    mixed = stream_seed(5, digest)
    assert mixed == stream_seed(5, digest) and 0 <= mixed < 2**32           # the same file, the same run
    assert len({5, mixed, stream_seed(5, other), stream_seed(6, digest)}) == 4  # any change of either: others
