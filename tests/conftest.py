"""Fixtures shared by the whole suite: one tiny model, plain, for every test that needs a network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import TINY, build_tiny, save_tiny_checkpoint

import pcea


@pytest.fixture
def tiny_options() -> dict:
    """The tiny model's ModelConfig fields (num_points=128, centers=(64, 32), ...)."""
    return dict(TINY)


@pytest.fixture
def tiny_model() -> Callable[..., pcea.PCTClassifier]:
    """Builds plain tiny models: ``tiny_model(name, num_classes=4, seed=0, trained=False, **overrides)``
    (:func:`tiny_models.build_tiny`)."""
    return build_tiny


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the smallest tiny model, classes ball/box/disc/rod, one per test module
    (:func:`tiny_models.save_tiny_checkpoint`)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")
