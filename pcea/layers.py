"""Attention cores and the blocks that wrap them, all on channels-last (B, N, C) features.

Three interchangeable attention cores, each mapping (B, N, C) -> (B, N, C):

- :class:`ExternalAttention`: EANet (Guo et al. 2021, arXiv 2105.02358). Two
  small learnable memories shared by the whole dataset, ``M_k`` (C -> S) and
  ``M_v`` (S -> C), replace the N x N affinity of self-attention: cost O(N S C).
- :class:`OffsetAttention`: the attention of PCT (Guo et al. 2020,
  arXiv 2012.09688, Sec. 3.3), softmax over keys then L1 over queries: O(N^2 C).
- :class:`SelfAttention`: plain multi-head scaled dot-product attention, PCT's
  "SPCT" baseline.

:class:`OffsetBlock` wraps any core in PCT's offset form
``x + LBR(x - attn(x))`` (PCT eq. 9-10); the network stacks four of them.

Choices of ours, since EANet released no point-cloud code:

- Residual form. We keep PCT's offset form for every core, so that the three
  models differ only in the core and a comparison between them measures the
  attention alone. The Laplacian-like offset ``x - attn(x)`` is what PCT
  credits for part of its gain over plain self-attention; EANet's image blocks
  use ``x + norm(attn(x))`` instead, which would confound the comparison.
- Initialisation of the memories. ``M_k`` gets PyTorch's default Linear
  initialisation and ``M_v`` starts as a copy of its transpose, as in EANet's
  own segmentation code. Then ``M_v M_k`` starts close to a projection and
  ``x - attn(x)`` starts as a meaningful high-pass signal. The popular
  N(0, 0.001) initialisation makes every logit ~0, so both normalisations
  produce uniform weights and the memories receive tiny gradients at first.
  The two matrices are independent parameters after initialisation.
"""

from __future__ import annotations

import platform

import torch
from torch import nn

from pcea import fast_ops, fused_bn, precision

__all__ = [
    "LBR",
    "Linear",
    "linear",
    "ExternalAttention",
    "OffsetAttention",
    "SelfAttention",
    "OffsetBlock",
    "channels_last_batch_norm",
    "max_over",
]


def channels_last_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, activation=None) -> torch.Tensor:
    """Apply BatchNorm1d, then optionally an in-place activation, to channels-last features of any rank.

    BatchNorm1d normalises each channel over every other axis; flattening
    (..., C) to (rows, C) gives exactly those statistics without the transposes
    and copies that a (B, C, N) layout would need. The activation runs on the
    BatchNorm's own (rows, C) output, before the view back: an in-place op on
    a view makes autograd rebuild the whole base tensor in the backward pass
    (CopySlices).
    """
    shape = x.shape
    x = bn(x.reshape(-1, shape[-1]))  # (..., C) -> (rows, C)
    if activation is not None:
        x = activation(x)
    return x.view(shape)  # (rows, C) -> (..., C)


