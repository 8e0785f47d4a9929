"""pcea.data.corruptions: each corruption does what it says, severities are monotone, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from pcea.data import corruptions
from pcea.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_TABLE,
    Noise,
    Occlude,
    corrupt,
    parse_corruptions,
    parse_severities,
    visible_from,
)
from pcea.geometry import normalize_unit_sphere


def _cloud(n: int = 256, seed: int = 0) -> np.ndarray:
    """A normalised, lumpy cloud with no symmetry that a corruption could hide behind."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, 3)) * np.array([1.0, 0.6, 0.3])
    return normalize_unit_sphere(points.astype(np.float32))


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :3] - points[None, :, :3], axis=-1)


def _rows_of(subset: np.ndarray, points: np.ndarray) -> bool:
    """Every row of ``subset`` is a row of ``points``."""
    rows = {tuple(row) for row in points.tolist()}
    return all(tuple(row) in rows for row in subset.tolist())


@pytest.mark.parametrize("severity", SEVERITIES)
def test_yaw_keeps_the_up_coordinate_and_distances_and_turns_the_rest(severity):
    points = _cloud()
    turned = corrupt(points, "yaw", severity, rng=severity)
    np.testing.assert_allclose(turned[:, 1], points[:, 1], atol=1e-6)          # y is up
    np.testing.assert_allclose(_pairwise(turned), _pairwise(points), atol=1e-5)
    assert np.abs(turned[:, [0, 2]] - points[:, [0, 2]]).max() > 1e-3


def test_yaw_at_severity_5_reaches_every_angle_and_1_stays_within_36_degrees():
    points = np.array([[1.0, 0.0, 0.0]] * 3, dtype=np.float32)
    turned = [corrupt(points, "yaw", s, rng=i)[0] for s in (1, 5) for i in range(200)]
    angles = [np.degrees(np.arctan2(-z, x)) for x, _, z in turned]
    mild, any_angle = np.abs(angles[:200]), np.abs(angles[200:])
    assert mild.max() <= 36.0 + 1e-4
    assert any_angle.max() > 170 and any_angle.min() < 10


@pytest.mark.parametrize("severity", SEVERITIES)
def test_rotate_keeps_pairwise_distances(severity):
    points = _cloud()
    turned = corrupt(points, "rotate", severity, rng=1)
    np.testing.assert_allclose(_pairwise(turned), _pairwise(points), atol=1e-5)
    assert not np.allclose(turned, points)


@pytest.mark.parametrize("name", ["drop_global", "drop_local", "partial", "density"])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_removing_corruptions_keep_only_points_of_the_input(name, severity):
    points = _cloud()
    kept = corrupt(points, name, severity, rng=2)
    assert 3 <= len(kept) < len(points)
    assert _rows_of(kept, points)


@pytest.mark.parametrize("name", ["add_global", "add_local"])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_adding_corruptions_keep_every_input_point(name, severity):
    points = _cloud()
    grown = corrupt(points, name, severity, rng=3)
    assert len(grown) > len(points)
    assert _rows_of(points, grown)
    extra = grown[len(points):, :3] - points[:, :3].mean(axis=0)
    assert np.linalg.norm(extra, axis=1).max() <= 1.0 + 1e-4    # inside the bounding sphere


def test_drop_local_removes_holes_not_scattered_points():
    points = _cloud(512)
    kept = corrupt(points, "drop_local", 3, rng=4)
    kept_rows = {tuple(r) for r in kept.tolist()}
    removed = np.array([row for row in points.tolist() if tuple(row) not in kept_rows])
    # Each removed point's nearest removed neighbour is closer than its nearest kept one, on average.
    to_removed = np.sort(_pairwise(np.vstack([removed]))[:, :], axis=1)[:, 1]
    to_kept = np.linalg.norm(removed[:, None] - kept[None], axis=-1).min(axis=1)
    assert np.median(to_removed) < np.median(to_kept) * 1.5
    assert len(removed) == round(512 * 300 / 1024)


