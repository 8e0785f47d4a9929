"""What the pcea.io tests write and check: a tetrahedron as OFF, random clouds, a normalised cloud."""

from __future__ import annotations

import numpy as np
import pytest

TETRA_VERTICES = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TETRA_FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def write(path, text: str, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def tetra_off(newline="\n", glued=False) -> str:
    first = "OFF4 4 0\n" if glued else "OFF\n# a comment\n4 4 0\n"
    body = "".join(f"{x} {y} {z}\n" for x, y, z in TETRA_VERTICES)
    body += "".join(f"3 {a} {b} {c}\n" for a, b, c in TETRA_FACES)
    return (first + body).replace("\n", newline)


def random_cloud(n=50, seed=0, columns=3):
    return np.random.default_rng(seed).normal(size=(n, columns))


def assert_normalised(points, num_points, channels):
    assert points.shape == (num_points, channels)
    assert points.dtype == np.float32
    radius = np.linalg.norm(points[:, :3], axis=1)
    assert radius.max() == pytest.approx(1.0, abs=1e-5)
    # for meshes and clouds alike the centroid is the origin up to sampling noise
    assert np.abs(points[:, :3].mean(axis=0)).max() < 1e-5
