"""Mixing two training clouds of a batch into one: RSMix, with the targets mixed to match.

Lee et al., "Regularization Strategy for Point Cloud via Rigidly Mixed Sample" (CVPR 2021):
a rigid piece of one cloud replaces a piece of another, and the target is the two labels
weighted by their shares of the points. ModelNet-C (Ren, Pan and Liu 2022) found RSMix,
with PointWOLF (:class:`pcea.data.transforms.PointWOLF`), the augmentation that most cuts a
classifier's error under corruptions (WOLFMix). Unlike the per-cloud transforms, mixing
needs two clouds, so it runs on the batch tensor in the training step
(:func:`pcea.engine.train.train_one_epoch`), from its own random source per (seed, epoch,
rank, step): the same batch mixes the same way however the run was interrupted and resumed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["MixedBatch", "mix_batch", "rsmix"]

# Tells the mixing's random source apart from augment_item's (seed, epoch, index) streams.
_RSMIX_STREAM = 0x85D1


class MixedBatch(NamedTuple):
    """What :func:`rsmix` makes of a batch of B clouds of N points."""

    points: torch.Tensor  # (B, N, C) each cloud with a piece of its partner in place of a piece of its own
    targets: torch.Tensor  # (B, num_classes) (1 - lam) onehot(label) + lam onehot(partner's label)
    lam: torch.Tensor  # (B,) the fraction of each cloud's points that came from its partner
    partner: torch.Tensor  # (B,) int64 the index in the batch of the cloud each piece came from


def rsmix(points: torch.Tensor, labels: torch.Tensor, num_classes: int, rng: np.random.Generator, *,
          max_fraction: float = 0.5) -> MixedBatch:
    """RSMix: give every cloud A of a batch a rigid piece of another cloud B of the batch.

    The pairing is a random permutation of the batch. B's piece is its points inside a ball
    around one of its points, the ball's radius drawn from Beta(1, 1) as in the paper (pcea's
    clouds lie in the unit sphere), at most ``max_fraction`` of the N points (the nearest
    ones). As many points of A, the nearest to a random point of A, are removed, and B's
    piece is translated (not rotated or scaled: rigidly) so that its centroid lands on the
    removed points' centroid. Normals and further columns travel with their points. With
    lam = (points from B) / N, the target is (1 - lam) onehot(A) + lam onehot(B); the
    clouds are not normalised again (the piece stays where A's piece was).

    Args:
        points: (B, N, C) clouds, C >= 3.
        labels: (B,) int64 classes.
        num_classes: the number of classes (the targets' width).
        rng: the random source; the same state gives the same mixing.
        max_fraction: the largest share of a cloud that may come from its partner; at 0.5
            (the default) each cloud keeps at least half of its own points.

    Returns:
        A :class:`MixedBatch` on the device of ``points``.
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    batch, count, channels = points.shape
    device = points.device
    rows = torch.arange(batch, device=device)
    partner = torch.from_numpy(rng.permutation(batch)).to(device)                 # (B,)
    radius = torch.from_numpy(rng.beta(1.0, 1.0, size=batch)).to(device, points.dtype)
    center_b = torch.from_numpy(rng.integers(count, size=batch)).to(device)
    center_a = torch.from_numpy(rng.integers(count, size=batch)).to(device)
    other = points[partner]                                                       # (B, N, C)

    def nearest_first(cloud: torch.Tensor, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances to each cloud's centre point (B, N), and the order sorting them."""
        distance = (cloud[..., :3] - cloud[rows, center, :3].unsqueeze(1)).square().sum(-1)
        return distance, torch.argsort(distance, dim=1, stable=True)

    distance_b, order_b = nearest_first(other, center_b)
    _, order_a = nearest_first(points, center_a)
    in_ball = (distance_b <= radius.square().unsqueeze(1)).sum(1)                  # (B,) >= 1: the centre
    taken = in_ball.clamp(max=max(1, int(max_fraction * count)))                  # (B,)
    replaced = torch.arange(count, device=device).unsqueeze(0) < taken.unsqueeze(1)  # (B, N) in sorted order

    def by_index(order: torch.Tensor) -> torch.Tensor:
        return order.unsqueeze(-1).expand(-1, -1, channels)                       # (B, N) -> (B, N, C)

    sorted_a = torch.gather(points, 1, by_index(order_a))                          # (B, N, C) nearest first
    piece = torch.gather(other, 1, by_index(order_b)).clone()                      # (B, N, C) nearest first
    weight = replaced.unsqueeze(-1).to(points.dtype) / taken.view(batch, 1, 1).to(points.dtype)
    # (B, 3): from the centroid of B's piece to the centroid of A's removed points
    shift = (sorted_a[..., :3] * weight).sum(1) - (piece[..., :3] * weight).sum(1)
    piece[..., :3] += shift.unsqueeze(1)
    mixed_sorted = torch.where(replaced.unsqueeze(-1), piece, sorted_a)
    mixed = torch.empty_like(points).scatter_(1, by_index(order_a), mixed_sorted)  # A's points back in place

    lam = taken.to(torch.float32) / count
    own = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
    targets = (1 - lam).unsqueeze(1) * own + lam.unsqueeze(1) * own[partner]
    return MixedBatch(mixed, targets, lam, partner)


def mix_batch(points: torch.Tensor, labels: torch.Tensor, num_classes: int, *, p: float,
              stream: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p``, :func:`rsmix` a training batch; the batch and its targets.

    Args:
        points: (B, N, C) the batch.
        labels: (B,) int64 its classes.
        num_classes: the number of classes.
        p: the probability that the batch is mixed.
        stream: what the random source depends on, (seed, epoch, rank, step) in training, so
            that a resumed run mixes each batch as the uninterrupted run did.

    Returns:
        ``(points, targets)``: the mixed batch and its (B, num_classes) soft targets, or the
        batch and ``labels`` unchanged when it is not mixed. Either is what a
        ``torch.nn.CrossEntropyLoss`` takes as its target; its label smoothing smooths
        both one-hots of a soft target alike, since smoothing is linear in the target.
    """
    rng = np.random.default_rng((*stream, _RSMIX_STREAM))
    if rng.random() >= p:
        return points, labels
    mixed = rsmix(points, labels, num_classes, rng)
    return mixed.points, mixed.targets
