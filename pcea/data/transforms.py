"""Point-cloud transforms on (N, C) arrays: coordinates first, then optional normals.

The normalisation and the y-up frame (``normalize_unit_sphere``, ``CANONICAL_UP``,
``UP_AXES``, ``to_canonical``) live in :mod:`pcea.geometry`, below :mod:`pcea.io` and
:mod:`pcea.data` both; they are re-exported here because a dataset pipeline uses them
with the transforms. :func:`augment_item` is the one per-item seeded augmentation that
every dataset wrapper calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pcea.errors import check_positive_int
from pcea.geometry import CANONICAL_UP, UP_AXES, normalize_unit_sphere, to_canonical
from pcea.ops import farthest_point_sample

__all__ = [
    "AnisotropicScale",
    "Compose",
    "Jitter",
    "NormalizeUnitSphere",
    "PointDropout",
    "PointWOLF",
    "RotateSO3",
    "RotateUp",
    "ScaleTranslate",
    "Shuffle",
    "Subsample",
    "Tilt",
    "Transform",
    "Translate",
    "CANONICAL_UP",
    "UP_AXES",
    "augment_item",
    "normalize_unit_sphere",
    "pct_train_transform",
    "to_canonical",
    "rotation_about",
    "vote_transform",
    "weighted_local_transform",
]


class Transform:
    """A random (or fixed) change of a cloud; subclasses implement :meth:`apply`.

    Calling a transform accepts a numpy array or a torch tensor of shape (N, C), C >= 3,
    and returns the same type (a tensor keeps its dtype and device). Columns 3:6, when
    present, are unit normals and are carried along: rotated with the points, mapped by
    the inverse transpose under a scaling, left alone by translations and jitter. Any
    further columns are copied unchanged.
    """

    def __call__(self, points, rng: np.random.Generator | int | None = None):
        """Apply the transform.

        Args:
            points: (N, C) numpy array or torch tensor.
            rng: the source of randomness; an int or None is passed to
                ``np.random.default_rng``. The same generator state gives the same output.

        Returns:
            (M, C) of the input's type; M == N except for :class:`Subsample`.
        """
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        if _is_tensor(points):
            import torch

            out = self.apply(points.detach().cpu().numpy().astype(np.float32), rng)
            return torch.as_tensor(out).to(dtype=points.dtype, device=points.device)
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"expected an (N, C >= 3) cloud, got shape {points.shape}")
        return self.apply(np.array(points, dtype=np.float32, copy=True), rng)

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform a float32 (N, C) array that the transform may modify in place."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _is_tensor(points) -> bool:
    return type(points).__module__.startswith("torch")


def _has_normals(points: np.ndarray) -> bool:
    return points.shape[1] >= 6


def _linear(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 linear map to the coordinates, and its inverse transpose to the normals."""
    points[:, :3] = points[:, :3] @ matrix.T
    if _has_normals(points):
        normals = points[:, 3:6] @ np.linalg.inv(matrix)  # (M^-T n)^T = n^T M^-1
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        points[:, 3:6] = normals / np.where(length > 0, length, 1.0)
    return points


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            points = transform.apply(points, rng)
        return points


class NormalizeUnitSphere(Transform):
    """Centre the coordinates and scale them into the unit sphere (no randomness)."""

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return normalize_unit_sphere(points)


class AnisotropicScale(Transform):
    """Scale each axis by its own factor drawn uniformly from [low, high]."""

    def __init__(self, low: float = 2 / 3, high: float = 3 / 2):
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = low, high

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _linear(points, np.diag(rng.uniform(self.low, self.high, size=3)))


class Translate(Transform):
    """Shift the cloud by a vector drawn uniformly from [-shift, shift] per axis."""

    def __init__(self, shift: float = 0.2):
        self.shift = shift

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        points[:, :3] += rng.uniform(-self.shift, self.shift, size=3)
        return points


