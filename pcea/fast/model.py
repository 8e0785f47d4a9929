"""Fast versions of the neighbour embedding and the global pooling of :mod:`pcea.model`.

:class:`FastNeighborEmbedding` computes the stage of
:class:`pcea.model.NeighborEmbedding` (the same pre-gather rewrite of
``[f_j - f_i, f_i] -> LBR -> LBR -> max``, documented there) with:

- FPS and kNN from the compiled kernels (:mod:`pcea.fast.sampling`);
- in a CPU training step, the first BatchNorm fused with the gather and the
  second with the max (:mod:`pcea.fast.batchnorm`);
- at CPU inference, the rows a few hundred centres at a time, so that each
  chunk stays in the CPU caches from the gather to the max instead of the whole
  (B, M, k, D) tensor going through memory four times; both BatchNorms folded;
- the last activation after the max (ReLU is monotone: ``max_k ReLU(h) = ReLU(max_k h)``).

:class:`FastPCTClassifier` takes the fusion layer's max before its
activation, fused with its BatchNorm in training. The figures are in
docs/benchmarks.md.
"""

from __future__ import annotations

import torch

from pcea.fast import batchnorm
from pcea.fast.call import traced
from pcea.fast.layers import activate_, fold, inference, linear, linear_norm_max, max_over, norm_act
from pcea.fast.sampling import group_index
from pcea.model import NeighborEmbedding, PCTClassifier
from pcea.ops import flat_index, gather

__all__ = ["CHUNK_ELEMENTS", "FastNeighborEmbedding", "FastPCTClassifier"]

# Rows x channels of one chunk of grouped features at CPU inference (4 MB in float32); the
# size is measured in docs/benchmarks.md.
CHUNK_ELEMENTS = 1 << 20


class FastNeighborEmbedding(NeighborEmbedding):
    """:class:`pcea.model.NeighborEmbedding` (same parameters and state_dict), fast on the CPU.

    ``conv`` and ``kernels`` are set by :func:`pcea.fast.accelerate`: whether
    this machine runs Linears as oneDNN convolutions, and whether numba's
    kernels (FPS, kNN, the fused BatchNorm) run. ``chunk_elements`` sets the inference chunks.
    """

    conv: bool = False
    kernels: bool = False
    chunk_elements: int = CHUNK_ELEMENTS

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        C = feats.shape[-1]
        # (B, M), (B, M, k); FPS and kNN compiled as accelerate decided (Features.kernels)
        center_idx, neighbor_idx = group_index(xyz, self.num_centers, self.k, kernels=self.kernels)
        folded = inference(self)
        weight, bias = fold(self.lbr1) if folded else (self.lbr1.linear.weight, self.lbr1.linear.bias)
        w_offset, w_center = weight.split(C, dim=1)  # W_a, W_b: (D, C) each
        per_point = linear(feats, w_offset, conv=self.conv)  # (B, N, D): W_a f_j
        per_center = linear(gather(feats, center_idx), w_center - w_offset, conv=self.conv)  # (B, M, D)
        if bias is not None:  # in the matmul's dtype: an fp32 bias would promote bf16 (autocast)
            per_center = per_center + bias.to(per_center.dtype)
        if folded and per_point.device.type == "cpu" and not traced():  # bf16 autocast included
            out = self._grouped_max_in_chunks(per_point, per_center, neighbor_idx)  # (B, M, D)
        else:
            out = self._grouped_max(per_point, per_center, neighbor_idx, folded)  # (B, M, D)
        return gather(xyz, center_idx), activate_(self.lbr2, out)  # (B, M, 3), (B, M, D)

    def _grouped_max(self, per_point: torch.Tensor, per_center: torch.Tensor, neighbor_idx: torch.Tensor,
                     folded: bool) -> torch.Tensor:
        """max over k of both LBRs on every row, before the last activation: (B, M, D)."""
        if self.kernels and batchnorm.serves(per_point, self.lbr1.bn):  # a CPU training step
            h = batchnorm.gather_norm_act(per_point, per_center, neighbor_idx, self.lbr1.bn,
                                          getattr(self.lbr1.act, "negative_slope", 0.0))  # (B, M, k, D)
        else:
            # Out of place: gather returns a view of its index_select, and an in-place add
            # on a view would make autograd clone the whole tensor in the backward pass.
            h = gather(per_point, neighbor_idx) + per_center.unsqueeze(2)  # (B, M, k, D)
            h = activate_(self.lbr1, h) if folded else norm_act(self.lbr1, h)  # (B, M, k, D)
        return linear_norm_max(self.lbr2, h, dim=2, conv=self.conv, kernels=self.kernels)  # (B, M, D)

    def _grouped_max_in_chunks(self, per_point: torch.Tensor, per_center: torch.Tensor,
                               neighbor_idx: torch.Tensor) -> torch.Tensor:
        """:meth:`_grouped_max` at inference, a few hundred centres at a time.

        The rows are the same, so the result is the same up to the matmul's
        summation order (within 1e-5). Inference only: BatchNorm in training
        mode needs all rows at once, and autograd would keep every chunk anyway.
        CPU only: a GPU has no such cache to fit, and would launch a few hundred
        small kernels instead of six large ones.
        """
        B, N, D = per_point.shape
        M, k = neighbor_idx.shape[1:]
        flat_idx = flat_index(neighbor_idx, N).view(B * M, k)  # rows of the flattened (B * N, D) points
        points = per_point.reshape(B * N, D)
        centers = per_center.reshape(B * M, D)
        step = max(1, self.chunk_elements // (k * D))  # centres per chunk
        weight, bias = fold(self.lbr2)  # the bias is added after the max (see linear_norm_max)
        out = None
        for start in range(0, B * M, step):
            stop = min(start + step, B * M)
            rows = flat_idx[start:stop].reshape(-1)  # (chunk * k,)
            h = points.index_select(0, rows).view(stop - start, k, D)  # (chunk, k, D)
            h += centers[start:stop].unsqueeze(1)  # no autograd here, so in place is free
            h = linear(activate_(self.lbr1, h), weight, conv=self.conv)  # (chunk, k, D)
            if out is None:  # the dtype the layers produce (bf16 under autocast)
                out = torch.empty(B * M, h.shape[-1], dtype=h.dtype, device=h.device)
            torch.amax(h, dim=1, out=out[start:stop])  # (chunk, k, D) -> (chunk, D)
        out += bias.to(out.dtype)
        return out.view(B, M, -1)


class FastPCTClassifier(PCTClassifier):
    """:class:`pcea.model.PCTClassifier` (same parameters and state_dict) with a fast global pooling.

    ``conv`` and ``kernels`` are set by :func:`pcea.fast.accelerate`, as for
    :class:`FastNeighborEmbedding`.
    """

    conv: bool = False
    kernels: bool = False

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "max":
            # LeakyReLU is monotone: applied after the max, it gives the same values.
            pooled = linear_norm_max(self.fuse, x, dim=1, conv=self.conv, kernels=self.kernels)  # (B, F)
            return activate_(self.fuse, pooled)
        x = self.fuse(x)  # (B, M2, F)
        return torch.cat([max_over(x, dim=1), x.mean(dim=1)], dim=-1)  # (B, 2F)
