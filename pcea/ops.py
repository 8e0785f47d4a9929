"""Point operations: farthest point sampling, k-nearest neighbours, gather, grouping.

Pure tensor functions on channels-last clouds, batched over the leading axis,
written in plain PyTorch so they run the same on CPU and CUDA without a custom
C++/CUDA build. They implement the neighbour-embedding step of PCT
(Guo et al. 2020, arXiv 2012.09688, Sec. 3.3), which in turn follows PointNet++.
:mod:`pcea.fast.sampling` has compiled CPU versions of FPS and kNN that return
the same indices; the accelerated model (:func:`pcea.fast.accelerate`) uses those.

Shapes: ``B`` clouds, ``N`` points, ``M`` sampled centres, ``k`` neighbours,
``C`` feature channels.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "check_knn",
    "flat_index",
    "farthest_point_sample",
    "first_picks",
    "knn",
    "gather",
    "group_index",
    "sample_and_group",
    "square_distance",
]

def _check_cloud(xyz: torch.Tensor, name: str = "xyz") -> None:
    """Raise ValueError unless ``xyz`` is a finite (B, N, 3) float tensor."""
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {xyz.dtype}")
    # A traced graph (pcea.export) cannot keep a check on values; its callers check the input.
    if not torch.jit.is_tracing() and not bool(torch.isfinite(xyz).all()):
        raise ValueError(f"{name} of shape {tuple(xyz.shape)} has NaN or infinite coordinates")


def square_distance(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between two batched point sets.

    Args:
        query: (B, M, D) points.
        ref: (B, N, D) points.

    Returns:
        (B, M, N) squared distances, clamped at 0 (the expansion
        |q|^2 - 2 q.r + |r|^2 can dip slightly below zero in float32).
    """
    dist = torch.cdist(query, ref, compute_mode="use_mm_for_euclid_dist")  # (B, M, N)
    return dist.square_()


def farthest_point_sample(
    xyz: torch.Tensor,
    m: int,
    start: int | Literal["random"] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact farthest point sampling (PointNet++, Qi et al. 2017).

    The first pick is point 0 by default, the convention of the PointNet++
    CUDA op that PCT uses; each further pick is the point whose distance to the
    picked set is largest, the lowest index winning a tie. A picked point is
    never picked again, so ``m == N`` returns a permutation even when the cloud
    holds duplicate points (where the CUDA op would repeat index 0 once only
    duplicates are left); on clouds of distinct points the two agree.

    Args:
        xyz: (B, N, 3) coordinates.
        m: number of points to pick, 1 <= m <= N.
        start: index of the first pick for every cloud; ``None`` means 0 and
            ``"random"`` draws one per cloud from ``generator``.
        generator: random source for ``start="random"``.

    Returns:
        (B, m) int64 indices into the N points, in the order they were picked.
    """
    return _farthest_point_sample_torch(xyz, m, first_picks(xyz, m, start, generator))


def first_picks(
    xyz: torch.Tensor,
    m: int,
    start: int | Literal["random"] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Check the arguments of :func:`farthest_point_sample` and return each cloud's first pick.

    Returns:
        (B,) int64 point indices on xyz's device.
    """
    _check_cloud(xyz)
    B, N, _ = xyz.shape
    if not 1 <= m <= N:
        raise ValueError(f"cannot sample m={m} points from a cloud of N={N} points")
    device = xyz.device
    if start is None:
        first = torch.zeros(B, dtype=torch.long, device=device)
    elif start == "random":
        first = torch.randint(N, (B,), generator=generator, device="cpu").to(device)
    else:
        if not 0 <= int(start) < N:
            raise ValueError(f"start={start} is not a point index of a cloud of N={N} points")
        first = torch.full((B,), int(start), dtype=torch.long, device=device)
    return first


def _farthest_point_sample_torch(xyz: torch.Tensor, m: int, first: torch.Tensor) -> torch.Tensor:
    """The plain batched FPS loop: the reference, the fallback, the CUDA path and the ONNX graph.

    Written out of place (no ``out=``, no index assignment), with a row gather and
    a mask instead of advanced indexing, so that tracing it for ONNX
    (:mod:`pcea.export`) records the same operations for any batch size, and
    few of them: the loop is unrolled into the graph, m steps of about ten nodes.

    Args:
        xyz: (B, N, 3) validated coordinates.
        m: points to pick.
        first: (B,) int64 first pick of each cloud, on xyz's device.

    Returns:
        (B, m) int64 indices. On CUDA the loop never synchronises with the host.
    """
    rows = xyz.reshape(-1, 3)  # (B * N, 3)
    offset = torch.arange(xyz.shape[0], device=xyz.device) * xyz.shape[1]  # (B,): each cloud's first row
    point_index = torch.arange(xyz.shape[1], device=xyz.device)  # (N,)
    # Distance of every point to the picked set; picked points get -1 so that
    # they lose every later argmax, even against duplicates at distance 0.
    min_dist = torch.full_like(xyz[..., 0], float("inf"))  # (B, N)
    current = first  # (B,)
    picks = []
    for _ in range(m):
        picks.append(current)
        last = rows.index_select(0, current + offset).unsqueeze(1)  # (B, 1, 3)
        dist = (xyz - last).square().sum(-1)  # (B, N)
        picked = point_index == current.unsqueeze(1)  # (B, N)
        min_dist = torch.where(picked, -1.0, torch.minimum(min_dist, dist))  # (B, N)
        current = min_dist.argmax(dim=1)  # (B,), the first maximum on CPU, CUDA and ONNX Runtime
    return torch.stack(picks, dim=1)  # (B, m)


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k nearest reference points of each query point, nearest first.

    Args:
        query: (B, M, 3) query points.
        ref: (B, N, 3) reference points.
        k: neighbours per query, 1 <= k <= N.

    Returns:
        (B, M, k) int64 indices into ``ref``.
    """
    check_knn(query, ref, k)
    return _knn_torch(query, ref, k)


def check_knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    """Raise ValueError unless :func:`knn` can take ``k`` neighbours of ``query`` in ``ref``."""
    _check_cloud(query, "query")
    _check_cloud(ref, "ref")
    if query.shape[0] != ref.shape[0]:
        raise ValueError(
            f"query {tuple(query.shape)} and ref {tuple(ref.shape)} have different batch sizes"
        )
    N = ref.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"cannot take k={k} neighbours from N={N} reference points")


def _knn_torch(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Direct squared distances + topk: the fallback, the CUDA path and the ONNX graph.

    ``dx*dx + dy*dy + dz*dz`` one coordinate at a time, the floats of the CPU
    kernel (pcea.fast.sampling), so both find the same neighbours (ties in any order
    here); the matmul expansion of :func:`square_distance` rounds differently
    and could swap near-tied neighbours. One (B, M, N) plane per coordinate
    keeps the peak memory at two such planes, not a (B, M, N, 3) difference.
    """
    dist = None
    for axis in range(3):
        delta = ref[..., axis].unsqueeze(1) - query[..., axis].unsqueeze(2)  # (B, M, N)
        dist = delta * delta if dist is None else dist + delta * delta
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices  # (B, M, k)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of a batched point tensor by index.

    Args:
        x: (B, N, C) values per point.
        idx: (B, *S) int64 indices into N, any trailing shape S.

    Returns:
        (B, *S, C) with ``out[b, s] = x[b, idx[b, s]]``: a view of a fresh tensor,
        so under autograd add to it out of place (an in-place op on a view makes
        the backward pass copy the whole tensor).
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, C), got {tuple(x.shape)}")
    if idx.dim() < 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must have shape (B, ...) with B={x.shape[0]}, got {tuple(idx.shape)}")
    B, N, C = x.shape
    flat = flat_index(idx, N).reshape(-1)  # (B * prod(S),)
    return x.reshape(B * N, C).index_select(0, flat).view(*idx.shape, C)


