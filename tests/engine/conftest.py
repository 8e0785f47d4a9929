"""Fixtures of the engine tests; the helpers themselves live in engine_tiny.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_tiny import write_tiny_h5


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    return write_tiny_h5(tmp_path_factory.mktemp("tiny") / "modelnet40_ply_hdf5_2048")
