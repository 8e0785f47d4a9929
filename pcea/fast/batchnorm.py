"""Training-mode BatchNorm fused with the gather before it and the max after it (CPU, numba).

A neighbour-embedding stage in training runs, on its (B, M, k, C) grouped rows,

    h = f[idx] + c                      gather, add the centre term
    x = relu(BatchNorm(h))              first layer's norm and activation
    y = x W^T                           second layer's matmul
    out = max_k BatchNorm(y)            second layer's norm, max over neighbours

With plain PyTorch ops each step is one or more full passes over the
(B, M, k, C) rows, forward and backward: the gather, the add, BatchNorm's
statistics and its normalisation, the ReLU, the max with its indices, the
zero-filled gradient the max scatters into, the ReLU mask, BatchNorm's two
backward passes and the scatter-add back to the points. What that costs, and
what fusing saves, is measured in docs/benchmarks.md.

Two autograd functions do the same arithmetic in fewer passes:

- :func:`gather_norm_act` computes the BatchNorm statistics of ``h`` without
  storing ``h`` (the points it gathers from stay in the CPU cache), then writes
  ``x`` once. Its backward pass recomputes ``h`` the same way, takes the two
  sums BatchNorm's gradient needs in one pass over ``dx``, and scatters the
  gradient straight into the points and centres in a second.
- :func:`norm_max` takes the statistics, the per-group max and min and their
  positions in one pass over ``y``. BatchNorm is a per-channel affine map, so
  the max of its output is the affine map of the max of ``y`` (of the min where
  the scale is negative), and only (G, C) values are normalised. Its backward
  pass writes ``dy`` in one pass: BatchNorm's gradient is a per-channel affine
  function of ``y`` plus the max's gradient at one position per group and
  channel.

Both match the plain ops within float rounding, values, gradients and running
statistics (``tests/fast/test_batchnorm.py`` checks all three against
``nn.BatchNorm1d``, and runs ``gradcheck`` in float64). A tie in the max
sends the whole gradient to the first maximum, as ``max(dim)`` does.
The accelerated modules of :mod:`pcea.fast.layers` and :mod:`pcea.fast.model`
call them where :func:`serves` says so; everywhere else (inference, CUDA,
bf16 autocast, torch.compile) they keep the plain ops.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from pcea.fast import sampling
from pcea.fast.call import eager_cpu

__all__ = ["available", "gather_norm_act", "norm_max", "serves"]


def available() -> bool:
    """Whether the kernels can be compiled here (numba importable)."""
    return _kernels() is not None


def serves(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether the fused functions serve this call: an eager CPU float training step with autograd.

    Only what the call is; whether numba is there is the caller's decision, taken
    once (:func:`pcea.fast.accelerate`).

    Args:
        x: the tensor the BatchNorm's input is computed from.
        bn: the BatchNorm; a plain ``nn.BatchNorm1d`` in training mode (a SyncBatchNorm
            that replaced it keeps its own forward).
    """
    return (torch.is_grad_enabled() and type(bn) is nn.BatchNorm1d and bn.training
            and eager_cpu(x, (torch.float32, torch.float64)))


# ---------------------------------------------------------------------------
# Kernels. Each runs over groups start..stop (one group: a centre's k rows),
# or over clouds for the scatter, so sampling.run_split can share them among
# threads. Per-group partial sums are float64 and summed afterwards, so the
# statistics do not depend on the number of threads.


def _gather_stats_kernel(points, centers, idx, sums, squares, start, stop):  # pragma: no cover - numba
    # points (B, N, C), centers (B, M, C), idx (B, M, k) -> sums, squares (B * M, C) of h
    M, k = idx.shape[1], idx.shape[2]
    C = points.shape[2]
    for g in range(start, stop):
        b, m = g // M, g % M
        s = sums[g]
        q = squares[g]
        s[:] = 0.0
        q[:] = 0.0
        center = centers[b, m]
        for j in range(k):
            row = points[b, idx[b, m, j]]
            for c in range(C):
                h = np.float64(row[c] + center[c])
                s[c] += h
                q[c] += h * h


