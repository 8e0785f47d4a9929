"""The geometry every cloud gets before the model sees it: the unit-sphere normalisation and the y-up frame.

Both the readers of a user's files (:mod:`pcea.io`) and the datasets (:mod:`pcea.data`)
apply these, so they live here, below both, with nothing but NumPy under them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CANONICAL_UP", "UP_AXES", "choose_up", "normalize_unit_sphere", "quarter_turns", "to_canonical"]


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
