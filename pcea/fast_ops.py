"""Compiled CPU kernels for farthest point sampling and kNN, with numba.

:mod:`pcea.ops` calls these for CPU tensors when numba is installed and keeps
its pure-PyTorch loops as the reference, the fallback and the CUDA path. Both
kernels compute every squared distance with the same float operations, in the
same order, as the reference (``dx*dx + dy*dy + dz*dz`` in the input's dtype,
no fused multiply-add, no reassociation), so they return the same indices, bit
for bit; ``tests/test_fast_ops.py`` checks it against the plain forms.

The clouds of a batch are split over a small thread pool (numba releases the
GIL), sized by ``torch.get_num_threads()`` at the call; numba's own parallel
layers are not used, so there is nothing to configure and no clash with
PyTorch's OpenMP threads. Set ``PCEA_FAST_OPS=0`` to turn the kernels off.

Why not a library: ``fpsample`` runs one cloud at a time and its faster bucket
methods do not honour the start index; ``torch-quickfps`` needs a compiled
extension per torch version. numba (BSD, wheels for CPython 3.10-3.14 on
Linux, macOS and Windows) is enough for both ops.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["available", "farthest_point_sample_cpu", "knn_cpu"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def available() -> bool:
    """Whether the compiled kernels can be used (numba importable, not disabled)."""
    return os.environ.get("PCEA_FAST_OPS", "1") != "0" and _kernels() is not None


def _fps_kernel(xyz_t, first, m, out, start, stop):  # pragma: no cover - compiled by numba
    # xyz_t (B, 3, N) coordinates, one contiguous row per axis so the inner
    # loop streams three arrays; clouds start..stop of the batch.
    N = xyz_t.shape[2]
    min_dist = np.empty(N, dtype=xyz_t.dtype)
    for b in range(start, stop):
        px = xyz_t[b, 0]
        py = xyz_t[b, 1]
        pz = xyz_t[b, 2]
        min_dist[:] = np.inf
        current = first[b]
        for i in range(m):
            out[b, i] = current
            lx = px[current]
            ly = py[current]
            lz = pz[current]
            # The reference sets a picked point to -1 after its update; since
            # distances are >= 0, setting it before gives the same values.
            min_dist[current] = -1.0
            best = min_dist[current] - 1.0  # below every value
            best_j = 0
            for j in range(N):
                dx = px[j] - lx
                dy = py[j] - ly
                dz = pz[j] - lz
                d = dx * dx + dy * dy + dz * dz
                md = min_dist[j]
                if d < md:
                    md = d
                    min_dist[j] = d
                if md > best:  # strict: the lowest index wins a tie, like argmax
                    best = md
                    best_j = j
            current = best_j


def _knn_kernel(query, ref_t, k, out, start, stop):  # pragma: no cover - compiled by numba
    # query (B, M, 3), ref_t (B, 3, N); rows start..stop of the flattened (B * M) queries.
    M = query.shape[1]
    N = ref_t.shape[2]
    dist = np.empty(N, dtype=query.dtype)
    best_d = np.empty(k, dtype=query.dtype)
    best_i = np.empty(k, dtype=np.int64)
    for row in range(start, stop):
        b = row // M
        q = row - b * M
        qx = query[b, q, 0]
        qy = query[b, q, 1]
        qz = query[b, q, 2]
        rx = ref_t[b, 0]
        ry = ref_t[b, 1]
        rz = ref_t[b, 2]
        for j in range(N):  # branch-free, so the compiler vectorises it
            dx = rx[j] - qx
            dy = ry[j] - qy
            dz = rz[j] - qz
            dist[j] = dx * dx + dy * dy + dz * dz
        # The first k, sorted by insertion (stable: after equal distances).
        for j in range(k):
            d = dist[j]
            pos = j
            while pos > 0 and best_d[pos - 1] > d:
                best_d[pos] = best_d[pos - 1]
                best_i[pos] = best_i[pos - 1]
                pos -= 1
            best_d[pos] = d
            best_i[pos] = j
        # The rest replace the k-th only when strictly nearer, so a tie keeps
        # the lower index, as a stable sort of the distances would.
        kth = best_d[k - 1]
        for j in range(k, N):
            d = dist[j]
            if d < kth:
                pos = k - 1
                while pos > 0 and best_d[pos - 1] > d:
                    best_d[pos] = best_d[pos - 1]
                    best_i[pos] = best_i[pos - 1]
                    pos -= 1
                best_d[pos] = d
                best_i[pos] = j
                kth = best_d[k - 1]
        for t in range(k):
            out[b, q, t] = best_i[t]


@functools.cache
def _kernels() -> tuple | None:
    """The two kernels compiled by numba, or None without numba.

    Imported on first use: numba costs a few tenths of a second to import,
    which ``pcea info`` and friends need not pay. Compiled code is cached on
    disk next to this file (where writable), so later processes skip the JIT.
    """
    try:  # numba is a dependency, but a missing or broken install must not break pcea
        import numba
    except Exception:  # noqa: BLE001 - any import failure means "use the torch path"
        return None
    # error_model="numpy" drops the division checks; fastmath stays off so the
    # float results match PyTorch's bit for bit.
    jit = numba.njit(nogil=True, cache=True, error_model="numpy")
    return jit(_fps_kernel), jit(_knn_kernel)


def _run_split(kernel, args: tuple, total: int) -> None:
    """Run ``kernel(*args, start, stop)`` over 0..total in ``torch.get_num_threads()`` chunks."""
    global _pool, _pool_size
    workers = max(1, min(torch.get_num_threads(), total))
    if workers == 1:
        kernel(*args, 0, total)
        return
    if _pool is None or _pool_size < workers:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pcea-ops")
        _pool_size = workers
    bounds = np.linspace(0, total, workers + 1).astype(np.int64)
    chunks = zip(bounds[:-1], bounds[1:], strict=True)
    futures = [_pool.submit(kernel, *args, int(lo), int(hi)) for lo, hi in chunks]
    for future in futures:
        future.result()


def farthest_point_sample_cpu(xyz: torch.Tensor, m: int, first: torch.Tensor) -> torch.Tensor:
    """Exact FPS on CPU, the same picks as :func:`pcea.ops.farthest_point_sample`.

    Args:
        xyz: (B, N, 3) float32 or float64 CPU coordinates, already validated.
        m: points to pick, 1 <= m <= N.
        first: (B,) int64 index of each cloud's first pick.

    Returns:
        (B, m) int64 indices in the order they were picked.
    """
    B = xyz.shape[0]
    xyz_t = xyz.detach().transpose(1, 2).contiguous().numpy()  # (B, N, 3) -> (B, 3, N)
    out = np.empty((B, m), dtype=np.int64)
    _run_split(_kernels()[0], (xyz_t, first.cpu().numpy().astype(np.int64), m, out), B)
    return torch.from_numpy(out)


def knn_cpu(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Exact kNN on CPU by direct squared distances, nearest first, ties by lower index.

    Args:
        query: (B, M, 3) CPU query points (float32 or float64, same dtype as ref).
        ref: (B, N, 3) CPU reference points.
        k: neighbours per query, 1 <= k <= N.

    Returns:
        (B, M, k) int64 indices into ``ref``.
    """
    B, M, _ = query.shape
    q = query.detach().contiguous().numpy()
    r_t = ref.detach().to(query.dtype).transpose(1, 2).contiguous().numpy()  # (B, N, 3) -> (B, 3, N)
    out = np.empty((B, M, k), dtype=np.int64)
    _run_split(_kernels()[1], (q, r_t, k, out), B * M)
    return torch.from_numpy(out)
