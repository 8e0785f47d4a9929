"""The PCT-style point-cloud classifier, with a choice of attention core.

Data flow of :class:`PCTClassifier` (PCT, Guo et al. 2020, Fig. 2 and Sec. 3.3;
shapes for the defaults, B clouds of N points):

    points (B, N, 3 or 6)
      -> per-point embedding, LBR x2                      (B, N, 64)
      -> neighbour embedding 1: FPS 512, kNN 32, MLP, max (B, 512, 128)
      -> neighbour embedding 2: FPS 256, kNN 32, MLP, max (B, 256, 256)
      -> LBR x2                                           (B, 256, 256)
      -> 4 attention blocks x + LBR(x - attn(x)), outputs concatenated
         with the stage-2 features                        (B, 256, 1280)
      -> fusion LBR (LeakyReLU 0.2)                       (B, 256, 1024)
      -> global max pool (or max+mean)                    (B, 1024 or 2048)
      -> head 512 -> 256 -> num_classes, dropout 0.5      (B, num_classes)

The three presets differ only in the attention core: ``pcea`` (external
attention, the default), ``pct`` (PCT's offset attention; 2,876,136 parameters
for 40 classes, exactly the released PCT classifier) and ``pct-sa`` (plain
self-attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pcea import fast_ops, fused_bn
from pcea.layers import LBR, ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention, linear, max_over
from pcea.ops import flat_index, gather, group_index

__all__ = ["ModelConfig", "PCTClassifier", "NeighborEmbedding", "build_model", "fuse_batchnorm", "PRESETS"]

AttentionKind = Literal["external", "offset", "self"]


@dataclass
class ModelConfig:
    """Every hyperparameter of the classifier; the defaults are PCT's.

    Attributes:
        attention: the core of each attention block: "external", "offset" or "self".
        num_classes: output classes.
        in_channels: 3 for xyz, 6 for xyz and normals.
        num_points: points per cloud the model is trained and used with.
        embed_dim: width of the per-point embedding.
        centers: FPS centres of the two neighbour-embedding stages.
        neighbors: k of the kNN grouping in each stage.
        stage_dims: output widths of the two stages; the last is the attention width.
        num_layers: stacked attention blocks.
        memory: external-attention memory slots S.
        heads: heads of external or self attention (offset attention has one).
        fuse_dim: width of the fusion layer after the concatenation.
        head_dims: hidden widths of the classification head.
        dropout: dropout probability in the head.
        pool: global pooling, "max" (PCT) or "max+mean".
    """

    attention: AttentionKind = "external"
    num_classes: int = 40
    in_channels: int = 3
    num_points: int = 1024
    embed_dim: int = 64
    centers: tuple[int, int] = (512, 256)
    neighbors: tuple[int, int] = (32, 32)
    stage_dims: tuple[int, int] = (128, 256)
    num_layers: int = 4
    memory: int = 64
    heads: int = 1
    fuse_dim: int = 1024
    head_dims: tuple[int, int] = (512, 256)
    dropout: float = 0.5
    pool: Literal["max", "max+mean"] = "max"

    def __post_init__(self) -> None:
        # Tuples survive a round trip through YAML/JSON as lists; normalise them.
        for name in ("centers", "neighbors", "stage_dims", "head_dims"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.attention not in ("external", "offset", "self"):
            raise ValueError(f"attention={self.attention!r}: expected 'external', 'offset' or 'self'")
        if self.pool not in ("max", "max+mean"):
            raise ValueError(f"pool={self.pool!r}: expected 'max' or 'max+mean'")
        if self.in_channels < 3:
            raise ValueError(f"in_channels={self.in_channels}: need at least the 3 coordinates")
        if len(self.centers) != 2 or len(self.neighbors) != 2 or len(self.stage_dims) != 2:
            raise ValueError("centers, neighbors and stage_dims each need two values, one per stage")
        if not self.num_points >= self.centers[0] >= self.centers[1]:
            raise ValueError(
                f"need num_points >= centers[0] >= centers[1], got {self.num_points}, "
                f"{self.centers[0]}, {self.centers[1]}"
            )
        grouped_from = (self.num_points, self.centers[0])  # points each stage groups over
        for stage, (k, n) in enumerate(zip(self.neighbors, grouped_from, strict=True), start=1):
            if not 1 <= k <= n:
                raise ValueError(f"stage {stage}: k={k} neighbours but only {n} points to group")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Rows x channels of one chunk of grouped features at inference (4 MB in float32):
# measured fastest on the 2-core machine for both stages (docs/benchmarks.md).
_CHUNK_ELEMENTS = 1 << 20


class NeighborEmbedding(nn.Module):
    """One neighbour-embedding stage of PCT: sample, group, shared MLP, max over neighbours.

    The MLP's first layer is linear in the neighbour descriptor
    ``[f_j - f_i, f_i]``: ``W [f_j - f_i; f_i] = W_a f_j + (W_b - W_a) f_i``.
    We apply ``W_a`` to the N source points and ``W_b - W_a`` to the M centres
    before gathering, instead of to the M x k grouped rows. It is the same
    function with the same parameters (tested against
    :func:`pcea.ops.sample_and_group` followed by the plain MLP) at about a
    third of the stage's FLOPs, and it never materialises the 2C-wide groups.

    Args:
        in_dim: feature channels C of the input points.
        out_dim: output channels.
        num_centers: M, centres picked by FPS.
        k: neighbours per centre.
    """

    def __init__(self, in_dim: int, out_dim: int, *, num_centers: int, k: int):
        super().__init__()
        self.in_dim = in_dim
        self.num_centers = num_centers
        self.k = k
        self.lbr1 = LBR(2 * in_dim, out_dim)  # on [f_j - f_i, f_i]
        self.lbr2 = LBR(out_dim, out_dim)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            xyz: (B, N, 3) coordinates.
            feats: (B, N, C) features.

        Returns:
            centers: (B, M, 3) coordinates of the centres.
            out: (B, M, out_dim) features of the centres.
        """
        center_idx, neighbor_idx = group_index(xyz, self.num_centers, self.k)  # (B, M), (B, M, k)
        weight, bias = self.lbr1.weight_and_bias()  # BatchNorm folded in when fused
        w_offset, w_center = weight.split(self.in_dim, dim=1)  # (out, C) each
        per_point = linear(feats, w_offset)  # (B, N, out): W_a f_j for every point
        center_feats = gather(feats, center_idx)  # (B, M, C)
        per_center = linear(center_feats, w_center - w_offset)  # (B, M, out): (W_b - W_a) f_i
        if bias is not None:  # in the matmul's dtype: an fp32 bias would promote bf16 (autocast)
            per_center = per_center + bias.to(per_center.dtype)
        if self.training or torch.is_grad_enabled() or feats.device.type != "cpu" or fast_ops.compiling():
            out = self._grouped_max(per_point, per_center, neighbor_idx)  # (B, M, out)
        else:
            out = self._grouped_max_in_chunks(per_point, per_center, neighbor_idx)  # (B, M, out)
        # ReLU is monotone, so max_k ReLU(h) = ReLU(max_k h): one pass over the
        # (B, M, k, out) rows less, the same values.
        return gather(xyz, center_idx), self.lbr2.activation(out)  # (B, M, 3), (B, M, out)

    def _grouped_max(self, per_point: torch.Tensor, per_center: torch.Tensor,
                     neighbor_idx: torch.Tensor) -> torch.Tensor:
        """max over k of the MLP on every row, before the last activation: (B, M, out)."""
        if fused_bn.applies(per_point, self.lbr1.bn):  # a CPU training step: fewer passes over the rows
            h = fused_bn.gather_norm_act(per_point, per_center, neighbor_idx, self.lbr1.bn,
                                         self.lbr1.negative_slope)  # (B, M, k, out)
        else:
            # Out of place: gather returns a view of its index_select, and an in-place add
            # on a view would make autograd clone the whole tensor in the backward pass.
            h = gather(per_point, neighbor_idx) + per_center.unsqueeze(2)  # (B, M, k, out)
            h = self.lbr1.norm_act(h)  # (B, M, k, out)
        return self.lbr2.linear_norm_max(h, dim=2)  # (B, M, k, out) -> (B, M, out)

    def _grouped_max_in_chunks(self, per_point: torch.Tensor, per_center: torch.Tensor,
                               neighbor_idx: torch.Tensor) -> torch.Tensor:
        """:meth:`_grouped_max` a few hundred centres at a time, for inference only.

        Each chunk's rows (about 4 MB) stay in the CPU caches from the gather to
        the max, instead of a 268 MB tensor going through memory four times:
        21 % (stage 1) and 16 % (stage 2) faster here. The rows are the same, so
        the result is the same up to the matmul's summation order (within 1e-5).
        BatchNorm in training mode needs all rows at once, and autograd would keep
        every chunk anyway, so :meth:`forward` uses this only without either, and
        only on the CPU: a GPU has no such cache to fit, and would launch a few
        hundred small kernels instead of six large ones (nor would torch.compile
        want the loop unrolled into its graph).
        """
        B, N, D = per_point.shape  # D: the stage's output width
        M, k = neighbor_idx.shape[1:]
        flat_idx = flat_index(neighbor_idx, N).view(B * M, k)  # rows of the flattened (B * N, D) points
        points = per_point.reshape(B * N, D)
        centers = per_center.reshape(B * M, D)
        step = max(1, _CHUNK_ELEMENTS // (k * D))  # centres per chunk
        # Fused, the last bias is added after the max (see LBR.linear_norm_max).
        weight, bias = self.lbr2.weight_and_bias() if self.lbr2.is_fused else (None, None)
        out = None
        for start in range(0, B * M, step):
            stop = min(start + step, B * M)
            rows = flat_idx[start:stop].reshape(-1)  # (chunk * k,)
            h = points.index_select(0, rows).view(stop - start, k, D)  # (chunk, k, D)
            h += centers[start:stop].unsqueeze(1)  # no autograd here, so in place is free
            h = self.lbr1.norm_act(h)  # (chunk, k, D)
            h = self.lbr2.linear_norm(h) if weight is None else linear(h, weight)
            if out is None:  # the dtype the layers produce (bf16 under autocast)
                out = torch.empty(B * M, h.shape[-1], dtype=h.dtype, device=h.device)
            torch.amax(h, dim=1, out=out[start:stop])  # (chunk, k, D) -> (chunk, D)
        if bias is not None:
            out += bias.to(out.dtype)
        return out.view(B, M, -1)


def _attention_core(config: ModelConfig, dim: int) -> nn.Module:
    if config.attention == "external":
        return ExternalAttention(dim, memory=config.memory, heads=config.heads)
    if config.attention == "offset":
        return OffsetAttention(dim)
    return SelfAttention(dim, heads=config.heads)


class PCTClassifier(nn.Module):
    """PCT-style point-cloud classifier (see the module docstring for the data flow).

    ``forward`` takes (B, N, in_channels) float32 points with N >= centers[0]
    and returns (B, num_classes) logits. ``class_names`` is filled in by
    :func:`pcea.load_model` when the model comes from a checkpoint.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.class_names: list[str] | None = None
        c = config
        dim = c.stage_dims[1]
        self.embedding = nn.Sequential(LBR(c.in_channels, c.embed_dim), LBR(c.embed_dim, c.embed_dim))
        self.stage1 = NeighborEmbedding(
            c.embed_dim, c.stage_dims[0], num_centers=c.centers[0], k=c.neighbors[0]
        )
        self.stage2 = NeighborEmbedding(
            c.stage_dims[0], dim, num_centers=c.centers[1], k=c.neighbors[1]
        )
        self.pre_attention = nn.Sequential(LBR(dim, dim), LBR(dim, dim))
        self.blocks = nn.ModuleList(
            OffsetBlock(_attention_core(c, dim), dim) for _ in range(c.num_layers)
        )
        self.fuse = LBR(dim * (c.num_layers + 1), c.fuse_dim, negative_slope=0.2)
        pooled_dim = c.fuse_dim * (2 if c.pool == "max+mean" else 1)
        self.head = nn.Sequential(
            LBR(pooled_dim, c.head_dims[0], negative_slope=0.2),
            nn.Dropout(c.dropout),
            LBR(c.head_dims[0], c.head_dims[1], bias=True, negative_slope=0.2),
            nn.Dropout(c.dropout),
            nn.Linear(c.head_dims[1], c.num_classes),
        )

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """Global shape descriptor of each cloud.

        Args:
            points: (B, N, in_channels) coordinates first, then any normals.

        Returns:
            (B, fuse_dim), or (B, 2 * fuse_dim) with max+mean pooling.
        """
        c = self.config
        if points.dim() != 3 or points.shape[-1] != c.in_channels:
            raise ValueError(
                f"points must have shape (B, N, {c.in_channels}), got {tuple(points.shape)}"
            )
        if points.shape[1] < c.centers[0]:
            raise ValueError(
                f"a cloud of N={points.shape[1]} points is too small for the first stage's "
                f"{c.centers[0]} centres"
            )
        if self.training and points.shape[0] < 2:
            raise ValueError("training mode needs at least 2 clouds per batch (BatchNorm in the head)")
        xyz = points[..., :3].contiguous()  # (B, N, 3)
        x = self.embedding(points)  # (B, N, 64)
        xyz, x = self.stage1(xyz, x)  # (B, 512, 3), (B, 512, 128)
        _, stage2 = self.stage2(xyz, x)  # (B, 256, 256)
        x = self.pre_attention(stage2)  # (B, 256, 256)
        outputs = [stage2]
        for block in self.blocks:
            x = block(x)  # (B, 256, 256)
            outputs.append(x)
        # PCT concatenates the attention outputs and then the stage-2 features;
        # the order only permutes the fusion layer's input columns.
        x = torch.cat(outputs[1:] + outputs[:1], dim=-1)  # (B, 256, 1280)
        if c.pool == "max":
            # LeakyReLU is monotone: applying it after the max gives the same values.
            return self.fuse.activation(self.fuse.linear_norm_max(x, dim=1))  # (B, 256, 1280) -> (B, 1024)
        x = self.fuse(x)  # (B, 256, 1024)
        return torch.cat([max_over(x, dim=1), x.mean(dim=1)], dim=-1)  # (B, 2048)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)  # (B, num_classes)

    def fuse_batchnorm(self) -> PCTClassifier:
        """Switch to eval mode and fold every BatchNorm into its Linear (see :func:`fuse_batchnorm`)."""
        return fuse_batchnorm(self)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(points))

    @torch.no_grad()
    def predict(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities for one cloud (N, C) or a batch (B, N, C), in eval mode.

        Returns:
            (num_classes,) for one cloud, (B, num_classes) for a batch, on the CPU.
        """
        x = torch.as_tensor(np.asarray(points) if not torch.is_tensor(points) else points)
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            probs = self(x.to(device=device, dtype=torch.float32)).float().softmax(dim=-1).cpu()
        finally:
            self.train(was_training)
        return probs[0] if single else probs


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Prepare a model for fast inference: eval mode, each BatchNorm folded into its Linear.

    The logits stay within float rounding (~1e-6) of the unfused model's and
    the state_dict is unchanged (the folded weights are non-persistent
    buffers). ``model.train()`` or ``load_state_dict`` undo the folding, so a
    fused model can still be trained or saved as usual.

    Args:
        model: a :class:`PCTClassifier`, or any module built from :class:`pcea.layers.LBR`.

    Returns:
        The same model, fused, in eval mode.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, LBR):
            module.fuse()
    return model


PRESETS: dict[str, AttentionKind] = {
    "pcea": "external",
    "pct": "offset",
    "pct-sa": "self",
}


def build_model(name: str = "pcea", num_classes: int = 40, **overrides) -> PCTClassifier:
    """Build a classifier by preset name.

    Args:
        name: "pcea" (external attention), "pct" (offset attention) or
            "pct-sa" (self-attention).
        num_classes: output classes.
        **overrides: any other :class:`ModelConfig` field, e.g. ``in_channels=6``,
            ``memory=32``, ``centers=(256, 128)``, ``pool="max+mean"``.

    Returns:
        A :class:`PCTClassifier` in training mode.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    if "attention" in overrides:
        raise ValueError("the attention kind is set by the preset name, not an override")
    config = ModelConfig(attention=PRESETS[name], num_classes=num_classes, **overrides)
    return PCTClassifier(config)
