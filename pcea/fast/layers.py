"""Fast versions of the layers of :mod:`pcea.layers`: the same functions, fewer passes over memory.

- :func:`linear`: a float32 Linear on an x86-64 CPU as oneDNN's 1x1
  convolution over a channels-last view of the rows, which runs the same sums
  of products several times faster than the BLAS call of ``F.linear`` there
  (docs/benchmarks.md, "Where the speed-up of session 3 comes from").
- :class:`FastLBR`: in training, the activation in place on the BatchNorm's
  own output; at inference (eval mode, no autograd), the BatchNorm folded into
  the Linear (``W' = s W``, ``b' = s (b - mean) + beta`` with
  ``s = gamma / sqrt(var + eps)``), one matmul and one activation.
- :func:`linear_norm_max`: the max over an axis of an LBR before its
  activation, for callers that apply the (monotone) activation to the max:
  in a CPU training step through :func:`pcea.fast.batchnorm.norm_max`, folded
  at inference with the bias added after the max.

The folded weights are recomputed whenever a parameter or statistic they come
from changes (an optimiser step, ``load_state_dict``, ``.to()``), so nothing
has to be undone before training or saving, and the state_dict never sees them.
"""

from __future__ import annotations

import platform

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_weights

from pcea.fast import batchnorm
from pcea.fast.call import eager_cpu, traced
from pcea.layers import LBR

__all__ = ["FastLBR", "FastLinear", "activate_", "fold", "fold_weights", "linear", "linear_norm_max",
           "max_over", "norm_act"]

# Fewest rows for which the 1x1 convolution beats F.linear (docs/benchmarks.md).
CONV_MIN_ROWS = 1024


def conv_linear_available() -> bool:
    """Whether this machine runs a float32 Linear faster as oneDNN's 1x1 convolution.

    x86-64 with PyTorch's oneDNN (mkldnn) backend, where it was measured. On
    Arm, PyTorch's CPU convolutions and matmuls go to other libraries (ACL,
    Accelerate, OpenBLAS), not measured here, so F.linear stays.
    """
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           conv: bool = False) -> torch.Tensor:
    """``nn.functional.linear``, as a oneDNN 1x1 convolution where ``conv`` and the call allow.

    It is the same sums of float32 products (tests/fast/test_layers.py compares
    it with ``F.linear`` in float64). The convolution serves float32 CPU rows,
    from :data:`CONV_MIN_ROWS` of them (below, its set-up costs more than it
    saves), outside autocast (bf16 already goes to oneDNN) and outside traced
    graphs; every other call is ``F.linear``.

    Args:
        x: (..., C_in) rows.
        weight: (C_out, C_in).
        bias: (C_out,) or None.
        conv: whether this machine runs the convolution faster (:func:`conv_linear_available`,
            decided once by :func:`pcea.fast.accelerate`).

    Returns:
        (..., C_out).
    """
    *lead, in_dim = x.shape
    rows = x.numel() // max(in_dim, 1)
    if not conv or rows < CONV_MIN_ROWS or not eager_cpu(x):
        return nn.functional.linear(x, weight, bias)
    # (rows, C_in) -> (1, C_in, 1, rows): a channels-last image one pixel high, no copy.
    image = x.reshape(1, 1, rows, in_dim).permute(0, 3, 1, 2)
    out = nn.functional.conv2d(image, weight[:, :, None, None], bias)  # (1, C_out, 1, rows), channels-last
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])  # (..., C_out), a view


class FastLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state_dict) whose forward is :func:`linear`.

    :func:`pcea.fast.accelerate` swaps an ``nn.Linear`` for it only where
    :func:`conv_linear_available`, and sets ``conv``.
    """

    conv: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, conv=self.conv)


def max_over(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The max over ``dim`` (dropped), by whichever op is cheaper for the pass at hand.

    Without autograd, ``amax`` (several times faster than ``max(dim)`` on the
    stage-1 groups). Under autograd, ``max(dim)``, as the plain model: its
    backward scatters the gradient into the argmax rows, while ``amax``'s
    compares, counts and divides over every row to share ties. The values are
    the same.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x.max(dim=dim).values
    return x.amax(dim=dim)


def _slope(lbr: LBR) -> float:
    return getattr(lbr.act, "negative_slope", 0.0)  # nn.ReLU has none


def activate_(lbr: LBR, x: torch.Tensor) -> torch.Tensor:
    """The LBR's ReLU or LeakyReLU, in place: ``x`` must be a fresh tensor autograd does not need."""
    slope = _slope(lbr)
    return nn.functional.leaky_relu_(x, slope) if slope else torch.relu_(x)