class ScaleTranslate(Transform):
    """PCT's training augmentation: per-axis scale in [low, high], then a shift in [-shift, shift].

    The scale factors are drawn before the shift, as in PCT's ``translate_pointcloud``.
    """

    def __init__(self, low: float = 2 / 3, high: float = 3 / 2, shift: float = 0.2):
        self.scale = AnisotropicScale(low, high)
        self.translate = Translate(shift)

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.translate.apply(self.scale.apply(points, rng), rng)


class Jitter(Transform):
    """Add Gaussian noise of std ``sigma``, clipped to [-clip, clip], to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05):
        if sigma < 0 or clip < 0:
            raise ValueError(f"sigma and clip must be >= 0, got sigma={sigma}, clip={clip}")
        self.sigma, self.clip = sigma, clip

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = np.clip(self.sigma * rng.standard_normal((len(points), 3)), -self.clip, self.clip)
        points[:, :3] += noise
        return points


def rotation_about(axis: str, angle: float) -> np.ndarray:
    """The 3x3 right-handed rotation by ``angle`` radians about the x, y or z axis."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


class RotateUp(Transform):
    """Rotate about the up axis by an angle drawn uniformly from [-max_angle, max_angle].

    ModelNet40's h5 release (and pcea-shapes) is y-up.
    """

    def __init__(self, axis: str = "y", max_angle: float = np.pi):
        if axis not in ("x", "y", "z"):
            raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
        self.axis, self.max_angle = axis, max_angle

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _linear(points, rotation_about(self.axis, rng.uniform(-self.max_angle, self.max_angle)))


class Tilt(Transform):
    """Lean the cloud off the up axis: angles about the two horizontal axes each from [-max_angle, max_angle].

    The rotation is Rz @ Rx in pcea's y-up frame, as a scan that was not levelled or an object
    standing on a slope is; the up axis ends within ``max_angle`` of both the x-y and the y-z plane.
    """

    def __init__(self, max_angle: float):
        if not 0 < max_angle <= np.pi / 2:
            raise ValueError(f"max_angle must be in (0, pi/2] radians, got {max_angle!r}")
        self.max_angle = max_angle

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ax, az = rng.uniform(-self.max_angle, self.max_angle, size=2)  # about x, then about z
        return _linear(points, rotation_about("z", az) @ rotation_about("x", ax))  # (N, C), normals too


class RotateSO3(Transform):
    """Rotate by a rotation drawn uniformly from SO(3) (a normalised Gaussian quaternion)."""

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
        matrix = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
        return _linear(points, matrix)


class PointDropout(Transform):
    """PointNet++'s random dropout: drop a random fraction (up to ``max_ratio``) of the points.

    The number of points stays N: dropped rows are replaced by copies of the first row,
    so batches keep their shape.
    """

    def __init__(self, max_ratio: float = 0.875):
        if not 0 <= max_ratio < 1:
            raise ValueError(f"max_ratio must be in [0, 1), got {max_ratio}")
        self.max_ratio = max_ratio

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ratio = rng.random() * self.max_ratio
        dropped = rng.random(len(points)) <= ratio
        dropped[0] = False
        points[dropped] = points[0]
        return points


class Subsample(Transform):
    """Keep ``num_points`` random points (without replacement; with it if the cloud is smaller)."""

    def __init__(self, num_points: int):
        self.num_points = check_positive_int("num_points", num_points, error=ValueError)

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(points) == 0:
            raise ValueError("cannot subsample an empty cloud")
        replace = len(points) < self.num_points
        return points[rng.choice(len(points), self.num_points, replace=replace)]


class Shuffle(Transform):
    """Permute the points (the rows), keeping each point's normal with it."""

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return points[rng.permutation(len(points))]


