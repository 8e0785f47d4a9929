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

Everything here is plain PyTorch, written to be read next to the papers. The
CPU speed-ups are applied to a built model in one step by pcea.fast.accelerate
(``PCEA_FAST_OPS=0`` turns them off).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LBR",
    "ExternalAttention",
    "OffsetAttention",
    "SelfAttention",
    "OffsetBlock",
    "batch_norm",
]


def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d on channels-last features of any rank: (..., C) -> (..., C).

    BatchNorm1d normalises each channel over every other axis; flattening
    (..., C) to (rows, C) gives exactly those statistics, without the
    transposes a (B, C, N) layout would need.
    """
    return bn(x.reshape(-1, x.shape[-1])).view(x.shape)  # (rows, C) -> (..., C)


class LBR(nn.Module):
    """Linear, BatchNorm, ReLU: PCT's "LBR" (Sec. 3.3), on channels-last features of any rank.

    Args:
        in_dim: input channels C_in.
        out_dim: output channels C_out.
        bias: whether the Linear has a bias (redundant before BatchNorm, but
            PCT's attention blocks carry one and its parameter count includes it).
        negative_slope: 0 for ReLU, otherwise LeakyReLU with this slope.
    """

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = False, negative_slope: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.bn = nn.BatchNorm1d(out_dim)
        self.act = nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(batch_norm(self.bn, self.linear(x)))  # (..., C_in) -> (..., C_out)


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
        self.memory_key = nn.Linear(head_dim, memory, bias=False)  # M_k: C/h -> S
        self.memory_value = nn.Linear(memory, head_dim, bias=False)  # M_v: S -> C/h
        with torch.no_grad():
            self.memory_value.weight.copy_(self.memory_key.weight.t())
        if heads > 1:
            self.in_proj = nn.Linear(dim, dim)
            self.out_proj = nn.Linear(dim, dim)

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
        self.query_key = nn.Linear(dim, dim // 4, bias=False)  # shared W_q = W_k
        self.value = nn.Linear(dim, dim)
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
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)

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

