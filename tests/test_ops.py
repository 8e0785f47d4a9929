"""Point ops against plain references written here, plus hand-placed cases."""

import numpy as np
import pytest
import torch

from pcea.ops import farthest_point_sample, gather, group_index, knn, sample_and_group


def reference_fps(xyz: np.ndarray, m: int, start: int = 0) -> list[int]:
    """One cloud, one pick at a time: the definition of farthest point sampling."""
    picked = [start]
    min_dist = np.full(len(xyz), np.inf)
    for _ in range(m - 1):
        min_dist = np.minimum(min_dist, ((xyz - xyz[picked[-1]]) ** 2).sum(-1))
        candidates = [i for i in range(len(xyz)) if i not in picked]
        picked.append(max(candidates, key=lambda i: (min_dist[i], -i)))
    return picked


def test_fps_hand_placed_line():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
    assert farthest_point_sample(xyz, 4).tolist() == [[0, 3, 2, 1]]
    assert farthest_point_sample(xyz, 2, start=2).tolist() == [[2, 3]]


@pytest.mark.parametrize("seed", range(3))
def test_fps_matches_reference_on_a_batch_of_different_clouds(seed):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.randn(4, 200, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5])
    xyz[1] *= 10  # clouds of different scales in one batch
    got = farthest_point_sample(xyz, 50)
    assert got.shape == (4, 50) and got.dtype == torch.long
    for b in range(4):
        assert got[b].tolist() == reference_fps(xyz[b].double().numpy(), 50)


def test_fps_with_duplicates_never_repeats_and_matches_reference():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 10, 3, generator=gen)
    xyz = torch.cat([base, base, base[:, :5]], dim=1)  # every point at least twice
    got = farthest_point_sample(xyz, 25)[0].tolist()
    assert sorted(got) == list(range(25))  # m == N: a permutation despite duplicates
    assert got == reference_fps(xyz[0].double().numpy(), 25)


def test_fps_m_equals_n_is_a_permutation():
    xyz = torch.randn(3, 64, 3)
    got = farthest_point_sample(xyz, 64)
    for row in got:
        assert sorted(row.tolist()) == list(range(64))


def test_fps_random_start_uses_the_generator():
    xyz = torch.randn(8, 100, 3)
    a = farthest_point_sample(xyz, 10, start="random", generator=torch.Generator().manual_seed(1))
    b = farthest_point_sample(xyz, 10, start="random", generator=torch.Generator().manual_seed(1))
    c = farthest_point_sample(xyz, 10, start="random", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], c[:, 0])
    for b_idx in range(8):
        assert a[b_idx].tolist() == reference_fps(xyz[b_idx].double().numpy(), 10, start=int(a[b_idx, 0]))


@pytest.mark.parametrize(
    "shape, m, match",
    [((2, 10, 3), 11, "m=11.*N=10"), ((2, 10, 3), 0, "m=0"), ((10, 3), 2, r"\(B, N, 3\).*\(10, 3\)"),
     ((2, 10, 2), 2, r"\(2, 10, 2\)")],
)
def test_fps_errors_name_the_shapes(shape, m, match):
    with pytest.raises(ValueError, match=match):
        farthest_point_sample(torch.randn(*shape), m)


def test_non_finite_coordinates_are_rejected():
    xyz = torch.randn(1, 10, 3)
    xyz[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        farthest_point_sample(xyz, 2)
    xyz[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn(xyz, xyz, 2)


def test_knn_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(3, 40, 3, generator=gen)
    ref = torch.randn(3, 300, 3, generator=gen)
    got = knn(query, ref, 16)
    assert got.shape == (3, 40, 16)
    dist = ((query[:, :, None].double() - ref[:, None].double()) ** 2).sum(-1)  # (B, M, N)
    expected = dist.argsort(dim=-1)[..., :16]
    assert torch.equal(got, expected)


def test_knn_hand_placed_nearest_first():
    ref = torch.tensor([[[5.0, 0, 0], [0, 0, 0], [2, 0, 0], [1, 0, 0]]])
    query = torch.tensor([[[0.9, 0, 0]]])
    assert knn(query, ref, 3).tolist() == [[[3, 1, 2]]]


def test_knn_errors():
    with pytest.raises(ValueError, match="k=5.*N=4"):
        knn(torch.randn(1, 2, 3), torch.randn(1, 4, 3), 5)
    with pytest.raises(ValueError, match="batch sizes"):
        knn(torch.randn(2, 2, 3), torch.randn(1, 4, 3), 1)


def test_gather_two_and_three_dimensional_indices():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    idx2 = torch.tensor([[4, 0], [1, 1]])
    out2 = gather(x, idx2)
    assert out2.shape == (2, 2, 3)
    assert torch.equal(out2[0, 0], x[0, 4]) and torch.equal(out2[1, 1], x[1, 1])
    idx3 = torch.randint(5, (2, 4, 6))
    out3 = gather(x, idx3)
    assert out3.shape == (2, 4, 6, 3)
    for b in range(2):
        assert torch.equal(out3[b], x[b][idx3[b]])


def test_gather_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="B=2"):
        gather(torch.randn(2, 5, 3), torch.zeros(3, 4, dtype=torch.long))


def test_sample_and_group_descriptors():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.randn(2, 64, 3, generator=gen)
    feats = torch.randn(2, 64, 5, generator=gen)
    centers, grouped = sample_and_group(xyz, feats, 16, 8)
    assert centers.shape == (2, 16, 3) and grouped.shape == (2, 16, 8, 10)
    center_idx, neighbor_idx = group_index(xyz, 16, 8)
    for b in range(2):
        for i in range(16):
            ci = center_idx[b, i]
            assert torch.equal(centers[b, i], xyz[b, ci])
            for j in range(8):
                nj = neighbor_idx[b, i, j]
                assert torch.allclose(grouped[b, i, j, :5], feats[b, nj] - feats[b, ci])
                assert torch.equal(grouped[b, i, j, 5:], feats[b, ci])
    # A centre is its own nearest neighbour, so the first offset is zero.
    assert torch.all(grouped[:, :, 0, :5] == 0)
