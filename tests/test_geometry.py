"""pcea.geometry: the stray-point filter (the frame and the normalisation are tested with their users)."""

from __future__ import annotations

import numpy as np

from pcea.geometry import outlier_mask


def _sphere(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((count, 3))
    return points / np.linalg.norm(points, axis=1, keepdims=True)       # (count, 3) on the unit sphere


def test_isolated_points_go_and_the_surface_stays():
    surface = _sphere(600)
    strays = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [2.5, 0.0, 0.0], [0.0, -3.0, 1.0],
                       [0.1, 0.5, -0.2]])
    keep = outlier_mask(np.concatenate([surface, strays]))
    assert not keep[600:].any()
    assert keep[:600].mean() >= 0.98


def test_a_clean_surface_loses_almost_nothing():
    assert outlier_mask(_sphere(1000, seed=1)).mean() >= 0.98


def test_the_second_pass_finds_strays_the_first_one_missed():
    # Many strays inflate the deviation the first pass measures against; the second is stricter.
    rng = np.random.default_rng(2)
    strays = rng.uniform(-0.6, 0.6, size=(60, 3))                         # inside the sphere, sparse
    cloud = np.concatenate([_sphere(800, seed=3), strays])
    one, two = (outlier_mask(cloud, passes=n)[800:].sum() for n in (1, 2))
    assert two < one


def test_only_coordinates_count_and_tiny_clouds_are_kept_whole():
    cloud = np.concatenate([_sphere(300), np.full((300, 3), 1e6)], axis=1)  # huge "normals"
    np.testing.assert_array_equal(outlier_mask(cloud), outlier_mask(cloud[:, :3]))
    assert outlier_mask(_sphere(8), neighbours=8).all()