def norm_act(lbr: LBR, x: torch.Tensor) -> torch.Tensor:
    """The LBR's BatchNorm and activation on channels-last ``x`` (the Linear already applied).

    The activation runs in place on the BatchNorm's own (rows, C) output,
    before the view back: an in-place op on a view would make autograd rebuild
    the whole base tensor in the backward pass (CopySlices).
    """
    return activate_(lbr, lbr.bn(x.reshape(-1, x.shape[-1]))).view(x.shape)  # (..., C)


def _norm(lbr: LBR, x: torch.Tensor) -> torch.Tensor:
    return lbr.bn(x.reshape(-1, x.shape[-1])).view(x.shape)  # (..., C)


def inference(module: nn.Module) -> bool:
    """Eval mode without autograd: where BatchNorm can be folded and activations computed in place."""
    return not module.training and not torch.is_grad_enabled()


def fold(lbr: LBR) -> tuple[torch.Tensor, torch.Tensor]:
    """The LBR's Linear with its eval-mode BatchNorm folded in: weight (C_out, C_in), bias (C_out,).

    Cached on the module until any tensor it is computed from changes (its
    version counter, bumped by every in-place update, or its storage). Call it
    without autograd only.
    """
    lin, bn = lbr.linear, lbr.bn
    if traced():  # a graph records the folding itself, from the parameters
        return fold_weights(lin, bn)
    sources = (lin.weight, lin.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = tuple((t._version, t.data_ptr()) if t is not None else None for t in sources)
    cached = getattr(lbr, "_folded", None)
    if cached is None or cached[0] != key:
        cached = lbr._folded = (key, *fold_weights(lin, bn))
    return cached[1], cached[2]


def fold_weights(lin: nn.Linear, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``lin`` followed by eval-mode ``bn`` as one Linear: weight (C_out, C_in), bias (C_out,).

    torch.nn.utils.fusion's folding, ``W' = s W`` and ``b' = s (b - mean) + beta``; the
    Parameters it returns require grad as ``lin.weight`` does.
    """
    return fuse_linear_bn_weights(lin.weight, lin.bias, bn.running_mean, bn.running_var, bn.eps,
                                  bn.weight, bn.bias)


class FastLBR(LBR):
    """:class:`pcea.layers.LBR` (same parameters and state_dict), with its BatchNorm folded at inference.

    ``conv`` is set by :func:`pcea.fast.accelerate`: whether this machine runs
    the Linear as a oneDNN convolution.
    """

    conv: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference(self):
            weight, bias = fold(self)
            return activate_(self, linear(x, weight, bias, conv=self.conv))  # (..., C_in) -> (..., C_out)
        return norm_act(self, linear(x, self.linear.weight, self.linear.bias, conv=self.conv))


def linear_norm_max(lbr: LBR, x: torch.Tensor, dim: int, *, conv: bool, kernels: bool) -> torch.Tensor:
    """The max over ``dim`` of the LBR's Linear and BatchNorm, its activation left to the caller.

    Every activation here is monotone, so the caller applies it to the max
    instead of to every row (the same values, one pass less).

    At inference the BatchNorm is folded and the bias added after the max:
    adding a constant is monotone, so ``max_k fl(y_k + b) = fl(max_k y_k + b)``
    exactly for ``y = W x``, and the matmul writes its output once instead of
    first filling it with the bias. Otherwise the BatchNorm's scale may be
    negative, so it is applied to every row before the max; in a CPU training
    step through :func:`pcea.fast.batchnorm.norm_max` (the same values in fewer
    passes) when ``kernels`` and ``dim`` is the axis just before the channels.

    Args:
        lbr: the layer.
        x: (..., k, ..., C_in) rows.
        dim: the axis to take the max over.
        conv: the machine's oneDNN decision (see :func:`linear`).
        kernels: whether the numba kernels of :mod:`pcea.fast.batchnorm` can run here.

    Returns:
        x's shape without ``dim``, C_out channels.
    """
    if inference(lbr):
        weight, bias = fold(lbr)
        y = max_over(linear(x, weight, conv=conv), dim)
        return y + bias.to(y.dtype)
    y = linear(x, lbr.linear.weight, lbr.linear.bias, conv=conv)  # (..., C_out)
    if kernels and dim % x.dim() == x.dim() - 2 and batchnorm.serves(y, lbr.bn):
        return batchnorm.norm_max(y, lbr.bn)  # (..., C_out)
    return max_over(_norm(lbr, y), dim)
