"""RSMix: shapes, targets, the share taken, a rigid ball of the partner, seeds, label smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcea.data.mixing import mix_batch, rsmix

BATCH, POINTS, CLASSES = 8, 64, 5


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 5) clouds in the unit sphere whose columns 3 and 4 say which cloud and which point a row is."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(BATCH, POINTS, 3))
    xyz /= np.linalg.norm(xyz, axis=2).max(axis=1)[:, None, None]
    cloud_id = np.broadcast_to(np.arange(BATCH)[:, None, None], (BATCH, POINTS, 1))
    point_id = np.broadcast_to(np.arange(POINTS)[None, :, None], (BATCH, POINTS, 1))
    points = np.concatenate([xyz, cloud_id, point_id], axis=2)
    labels = rng.integers(CLASSES, size=BATCH)
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)


def _is_a_ball(cloud: np.ndarray, chosen: np.ndarray) -> bool:
    """Whether the rows ``chosen`` of ``cloud`` are the len(chosen) nearest to one of them."""
    for center in chosen:
        distance = ((cloud - cloud[center]) ** 2).sum(axis=1)
        if set(np.argsort(distance, kind="stable")[:len(chosen)]) == set(chosen):
            return True
    return False


def test_shapes_targets_and_the_share_taken_from_the_partner():
    points, labels = _batch()
    mixed = rsmix(points, labels, CLASSES, np.random.default_rng(1))
    assert mixed.points.shape == points.shape and mixed.targets.shape == (BATCH, CLASSES)
    torch.testing.assert_close(mixed.targets.sum(dim=1), torch.ones(BATCH))
    own = torch.nn.functional.one_hot(labels, CLASSES).float()
    expected = (1 - mixed.lam)[:, None] * own + mixed.lam[:, None] * own[mixed.partner]
    torch.testing.assert_close(mixed.targets, expected)
    paired = [i for i in range(BATCH) if mixed.partner[i] != i]
    assert len(paired) >= 4
    for i in paired:
        from_partner = (mixed.points[i, :, 3] == mixed.partner[i]).sum().item()
        from_own = (mixed.points[i, :, 3] == i).sum().item()
        assert from_partner + from_own == POINTS
        assert mixed.lam[i].item() == pytest.approx(from_partner / POINTS)
    assert mixed.lam.min() > 0 and mixed.lam.max() <= 0.5                         # at most half by default
    assert len(set(mixed.lam.tolist())) > 2                                          # the ball's size varies


def test_the_piece_is_a_translated_ball_of_the_partner_in_place_of_a_ball_of_the_cloud():
    points, labels = _batch(seed=2)
    mixed = rsmix(points, labels, CLASSES, np.random.default_rng(3))
    cloud = points[..., :3].numpy().astype(np.float64)
    for i in range(BATCH):
        j = int(mixed.partner[i])
        if j == i:
            continue
        out = mixed.points[i].numpy().astype(np.float64)
        kept = out[:, 3] == i
        # A's own points stay where they were, row for row; the removed ones are a ball of A.
        np.testing.assert_array_equal(out[kept], points[i].numpy()[kept])
        assert _is_a_ball(cloud[i], np.flatnonzero(~kept))
        # B's piece: a ball of B, all moved by one vector, from its centroid to the removed points' centroid.
        taken = out[~kept, 4].astype(int)
        assert _is_a_ball(cloud[j], taken)
        moves = out[~kept, :3] - cloud[j, taken]
        np.testing.assert_allclose(moves, np.broadcast_to(moves[0], moves.shape), atol=1e-5)
        np.testing.assert_allclose(out[~kept, :3].mean(axis=0), cloud[i, ~kept].mean(axis=0), atol=1e-5)


def test_the_same_seed_mixes_the_same_way():
    points, labels = _batch()
    first = rsmix(points, labels, CLASSES, np.random.default_rng(7))
    again = rsmix(points, labels, CLASSES, np.random.default_rng(7))
    other = rsmix(points, labels, CLASSES, np.random.default_rng(8))
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first.points, other.points)


def test_mix_batch_mixes_a_fraction_p_of_the_batches_from_its_stream():
    points, labels = _batch()
    mixed = [mix_batch(points, labels, CLASSES, p=0.5, stream=(0, 1, 0, step)) for step in range(40)]
    untouched = [targets is labels and out is points for out, targets in mixed]
    assert 0.25 < np.mean(untouched) < 0.75
    out, targets = mix_batch(points, labels, CLASSES, p=1.0, stream=(0, 1, 0, 3))
    again, same = mix_batch(points, labels, CLASSES, p=1.0, stream=(0, 1, 0, 3))
    torch.testing.assert_close(out, again)
    torch.testing.assert_close(targets, same)
    assert not torch.equal(out, mix_batch(points, labels, CLASSES, p=1.0, stream=(0, 2, 0, 3))[0])
    assert all(mix_batch(points, labels, CLASSES, p=0.0, stream=(0, 1, 0, s))[1] is labels for s in range(5))


def test_label_smoothing_smooths_both_labels_of_a_mixed_target():
    points, labels = _batch()
    mixed = rsmix(points, labels, CLASSES, np.random.default_rng(1))
    logits = torch.randn(BATCH, CLASSES, generator=torch.Generator().manual_seed(0))
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    each = (1 - mixed.lam) * smoothed(logits, labels) + mixed.lam * smoothed(logits, labels[mixed.partner])
    torch.testing.assert_close(smoothed(logits, mixed.targets), each)


def test_max_fraction_is_checked():
    points, labels = _batch()
    with pytest.raises(ValueError, match="max_fraction must be in"):
        rsmix(points, labels, CLASSES, np.random.default_rng(0), max_fraction=0)
