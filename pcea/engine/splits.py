"""The training data of one run: the validation hold-out, and augmentation that resume cannot change.

Every random choice depends only on (seed, epoch, item): the shuffling order of
an epoch on (seed, epoch) (:func:`epoch_seed`), the augmentation of an item on
(seed, epoch, index) (:class:`AugmentedSubset`). So the number of DataLoader
workers and an interruption with ``--resume`` leave the run unchanged. The seed these
draw from is the run's stream seed (:func:`stream_seed`): ``seed`` for a run from random
weights, ``seed`` mixed with the ``--init`` file's SHA-256 for a run from given weights.
The validation hold-out (:func:`split_train_val`) is drawn once, from the run's hold-out
seed (:func:`holdout_seed`: ``split_seed`` when set, else ``seed``), so that a run can keep
another run's hold-out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from pcea.data.transforms import augment_item
from pcea.errors import PceaError

__all__ = ["AugmentedSubset", "BalancedSampler", "epoch_seed", "holdout_seed", "recorded_split",
           "split_train_val", "stream_seed"]


def holdout_seed(train_config: Mapping[str, Any]) -> Any:
    """The seed a run's validation hold-out is drawn with: its ``split_seed`` when set, else its ``seed``.

    ``train_config`` is a run's settings as its checkpoint records them (``TrainConfig.to_dict()``);
    runs from before ``split_seed`` existed drew the hold-out with ``seed``.
    """
    split_seed = train_config.get("split_seed")
    return train_config.get("seed") if split_seed is None else split_seed


def stream_seed(seed: int, init_sha256: str | None = None) -> int:
    """The seed of a run's random streams: its data order, augmentation, mixing and dropout masks.

    A run from random weights draws them from ``seed``. A run from given weights (``--init``)
    draws them from ``seed`` and the SHA-256 of the weights' file: with ``seed`` alone, a
    second run from the weights of a first with the same seed would pair every step's
    batch of labels with the dropout masks the first run had paired with it, at every step,
    and weights continued that way segment after segment learn to read the labels from the
    masks (docs/modelnet40.md, "Dropout masks that name the labels"). The same seed and the
    same file still give the same run.

    Args:
        seed: the run's ``--seed``.
        init_sha256: the SHA-256 of the ``--init`` file (64 hex digits), or None.

    Returns:
        ``seed`` without ``init_sha256``, else an integer in [0, 2**32) drawn from both.
    """
    if init_sha256 is None:
        return seed
    words = np.frombuffer(bytes.fromhex(init_sha256), dtype=">u4")  # (8,): the digest as 32-bit words
    return int(np.random.SeedSequence((seed, *words.tolist())).generate_state(1)[0])


def split_train_val(labels: np.ndarray, val_split: float, seed: int, *,
                    log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded hold-out of ``val_split`` of the training set for model selection.

    At least one cloud of every class is held out whenever every class has two or more:
    when ``val_split`` of the set is fewer clouds than there are classes (a small dataset),
    one cloud per class is held out instead, and ``log`` is told so. Otherwise the split is
    scikit-learn's stratified one (``ceil(val_split * n)`` clouds).

    Args:
        labels: (n,) class of each training cloud.
        val_split: fraction to hold out, 0 for none.
        seed: seeds the choice.
        log: receives a one-line note when the hold-out was enlarged.

    Returns:
        (train indices, validation indices), each sorted.

    Raises:
        PceaError: a class has a single cloud, or the split leaves too few clouds to train on;
            the message says which option fixes it.
    """
    labels = np.asarray(labels)
    indices = np.arange(len(labels))
    if val_split <= 0:
        return indices, indices[:0]
    classes, counts = np.unique(labels, return_counts=True)
    n, k = len(labels), len(classes)
    if counts.min() < 2:
        single = classes[counts < 2]
        named = ", ".join(str(c) for c in single[:5]) + (", ..." if len(single) > 5 else "")
        raise PceaError(f"cannot hold out a stratified validation split: {len(single)} of the {k} classes "
                        f"(label {named}) "
                        "have a single training cloud, which cannot be both trained and validated on; "
                        "use --val-split 0 --select-on last")
    n_val = math.ceil(val_split * n)
    if n_val < k:
        # scikit-learn refuses fewer held-out clouds than classes: hold out one of each instead.
        if log is not None:
            log(f"note: --val-split {val_split} of {n} training clouds is {n_val}, fewer than the {k} "
                f"classes; holding out one cloud per class instead ({k} clouds, {k / n:.0%})")
        rng = np.random.default_rng((seed, 0x5A1))
        val_idx = np.array([rng.choice(indices[labels == c]) for c in classes])
        return np.setdiff1d(indices, val_idx), np.sort(val_idx)
    if n - n_val < k:
        largest = math.floor(100 * (n - k) / n) / 100
        raise PceaError(f"--val-split {val_split} holds out {n_val} of {n} training clouds, leaving fewer "
                        f"than one per class ({k}) to train on; use a smaller --val-split "
                        f"(at most {largest:.2f})")
    from sklearn.model_selection import train_test_split

    try:
        train_idx, val_idx = train_test_split(indices, test_size=val_split, stratify=labels,
                                              random_state=seed)
    except ValueError as err:
        raise PceaError(f"cannot hold out a stratified validation split of {val_split}: {err}; "
                        "use --val-split 0 --select-on last") from None
    return np.sort(train_idx), np.sort(val_idx)