# Fewest rows for which oneDNN's 1x1 convolution beats F.linear here (docs/benchmarks.md).
_CONV_MIN_ROWS = 1024
# Where the convolution was measured faster: x86-64. On Arm, PyTorch's CPU convolutions and
# matmuls go to other libraries (ACL, Accelerate, OpenBLAS), unmeasured here, so F.linear stays.
_CONV_LINEAR_CPU = platform.machine().lower() in ("x86_64", "amd64")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.functional.linear``, run by oneDNN as a 1x1 convolution for float32 on the CPU.

    PyTorch sends a float32 Linear on the CPU to MKL's sgemm, which on this
    project's AMD Zen 5 runs forward and backward at 140-220 GFLOP/s; oneDNN's
    1x1 convolution over a channels-last view of the same rows runs at 340-460
    GFLOP/s (docs/benchmarks.md, "Where the speed-up of session 3 comes from").
    It is the same sums of float32 products (the tests compare it with
    ``F.linear`` in float64). Elsewhere it is
    ``F.linear``: on GPUs, on CPUs other than x86-64 (not measured), under
    autocast (bf16 already goes to oneDNN), while torch.compile traces, without
    oneDNN, and below 1024 rows, where the convolution's set-up costs more than
    it saves.

    Args:
        x: (..., in) rows.
        weight: (out, in).
        bias: (out,) or None.

    Returns:
        (..., out).
    """
    *lead, in_dim = x.shape
    rows = x.numel() // max(in_dim, 1)
    if (
        x.device.type != "cpu"
        or not _CONV_LINEAR_CPU
        or x.dtype != torch.float32
        or rows < _CONV_MIN_ROWS
        or precision.cpu_autocast_active()
        or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
        or fast_ops.compiling()
    ):
        return nn.functional.linear(x, weight, bias)
    # (rows, in) -> (1, in, 1, rows): a channels-last image one pixel high, no copy.
    image = x.reshape(1, 1, rows, in_dim).permute(0, 3, 1, 2)
    out = nn.functional.conv2d(image, weight[:, :, None, None], bias)  # (1, out, 1, rows), channels-last
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])  # (..., out), a view


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state_dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def max_over(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The max over ``dim`` (dropped), by whichever op is cheaper for the pass at hand.

    Without autograd, ``amax`` (5.5x faster than ``max(dim)`` on the stage-1
    groups here). Under autograd, ``max(dim)``: its backward scatters the
    gradient into the argmax rows, while ``amax``'s compares, counts and
    divides over every row to share ties, which cost more than it saves. The
    values are the same; only a tie's gradient differs (all of it to the first
    maximum instead of shared), as in PCT's own max pooling.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x.max(dim=dim).values
    return x.amax(dim=dim)


class LBR(nn.Module):
    """Linear, BatchNorm, ReLU (PCT's "LBR"), on channels-last features of any rank.

    For inference, :meth:`fuse` folds the eval-mode BatchNorm into the Linear
    (``W' = s W``, ``b' = s (b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``),
    which saves a full pass over the activations. The folded weights are
    non-persistent buffers: the state_dict keeps its parameters and names, and
    ``train()`` or ``load_state_dict`` drop the folded copy.

    Args:
        in_dim: input channels.
        out_dim: output channels.
        bias: whether the Linear has a bias (redundant before BatchNorm, but
            PCT's attention blocks carry one and its parameter count includes it).
        negative_slope: 0 for ReLU, otherwise LeakyReLU with this slope.
    """

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = False, negative_slope: float = 0.0):
        super().__init__()
        self.linear = Linear(in_dim, out_dim, bias=bias)
        self.bn = nn.BatchNorm1d(out_dim)
        self.negative_slope = negative_slope
        self.register_buffer("fused_weight", None, persistent=False)  # (out, in) once fused
        self.register_buffer("fused_bias", None, persistent=False)  # (out,) once fused
        self._register_load_state_dict_pre_hook(self._drop_fused)

    @property
    def is_fused(self) -> bool:
        """Whether the BatchNorm is folded into the Linear (eval mode only)."""
        return self.fused_weight is not None and not self.training

    @torch.no_grad()
    def fuse(self) -> LBR:
        """Fold the running BatchNorm statistics into the Linear; needs eval mode.

        Returns:
            self, whose output is then the same function computed in one step
            (equal within float rounding, ~1e-6 relative).
        """
        if self.training:
            raise RuntimeError("LBR.fuse() needs eval mode: call model.eval() first")
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        bias = self.linear.bias if self.linear.bias is not None else torch.zeros_like(bn.running_mean)
        self.fused_weight = self.linear.weight * scale.unsqueeze(1)  # (out, in)
        self.fused_bias = (bias - bn.running_mean) * scale + bn.bias  # (out,)
        return self

    def unfuse(self) -> LBR:
        """Drop the folded copy; the Linear and BatchNorm were never changed."""
        self.fused_weight = None
        self.fused_bias = None
        return self

    def _drop_fused(self, *args, **kwargs) -> None:
        self.unfuse()  # new parameters make the folded copy stale

    def train(self, mode: bool = True) -> LBR:
        if mode:
            self.unfuse()  # training updates the statistics the copy was folded from
        return super().train(mode)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The Linear's weight (out, in) and bias, with the BatchNorm folded in when fused."""
        if self.is_fused:
            return self.fused_weight, self.fused_bias
        return self.linear.weight, self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight_and_bias()
        return self._norm(linear(x, weight, bias), act=True)  # (..., in) -> (..., out)

    def linear_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Linear and BatchNorm without the activation: (..., in) -> (..., out).

        The activations are monotone, so callers that take a max next can apply
        them to the max instead of to every row (same values, one pass less).
        """
        weight, bias = self.weight_and_bias()
        return self._norm(linear(x, weight, bias), act=False)  # (..., out)

    def linear_norm_max(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The max over ``dim`` of :meth:`linear_norm`, activation left to the caller.

        Fused, the bias is added after the max: adding a constant is monotone,
        so ``max_k fl(y_k + b) = fl(max_k y_k + b)`` exactly for ``y = W x``, and the
        matmul writes its output once instead of first filling it with the bias
        (addmm's copy). Unfused, the BatchNorm's scale may be negative, so it
        is applied to every row before the max; in a CPU training step that
        goes through :func:`pcea.fused_bn.norm_max` (the same values in fewer
        passes) when ``dim`` is the axis just before the channels.
        """
        if not self.is_fused:
            if dim % x.dim() == x.dim() - 2 and fused_bn.applies(x, self.bn):  # a CPU training step
                y = self.linear(x)  # (..., k, out)
                return fused_bn.norm_max(y, self.bn)  # (..., out)
            return max_over(self.linear_norm(x), dim)
        y = max_over(linear(x, self.fused_weight), dim)
        return y + self.fused_bias.to(y.dtype)

    def norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """The BatchNorm and activation alone, for callers that apply
        :meth:`weight_and_bias` themselves (the BatchNorm is skipped when fused).
        ``x`` must be a fresh tensor: the activation runs in place."""
        return self._norm(x, act=True)

    def _norm(self, x: torch.Tensor, *, act: bool) -> torch.Tensor:
        if self.is_fused:
            return self.activation(x) if act else x
        return channels_last_batch_norm(self.bn, x, self.activation if act else None)  # (..., C)

    def activation(self, x: torch.Tensor, *, inplace: bool = True) -> torch.Tensor:
        """ReLU or LeakyReLU. In place by default, so x must be a fresh tensor
        that autograd does not need (the values of `max(dim)` qualify, those of `amax` do not)."""
        if self.negative_slope:
            return nn.functional.leaky_relu(x, self.negative_slope, inplace=inplace)
        return torch.relu_(x) if inplace else torch.relu(x)


class ExternalAttention(nn.Module):
    """External attention with double normalisation (EANet, Sec. 3.2-3.3).

    Each point is scored against S memory slots by ``M_k``; the scores are
    normalised by a softmax over the points (each slot distributes unit weight
    over the cloud), then by an L1 normalisation over the slots (each point's
    weights sum to one), and ``M_v`` maps the weights back to features.
    With ``heads > 1`` the features are projected, split into heads that share
    the two memories, attended per head and projected back (EANet's multi-head
    external attention).

    Args:
        dim: feature channels C.
        memory: memory slots S.
        heads: number of heads; must divide ``dim``.
        eps: added to the L1 denominator.
    """

    def __init__(self, dim: int, *, memory: int = 64, heads: int = 1, eps: float = 1e-9):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.heads = heads
        self.eps = eps
        head_dim = dim // heads
        self.memory_key = Linear(head_dim, memory, bias=False)  # M_k: C/h -> S
        self.memory_value = Linear(memory, head_dim, bias=False)  # M_v: S -> C/h
        with torch.no_grad():
            self.memory_value.weight.copy_(self.memory_key.weight.t())
        if heads > 1:
            self.in_proj = Linear(dim, dim)
            self.out_proj = Linear(dim, dim)

    def attention_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two stages of the double normalisation, for inspection and tests.

        Args:
            x: (B, N, C) features (after ``in_proj`` and the head split for heads > 1,
                i.e. (B', N, C/h)).

        Returns:
            after_softmax: (B, N, S), each slot's weights over the points sum to 1.
            after_l1: (B, N, S), each point's weights over the slots sum to 1.
        """
        scores = self.memory_key(x)  # (B, N, S)
        after_softmax = scores.softmax(dim=1)  # EANet eq. (5): normalise over the points ...
        after_l1 = after_softmax / (self.eps + after_softmax.sum(dim=2, keepdim=True))  # ... then slots
        return after_softmax, after_l1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        if self.heads > 1:
            x = self.in_proj(x)  # (B, N, C)
            x = x.view(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, C/h)
            x = x.reshape(B * self.heads, N, C // self.heads)  # (B*h, N, C/h)
        _, weights = self.attention_weights(x)  # (B*h, N, S)
        out = self.memory_value(weights)  # (B*h, N, C/h)
        if self.heads > 1:
            out = out.view(B, self.heads, N, C // self.heads).transpose(1, 2).reshape(B, N, C)
            out = self.out_proj(out)  # (B, N, C)
        return out


class OffsetAttention(nn.Module):
    """PCT's offset-attention core, returning the attention features ``x_r``.

    Query and key share one projection to C/4 (as in PCT's released code, which
    the 2,876,136-parameter count depends on); the affinity is normalised by a
    softmax over the keys and then an L1 normalisation over the queries
    (PCT eq. 11). The offset ``x - x_r`` is taken by :class:`OffsetBlock`.

    Args:
        dim: feature channels C (divisible by 4).
    """

    def __init__(self, dim: int, *, eps: float = 1e-9):
        super().__init__()
        self.query_key = Linear(dim, dim // 4, bias=False)  # shared W_q = W_k
        self.value = Linear(dim, dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qk = self.query_key(x)  # (B, N, C/4)
        energy = qk @ qk.transpose(1, 2)  # (B, N, N), rows are queries
        attn = energy.softmax(dim=-1)  # over keys
        attn = attn / (self.eps + attn.sum(dim=1, keepdim=True))  # L1 over queries
        # x_r[j] = sum_i attn[i, j] v[i]: PCT aggregates along the query axis.
        return attn.transpose(1, 2) @ self.value(x)  # (B, N, N) @ (B, N, C) -> (B, N, C)


class SelfAttention(nn.Module):
    """Plain multi-head scaled dot-product self-attention (PCT's SPCT baseline).

    Args:
        dim: feature channels C.
        heads: number of heads; must divide ``dim``.
    """

    def __init__(self, dim: int, *, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads)  # (B, N, 3, h, C/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, C/h)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, h, N, C/h)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class OffsetBlock(nn.Module):
    """PCT's offset form around any attention core: ``x + LBR(x - attn(x))``.

    Args:
        attention: a core mapping (B, N, C) -> (B, N, C).
        dim: feature channels C.
    """

    def __init__(self, attention: nn.Module, dim: int):
        super().__init__()
        self.attention = attention
        self.lbr = LBR(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lbr(x - self.attention(x))  # (B, N, C)

