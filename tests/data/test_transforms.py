"""Transforms: each property (bounds, unit sphere, normals carried along), seeds, composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcea.data import transforms as T


def _cloud(n=200, seed=0, normals=True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * [0.5, 1.0, 0.3] + [0.3, -0.2, 0.1]
    if not normals:
        return xyz.astype(np.float32)
    normal = rng.normal(size=(n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return np.concatenate([xyz, normal], axis=1).astype(np.float32)


def _triangles(seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Corners (n, 3, 3) of random triangles and the cloud of their corners with their normals."""
    corners = np.random.default_rng(seed).normal(size=(50, 3, 3))
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    cloud = np.concatenate([corners.reshape(-1, 3), np.repeat(normal, 3, axis=0)], axis=1)
    return corners, cloud.astype(np.float32)


def _fit_linear(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine map after = before @ A.T + b, solved by least squares."""
    design = np.concatenate([before, np.ones((len(before), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, after, rcond=None)
    return solution[:3].T, solution[3]


RANDOM = [
    T.AnisotropicScale(), T.Translate(), T.ScaleTranslate(), T.Jitter(), T.RotateUp(), T.RotateSO3(),
    T.PointDropout(), T.Subsample(64), T.Shuffle(), T.pct_train_transform(), T.vote_transform(),
    T.PointWOLF(),
]
GEOMETRIC = [T.AnisotropicScale(), T.ScaleTranslate(), T.RotateUp(), T.RotateUp(axis="z"), T.RotateSO3(),
             T.vote_transform(), T.Compose([T.RotateSO3(), T.AnisotropicScale(0.5, 2.0)])]


@pytest.mark.parametrize("transform", RANDOM, ids=repr)
def test_same_seed_same_output_other_seed_other_output(transform):
    cloud = _cloud()
    first = transform(cloud, np.random.default_rng(5))
    np.testing.assert_array_equal(first, transform(cloud, np.random.default_rng(5)))
    assert not np.array_equal(first, transform(cloud, np.random.default_rng(6)))
    assert first.dtype == np.float32


@pytest.mark.parametrize("transform", RANDOM + [T.NormalizeUnitSphere()], ids=repr)
def test_input_is_not_modified_and_tensors_come_back_as_tensors(transform):
    cloud = _cloud()
    kept = cloud.copy()
    array = transform(cloud, 3)
    np.testing.assert_array_equal(cloud, kept)
    tensor = transform(torch.from_numpy(cloud).double(), 3)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64
    np.testing.assert_allclose(tensor.numpy(), array, atol=1e-6)
    assert transform(_cloud(normals=False), 3).shape[1] == 3  # xyz only works too


@pytest.mark.parametrize("transform", GEOMETRIC, ids=repr)
def test_normals_stay_unit_and_perpendicular_to_the_moved_triangles(transform):
    corners, cloud = _triangles()
    out = transform(cloud, np.random.default_rng(1))
    moved = out[:, :3].reshape(-1, 3, 3)
    normals = out[0::3, 3:6]
    np.testing.assert_allclose(np.linalg.norm(out[:, 3:6], axis=1), 1.0, atol=1e-5)
    edges = np.stack([moved[:, 1] - moved[:, 0], moved[:, 2] - moved[:, 0]], axis=1)
    edges /= np.linalg.norm(edges, axis=2, keepdims=True)
    np.testing.assert_allclose(np.einsum("tec,tc->te", edges, normals), 0.0, atol=1e-4)
    # and they keep their side: same orientation as the moved triangle's winding
    winding = np.cross(edges[:, 0], edges[:, 1])
    assert (np.einsum("tc,tc->t", winding, normals) > 0).all()


@pytest.mark.parametrize("transform", [T.RotateUp(), T.RotateUp(axis="z"), T.RotateSO3()], ids=repr)
def test_rotations_rotate_points_and_normals_together(transform):
    cloud = _cloud()
    out = transform(cloud, np.random.default_rng(2))
    rotation, shift = _fit_linear(cloud[:, :3], out[:, :3])
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(shift, 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, 3:6], cloud[:, 3:6] @ rotation.T, atol=1e-5)  # n' = R n
    if getattr(transform, "axis", None):
        axis = "xyz".index(transform.axis)
        np.testing.assert_allclose(out[:, axis], cloud[:, axis], atol=1e-6)  # the up coordinate stays


def test_rotation_about_y_is_right_handed():
    np.testing.assert_allclose(T.rotation_about("y", np.pi / 2) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(T.rotation_about("z", np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_so3_rotations_are_spread_over_the_sphere():
    rng = np.random.default_rng(0)
    axis = np.array([[0, 0, 1.0, 0, 0, 1.0]], dtype=np.float32)  # a point and a normal on +z
    tips = np.concatenate([T.RotateSO3()(axis, rng) for _ in range(2000)])
    np.testing.assert_allclose(tips[:, :3], tips[:, 3:], atol=1e-6)
    tips = tips[:, :3]
    np.testing.assert_allclose(tips.mean(axis=0), 0.0, atol=0.06)  # no preferred direction
    np.testing.assert_allclose((tips**2).mean(axis=0), 1 / 3, atol=0.04)


@pytest.mark.parametrize(("low", "high"), [(2 / 3, 3 / 2), (0.9, 1.1)])
def test_anisotropic_scale_bounds_and_inverse_transpose_normals(low, high):
    cloud = _cloud()
    for seed in range(20):
        out = T.AnisotropicScale(low, high)(cloud, seed)
        factors = out[:, :3] / cloud[:, :3]
        np.testing.assert_allclose(factors, factors[:1].repeat(len(cloud), axis=0), rtol=1e-5)
        assert ((factors[0] >= low - 1e-6) & (factors[0] <= high + 1e-6)).all()
        expected = cloud[:, 3:6] / factors[0]
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(out[:, 3:6], expected, atol=1e-5)


def test_scale_translate_is_pct_recipe_within_bounds():
    cloud = _cloud()
    for seed in range(20):
        out = T.ScaleTranslate()(cloud, seed)
        linear, shift = _fit_linear(cloud[:, :3], out[:, :3])
        scale = np.diag(linear)
        np.testing.assert_allclose(linear, np.diag(scale), atol=1e-5)
        assert (scale >= 2 / 3 - 1e-5).all() and (scale <= 1.5 + 1e-5).all()
        assert (np.abs(shift) <= 0.2 + 1e-5).all()


def test_translate_bounds_and_normals_unchanged():
    cloud = _cloud()
    for seed in range(20):
        out = T.Translate(0.1)(cloud, seed)
        shift = out[:, :3] - cloud[:, :3]
        np.testing.assert_allclose(shift, shift[:1].repeat(len(cloud), axis=0), atol=1e-6)
        assert (np.abs(shift[0]) <= 0.1 + 1e-6).all()
        np.testing.assert_array_equal(out[:, 3:], cloud[:, 3:])


def test_jitter_is_clipped_noise_on_coordinates_only():
    cloud = _cloud(n=5000)
    out = T.Jitter(sigma=0.02, clip=0.03)(cloud, 0)
    noise = out[:, :3] - cloud[:, :3]
    assert np.abs(noise).max() <= 0.03 + 1e-6
    assert 0.015 < noise.std() < 0.02  # Gaussian of sigma 0.02, a little thinned by the clip
    np.testing.assert_array_equal(out[:, 3:], cloud[:, 3:])


def test_normalize_unit_sphere_transform():
    out = T.NormalizeUnitSphere()(_cloud() * 7, None)
    np.testing.assert_allclose(out[:, :3].mean(axis=0), 0.0, atol=1e-5)
    assert np.linalg.norm(out[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-6)


def test_point_dropout_replaces_dropped_points_by_the_first():
    cloud = _cloud()
    out = T.PointDropout(max_ratio=0.875)(cloud, 4)
    assert out.shape == cloud.shape
    kept = (out == cloud).all(axis=1)
    assert ((out[~kept] == cloud[0]).all(axis=1)).all()
    assert 0 < (~kept).sum() < 0.875 * len(cloud)
    np.testing.assert_array_equal(T.PointDropout(max_ratio=0.0)(cloud, 4), cloud)


def test_subsample_and_shuffle_keep_rows_whole():
    cloud = _cloud()
    rows = {tuple(r) for r in cloud}
    fewer = T.Subsample(64)(cloud, 0)
    picked = {tuple(r) for r in fewer}
    assert fewer.shape == (64, 6) and len(picked) == 64 and picked <= rows
    more = T.Subsample(500)(cloud, 0)  # a smaller cloud is padded by repeats
    assert more.shape == (500, 6) and {tuple(r) for r in more} <= rows
    shuffled = T.Shuffle()(cloud, 0)
    assert not np.array_equal(shuffled, cloud)
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), np.sort(cloud, axis=0))
    assert {tuple(r) for r in shuffled} == rows  # each normal stays with its point


def test_compose_applies_in_order_from_one_generator():
    cloud = _cloud()
    scale, shift = T.AnisotropicScale(), T.Translate()
    composed = T.Compose([scale, shift])(cloud, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    by_hand = shift(scale(cloud, rng), rng)
    np.testing.assert_array_equal(composed, by_hand)
    swapped = T.Compose([shift, scale])(cloud, np.random.default_rng(9))
    assert not np.allclose(swapped, composed)


def test_pct_train_transform_shuffles_a_scaled_and_shifted_cloud():
    cloud = _cloud(normals=False)
    out = T.pct_train_transform()(cloud, 0)
    unshuffled = T.ScaleTranslate()(cloud, 0)
    assert not np.array_equal(out, unshuffled)
    np.testing.assert_allclose(np.sort(out, axis=0), np.sort(unshuffled, axis=0), atol=1e-6)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: T.AnisotropicScale(0, 1), "0 < low <= high"),
    (lambda: T.Jitter(sigma=-1), "sigma and clip"),
    (lambda: T.RotateUp(axis="w"), "axis must be"),
    (lambda: T.PointDropout(1.0), "max_ratio"),
    (lambda: T.Subsample(0), "num_points"),
    (lambda: T.PointWOLF(1.5), "p must be in"),
    (lambda: T.PointWOLF(sigma=0), "need sigma > 0"),
    (lambda: T.PointWOLF(max_scale=0.5), "max_scale >= 1"),
    (lambda: T.PointWOLF(num_anchors=0), "num_anchors"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_cloud_shape():
    with pytest.raises(ValueError, match=r"expected an \(N, C >= 3\) cloud, got shape \(10, 2\)"):
        T.Shuffle()(np.zeros((10, 2)), 0)


# -- PointWOLF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchors", [1, 4])
def test_pointwolf_without_rotation_scaling_or_shift_is_only_the_normalisation(anchors):
    cloud = _cloud()
    still = T.PointWOLF(num_anchors=anchors, max_rotation=0, max_scale=1, max_shift=0)
    out = still(cloud, 0)
    np.testing.assert_allclose(out, T.normalize_unit_sphere(cloud), atol=1e-5)
    assert not np.allclose(out[:, :3], cloud[:, :3], atol=1e-2)  # the normalisation did change the cloud


def test_pointwolf_keeps_the_point_count_deforms_non_rigidly_and_lands_in_the_unit_sphere():
    cloud = _cloud()
    outs = [T.PointWOLF()(cloud, seed) for seed in range(10)]
    assert all(out.shape == cloud.shape for out in outs)
    for out in outs:
        np.testing.assert_allclose(out[:, :3].mean(axis=0), 0.0, atol=1e-5)
        assert np.linalg.norm(out[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out[:, 3:6], axis=1), 1.0, atol=1e-5)
    # Not one affine map of the cloud (as scaling or rotating is): the best affine fit leaves residuals.
    residuals = []
    for out in outs:
        linear, shift = _fit_linear(cloud[:, :3], out[:, :3])
        residuals.append(np.abs(cloud[:, :3] @ linear.T + shift - out[:, :3]).max())
    assert max(residuals) > 0.05


def test_pointwolf_deforms_a_fraction_p_of_the_clouds():
    cloud = T.normalize_unit_sphere(_cloud())
    wolf = T.PointWOLF(0.5)
    untouched = [np.array_equal(wolf(cloud, seed), cloud) for seed in range(40)]
    assert 0.25 < np.mean(untouched) < 0.75
    assert all(np.array_equal(T.PointWOLF(0.0)(cloud, seed), cloud) for seed in range(5))


def test_points_near_an_anchor_follow_its_transformation_and_far_ones_do_not():
    anchors = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    turn = T.rotation_about("x", np.radians(30))
    matrices = np.stack([turn, np.eye(3)])
    shifts = np.array([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0]])
    xs = np.linspace(-1.0, 1.0, 9)
    line = np.stack([xs, np.full(9, 0.2), np.zeros(9)], axis=1).astype(np.float32)
    out = T.weighted_local_transform(line, anchors, matrices, shifts, sigma=0.5)
    own = (line - anchors[0]) @ turn.T + anchors[0] + shifts[0]                 # anchor 0's transformation
    np.testing.assert_allclose(out[0], own[0], atol=1e-3)                        # at anchor 0: its transform
    np.testing.assert_allclose(out[-1], line[-1], atol=1e-3)                     # at anchor 1: unmoved
    follow = np.linalg.norm(out - line, axis=1)
    assert (np.diff(follow) < 0).all()                                           # less and less towards 1


def test_pointwolf_normals_stay_perpendicular_to_the_deformed_surface():
    rng = np.random.default_rng(3)
    cloud = _cloud(100, seed=3)
    anchors = rng.uniform(-1, 1, size=(4, 3))
    matrices = np.stack([T.rotation_about("z", 0.3 * rng.standard_normal()) @ np.diag(rng.uniform(1, 3, 3))
                         for _ in range(4)])
    shifts = rng.uniform(-0.25, 0.25, size=(4, 3))
    out = T.weighted_local_transform(cloud, anchors, matrices, shifts, sigma=0.5)
    normals = out[:, 3:6].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # Two tangents per point (perpendicular to its normal), carried through the map by central differences.
    tangent = np.cross(cloud[:, 3:6], rng.standard_normal((100, 3)))
    for direction in (tangent, np.cross(cloud[:, 3:6], tangent)):
        step = 1e-3 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        ahead, behind = (T.weighted_local_transform(cloud[:, :3] + sign * step, anchors, matrices, shifts,
                                                    sigma=0.5).astype(np.float64) for sign in (1, -1))
        moved = (ahead - behind) / np.linalg.norm(ahead - behind, axis=1, keepdims=True)
        np.testing.assert_allclose(np.einsum("nc,nc->n", moved, normals), 0.0, atol=2e-3)
