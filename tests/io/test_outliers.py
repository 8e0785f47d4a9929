"""load_points / points_from_array with outliers="remove": a scan's stray points never reach the model."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from pcea.errors import PceaError, PceaWarning
from pcea.io import load_points, points_from_array


def _scan(count: int = 400, strays: int = 3) -> np.ndarray:
    """Points on a sphere of radius 2 about (5, 5, 5), and ``strays`` points 100 units away."""
    rng = np.random.default_rng(0)
    surface = rng.standard_normal((count, 3))
    surface = 5 + 2 * surface / np.linalg.norm(surface, axis=1, keepdims=True)
    return np.concatenate([surface, 100 + rng.standard_normal((strays, 3))])


def test_a_far_stray_shrinks_the_shape_unless_removed(tmp_path):
    path = tmp_path / "scan.xyz"
    np.savetxt(path, _scan())
    # Every point is drawn (403 of 403), so the strays are in; they set the unit sphere's scale.
    kept = np.linalg.norm(load_points(path, num_points=403), axis=1)
    assert np.median(kept) < 0.1
    removed = np.linalg.norm(load_points(path, num_points=256, outliers="remove"), axis=1)
    # Only the sphere is left: every point near the new radius 1 (the centre is the sample's mean).
    assert removed.min() > 0.75


def test_arrays_get_the_same_filter_as_files(tmp_path):
    scan = _scan()
    path = tmp_path / "scan.npy"
    np.save(path, scan)
    np.testing.assert_array_equal(points_from_array(scan, 128, seed=3, up="z", outliers="remove"),
                                  load_points(path, 128, seed=3, up="z", outliers="remove"))


def test_the_default_keeps_every_point_as_before(tmp_path):
    scan = _scan()
    np.testing.assert_array_equal(points_from_array(scan, 128, seed=1),
                                  points_from_array(scan, 128, seed=1, outliers="keep"))


def test_too_few_points_after_the_filter_says_why(tmp_path):
    path = tmp_path / "scan.xyz"
    np.savetxt(path, _scan(count=300, strays=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_points(path, num_points=303, outliers="remove")
    text = " ".join(str(w.message) for w in caught if issubclass(w.category, PceaWarning))
    # The 3 strays and perhaps a surface point or two (the filter drops ~1 % of a clean surface).
    assert re.search(r"only 29\d points after removing [3-9] outliers, 303 requested", text), text


def test_an_unknown_option_is_refused():
    with pytest.raises(PceaError, match="outliers='drop': expected keep or remove"):
        points_from_array(_scan(), 64, outliers="drop")
