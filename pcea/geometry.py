"""The geometry every cloud gets before the model sees it: the unit-sphere normalisation and the y-up frame,
and, on request, the removal of stray points.

Both the readers of a user's files (:mod:`pcea.io`) and the datasets (:mod:`pcea.data`)
apply these, so they live here, below both, with nothing but NumPy under them (and
scikit-learn's k-d tree, imported only when outliers are removed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CANONICAL_UP", "OUTLIER_OPTIONS", "UP_AXES", "check_outliers", "choose_up",
           "normalize_unit_sphere", "outlier_mask", "quarter_turns", "to_canonical"]


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



# --- stray points ----------------------------------------------------------------------------
#
# A scan's stray returns (dust, reflections, a wall behind the object) are few, but the model
# over-weights them: the unit-sphere scale is set by the farthest point, and farthest point
# sampling picks isolated points first, so each stray becomes a group centre. The filter is the
# field's usual statistical outlier removal (PCL's StatisticalOutlierRemoval, Open3D's
# remove_statistical_outlier): a point whose mean distance to its k nearest neighbours lies more
# than ``std_ratio`` standard deviations above the cloud's mean is dropped. The strays inflate the
# standard deviation they are measured against, so a second pass on what is left finds most of
# those the first one missed. Parameters chosen on 150 real ModelNet40 shapes (512 points) under
# the robustness suite's add_global at severity 5 (25 strays): 8 neighbours, 3 deviations, two
# passes drop 88 % of the strays farther than 0.1 radius from the surface and 1.4 % of a clean
# cloud's points (one pass with 16 neighbours and 2 deviations, a usual setting: 76 % and 3.6 %).
# Accuracies with and without it: docs/robustness.md.

OUTLIER_OPTIONS = ("keep", "remove")


def check_outliers(outliers: str, error: type[Exception] = ValueError) -> None:
    """Refuse an ``outliers=`` value other than "keep" or "remove" (the one wording for every caller)."""
    if outliers not in OUTLIER_OPTIONS:
        raise error(f"outliers={outliers!r}: expected {' or '.join(OUTLIER_OPTIONS)}")


def outlier_mask(points: np.ndarray, neighbours: int = 8, std_ratio: float = 3.0,
                 passes: int = 2) -> np.ndarray:
    """Which points statistical outlier removal keeps.

    Args:
        points: (N, C) array, C >= 3; only the coordinates count.
        neighbours: k of the k-nearest-neighbour mean distance.
        std_ratio: a point is dropped when its mean distance exceeds the mean of all by this many
            standard deviations.
        passes: times the test is repeated on the points kept.

    Returns:
        (N,) bool, True for the points kept; all True for a cloud of at most ``neighbours`` points.
    """
    from sklearn.neighbors import KDTree  # scikit-learn is a dependency; imported late for `import pcea.io`

    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    kept = np.arange(len(xyz))
    for _ in range(passes):
        if len(kept) <= neighbours:
            break
        distance, _ = KDTree(xyz[kept]).query(xyz[kept], k=neighbours + 1)   # (n, k + 1), self first
        spread = distance[:, 1:].mean(axis=1)                                 # (n,)
        kept = kept[spread <= spread.mean() + std_ratio * spread.std()]
    mask = np.zeros(len(xyz), dtype=bool)
    mask[kept] = True
    return mask

# --- the one frame the model sees ------------------------------------------------------------
#
# Every cloud pcea trains on or classifies is turned into one canonical frame first: y up,
# the frame of the ModelNet40 h5 release (PointNet, DGCNN, PCT) and of the resampled release
# (PointNet++), so that those layouts and models trained on them need no turn. Data that is
# z-up (the Princeton meshes, the npy release, most STL/OFF/PLY/PCD files) is turned by -90
# degrees about x: (x, y, z) -> (x, z, -y). Only the up axis is fixed by this; how far each
# release is turned about it (where "front" points) is not published and may differ by a yaw.

CANONICAL_UP = "y"
UP_AXES = ("y", "z")
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0],
                          [0.0, 0.0, 1.0],
                          [0.0, -1.0, 0.0]])   # (x, y, z) -> (x, z, -y), a proper rotation


def to_canonical(points: np.ndarray, up: str) -> np.ndarray:
    """Turn a cloud whose up axis is ``up`` ("y" or "z") into pcea's y-up frame.

    Args:
        points: (N, C) or (B, N, C) array, C >= 3; columns 3:6, when present, are
            normals and turn with the points.
        up: the axis that points up in ``points``.

    Returns:
        A float32 array of the same shape (``points`` itself, unchanged, when ``up`` is "y").
    """
    if up not in UP_AXES:
        raise ValueError(f"up={up!r}: expected one of {', '.join(UP_AXES)}")
    out = np.asarray(points, dtype=np.float32)
    if up == CANONICAL_UP:
        return out
    turned = out.copy()
    rotation = _Z_UP_TO_Y_UP.astype(np.float32)
    turned[..., :3] = out[..., :3] @ rotation.T
    if out.shape[-1] >= 6:
        turned[..., 3:6] = out[..., 3:6] @ rotation.T      # a rotation: normals turn the same way
    return turned


def quarter_turns(cloud: np.ndarray) -> list[np.ndarray]:
    """A cloud read y-up, then turned 1, 2 and 3 times by the z-up -> y-up turn (-90 degrees about x):
    the file read y-up, read z-up, read y-down, read z-down."""
    turns = [cloud]
    for _ in range(3):
        turns.append(to_canonical(turns[-1], "z"))
    return turns


def choose_up(probs: np.ndarray) -> tuple[str, np.ndarray]:
    """The up axis of an input that declares none, from the model's probabilities on its four
    :func:`quarter_turns` (rows: read y-up, z-up, y-down, z-down); returns the axis and the
    probabilities of that upright reading.

    pcea classify and the ONNX runner (:mod:`pcea.onnx_runner`) decide with this one function.
    The most confident of the four readings (the lowest entropy) picks the axis: y when it is the
    y-up or the y-down reading, z otherwise. The y-up and the z-up copy of a shape have the same
    four quarter turns, so they pick the same one and, whenever that is the true axis's pair,
    give the same answer. Counting a reading's upside-down twin toward its axis makes the choice
    the same for both copies; the answer stays the upright reading, since the model never saw an
    upside-down shape in training. Measured on real ModelNet40 shapes: README.md, "Which way is up
    in your own files".
    """
    confidence = (probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)   # (4,) minus the entropy
    axis = int(np.argmax(confidence)) % 2                                   # 0: y, 1: z
    return "yz"[axis], probs[axis]