def _gather_norm_act_kernel(points, centers, idx, scale, shift, slope, out, start, stop):  # pragma: no cover
    # out (B * M, k, C) = act(h * scale + shift), act(u) = u if u > 0 else slope * u
    M, k = idx.shape[1], idx.shape[2]
    C = points.shape[2]
    for g in range(start, stop):
        b, m = g // M, g % M
        center = centers[b, m]
        for j in range(k):
            row = points[b, idx[b, m, j]]
            dst = out[g, j]
            for c in range(C):
                u = (row[c] + center[c]) * scale[c] + shift[c]
                dst[c] = u if u > 0 else slope * u


def _gather_act_grad_sums_kernel(points, centers, idx, scale, shift, slope, mean, grad,
                                 sums, dots, start, stop):  # pragma: no cover - numba
    # With d = grad * act'(u): sums = sum of d, dots = sum of d * (h - mean), per group (B * M, C).
    M, k = idx.shape[1], idx.shape[2]
    C = points.shape[2]
    for g in range(start, stop):
        b, m = g // M, g % M
        s = sums[g]
        t = dots[g]
        s[:] = 0.0
        t[:] = 0.0
        center = centers[b, m]
        for j in range(k):
            row = points[b, idx[b, m, j]]
            grad_row = grad[g, j]
            for c in range(C):
                h = row[c] + center[c]
                u = h * scale[c] + shift[c]
                d = np.float64(grad_row[c] if u > 0 else slope * grad_row[c])
                s[c] += d
                t[c] += d * (h - mean[c])


def _gather_act_grad_scatter_kernel(points, centers, idx, scale, shift, slope, mean, coef_d, coef_1,
                                    coef_h, grad, grad_points, grad_centers, start, stop):  # pragma: no cover
    # dh = coef_d * d + coef_1 + coef_h * (h - mean), added into grad_points[b, idx] and
    # grad_centers[b, m]; over clouds start..stop, so each thread owns its clouds' rows.
    M, k = idx.shape[1], idx.shape[2]
    C = points.shape[2]
    for b in range(start, stop):
        for m in range(M):
            g = b * M + m
            center = centers[b, m]
            acc = grad_centers[b, m]
            for j in range(k):
                p = idx[b, m, j]
                row = points[b, p]
                dst = grad_points[b, p]
                grad_row = grad[g, j]
                for c in range(C):
                    h = row[c] + center[c]
                    u = h * scale[c] + shift[c]
                    d = grad_row[c] if u > 0 else slope * grad_row[c]
                    dh = coef_d[c] * d + coef_1[c] + coef_h[c] * (h - mean[c])
                    dst[c] += dh
                    acc[c] += dh


def _stats_max_min_kernel(y, sums, squares, top, bottom, arg_top, arg_bottom,
                          start, stop):  # pragma: no cover - numba
    # y (G, k, C) -> per group: sums, squares (float64), max and min over k and their first positions.
    k, C = y.shape[1], y.shape[2]
    for g in range(start, stop):
        s = sums[g]
        q = squares[g]
        hi = top[g]
        lo = bottom[g]
        arg_hi = arg_top[g]
        arg_lo = arg_bottom[g]
        first = y[g, 0]
        for c in range(C):
            v = np.float64(first[c])
            s[c] = v
            q[c] = v * v
            hi[c] = first[c]
            lo[c] = first[c]
            arg_hi[c] = 0
            arg_lo[c] = 0
        for j in range(1, k):
            row = y[g, j]
            for c in range(C):
                v = row[c]
                w = np.float64(v)
                s[c] += w
                q[c] += w * w
                if v > hi[c]:
                    hi[c] = v
                    arg_hi[c] = j
                if v < lo[c]:
                    lo[c] = v
                    arg_lo[c] = j


def _norm_max_grad_kernel(y, grad, arg, coef_g, coef_1, coef_y, mean, out, start, stop):  # pragma: no cover
    # out (G, k, C) = coef_1 + coef_y * (y - mean), plus coef_g * grad at the max's position.
    k, C = y.shape[1], y.shape[2]
    for g in range(start, stop):
        for j in range(k):
            row = y[g, j]
            dst = out[g, j]
            for c in range(C):
                dst[c] = coef_1[c] + coef_y[c] * (row[c] - mean[c])
        grad_row = grad[g]
        arg_row = arg[g]
        for c in range(C):
            out[g, arg_row[c], c] += coef_g[c] * grad_row[c]


