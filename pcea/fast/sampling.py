"""Farthest point sampling and kNN compiled for the CPU with numba, and their dispatch.

:func:`farthest_point_sample`, :func:`knn` and :func:`group_index` take the
arguments of their plain forms in :mod:`pcea.ops` and return the same indices:
from the compiled kernels for float32 CPU tensors when numba is available,
from the plain forms otherwise (CUDA, other dtypes, ``torch.jit.trace``, no
numba, or ``kernels=False``). The accelerated neighbour embedding
(:mod:`pcea.fast.model`) samples and groups through them with ``kernels`` as
:func:`pcea.fast.accelerate` decided it once (``Features.kernels``, off with
``PCEA_FAST_OPS=0``), so no call reads the environment.

Both kernels compute every squared distance with the same float operations, in
the same order, as the plain forms (``dx*dx + dy*dy + dz*dz`` in float32, no
fused multiply-add, no reassociation), so they return the same indices, bit
for bit; ``tests/fast/test_sampling.py`` checks it against the plain forms.

FPS prunes with a leaf partition of each cloud (as bucket-based FPS does) and
updates only the leaves a new pick can reach. kNN buckets each cloud into a
uniform grid and visits the cells around a query ring by ring, stopping once
the k-th distance found is below the distance to any cell not yet visited. The
clouds of a batch are split over a small thread pool (numba releases the GIL),
sized by ``torch.get_num_threads()`` at the call; numba's own parallel layers
are not used, so there is nothing to configure and no clash with PyTorch's
OpenMP threads.

Why not a library (checked 2026-11 with ``pip download --no-deps``):
``fpsample`` 1.0.2 came as a source archive here (no wheel for CPython 3.11 on
this Linux, so a Rust toolchain would be needed), runs one cloud at a time,
and its faster bucket methods do not honour the start index.
``torch-quickfps`` 2.1.0 (MIT, bucket-based, exact: the same picks as ours
with start index 0) ships a torch-stable-ABI wheel that needs torch >= 2.10,
and a separate package per CUDA version for the GPU. ``pcea bench`` times it
when installed (docs/benchmarks.md); numba gives both ops for every torch
version and platform pcea supports, with the plain forms behind it.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pcea import ops

__all__ = ["available", "farthest_point_sample", "farthest_point_sample_cpu", "group_index", "knn",
           "knn_cpu", "run_split"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0  # a forked child inherits the pool object but not its threads


def available() -> bool:
    """Whether the compiled kernels can run here (numba importable); decided on the first call."""
    return _kernels() is not None


def _compiled_serves(x: torch.Tensor, kernels: bool) -> bool:
    """Whether the kernels serve a call on ``x``: asked for, eager float32 on the CPU (a traced graph
    keeps the plain ops, which it can record; torch.compile breaks its graph here and runs them)."""
    return (kernels and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and available())


def _fps_kernel(xyz_t, first, m, out, start, stop):  # pragma: no cover - compiled by numba
    # xyz_t (B, 3, N) coordinates; clouds start..stop of the batch.
    #
    # Exact FPS with pruning (the idea of bucket-based FPS): the points are cut
    # into leaves of at most LEAF_SIZE by median splits along the widest axis.
    # A new pick can lower the distance of a leaf's points only if it is nearer
    # to the leaf's bounding box than the leaf's largest distance, so every
    # other leaf is skipped without changing a value. Updated values are the
    # same floats as in the plain loop, so the picks are the same.
    N = xyz_t.shape[2]
    leaf_size = 64
    max_nodes = 4 * (N // (leaf_size // 2) + 1)
    for b in range(start, stop):
        px = xyz_t[b, 0]
        py = xyz_t[b, 1]
        pz = xyz_t[b, 2]
        # Leaves: contiguous runs of ``order`` (original indices), built by median splits.
        order = np.arange(N)
        leaf_lo = np.empty(max_nodes, np.int64)
        leaf_hi = np.empty(max_nodes, np.int64)
        stack_lo = np.empty(max_nodes, np.int64)
        stack_hi = np.empty(max_nodes, np.int64)
        stack_lo[0] = 0
        stack_hi[0] = N
        top = 1
        num_leaves = 0
        while top > 0:
            top -= 1
            lo = stack_lo[top]
            hi = stack_hi[top]
            if hi - lo <= leaf_size:
                # Within a leaf, ascending original index: the first maximum is then the lowest index.
                order[lo:hi] = np.sort(order[lo:hi])
                leaf_lo[num_leaves] = lo
                leaf_hi[num_leaves] = hi
                num_leaves += 1
                continue
            seg = order[lo:hi]
            sx = px[seg]
            sy = py[seg]
            sz = pz[seg]
            ex = sx.max() - sx.min()
            ey = sy.max() - sy.min()
            ez = sz.max() - sz.min()
            keys = sx if ex >= ey and ex >= ez else (sy if ey >= ez else sz)
            order[lo:hi] = seg[np.argsort(keys)]
            mid = (lo + hi) // 2
            stack_lo[top] = lo
            stack_hi[top] = mid
            stack_lo[top + 1] = mid
            stack_hi[top + 1] = hi
            top += 2
        xs = px[order]
        ys = py[order]
        zs = pz[order]
        position = np.empty(N, np.int64)  # original index -> place in leaf order
        leaf_of = np.empty(N, np.int64)
        box = np.empty((num_leaves, 6), dtype=xyz_t.dtype)
        for leaf in range(num_leaves):
            lo = leaf_lo[leaf]
            hi = leaf_hi[leaf]
            box[leaf, 0] = xs[lo:hi].min()
            box[leaf, 1] = xs[lo:hi].max()
            box[leaf, 2] = ys[lo:hi].min()
            box[leaf, 3] = ys[lo:hi].max()
            box[leaf, 4] = zs[lo:hi].min()
            box[leaf, 5] = zs[lo:hi].max()
            for p in range(lo, hi):
                position[order[p]] = p
                leaf_of[p] = leaf

        min_dist = np.full(N, np.inf, dtype=xyz_t.dtype)
        leaf_max = np.full(num_leaves, np.inf, dtype=xyz_t.dtype)
        leaf_arg = np.zeros(num_leaves, np.int64)
        current = first[b]
        for i in range(m):
            out[b, i] = current
            pc = position[current]
            lx = xs[pc]
            ly = ys[pc]
            lz = zs[pc]
            # The reference sets a picked point to -1 after its update; since
            # distances are >= 0, setting it before gives the same values.
            min_dist[pc] = -1.0
            own = leaf_of[pc]
            for leaf in range(num_leaves):
                if leaf != own:
                    gx = max(box[leaf, 0] - lx, lx - box[leaf, 1], 0.0)
                    gy = max(box[leaf, 2] - ly, ly - box[leaf, 3], 0.0)
                    gz = max(box[leaf, 4] - lz, lz - box[leaf, 5], 0.0)
                    # Skip only with a margin far above float rounding of the bound.
                    if gx * gx + gy * gy + gz * gz > leaf_max[leaf] * 1.0001:
                        continue
                lo = leaf_lo[leaf]
                hi = leaf_hi[leaf]
                for p in range(lo, hi):  # branch-free: vectorised
                    dx = xs[p] - lx
                    dy = ys[p] - ly
                    dz = zs[p] - lz
                    min_dist[p] = min(min_dist[p], dx * dx + dy * dy + dz * dz)
                best_p = lo
                for p in range(lo + 1, hi):
                    if min_dist[p] > min_dist[best_p]:  # strict: first maximum
                        best_p = p
                leaf_max[leaf] = min_dist[best_p]
                leaf_arg[leaf] = order[best_p]
            best = 0
            for leaf in range(1, num_leaves):  # the largest distance, then the lowest index
                if leaf_max[leaf] > leaf_max[best] or (
                    leaf_max[leaf] == leaf_max[best] and leaf_arg[leaf] < leaf_arg[best]
                ):
                    best = leaf
            current = leaf_arg[best]


def _knn_kernel(query, ref_t, k, out, start, stop):  # pragma: no cover - compiled by numba
    # query (B, M, 3), ref_t (B, 3, N); rows start..stop of the flattened (B * M) queries.
    M = query.shape[1]
    N = ref_t.shape[2]
    best_d = np.empty(k, dtype=query.dtype)
    best_i = np.empty(k, dtype=np.int64)
    grid_of = -1
    # Cells per axis: about k / 8 points per cell if the points filled the bounding cube
    # (measured fastest for 512 and 1024 points on surfaces and in volumes).
    per_axis = max(1, int(round((8.0 * N / k) ** (1.0 / 3.0))))
    cells = np.zeros(per_axis ** 3 + 1, np.int64)
    cell_of = np.empty(N, np.int64)
    order = np.empty(N, np.int64)
    sx = np.empty(N, dtype=query.dtype)
    sy = np.empty(N, dtype=query.dtype)
    sz = np.empty(N, dtype=query.dtype)
    lo = np.empty(3, dtype=np.float64)
    dims = np.empty(3, np.int64)
    size = 1.0
    extent = 0.0
    for row in range(start, stop):
        b = row // M
        q = row - b * M
        if b != grid_of:  # bucket this cloud's points into a uniform grid (counting sort)
            grid_of = b
            extent = 0.0
            for a in range(3):
                lo[a] = ref_t[b, a].min()
                extent = max(extent, ref_t[b, a].max() - lo[a])
            size = extent / per_axis if extent > 0 else 1.0
            for a in range(3):
                dims[a] = min(per_axis, int((ref_t[b, a].max() - lo[a]) / size) + 1)
            cells[:] = 0
            for j in range(N):
                c = 0
                for a in range(3):
                    c = c * dims[a] + min(dims[a] - 1, int((ref_t[b, a, j] - lo[a]) / size))
                cell_of[j] = c
                cells[c + 1] += 1
            for c in range(dims[0] * dims[1] * dims[2]):
                cells[c + 1] += cells[c]
            for j in range(N):  # ascending j within each cell
                c = cell_of[j]
                p = cells[c]
                order[p] = j
                sx[p] = ref_t[b, 0, j]
                sy[p] = ref_t[b, 1, j]
                sz[p] = ref_t[b, 2, j]
                cells[c] = p + 1
            for c in range(dims[0] * dims[1] * dims[2] - 1, 0, -1):  # back to cell starts
                cells[c] = cells[c - 1]
            cells[0] = 0
        qx = query[b, q, 0]
        qy = query[b, q, 1]
        qz = query[b, q, 2]
        cx = min(dims[0] - 1, max(0, int((qx - lo[0]) / size)))
        cy = min(dims[1] - 1, max(0, int((qy - lo[1]) / size)))
        cz = min(dims[2] - 1, max(0, int((qz - lo[2]) / size)))
        count = 0
        r = 0
        while True:
            # The cells at Chebyshev distance exactly r from the query's cell.
            for ix in range(max(0, cx - r), min(dims[0], cx + r + 1)):
                for iy in range(max(0, cy - r), min(dims[1], cy + r + 1)):
                    for iz in range(max(0, cz - r), min(dims[2], cz + r + 1)):
                        if max(abs(ix - cx), abs(iy - cy), abs(iz - cz)) != r:
                            continue
                        c = (ix * dims[1] + iy) * dims[2] + iz
                        if count == k:  # skip a cell that is surely farther than the k-th
                            gx = max(lo[0] + ix * size - qx, qx - (lo[0] + (ix + 1) * size), 0.0)
                            gy = max(lo[1] + iy * size - qy, qy - (lo[1] + (iy + 1) * size), 0.0)
                            gz = max(lo[2] + iz * size - qz, qz - (lo[2] + (iz + 1) * size), 0.0)
                            near = gx * gx + gy * gy + gz * gz
                            if near > best_d[k - 1] * (1.0 + 1e-5) + 1e-12 * extent * extent:
                                continue
                        for p in range(cells[c], cells[c + 1]):
                            dx = sx[p] - qx
                            dy = sy[p] - qy
                            dz = sz[p] - qz
                            d = dx * dx + dy * dy + dz * dz
                            j = order[p]
                            # Keep the k smallest (distance, index) pairs: ties go to the
                            # lower index, as a stable sort of the distances would do.
                            if count < k:
                                pos = count
                                count += 1
                            elif d < best_d[k - 1] or (d == best_d[k - 1] and j < best_i[k - 1]):
                                pos = k - 1
                            else:
                                continue
                            while pos > 0 and (
                                best_d[pos - 1] > d or (best_d[pos - 1] == d and best_i[pos - 1] > j)
                            ):
                                best_d[pos] = best_d[pos - 1]
                                best_i[pos] = best_i[pos - 1]
                                pos -= 1
                            best_d[pos] = d
                            best_i[pos] = j
            # Every point not visited yet lies outside the (2r+1)^3 block of cells around
            # the query's cell, so at least `gap` away from the query.
            gap = np.inf
            covered = True
            for a in range(3):
                ca = cx if a == 0 else (cy if a == 1 else cz)
                qa = qx if a == 0 else (qy if a == 1 else qz)
                if ca - r > 0:
                    covered = False
                    gap = min(gap, qa - (lo[a] + (ca - r) * size))
                if ca + r + 1 < dims[a]:
                    covered = False
                    gap = min(gap, lo[a] + (ca + r + 1) * size - qa)
            if covered:
                break
            # Stop only with a margin far above the float rounding of both sides (the
            # float32 distances, the float64 cell bounds), and never on a vanishing gap.
            if count == k and gap > 1e-6 * extent and best_d[k - 1] < gap * gap * (1.0 - 1e-5):
                break
            r += 1
        for t in range(k):
            out[b, q, t] = best_i[t]


@functools.cache
def _kernels() -> tuple | None:
    """The two kernels compiled by numba, or None without numba.

    Imported on first use: numba costs a few tenths of a second to import,
    which ``pcea info`` and friends need not pay. Compiled code is cached on
    disk next to this file (where writable), so only the first process on a
    machine pays the JIT: about 7 s of CPU time for FPS and 0.5 s for kNN here.
    """
    try:  # numba is a dependency, but a missing or broken install must not break pcea
        import numba
    except Exception:  # noqa: BLE001 - any import failure means "use the torch path"
        return None
    # error_model="numpy" drops the division checks; fastmath stays off so the
    # float results match PyTorch's bit for bit.
    jit = numba.njit(nogil=True, cache=True, error_model="numpy")
    return jit(_fps_kernel), jit(_knn_kernel)


def run_split(kernel, args: tuple, total: int) -> None:
    """Run ``kernel(*args, start, stop)`` over 0..total in ``torch.get_num_threads()`` chunks."""
    global _pool, _pool_size, _pool_pid
    workers = max(1, min(torch.get_num_threads(), total))
    if workers == 1:
        kernel(*args, 0, total)
        return
    if _pool is None or _pool_size < workers or _pool_pid != os.getpid():
        if _pool is not None and _pool_pid == os.getpid():
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pcea-ops")
        _pool_size = workers
        _pool_pid = os.getpid()
    bounds = np.linspace(0, total, workers + 1).astype(np.int64)
    chunks = zip(bounds[:-1], bounds[1:], strict=True)
    futures = [_pool.submit(kernel, *args, int(lo), int(hi)) for lo, hi in chunks]
    for future in futures:
        future.result()


def farthest_point_sample_cpu(xyz: torch.Tensor, m: int, first: torch.Tensor) -> torch.Tensor:
    """Exact FPS on CPU by the compiled kernel, the same picks as :func:`pcea.ops.farthest_point_sample`.

    Args:
        xyz: (B, N, 3) float32 CPU coordinates, already validated.
        m: points to pick, 1 <= m <= N.
        first: (B,) int64 index of each cloud's first pick.

    Returns:
        (B, m) int64 indices in the order they were picked.
    """
    B = xyz.shape[0]
    xyz_t = xyz.detach().transpose(1, 2).contiguous().numpy()  # (B, N, 3) -> (B, 3, N)
    out = np.empty((B, m), dtype=np.int64)
    run_split(_kernels()[0], (xyz_t, first.cpu().numpy().astype(np.int64), m, out), B)
    return torch.from_numpy(out)


def knn_cpu(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Exact kNN on CPU by direct squared distances, nearest first, ties by lower index.

    Args:
        query: (B, M, 3) float32 CPU query points.
        ref: (B, N, 3) CPU reference points.
        k: neighbours per query, 1 <= k <= N.

    Returns:
        (B, M, k) int64 indices into ``ref``.
    """
    B, M, _ = query.shape
    q = query.detach().contiguous().numpy()
    r_t = ref.detach().to(query.dtype).transpose(1, 2).contiguous().numpy()  # (B, N, 3) -> (B, 3, N)
    out = np.empty((B, M, k), dtype=np.int64)
    run_split(_kernels()[1], (q, r_t, k, out), B * M)
    return torch.from_numpy(out)