def recorded_split(labels: np.ndarray, train_config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The hold-out a run drew, from its settings as its checkpoint records them: the clouds it
    trained on and the ones it was selected on (``pcea eval --split val`` reads the second).

    Args:
        labels: (n,) class of each cloud of the train split the run read.
        train_config: the run's ``TrainConfig.to_dict()``, with ``val_split`` and its seeds.

    Returns:
        (train indices, validation indices), each sorted: :func:`split_train_val` with the run's
        ``val_split`` and :func:`holdout_seed`.
    """
    return split_train_val(labels, train_config["val_split"], holdout_seed(train_config))


class AugmentedSubset(Dataset):
    """Some items of a dataset, optionally augmented with a per-(seed, epoch, item) random source.

    The random source of item ``i`` in epoch ``e`` is
    ``np.random.default_rng((seed, e, i))`` with ``i`` the index in the base
    dataset (:func:`pcea.data.transforms.augment_item`, as the datasets' own
    ``transform=``), so the augmentation does not depend on the number of DataLoader
    workers, the order, or whether the run was resumed.

    Args:
        base: items ``(FloatTensor (N, C), int label)``.
        indices: which items of ``base`` to use.
        transform: ``(points (N, C), rng) -> points``, or None.
        seed: the run's stream seed (:func:`stream_seed`).
    """

    def __init__(self, base: Dataset, indices: np.ndarray, *, transform=None, seed: int = 0):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        # i = item + k * len(self): the k-th repeat of an item drawn again in an epoch (BalancedSampler),
        # augmented from a random source of its own; k = 0 for every other item.
        repeat, i = divmod(i, len(self.indices))
        index = int(self.indices[i])
        points, label = self.base[index]
        if self.transform is not None:
            points = torch.from_numpy(augment_item(points, self.transform, seed=self.seed, epoch=self.epoch,
                                                   index=index + repeat * len(self.base)))
        return points, int(label)


class BalancedSampler(Sampler[int]):
    """Class-balanced draws (``--balanced``): each epoch, as many items as there are, drawn with
    replacement, item ``i`` with a probability proportional to 1 / (the size of its class), so each
    class is drawn equally often on average.

    The draws are torch's :class:`~torch.utils.data.WeightedRandomSampler` from ``generator``, the
    run's loader generator, which the loop seeds per epoch (:func:`epoch_seed`): they depend on
    (seed, epoch) only, and a resumed run draws what an uninterrupted one would. An item drawn again
    in the same epoch is yielded as ``item + k * len(labels)`` for its ``k``-th repeat, which
    :class:`AugmentedSubset` augments from a random source of its own: a repeat is another
    augmentation of the cloud, not a copy of the first.

    Under DDP every rank draws the same sequence (its generator is seeded alike) and keeps every
    ``world_size``-th draw from its ``rank``, the last incomplete round dropped (as
    ``DistributedSampler(drop_last=True)``).

    Args:
        labels: (n,) the class of each item of the subset.
        generator: the source of the draws.
        rank, world_size: this process and how many train together.
    """

    def __init__(self, labels: np.ndarray, generator: torch.Generator, *, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels, dtype=np.int64)
        weights = torch.from_numpy(1.0 / np.bincount(labels)[labels])  # (n,): every class sums to 1
        self.draws = WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator)
        self.size, self.rank, self.world_size = len(labels), rank, world_size

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        repeats = np.zeros(self.size, dtype=np.int64)  # how often each item was drawn so far
        kept = len(self) * self.world_size
        for position, item in enumerate(self.draws):
            if position >= kept:
                break
            if position % self.world_size == self.rank:
                yield item + int(repeats[item]) * self.size
            repeats[item] += 1


def epoch_seed(seed: int, epoch: int) -> int:
    # The shuffling order of an epoch depends on (seed, epoch) only.
    return int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])