@functools.cache
def _kernels() -> dict | None:
    """The kernels compiled by numba (cached on disk like sampling's), or None without numba."""
    try:
        import numba
    except Exception:  # noqa: BLE001 - any import failure means "use the plain ops"
        return None
    jit = numba.njit(nogil=True, cache=True, error_model="numpy")
    kernels = (
        _gather_stats_kernel, _gather_norm_act_kernel, _gather_act_grad_sums_kernel,
        _gather_act_grad_scatter_kernel, _stats_max_min_kernel, _norm_max_grad_kernel,
    )
    return {kernel.__name__: jit(kernel) for kernel in kernels}


def _run(name: str, args: tuple, total: int) -> None:
    sampling.run_split(_kernels()[name], args, total)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _batch_stats(sums: np.ndarray, squares: np.ndarray, rows: int, bn: nn.BatchNorm1d,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and 1/std from per-group sums; updates the running statistics as BatchNorm1d does.

    Returns:
        mean, invstd (float64, for the gradients) and the affine map's scale and
        shift in ``dtype``: normalised = h * scale + shift.
    """
    mean = torch.from_numpy(sums.sum(axis=0)) / rows  # (C,) float64
    var = (torch.from_numpy(squares.sum(axis=0)) / rows - mean * mean).clamp_(min=0.0)  # biased
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var * rows / max(rows - 1, 1)
        bn.running_mean.mul_(1 - momentum).add_(momentum * mean.to(bn.running_mean.dtype))
        bn.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(bn.running_var.dtype))
    invstd = 1.0 / torch.sqrt(var + bn.eps)
    scale = bn.weight.detach().double() * invstd
    shift = bn.bias.detach().double() - mean * scale
    return mean, invstd, scale.to(dtype), shift.to(dtype)


class _GatherNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, centers, weight, bias, idx, bn, slope):
        B, M, k = idx.shape
        C = points.shape[-1]
        rows = B * M * k
        p, c, i = _numpy(points), _numpy(centers), _numpy(idx)  # (B, N, C), (B, M, C), (B, M, k)
        sums = np.empty((B * M, C))  # per group, float64
        squares = np.empty((B * M, C))
        _run("_gather_stats_kernel", (p, c, i, sums, squares), B * M)
        mean, invstd, scale, shift = _batch_stats(sums, squares, rows, bn, points.dtype)  # (C,) each
        out = torch.empty(B, M, k, C, dtype=points.dtype)  # returned as allocated, not as a view
        slope = points.new_tensor(slope).numpy()[()]  # the points' float type, for numba
        _run("_gather_norm_act_kernel",
             (p, c, i, scale.numpy(), shift.numpy(), slope, out.numpy().reshape(B * M, k, C)), B * M)
        ctx.save_for_backward(points, centers, weight, idx)
        ctx.stats = (mean, invstd, scale, shift, slope)
        return out  # (B, M, k, C)

    @staticmethod
    def backward(ctx, grad):
        points, centers, weight, idx = ctx.saved_tensors
        mean, invstd, scale, shift, slope = ctx.stats
        B, M, k = idx.shape
        C = points.shape[-1]
        rows = B * M * k
        dtype = points.dtype
        p, c, i = _numpy(points), _numpy(centers), _numpy(idx)
        g = _numpy(grad).reshape(B * M, k, C)  # (B, M, k, C) -> groups of k rows
        mean_t = mean.to(dtype).numpy()
        sums = np.empty((B * M, C))
        dots = np.empty((B * M, C))
        _run("_gather_act_grad_sums_kernel",
             (p, c, i, scale.numpy(), shift.numpy(), slope, mean_t, g, sums, dots), B * M)
        grad_bias = torch.from_numpy(sums.sum(axis=0))  # (C,) sum of d
        grad_weight = torch.from_numpy(dots.sum(axis=0)) * invstd  # (C,) sum of d * normalised h
        # BatchNorm's input gradient: gamma * invstd * (d - mean(d) - xhat * mean(d * xhat)).
        gain = weight.detach().double() * invstd
        coef_d = gain
        coef_1 = -gain * grad_bias / rows
        coef_h = -gain * invstd * grad_weight / rows
        grad_points = torch.zeros_like(points)
        grad_centers = torch.zeros_like(centers)
        _run("_gather_act_grad_scatter_kernel",
             (p, c, i, scale.numpy(), shift.numpy(), slope, mean_t, coef_d.to(dtype).numpy(),
              coef_1.to(dtype).numpy(), coef_h.to(dtype).numpy(), g, grad_points.numpy(),
              grad_centers.numpy()), B)
        return (grad_points, grad_centers, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype),
                None, None, None)


def gather_norm_act(points: torch.Tensor, centers: torch.Tensor, idx: torch.Tensor,
                    bn: nn.BatchNorm1d, negative_slope: float = 0.0) -> torch.Tensor:
    """``act(bn(gather(points, idx) + centers[:, :, None]))`` in training mode, in two passes.

    Args:
        points: (B, N, C) per-point features.
        centers: (B, M, C) per-centre term added to each of the centre's rows.
        idx: (B, M, k) int64 indices into N.
        bn: BatchNorm1d(C) in training mode; its running statistics are updated.
        negative_slope: 0 for ReLU, otherwise LeakyReLU's slope.

    Returns:
        (B, M, k, C), a fresh contiguous tensor.
    """
    return _GatherNormAct.apply(points, centers, bn.weight, bn.bias, idx, bn, negative_slope)


class _NormMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, bn):
        *groups, k, C = y.shape
        G = y.numel() // (k * C)
        y_np = _numpy(y).reshape(G, k, C)
        sums = np.empty((G, C))
        squares = np.empty((G, C))
        top = np.empty((G, C), dtype=y_np.dtype)
        bottom = np.empty((G, C), dtype=y_np.dtype)
        arg_top = np.empty((G, C), dtype=np.int32)
        arg_bottom = np.empty((G, C), dtype=np.int32)
        _run("_stats_max_min_kernel", (y_np, sums, squares, top, bottom, arg_top, arg_bottom), G)
        mean, invstd, scale, shift = _batch_stats(sums, squares, G * k, bn, y.dtype)
        # BatchNorm is y * scale + shift per channel: its max over k is at y's max
        # where scale >= 0 and at y's min where it is negative.
        rising = scale >= 0  # (C,)
        extreme = torch.where(rising, torch.from_numpy(top), torch.from_numpy(bottom))  # (G, C)
        arg = torch.where(rising, torch.from_numpy(arg_top), torch.from_numpy(arg_bottom))  # (G, C)
        ctx.save_for_backward(y, weight, extreme, arg)
        ctx.stats = (mean, invstd)
        out = y.new_empty(*groups, C)  # returned as allocated: autograd forbids in-place ops on a view
        torch.addcmul(shift, extreme, scale, out=out.view(G, C))  # extreme * scale + shift
        return out

    @staticmethod
    def backward(ctx, grad):
        y, weight, extreme, arg = ctx.saved_tensors
        mean, invstd = ctx.stats
        k, C = y.shape[-2:]
        G = y.numel() // (k * C)
        rows = G * k
        grad = grad.reshape(G, C)
        grad64 = grad.double()  # (G, C)
        normalised = (extreme.double() - mean) * invstd  # (G, C), the max's rows of BatchNorm's xhat
        grad_bias = grad64.sum(dim=0)  # (C,)
        grad_weight = (grad64 * normalised).sum(dim=0)  # (C,)
        # BatchNorm's input gradient with d = grad at the max's position, 0 elsewhere:
        # gamma * invstd * (d - mean(d) - xhat * mean(d * xhat)).
        gain = weight.detach().double() * invstd
        coef_1 = -gain * grad_bias / rows
        coef_y = -gain * invstd * grad_weight / rows
        dtype = y.dtype
        grad_y = torch.empty_like(y)
        _run("_norm_max_grad_kernel",
             (_numpy(y).reshape(G, k, C), _numpy(grad), _numpy(arg), gain.to(dtype).numpy(),
              coef_1.to(dtype).numpy(), coef_y.to(dtype).numpy(), mean.to(dtype).numpy(),
              grad_y.numpy().reshape(G, k, C)), G)
        return grad_y, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


def norm_max(y: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """``bn(y).max(dim=-2).values`` in training mode, in one pass over ``y`` each way.

    Args:
        y: (..., k, C), groups of k rows.
        bn: BatchNorm1d(C) in training mode; statistics over all rows,
            running statistics updated.

    Returns:
        (..., C), a fresh tensor (an in-place activation on it is free).
    """
    return _NormMax.apply(y, bn.weight, bn.bias, bn)
