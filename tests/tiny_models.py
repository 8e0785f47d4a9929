"""The suite's one tiny model, in two sizes, and a checkpoint of it; imported by conftest.py and
by the helper modules (``engine_tiny.py``) that cannot take fixtures.

A module of its own with a unique name (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

import pcea
from pcea.engine.checkpoint import save_classifier

# Small enough for a training step in milliseconds, with every part of the network present.
TINY = dict(num_points=128, centers=(64, 32), neighbors=(8, 8), embed_dim=16, stage_dims=(32, 64),
            fuse_dim=128, head_dims=(64, 32), memory=16)
# Smaller still, for tests that run the model on a thousand clouds or start many processes.
SMALLEST = dict(TINY, centers=(32, 16), neighbors=(4, 4), embed_dim=8, stage_dims=(16, 32),
                fuse_dim=64, head_dims=(32, 16), memory=8)
CLASS_NAMES = ["ball", "box", "disc", "rod"]


def build_tiny(name: str = "pcea", *, num_classes: int = 4, seed: int = 0, trained: bool = False,
               size: dict = TINY, **overrides) -> pcea.PCTClassifier:
    """A plain tiny model; ``trained=True`` gives the BatchNorms affine terms of both signs and
    running statistics moved by three training-mode passes, as after training, in eval mode."""
    torch.manual_seed(seed)
    model = pcea.build_model(name, num_classes=num_classes, **{**size, **overrides})
    if not trained:
        return model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.uniform_(-0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        for _ in range(3):  # train-mode passes move the running mean and variance
            model(torch.randn(4, model.config.num_points, model.config.in_channels) * 2 + 0.3)
    return model.eval()


def save_tiny_checkpoint(path: Path, *, size: dict = SMALLEST, class_names=CLASS_NAMES) -> Path:
    """Write the untrained SMALLEST model (seed 0) as a checkpoint ``pcea classify`` and ``eval`` read."""
    model = build_tiny(num_classes=len(class_names), size=size)
    model.class_names = list(class_names)
    return save_classifier(path, model)
