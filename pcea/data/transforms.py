"""Point-cloud transforms on (N, C) arrays: coordinates first, then optional normals."""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_unit_sphere"]


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre the coordinates on their mean and scale them into the unit sphere.

    The normalisation of the ModelNet40 h5 release, applied to every cloud pcea
    trains on or classifies, so that a user's file looks like the training data.
    Normals (columns 3:6) are left as they are: a translation and a uniform
    scale do not change them.

    Args:
        points: (N, C) array, C >= 3.

    Returns:
        (N, C) float32 array whose farthest point from the origin is at distance 1
        (a cloud of identical points is only centred).
    """
    out = np.array(points, dtype=np.float32, copy=True)
    xyz = out[:, :3]
    xyz -= xyz.mean(axis=0)
    radius = float(np.sqrt((xyz**2).sum(axis=1)).max()) if len(xyz) else 0.0
    if radius > 0:
        xyz /= radius
    return out
