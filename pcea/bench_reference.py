"""A straightforward PCT classifier, the baseline that ``pcea bench --reference`` times.

Written from the PCT paper (Guo et al. 2020, arXiv 2012.09688, Sec. 3 and
Fig. 2) in the style of its common PyTorch reimplementation, so the speed-up
of :mod:`pcea.model` is measured side by side in one process:

- features channels-first (B, C, N), every point-wise layer a ``Conv1d`` with
  kernel 1 followed by ``BatchNorm1d``;
- each neighbour-embedding stage builds the full ``[f_j - f_i, f_i]`` groups
  (B, M, k, 2C) and applies its two-layer MLP to all M x k rows;
- FPS is the pure-torch batched loop and kNN is cdist + topk, written out
  here so that the baseline stays fixed when :mod:`pcea.ops` changes;
- offset attention (PCT eq. 9-11) with q and k sharing one weight.

It has the same 2,876,136 parameters as the ``pct`` preset for 40 classes
(tested). It is a benchmark baseline only: no checkpoints, no presets.
"""

from __future__ import annotations

import torch
from torch import nn

from pcea.ops import square_distance

__all__ = ["ReferencePCT"]


def _farthest_point_sample(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """The batched FPS loop from point 0: (B, N, 3) -> (B, m) indices."""
    B, N, _ = xyz.shape
    batch = torch.arange(B, device=xyz.device)
    picked = torch.empty(B, m, dtype=torch.long, device=xyz.device)
    min_dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    current = torch.zeros(B, dtype=torch.long, device=xyz.device)
    for i in range(m):
        picked[:, i] = current
        dist = (xyz - xyz[batch, current].unsqueeze(1)).square().sum(-1)  # (B, N)
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist[batch, current] = -1.0
        current = min_dist.argmax(dim=1)
    return picked


def _knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """cdist + topk: (B, M, 3), (B, N, 3) -> (B, M, k) indices."""
    return square_distance(query, ref).topk(k, dim=-1, largest=False, sorted=True).indices


def _conv_bn(in_dim: int, out_dim: int, *, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(in_dim, out_dim, kernel_size=1, bias=bias), nn.BatchNorm1d(out_dim))


class _GroupedEmbedding(nn.Module):
    """Sample, group ``[f_j - f_i, f_i]``, two conv+BN+ReLU layers on every row, max over k."""

    def __init__(self, in_dim: int, out_dim: int, *, num_centers: int, k: int):
        super().__init__()
        self.num_centers = num_centers
        self.k = k
        self.layer1 = _conv_bn(2 * in_dim, out_dim)
        self.layer2 = _conv_bn(out_dim, out_dim)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # xyz (B, N, 3), feats (B, C, N) -> centres (B, M, 3), features (B, out, M)
        B, C, N = feats.shape
        center_idx = _farthest_point_sample(xyz, self.num_centers)  # (B, M)
        batch = torch.arange(B, device=xyz.device)
        centers = xyz[batch.unsqueeze(1), center_idx]  # (B, M, 3)
        neighbor_idx = _knn(centers, xyz, self.k)  # (B, M, k)
        points = feats.transpose(1, 2)  # (B, N, C)
        neighbors = points[batch.view(B, 1, 1), neighbor_idx]  # (B, M, k, C)
        center_feats = points[batch.unsqueeze(1), center_idx].unsqueeze(2)  # (B, M, 1, C)
        grouped = torch.cat([neighbors - center_feats, center_feats.expand_as(neighbors)], dim=-1)
        M = self.num_centers
        rows = grouped.reshape(B * M, self.k, 2 * C).permute(0, 2, 1)  # (B*M, 2C, k)
        rows = torch.relu(self.layer1(rows))
        rows = torch.relu(self.layer2(rows))  # (B*M, out, k)
        out = rows.max(dim=-1).values.view(B, M, -1).permute(0, 2, 1)  # (B, out, M)
        return centers, out


class _OffsetAttentionLayer(nn.Module):
    """PCT's offset-attention layer on (B, C, N): x + ReLU(BN(conv(x - attention(x))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.query_key = nn.Conv1d(dim, dim // 4, kernel_size=1, bias=False)  # shared q/k
        self.value = nn.Conv1d(dim, dim, kernel_size=1)
        self.trans = _conv_bn(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qk = self.query_key(x)  # (B, C/4, N)
        energy = torch.bmm(qk.permute(0, 2, 1), qk)  # (B, N, N)
        attention = energy.softmax(dim=-1)
        attention = attention / (1e-9 + attention.sum(dim=1, keepdim=True))
        x_r = torch.bmm(self.value(x), attention)  # (B, C, N)
        return x + torch.relu(self.trans(x - x_r))


class ReferencePCT(nn.Module):
    """The PCT classifier as commonly reimplemented (channels-first, conv1d, full groups).

    Args:
        num_classes: output classes.
        centers: FPS centres of the two stages.
        neighbors: kNN size of the two stages.
    """

    def __init__(self, num_classes: int = 40, *, centers: tuple[int, int] = (512, 256),
                 neighbors: tuple[int, int] = (32, 32)):
        super().__init__()
        self.embed1 = _conv_bn(3, 64)
        self.embed2 = _conv_bn(64, 64)
        self.stage1 = _GroupedEmbedding(64, 128, num_centers=centers[0], k=neighbors[0])
        self.stage2 = _GroupedEmbedding(128, 256, num_centers=centers[1], k=neighbors[1])
        self.pre1 = _conv_bn(256, 256)
        self.pre2 = _conv_bn(256, 256)
        self.layers = nn.ModuleList(_OffsetAttentionLayer(256) for _ in range(4))
        self.fuse = _conv_bn(1280, 1024)
        self.head = nn.Sequential(
            nn.Linear(1024, 512, bias=False), nn.BatchNorm1d(512), nn.LeakyReLU(0.2), nn.Dropout(0.5),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) points -> (B, num_classes) logits."""
        xyz = points[..., :3].contiguous()  # (B, N, 3)
        x = points.permute(0, 2, 1)  # (B, 3, N)
        x = torch.relu(self.embed1(x))
        x = torch.relu(self.embed2(x))  # (B, 64, N)
        xyz, x = self.stage1(xyz, x)  # (B, 128, 512)
        _, feature = self.stage2(xyz, x)  # (B, 256, 256)
        x = torch.relu(self.pre1(feature))
        x = torch.relu(self.pre2(x))
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        x = torch.cat(outputs + [feature], dim=1)  # (B, 1280, 256)
        x = nn.functional.leaky_relu(self.fuse(x), 0.2)  # (B, 1024, 256)
        return self.head(x.max(dim=-1).values)  # (B, num_classes)
