"""The PCT-style point-cloud classifier, with a choice of attention core.

Data flow of :class:`PCTClassifier` (PCT, Guo et al. 2020, Fig. 2 and Sec. 3.3),
for B clouds of N points; the symbols are :class:`ModelConfig` fields
(E embed_dim, M1 and M2 centers, k neighbors, C1 and C2 stage_dims,
L num_layers, F fuse_dim, H1 and H2 head_dims; the defaults are PCT's:
E=64, M1=512, M2=256, k=32, C1=128, C2=256, L=4, F=1024, H1=512, H2=256):

    points (B, N, 3 or 6)
      -> per-point embedding, LBR x2                          (B, N, E)
      -> neighbour embedding 1: FPS M1, kNN k, LBR x2, max    (B, M1, C1)
      -> neighbour embedding 2: FPS M2, kNN k, LBR x2, max    (B, M2, C2)
      -> LBR x2                                               (B, M2, C2)
      -> L attention blocks x + LBR(x - attn(x)), outputs
         concatenated with the stage-2 features               (B, M2, (L+1) C2)
      -> fusion LBR (LeakyReLU 0.2)                           (B, M2, F)
      -> global max pool (or max and mean)                    (B, F or 2F)
      -> head LBR H1, LBR H2, Linear, dropout 0.5 between     (B, num_classes)

The three presets differ only in the attention core: ``pcea`` (external
attention, the default), ``pct`` (PCT's offset attention; 2,876,136 parameters
for 40 classes, exactly the released PCT classifier) and ``pct-sa`` (plain
self-attention).

This file is plain PyTorch. :func:`pcea.fast.accelerate` applies the CPU
speed-ups to a built model in one step; ``pcea.load_model``, ``pcea train``,
``eval``, ``classify`` and ``bench`` call it (``PCEA_FAST_OPS=0`` turns it off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pcea.errors import MAX_POINTS, check_positive_int, is_positive_int
from pcea.layers import LBR, ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention, batch_norm
from pcea.ops import gather, group_index

__all__ = ["ModelConfig", "PCTClassifier", "NeighborEmbedding", "build_model", "PRESETS"]

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
        # Strict types, so a bad option is one clear line here instead of an error inside torch.
        # Tuples survive a round trip through YAML/JSON as lists; normalise them.
        for name in ("centers", "neighbors", "stage_dims", "head_dims"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or len(value) != 2 or not all(map(is_positive_int, value)):
                raise ValueError(f"{name}={value!r}: expected two positive integers, e.g. [512, 256]")
            setattr(self, name, tuple(int(v) for v in value))
        for name in ("num_classes", "in_channels", "num_points", "embed_dim", "num_layers", "memory", "heads",
                     "fuse_dim"):
            check_positive_int(name, getattr(self, name), error=ValueError,
                               at_most=MAX_POINTS if name == "num_points" else None)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) \
                or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a number with 0 <= x < 1")
        if self.attention != "offset" and self.stage_dims[1] % self.heads:
            raise ValueError(f"heads={self.heads} must divide the attention width "
                             f"stage_dims[1]={self.stage_dims[1]}")
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


class NeighborEmbedding(nn.Module):
    """One neighbour-embedding stage of PCT (Sec. 3.3): sample, group, LBR, LBR, max over neighbours.

    Each of the k neighbours j of an FPS centre i is described by
    ``[f_j - f_i, f_i]``, passed through two LBRs, and the centre keeps the
    max over its neighbours. The first Linear is linear in that descriptor:
    ``W [f_j - f_i; f_i] = W_a f_j + (W_b - W_a) f_i`` with ``W = [W_a, W_b]``.
    So ``W_a`` is applied to the N points and ``W_b - W_a`` to the M centres
    before the gather, instead of ``W`` to the M x k grouped rows: the same
    function with the same parameters (tested against
    :func:`pcea.ops.sample_and_group` followed by the two LBRs) at about a
    third of the FLOPs, without materialising the 2C-wide groups.

    Args:
        in_dim: feature channels C of the input points.
        out_dim: output channels D.
        num_centers: M, centres picked by FPS.
        k: neighbours per centre.
    """

    def __init__(self, in_dim: int, out_dim: int, *, num_centers: int, k: int):
        super().__init__()
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
            out: (B, M, D) features of the centres.
        """
        C = feats.shape[-1]
        center_idx, neighbor_idx = group_index(xyz, self.num_centers, self.k)  # (B, M), (B, M, k)
        linear = self.lbr1.linear
        w_offset, w_center = linear.weight.split(C, dim=1)  # W_a, W_b: (D, C) each
        per_point = nn.functional.linear(feats, w_offset)  # (B, N, D): W_a f_j
        per_center = nn.functional.linear(gather(feats, center_idx), w_center - w_offset,
                                          linear.bias)  # (B, M, D): (W_b - W_a) f_i + b
        h = gather(per_point, neighbor_idx) + per_center.unsqueeze(2)  # (B, M, k, D): W [f_j - f_i; f_i] + b
        h = self.lbr1.act(batch_norm(self.lbr1.bn, h))  # (B, M, k, D), the rest of the first LBR
        h = self.lbr2(h)  # (B, M, k, D)
        return gather(xyz, center_idx), h.max(dim=2).values  # (B, M, 3), (B, M, D)