def weighted_local_transform(points: np.ndarray, anchors: np.ndarray, matrices: np.ndarray,
                             shifts: np.ndarray, *, sigma: float) -> np.ndarray:
    """Move every point by the kernel-weighted blend of the anchors' local transformations.

    PointWOLF (Kim et al., "Point Cloud Augmentation with Weighted Local Transformations",
    ICCV 2021): anchor j moves a point p to T_j(p) = A_j (p - a_j) + a_j + t_j, and p goes to
    the Nadaraya-Watson estimate sum_j w_j(p) T_j(p), w_j = K(p, a_j) / sum_k K(p, a_k), with
    the Gaussian kernel K(p, a) = exp(-|p - a|^2 / (2 sigma^2)). Points near one anchor follow
    its transformation; points between anchors blend them smoothly.

    Normals (columns 3:6) go through the exact Jacobian J of that map: a tangent t becomes
    J t, so a normal becomes cof(J) n = det(J) J^-T n, renormalised (the cofactor form needs
    no inverse where J is singular). Further columns are copied.

    Args:
        points: (N, C) cloud, C >= 3.
        anchors: (M, 3) anchor positions a_j.
        matrices: (M, 3, 3) linear parts A_j (rotation times scaling).
        shifts: (M, 3) translations t_j.
        sigma: the kernel's bandwidth, > 0.

    Returns:
        (N, C) float32; not normalised (:class:`PointWOLF` normalises).
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    anchors, matrices = np.asarray(anchors, dtype=np.float64), np.asarray(matrices, dtype=np.float64)
    offsets = xyz[:, None, :] - anchors[None]                                     # (N, M, 3) p - a_j
    local = np.einsum("mij,nmj->nmi", matrices, offsets) + anchors + shifts       # (N, M, 3) T_j(p)
    log_kernel = -(offsets**2).sum(axis=2) / (2 * sigma**2)                       # (N, M)
    # Softmax over the anchors: the same weights, but a point far from every anchor (where each
    # kernel underflows to 0) still gets finite ones.
    weights = np.exp(log_kernel - log_kernel.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)                                 # (N, M) w_j(p)
    moved = np.einsum("nm,nmi->ni", weights, local)                               # (N, 3)
    out = np.array(points, dtype=np.float32, copy=True)
    out[:, :3] = moved
    if _has_normals(out):
        # d w_j / dp = w_j (g_j - sum_k w_k g_k) with g_j = -(p - a_j) / sigma^2, so
        # J = sum_j w_j A_j + sum_j w_j (T_j(p) - moved) g_j^T.
        gradients = -offsets / sigma**2                                           # (N, M, 3) g_j
        jacobian = (np.einsum("nm,mij->nij", weights, matrices)
                    + np.einsum("nm,nmi,nmj->nij", weights, local - moved[:, None], gradients))  # (N, 3, 3)
        c1, c2, c3 = jacobian[:, :, 0], jacobian[:, :, 1], jacobian[:, :, 2]     # its columns
        normals = np.asarray(points, dtype=np.float64)[:, 3:6]
        turned = (normals[:, :1] * np.cross(c2, c3) + normals[:, 1:2] * np.cross(c3, c1)
                  + normals[:, 2:3] * np.cross(c1, c2))                           # cof(J) n
        length = np.linalg.norm(turned, axis=1, keepdims=True)
        out[:, 3:6] = turned / np.where(length > 0, length, 1.0)
    return out


class PointWOLF(Transform):
    """With probability ``p``, PointWOLF's smooth non-rigid deformation, then the unit sphere again.

    Kim et al., "Point Cloud Augmentation with Weighted Local Transformations" (ICCV 2021):
    ``num_anchors`` anchors are picked by farthest point sampling from a random first point;
    each gets its own rotation (angles about x, y and z from [-max_rotation, max_rotation]
    degrees, R = Rz Ry Rx), scaling (a factor from [1, max_scale] per axis) and shift (from
    [-max_shift, max_shift] per axis), and :func:`weighted_local_transform` blends them over
    the cloud. The defaults are the authors' released ones (4 anchors, sigma 0.5, 10 degrees,
    scaling up to 3, shift 0.25), which ModelNet-C's WOLFMix also trains with (Ren, Pan and
    Liu 2022); the small rotations about every axis stay small against pcea's y-up frame.
    As in the authors' release, each anchor applies each of its three parts with probability
    1/2, and scales and shifts along a random non-empty subset of the axes, so that some
    regions stay rigid while others stretch.
    """

    def __init__(self, p: float = 1.0, *, num_anchors: int = 4, sigma: float = 0.5,
                 max_rotation: float = 10.0, max_scale: float = 3.0, max_shift: float = 0.25):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not (sigma > 0 and max_rotation >= 0 and max_scale >= 1 and max_shift >= 0):
            raise ValueError(f"need sigma > 0, max_rotation >= 0, max_scale >= 1 and max_shift >= 0, got "
                             f"sigma={sigma}, max_rotation={max_rotation}, max_scale={max_scale}, "
                             f"max_shift={max_shift}")
        self.p = p
        self.num_anchors = check_positive_int("num_anchors", num_anchors, error=ValueError)
        self.sigma, self.max_rotation = sigma, max_rotation
        self.max_scale, self.max_shift = max_scale, max_shift

    def apply(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p or len(points) == 0:
            return points
        count = min(self.num_anchors, len(points))
        xyz = torch.from_numpy(np.ascontiguousarray(points[None, :, :3]))       # (1, N, 3)
        picked = farthest_point_sample(xyz, count, start=int(rng.integers(len(points))))[0].numpy()
        anchors = points[picked, :3]                                              # (M, 3)
        applied = rng.random((count, 3)) < 0.5                                    # rotate?, scale?, shift?
        axes = (rng.integers(1, 8, size=count)[:, None] >> np.arange(3)) & 1 == 1  # (M, 3) non-empty subsets
        angles = np.radians(rng.uniform(-self.max_rotation, self.max_rotation, size=(count, 3)))
        scales = rng.uniform(1.0, self.max_scale, size=(count, 3))
        shifts = rng.uniform(-self.max_shift, self.max_shift, size=(count, 3))
        angles *= applied[:, :1]
        scales = np.where(axes & applied[:, 1:2], scales, 1.0)
        shifts *= axes & applied[:, 2:3]
        matrices = np.stack([
            rotation_about("z", az) @ rotation_about("y", ay) @ rotation_about("x", ax) @ np.diag(scale)
            for (ax, ay, az), scale in zip(angles, scales, strict=True)])            # (M, 3, 3)
        moved = weighted_local_transform(points, anchors, matrices, shifts, sigma=self.sigma)
        return normalize_unit_sphere(moved)


def augment_item(points, transform, *, seed: int, epoch: int, index: int) -> np.ndarray:
    """The augmentation of item ``index`` of a dataset in ``epoch`` of a run seeded ``seed``.

    The random source is ``np.random.default_rng((seed, epoch, index))``, so what an item
    becomes depends on nothing else: not the number of DataLoader workers, not the order
    of the items, not whether the run was interrupted and resumed. The datasets'
    ``transform=`` (:mod:`pcea.data.modelnet`) and the training subsets
    (:class:`pcea.engine.splits.AugmentedSubset`) both augment through this.

    Args:
        points: (N, C) array or CPU tensor; it is copied, never modified.
        transform: ``transform(points (N, C) float32, rng) -> points``, e.g. a :class:`Transform`.
        seed: the run's seed.
        epoch: the epoch (``set_epoch``).
        index: the item's index in its dataset.

    Returns:
        (M, C) float32, C-contiguous.
    """
    rng = np.random.default_rng((seed, epoch, int(index)))
    out = transform(np.array(np.asarray(points), dtype=np.float32, copy=True), rng)  # asarray: a tensor too
    return np.ascontiguousarray(out, dtype=np.float32)


def pct_train_transform(scale: float = 1.5) -> Compose:
    """PCT's training augmentation: anisotropic scale in [1/scale, scale] (PCT's: [2/3, 3/2]),
    shift in [-0.2, 0.2], shuffle."""
    return Compose([ScaleTranslate(1 / scale, scale), Shuffle()])


def vote_transform(low: float = 0.8, high: float = 1.25) -> AnisotropicScale:
    """The test-time voting transform: a random anisotropic scale, one draw per vote.

    Args:
        low: smallest per-axis factor.
        high: largest per-axis factor.
    """
    return AnisotropicScale(low, high)
