"""``--balanced``: class-balanced sampling of the training clouds, the same per (seed, epoch) (issue 21)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_tiny import tiny_config, write_tiny_h5

from pcea.data.transforms import augment_item, pct_train_transform
from pcea.engine.distributed import DistEnv
from pcea.engine.run import build_run
from pcea.engine.splits import AugmentedSubset, BalancedSampler, epoch_seed

LABELS = np.repeat(np.arange(4), [60, 24, 10, 6])  # 100 items, classes of 60 to 6


def _epoch(labels: np.ndarray, seed: int, epoch: int, *, rank: int = 0, world_size: int = 1) -> list[int]:
    """What the sampler yields in one epoch, its generator seeded as the training loop seeds it."""
    generator = torch.Generator()
    sampler = BalancedSampler(labels, generator, rank=rank, world_size=world_size)
    generator.manual_seed(epoch_seed(seed, epoch))
    return list(sampler)


def test_every_class_is_drawn_about_equally_often_and_the_draws_repeat_per_seed_and_epoch():
    draws = np.concatenate([_epoch(LABELS, seed=0, epoch=epoch) for epoch in range(1, 41)])
    assert len(draws) == 40 * len(LABELS)
    shares = np.bincount(LABELS[draws % len(LABELS)], minlength=4) / len(draws)
    assert np.all(np.abs(shares - 0.25) < 0.03), shares  # 4,000 draws: a standard deviation of 0.007
    assert _epoch(LABELS, seed=0, epoch=3) == _epoch(LABELS, seed=0, epoch=3)
    assert _epoch(LABELS, seed=0, epoch=3) != _epoch(LABELS, seed=0, epoch=4)
    assert _epoch(LABELS, seed=0, epoch=3) != _epoch(LABELS, seed=1, epoch=3)


def test_a_repeated_draw_is_marked_so_that_each_copy_is_augmented_afresh():
    draws = np.array(_epoch(LABELS, seed=0, epoch=1))
    items, repeats = draws % len(LABELS), draws // len(LABELS)
    assert repeats.max() >= 2  # the 6 clouds of the smallest class are drawn about 4 times each
    assert len(set(zip(items, repeats, strict=True))) == len(draws)  # each (item, k-th draw) once
    for item in set(items):  # the k-th repeat of an item comes after its k - 1 others
        assert list(repeats[items == item]) == list(range((items == item).sum()))

    clouds = [(torch.from_numpy(np.random.default_rng(i).normal(size=(32, 3)).astype(np.float32)), i % 4)
              for i in range(10)]
    subset = AugmentedSubset(clouds, np.arange(2, 8), transform=pct_train_transform(), seed=5)
    first, again = subset[1], subset[1 + len(subset)]
    assert first[1] == again[1] == 3 and not torch.equal(first[0], again[0])
    # The first draw of an item is augmented as before --balanced existed.
    assert np.array_equal(first[0].numpy(), augment_item(clouds[3][0], subset.transform, seed=5, epoch=0,
                                                         index=3))


def test_distributed_ranks_share_one_sequence_of_draws():
    single = _epoch(LABELS, seed=2, epoch=1)
    shards = [_epoch(LABELS, seed=2, epoch=1, rank=rank, world_size=3) for rank in range(3)]
    assert [len(shard) for shard in shards] == [33, 33, 33]  # the last incomplete round is dropped
    assert [draw for round_ in zip(*shards, strict=True) for draw in round_] == single[:99]


@pytest.fixture(scope="module")
def imbalanced_h5(tmp_path_factory) -> Path:
    return write_tiny_h5(tmp_path_factory.mktemp("imbalanced") / "modelnet40_ply_hdf5_2048",
                         train_per_class=(40, 12, 8, 4))


def _classes_drawn(data: Path, epochs: int, **settings) -> np.ndarray:
    """The labels of every training batch of ``epochs`` epochs of a run's loader, as the loop seeds it."""
    config = tiny_config(data, **settings)
    run = build_run(config, Path("unused"), DistEnv(), torch.device("cpu"), lambda line: None)
    labels = []
    for epoch in range(1, epochs + 1):
        run.loader_generator.manual_seed(epoch_seed(config.seed, epoch))
        labels.extend(int(label) for _, batch in run.train_loader for label in batch)
    return np.array(labels)


@pytest.mark.slow  # builds two runs' data and loaders
def test_a_balanced_run_draws_each_class_about_as_often_and_the_same_per_seed(imbalanced_h5):
    plain = _classes_drawn(imbalanced_h5, 10)
    balanced = _classes_drawn(imbalanced_h5, 10, balanced=True)
    assert len(balanced) == len(plain) == 10 * 48  # 48 training clouds (64 less the 25 % held out)
    assert np.bincount(plain, minlength=4)[3] / len(plain) < 0.1  # 3 of 48 clouds are of the last class
    shares = np.bincount(balanced, minlength=4) / len(balanced)
    assert np.all(np.abs(shares - 0.25) < 0.07), shares  # 480 draws: a standard deviation of 0.02
    assert np.array_equal(_classes_drawn(imbalanced_h5, 2, balanced=True), balanced[:2 * 48])
    assert not np.array_equal(_classes_drawn(imbalanced_h5, 2, balanced=True, seed=1), balanced[:2 * 48])
