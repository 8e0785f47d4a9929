"""Fixtures shared by the whole suite: one tiny model, plain, for every test that needs a network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import pcea

# Small enough for a training step in milliseconds, with every part of the network present.
TINY = dict(num_points=128, centers=(64, 32), neighbors=(8, 8), embed_dim=16, stage_dims=(32, 64),
            fuse_dim=128, head_dims=(64, 32), memory=16)


@pytest.fixture
def tiny_options() -> dict:
    """The tiny model's ModelConfig fields (num_points=128, centers=(64, 32), ...)."""
    return dict(TINY)


@pytest.fixture
def tiny_model() -> Callable[..., pcea.PCTClassifier]:
    """Builds plain tiny models: ``tiny_model(name, num_classes=4, seed=0, trained=False, **overrides)``.

    ``trained=True`` gives the BatchNorms affine terms of both signs and running
    statistics moved by three training-mode passes, as after training, and
    returns the model in eval mode.
    """

    def build(name: str = "pcea", *, num_classes: int = 4, seed: int = 0, trained: bool = False,
              **overrides) -> pcea.PCTClassifier:
        torch.manual_seed(seed)
        model = pcea.build_model(name, num_classes=num_classes, **{**TINY, **overrides})
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

    return build