def farthest_point_sample(xyz: torch.Tensor, m: int, start: int | str | None = None,
                          generator: torch.Generator | None = None, *, kernels: bool = True) -> torch.Tensor:
    """:func:`pcea.ops.farthest_point_sample` (same arguments, same picks), compiled where it can be.

    Args:
        kernels: False takes the plain form (:attr:`pcea.fast.Features.kernels` off).

    Returns:
        (B, m) int64 indices into the N points, in the order they were picked.
    """
    if not _compiled_serves(xyz, kernels):
        return ops.farthest_point_sample(xyz, m, start, generator)
    first = ops.first_picks(xyz, m, start, generator)  # (B,), the request checked
    return farthest_point_sample_cpu(xyz, m, first)


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, *, kernels: bool = True) -> torch.Tensor:
    """:func:`pcea.ops.knn` (same arguments), compiled where it can be; ties go to the lower index.

    Args:
        kernels: False takes the plain form (:attr:`pcea.fast.Features.kernels` off).

    Returns:
        (B, M, k) int64 indices into ``ref``, nearest first.
    """
    if not _compiled_serves(query, kernels):
        return ops.knn(query, ref, k)
    ops.check_knn(query, ref, k)
    return knn_cpu(query, ref, k)


def group_index(xyz: torch.Tensor, num_centers: int, k: int, *,
                kernels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pcea.ops.group_index` through the compiled FPS and kNN (the plain ones when not ``kernels``).

    Returns:
        center_idx: (B, M) indices of the centres; neighbor_idx: (B, M, k) of their neighbours.
    """
    center_idx = farthest_point_sample(xyz, num_centers, kernels=kernels)  # (B, M)
    neighbor_idx = knn(ops.gather(xyz, center_idx), xyz, k, kernels=kernels)  # (B, M, 3) centres -> (B, M, k)
    return center_idx, neighbor_idx