def _cube_faces(per_side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Points on the six faces of the cube [-1, 1]^3 and, for each, the axis and sign of its face."""
    grid = np.linspace(-0.9, 0.9, per_side)
    u, v = (a.ravel() for a in np.meshgrid(grid, grid))
    points, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            face = np.zeros((len(u), 3))
            face[:, axis] = sign
            face[:, [a for a in range(3) if a != axis]] = np.stack([u, v], axis=1)
            points.append(face)
            faces += [(axis, sign)] * len(u)
    return np.concatenate(points).astype(np.float32), np.array(faces)


def test_partial_keeps_the_side_facing_the_viewpoint_of_a_cube():
    points, faces = _cube_faces()
    seen = visible_from(points, np.array([0.0, 0.0, 20.0]))
    top = (faces[:, 0] == 2) & (faces[:, 1] == 1)
    bottom = (faces[:, 0] == 2) & (faces[:, 1] == -1)
    assert seen[top].all()                       # the face towards the camera
    assert not seen[bottom].any()                # the face away from it
    sides = ~top & ~bottom
    assert seen[sides].mean() < 0.2              # seen edge-on from far away: little of it


def test_partial_through_corrupt_keeps_one_side():
    points, _ = _cube_faces()
    kept = corrupt(points, "partial", 1, rng=5)
    assert len(kept) < 0.6 * len(points)
    assert _rows_of(kept, points)


def _change(name: str, severity: int, seed: int) -> float:
    points = _cloud(256, seed)
    out = corrupt(points, name, severity, rng=seed)
    if name in ("yaw", "rotate", "jitter", "scale"):
        return float(np.abs(out - points).mean())
    return abs(len(out) - len(points))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severities_are_monotone(name):
    means = [np.mean([_change(name, s, seed) for seed in range(12)]) for s in SEVERITIES]
    assert all(a < b for a, b in zip(means, means[1:], strict=False)), means


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_the_same_seed_gives_the_same_cloud(name):
    points = _cloud()
    first = corrupt(points, name, 3, rng=7)
    np.testing.assert_array_equal(first, corrupt(points, name, 3, rng=np.random.default_rng(7)))
    assert not np.array_equal(first, corrupt(points, name, 3, rng=8))
    np.testing.assert_array_equal(points, _cloud())              # the input is untouched


def test_normals_turn_with_the_points_and_stay_unit():
    points = _cloud()
    normals = np.random.default_rng(0).standard_normal((len(points), 3))
    cloud = np.hstack([points, normals / np.linalg.norm(normals, axis=1, keepdims=True)]).astype(np.float32)
    for name in ("yaw", "rotate", "scale"):
        out = corrupt(cloud, name, 5, rng=9)
        np.testing.assert_allclose(np.linalg.norm(out[:, 3:6], axis=1), 1.0, atol=1e-5)
    turned = corrupt(cloud, "yaw", 5, rng=9)
    np.testing.assert_allclose((turned[:, :3] * turned[:, 3:6]).sum(1), (cloud[:, :3] * cloud[:, 3:6]).sum(1),
                               atol=1e-5)


def test_every_corruption_has_its_five_parameters_documented():
    assert set(SEVERITY_TABLE) == set(CORRUPTIONS)
    assert all(len(values) == 5 for _, values in SEVERITY_TABLE.values())


def test_bad_names_and_severities_get_one_clear_message():
    with pytest.raises(ValueError, match="unknown corruption 'fog'; expected 'all' or"):
        parse_corruptions("yaw,fog")
    with pytest.raises(ValueError, match="no corruption named"):
        parse_corruptions(" , ")
    with pytest.raises(ValueError, match="severity '6': expected integers from 1 to 5"):
        parse_severities("1,6")
    with pytest.raises(ValueError, match="severity '': expected"):
        parse_severities("")
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(_cloud(), "fog", 1)
    with pytest.raises(ValueError, match="severity=0: expected an integer from 1 to 5"):
        corrupt(_cloud(), "yaw", 0)
    assert parse_corruptions("all") == CORRUPTIONS
    assert parse_corruptions("partial,yaw") == ("yaw", "partial")    # suite order
    assert parse_severities("5,1,5") == (1, 5)


def test_occlude_resamples_to_the_same_size_and_renormalises():
    points = _cloud(256)
    assert np.array_equal(Occlude(p=0.0)(points, 0), points)
    out = Occlude(p=1.0)(points, 0)
    assert out.shape == points.shape
    np.testing.assert_allclose(np.linalg.norm(out - out.mean(axis=0), axis=1).max(), 1.0, atol=1e-5)
    assert len(np.unique(out, axis=0)) < len(points)            # some points were lost and repeated


def test_occlude_draws_as_it_did_before_noise_shared_its_code():
    """A run resumed across the change (or repeated from its seed) sees the same occluded clouds."""
    points = _cloud(256)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        if rng.random() >= 0.5:
            expected = points
        else:                                     # sessions 8-16: partial below 0.5, drop_local above
            name = "partial" if rng.random() < 0.5 else "drop_local"
            kept = corrupt(points, name, int(rng.integers(1, 6)), rng)
            expected = normalize_unit_sphere(kept[rng.choice(len(kept), 256, replace=len(kept) < 256)])
        np.testing.assert_array_equal(Occlude(p=0.5)(points, seed), expected)


def _sphere(n: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` random points on the unit sphere and centred: half of them, and their antipodes."""
    points = np.random.default_rng(seed).standard_normal((n // 2, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return np.concatenate([points, -points]).astype(np.float32)  # mean 0, every point at distance 1


@pytest.mark.parametrize(("augmentation", "kinds"), [
    (Occlude, {"partial", "drop_local"}),
    (Noise, {"add_global", "add_local", "jitter"}),
])
def test_training_augmentations_draw_each_of_their_corruptions_at_every_severity(monkeypatch, augmentation,
                                                                                  kinds):
    drawn = []
    real = corruptions.corrupt

    def recording(points, name, severity, rng):
        drawn.append((name, severity))
        return real(points, name, severity, rng)

    monkeypatch.setattr(corruptions, "corrupt", recording)
    points = _sphere(128)
    for seed in range(60):
        augmentation(p=1.0)(points, seed)
    assert {name for name, _ in drawn} == kinds
    assert {severity for _, severity in drawn} == set(SEVERITIES)
    drawn.clear()
    for seed in range(60):
        augmentation(p=1.0, max_severity=2)(points, seed)
    assert {severity for _, severity in drawn} == {1, 2}


def test_noise_adds_stray_points_or_noise_and_keeps_the_size(monkeypatch):
    drawn = []
    real = corruptions.corrupt
    monkeypatch.setattr(corruptions, "corrupt", lambda *args: drawn.append(args[1]) or real(*args))
    points = _sphere(512)
    np.testing.assert_allclose(np.linalg.norm(normalize_unit_sphere(points), axis=1), 1.0, atol=1e-5)
    assert np.array_equal(Noise(p=0.0)(points, 0), points)
    outs = [Noise(p=1.0)(points, seed) for seed in range(30)]
    assert len(drawn) == len(outs) and set(drawn) == {"add_global", "add_local", "jitter"}
    for kind, out in zip(drawn, outs, strict=True):
        assert out.shape == points.shape
        radius = np.linalg.norm(out - out.mean(axis=0), axis=1)
        np.testing.assert_allclose(radius.max(), 1.0, atol=1e-5)
        if kind == "jitter":                                       # every point moved off the sphere
            assert np.mean(np.abs(radius - 1) > 1e-3) > 0.9, kind
        else:                                                      # points added inside the sphere
            assert (radius < 0.9).any(), kind
    np.testing.assert_array_equal(Noise(p=1.0)(points, 7), outs[7])                   # seeded
    affected = [not np.array_equal(Noise(p=0.3)(points, seed), points) for seed in range(200)]
    assert 0.2 < np.mean(affected) < 0.4
    with pytest.raises(ValueError, match="p must be in"):
        Noise(p=1.5)
    with pytest.raises(ValueError, match="max_severity must be 1 to 5"):
        Noise(max_severity=6)