def flat_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Batched indices into N points as indices into the flattened (B * N) rows.

    Offsetting each cloud's indices by b * N turns a batched gather into one
    index_select on the (B * N, C) rows, which avoids expanding idx to C.

    Args:
        idx: (B, *S) int64 indices into N.
        n: N, the points per cloud.

    Returns:
        (B, *S) indices into B * N rows.
    """
    offset = torch.arange(idx.shape[0], device=idx.device) * n  # (B,)
    return idx + offset.view(-1, *([1] * (idx.dim() - 1)))


def group_index(xyz: torch.Tensor, num_centers: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS centres and the k nearest points of each, as indices.

    Args:
        xyz: (B, N, 3) coordinates.
        num_centers: M, centres picked by farthest point sampling.
        k: neighbours per centre, found among the N points (a centre is its own
            nearest neighbour).

    Returns:
        center_idx: (B, M) indices of the centres into the N points.
        neighbor_idx: (B, M, k) indices of their neighbours, nearest first.
    """
    center_idx = farthest_point_sample(xyz, num_centers)  # (B, M)
    centers = gather(xyz, center_idx)  # (B, M, 3)
    neighbor_idx = knn(centers, xyz, k)  # (B, M, k)
    return center_idx, neighbor_idx


def sample_and_group(
    xyz: torch.Tensor,
    feats: torch.Tensor,
    num_centers: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PCT's neighbour embedding input: FPS centres and their kNN feature groups.

    Each neighbour j of centre i is described by ``[f_j - f_i, f_i]`` (PCT,
    Sec. 3.3), the feature offset to the centre and the centre's own feature.
    The model computes the same thing without materialising the 2C-wide groups
    (see ``pcea.model.NeighborEmbedding``); this is the plain form.

    Args:
        xyz: (B, N, 3) coordinates.
        feats: (B, N, C) features of the same points.
        num_centers: M, centres picked by farthest point sampling.
        k: neighbours per centre, found among the N points by coordinates.

    Returns:
        centers: (B, M, 3) coordinates of the centres.
        grouped: (B, M, k, 2C) neighbour descriptors ``[f_j - f_i, f_i]``.
    """
    if feats.dim() != 3 or feats.shape[:2] != xyz.shape[:2]:
        raise ValueError(
            f"feats {tuple(feats.shape)} must be (B, N, C) matching xyz {tuple(xyz.shape)}"
        )
    center_idx, neighbor_idx = group_index(xyz, num_centers, k)  # (B, M), (B, M, k)
    centers = gather(xyz, center_idx)  # (B, M, 3)
    neighbors = gather(feats, neighbor_idx)  # (B, M, k, C)
    center_feats = gather(feats, center_idx).unsqueeze(2)  # (B, M, 1, C)
    grouped = torch.cat(
        [neighbors - center_feats, center_feats.expand_as(neighbors)], dim=-1
    )  # (B, M, k, 2C)
    return centers, grouped