def _attention_core(config: ModelConfig, dim: int) -> nn.Module:
    if config.attention == "external":
        return ExternalAttention(dim, memory=config.memory, heads=config.heads)
    if config.attention == "offset":
        return OffsetAttention(dim)
    return SelfAttention(dim, heads=config.heads)


class PCTClassifier(nn.Module):
    """PCT-style point-cloud classifier (see the module docstring for the data flow).

    ``forward`` takes (B, N, in_channels) float32 points with N >= centers[0]
    and returns (B, num_classes) logits. The interface is timm's:
    :meth:`forward_features` gives the (B, num_features) global descriptor,
    :meth:`forward_head` the logits from it (or the head's last hidden layer,
    ``pre_logits=True``), :meth:`reset_classifier` a new last layer for
    fine-tuning. ``class_names`` is filled in by :func:`pcea.load_model` when
    the model comes from a checkpoint.
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
        self.num_features = c.fuse_dim * (2 if c.pool == "max+mean" else 1)  # width of forward_features
        self.head_hidden_size = c.head_dims[1]  # width of forward_head(pre_logits=True)
        self.head = nn.Sequential(
            LBR(self.num_features, c.head_dims[0], negative_slope=0.2),
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
            (B, num_features): (B, F), or (B, 2F) with max+mean pooling.
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
        x = self.embedding(points)  # (B, N, E)
        xyz, x = self.stage1(xyz, x)  # (B, M1, 3), (B, M1, C1)
        _, stage2 = self.stage2(xyz, x)  # (B, M2, C2)
        x = self.pre_attention(stage2)  # (B, M2, C2)
        outputs = []
        for block in self.blocks:
            x = block(x)  # (B, M2, C2)
            outputs.append(x)
        # PCT concatenates the attention outputs and then the stage-2 features.
        x = torch.cat(outputs + [stage2], dim=-1)  # (B, M2, (L+1) C2)
        return self.global_feature(x)  # (B, num_features)

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        """PCT's fusion LBR and global pooling: (B, M2, (L+1) C2) -> (B, F), or (B, 2F) for max+mean."""
        x = self.fuse(x)  # (B, M2, F)
        if self.config.pool == "max":
            return x.max(dim=1).values  # (B, F)
        return torch.cat([x.max(dim=1).values, x.mean(dim=1)], dim=-1)  # (B, 2F)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The classification head on :meth:`forward_features`' descriptor.

        Args:
            features: (B, num_features).
            pre_logits: stop before the last Linear.

        Returns:
            (B, num_classes) logits, or (B, head_hidden_size) with ``pre_logits``.
        """
        *hidden_layers, classifier = self.head
        for layer in hidden_layers:
            features = layer(features)  # (B, H1), then (B, H2)
        return features if pre_logits else classifier(features)  # (B, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(points))

    def get_classifier(self) -> nn.Linear:
        """The last Linear of the head (timm's name)."""
        return self.head[-1]

    def class_labels(self) -> list[str]:
        """The class names, or ``class0``, ``class1``, ... for a model without them (one per output)."""
        return list(self.class_names or [f"class{i}" for i in range(self.config.num_classes)])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear by a freshly initialised one with ``num_classes`` outputs.

        For fine-tuning on another dataset: everything before the last layer
        keeps its weights. ``config.num_classes`` follows and ``class_names``
        is cleared (the old names no longer fit).
        """
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: need at least one class")
        old = self.head[-1]
        self.head[-1] = nn.Linear(old.in_features, num_classes, device=old.weight.device,
                                  dtype=old.weight.dtype)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.class_names = None

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


# The presets: configurations that differ only in the attention core. build_model copies one
# and applies the caller's overrides, so a preset itself never changes.
PRESETS: dict[str, ModelConfig] = {
    "pcea": ModelConfig(attention="external"),
    "pct": ModelConfig(attention="offset"),
    "pct-sa": ModelConfig(attention="self"),
}


def build_model(name: str = "pcea", num_classes: int = 40, **overrides) -> PCTClassifier:
    """Build a classifier from a preset.

    Args:
        name: "pcea" (external attention), "pct" (offset attention) or
            "pct-sa" (self-attention): a key of :data:`PRESETS`.
        num_classes: output classes.
        **overrides: any other :class:`ModelConfig` field, e.g. ``in_channels=6``,
            ``memory=32``, ``centers=(256, 128)``, ``pool="max+mean"``.

    Returns:
        A :class:`PCTClassifier` in training mode, as written here.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    if "attention" in overrides:
        raise ValueError("the attention kind is set by the preset name, not an override")
    return PCTClassifier(dataclasses.replace(PRESETS[name], num_classes=num_classes, **overrides))
