"""The compiled FPS and kNN of pcea.fast.sampling against the plain forms of pcea.ops."""

from __future__ import annotations

import pytest
import torch

from pcea import ops
from pcea.fast import sampling

pytestmark = pytest.mark.skipif(not sampling.available(), reason="numba is not installed")


def loop_fps(xyz: torch.Tensor, m: int, start: int = 0) -> torch.Tensor:
    """One cloud at a time, in Python: the definition of farthest point sampling."""
    picks = []
    for cloud in xyz:
        min_dist = torch.full((cloud.shape[0],), float("inf"), dtype=cloud.dtype)
        current, chosen = start, []
        for _ in range(m):
            chosen.append(current)
            dist = (cloud - cloud[current]).square().sum(-1)
            min_dist = torch.minimum(min_dist, dist)
            min_dist[chosen] = -1.0  # never pick a point twice, even a duplicate
            current = int(min_dist.argmax())  # the lowest index wins a tie
        picks.append(chosen)
    return torch.tensor(picks, dtype=torch.long)


def brute_knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Every distance, then a stable sort: nearest first, a tie by the lower index."""
    dist = (query.unsqueeze(2) - ref.unsqueeze(1)).square().sum(-1)  # (B, M, N)
    return dist.sort(dim=-1, stable=True).indices[..., :k]


def fast_fps(xyz: torch.Tensor, m: int, start: int = 0) -> torch.Tensor:
    first = torch.full((xyz.shape[0],), start, dtype=torch.long)
    return sampling.farthest_point_sample_cpu(xyz, m, first)


def test_fps_matches_torch_loop_and_definition():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.randn(5, 300, 3, generator=gen) * torch.tensor([1.0, 3.0, 0.2])
    first = torch.zeros(5, dtype=torch.long)
    fast = fast_fps(xyz, 120)
    assert torch.equal(fast, ops._farthest_point_sample_torch(xyz, 120, first))
    assert torch.equal(fast, loop_fps(xyz, 120))


def test_fps_duplicates_and_m_equals_n():
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(2, 40, 3, generator=gen)
    xyz = torch.cat([base, base, base[:, :8]], dim=1)  # every point twice, some three times
    fast = fast_fps(xyz, xyz.shape[1])
    assert torch.equal(fast, loop_fps(xyz, xyz.shape[1]))
    for row in fast:  # m == N gives a permutation, duplicates included
        assert torch.equal(row.sort().values, torch.arange(xyz.shape[1]))


def test_fps_prunes_exactly_on_large_structured_clouds():
    # Many leaves, clusters, a flat sheet and repeated points: the pruning must
    # never skip a leaf whose distances would change.
    gen = torch.Generator().manual_seed(6)
    cluster = torch.randn(1, 600, 3, generator=gen) * 0.01 + 2.0
    sheet = torch.rand(1, 600, 3, generator=gen) * torch.tensor([1.0, 1.0, 0.0])
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    cloud = torch.cat([cluster, sheet, grid, grid[:, :100]], dim=1)  # (1, 1516, 3)
    xyz = torch.cat([cloud, torch.rand(1, 1516, 3, generator=gen) * 5], dim=0)
    first = torch.zeros(2, dtype=torch.long)
    assert torch.equal(fast_fps(xyz, 700), ops._farthest_point_sample_torch(xyz, 700, first))


def test_fps_hand_placed_ties():
    # Points on a line at 0, 1, 2, 3 and a copy of 3: from 0, the farthest is 3
    # (index 3 before its copy 4), then 1 and 2 tie at distance 1 -> index 1.
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [3, 0, 0]]])
    assert fast_fps(xyz, 5).tolist() == [[0, 3, 1, 2, 4]]
    assert ops.farthest_point_sample(xyz, 5).tolist() == [[0, 3, 1, 2, 4]]
    assert sampling.farthest_point_sample(xyz, 5).tolist() == [[0, 3, 1, 2, 4]]


def test_fps_start_index_and_batch_independence():
    gen = torch.Generator().manual_seed(2)
    xyz = torch.rand(6, 200, 3, generator=gen)
    batch = fast_fps(xyz, 64, start=17)
    assert torch.equal(batch, loop_fps(xyz, 64, start=17))
    for b in range(6):  # a cloud gets the same picks alone or in a batch
        assert torch.equal(fast_fps(xyz[b : b + 1], 64, start=17)[0], batch[b])


def test_dispatching_fps_and_knn_agree_with_the_plain_ops(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    xyz = torch.rand(3, 256, 3, generator=gen)
    fast = sampling.farthest_point_sample(xyz, 100)
    assert torch.equal(fast, ops.farthest_point_sample(xyz, 100))
    assert torch.equal(fast, sampling.farthest_point_sample(xyz.double(), 100))  # float64: the plain loop
    assert torch.equal(sampling.farthest_point_sample(xyz, 100, start="random", generator=torch.Generator()),
                       ops.farthest_point_sample(xyz, 100, start="random", generator=torch.Generator()))
    centers, neighbors = sampling.group_index(xyz, 50, 8)
    assert torch.equal(centers, ops.group_index(xyz, 50, 8)[0])
    assert torch.equal(neighbors, brute_knn(ops.gather(xyz, centers), xyz, 8))
    # kernels=False (accelerate's Features.kernels) takes the plain forms, whatever the environment says
    monkeypatch.setattr(sampling, "farthest_point_sample_cpu", None)
    monkeypatch.setattr(sampling, "knn_cpu", None)
    assert torch.equal(fast, sampling.farthest_point_sample(xyz, 100, kernels=False))
    assert torch.equal(sampling.group_index(xyz, 50, 8, kernels=False)[1], neighbors)
    with pytest.raises(TypeError):  # and True the compiled ones: here, the missing function
        sampling.knn(xyz, xyz, 8)


def test_dispatching_fps_and_knn_check_their_arguments_as_the_plain_ops():
    xyz = torch.rand(2, 20, 3)
    with pytest.raises(ValueError, match="m=21 points from a cloud of N=20"):
        sampling.farthest_point_sample(xyz, 21)
    with pytest.raises(ValueError, match="start=20"):
        sampling.farthest_point_sample(xyz, 5, start=20)
    with pytest.raises(ValueError, match="k=21 neighbours from N=20"):
        sampling.knn(xyz, xyz, 21)
    with pytest.raises(ValueError, match="NaN or infinite"):
        sampling.knn(xyz.clone().fill_(float("nan")), xyz, 3)


@pytest.mark.parametrize("k", [1, 7, 32])
def test_knn_matches_brute_force(k):
    gen = torch.Generator().manual_seed(4)
    ref = torch.rand(4, 257, 3, generator=gen)
    query = torch.rand(4, 50, 3, generator=gen)
    assert torch.equal(sampling.knn_cpu(query, ref, k), brute_knn(query, ref, k))
    assert torch.equal(sampling.knn(query, ref, k), brute_knn(query, ref, k))


def test_knn_ties_keep_lower_index_and_k_equals_n():
    # A grid has many equal distances; duplicates have exactly equal ones.
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    ref = torch.cat([grid, grid[:, :10]], dim=1)  # (1, 74, 3)
    query = grid[:, ::5] + 0.5 * (torch.arange(13).view(1, 13, 1) % 2)
    for k in (6, 27, ref.shape[1]):
        assert torch.equal(sampling.knn_cpu(query, ref, k), brute_knn(query, ref, k))


def _surface_clouds(gen: torch.Generator, batch: int, n: int) -> torch.Tensor:
    """Points on a sphere, a square and a segment: dense in some grid cells, absent from most."""
    sphere = torch.nn.functional.normalize(torch.randn(batch, n // 2, 3, generator=gen), dim=-1)
    square = torch.rand(batch, n // 4, 3, generator=gen) * torch.tensor([2.0, 2.0, 0.0]) - 1.0
    segment = torch.rand(batch, n - n // 2 - n // 4, 1, generator=gen) * torch.tensor([[0.0, 0.0, 3.0]])
    return torch.cat([sphere, square, segment], dim=1)


@pytest.mark.parametrize("n, m, k", [(1024, 512, 32), (512, 256, 32), (300, 40, 5), (64, 64, 64)])
def test_knn_grid_search_is_exact_on_surfaces_flat_clouds_and_far_queries(n, m, k):
    """The grid kernel stops early: it must still find exactly the brute-force neighbours where
    the points crowd a few cells, where a cloud has no extent along an axis, and for queries
    far outside the cloud."""
    gen = torch.Generator().manual_seed(n + k)
    ref = _surface_clouds(gen, 3, n)
    query = ref[:, torch.randperm(n, generator=gen)[:m]]
    assert torch.equal(sampling.knn_cpu(query, ref, k), brute_knn(query, ref, k))
    flat = ref * torch.tensor([1.0, 1.0, 0.0])  # z = 0 everywhere: one cell along z
    assert torch.equal(sampling.knn_cpu(query * torch.tensor([1.0, 1.0, 0.0]), flat, k),
                       brute_knn(query * torch.tensor([1.0, 1.0, 0.0]), flat, k))
    far = torch.rand(3, m, 3, generator=gen) * 20 - 10  # most queries outside the bounding box
    assert torch.equal(sampling.knn_cpu(far, ref, k), brute_knn(far, ref, k))


def test_knn_one_repeated_point_and_tiny_offsets():
    same = torch.full((1, 100, 3), 0.25)  # every distance equal: the k lowest indices
    assert torch.equal(sampling.knn_cpu(same[:, :7], same, 9), torch.arange(9).expand(1, 7, 9))
    gen = torch.Generator().manual_seed(9)
    near = 0.5 + 1e-6 * torch.randn(2, 200, 3, generator=gen)  # distances near float32 rounding
    assert torch.equal(sampling.knn_cpu(near[:, :50], near, 16), brute_knn(near[:, :50], near, 16))


def test_knn_batch_independence():
    gen = torch.Generator().manual_seed(5)
    ref = torch.rand(8, 128, 3, generator=gen)
    query = ref[:, :40]
    batch = sampling.knn(query, ref, 16)
    for b in range(8):
        assert torch.equal(sampling.knn(query[b : b + 1], ref[b : b + 1], 16)[0], batch[b])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
@pytest.mark.slow
def test_kernels_work_in_a_forked_child():
    # The parent's thread pool does not survive a fork; the child must build its own.
    import multiprocessing

    xyz = torch.rand(4, 256, 3, generator=torch.Generator().manual_seed(7))
    expected = sampling.farthest_point_sample(xyz, 32)  # creates the pool in this process
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(sampling.farthest_point_sample, (xyz, 32)).get(timeout=60)
    assert torch.equal(got, expected)
