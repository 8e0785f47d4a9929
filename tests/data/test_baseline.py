"""The D2 baseline: the histograms, the classifier on separable data, the h5 reader and the CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pcea.cli import main
from pcea.data import synth
from pcea.data.baseline import d2_baseline, d2_histograms, load_h5_split, run_baseline
from pcea.data.transforms import RotateSO3
from pcea.errors import PceaFileError


def test_two_points_one_apart_fill_the_middle_bin():
    cloud = np.array([[[0.0, 0, 0], [0.0, 1.0, 0]]])
    hist = d2_histograms(cloud, pairs=100, bins=64, max_distance=2.0)
    assert hist.shape == (1, 64)
    assert hist[0, 32] == 1.0 and hist.sum() == 1.0


def test_histograms_are_normalised_and_rotation_invariant():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(4, 300, 3))
    clouds /= np.linalg.norm(clouds, axis=2).max(axis=1)[:, None, None]
    rotated = np.stack([RotateSO3()(c, rng) for c in clouds])
    hist, hist_rotated = d2_histograms(clouds, seed=3), d2_histograms(rotated, seed=3)
    np.testing.assert_allclose(hist.sum(axis=1), 1.0)
    assert np.abs(hist - hist_rotated).sum(axis=1).max() < 0.01  # only bin-edge rounding may differ
    assert not np.allclose(hist[0], hist[1])


def _blobs_and_rods(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: points in a ball; class 1: points along a segment; both in the unit sphere."""
    rng = np.random.default_rng(seed)
    balls = rng.normal(size=(count, 128, 3))
    balls /= np.linalg.norm(balls, axis=2).max(axis=1)[:, None, None]
    rods = np.zeros((count, 128, 3))
    rods[:, :, 0] = rng.uniform(-1, 1, size=(count, 128))
    return np.concatenate([balls, rods]), np.repeat([0, 1], count)


def test_separable_shapes_are_separated():
    train_points, train_labels = _blobs_and_rods(10, 0)
    test_points, test_labels = _blobs_and_rods(5, 1)
    details = {}
    accuracy = d2_baseline(train_points, train_labels, test_points, test_labels, seed=0, trees=20,
                           details=details)
    assert accuracy >= 0.9
    assert details["classifier"] and 0 <= details["cv_accuracy"] <= 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("b") / "shapes", classes=3, per_class=6, points=256)


def test_runs_on_a_generated_dataset(tiny, capsys, monkeypatch):
    points, labels = load_h5_split(tiny, "train")
    assert points.shape == (15, 256, 3) and labels.dtype == np.int64
    result = run_baseline(tiny / "h5", seed=0, trees=20)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert (result["train"], result["test"], result["classes"]) == (15, 3, 3)
    monkeypatch.setattr("pcea.data.baseline.run_baseline", lambda path, seed: {**result, "classifier": "x"})
    assert main(["baseline", "--data", str(tiny)]) == 0
    assert "3 classes, 15 train / 3 test): test accuracy" in capsys.readouterr().out


def test_a_folder_without_the_layout(tmp_path, capsys):
    with pytest.raises(PceaFileError, match="no modelnet40_ply_hdf5_2048 layout here"):
        load_h5_split(tmp_path, "train")
    assert main(["baseline", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pcea: error: {tmp_path}: no modelnet40") and err.count("\n") == 1


def test_a_broken_h5_file_is_named(tmp_path):
    (tmp_path / "shape_names.txt").write_text("a\nb\n")
    (tmp_path / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n")
    (tmp_path / "ply_data_train0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(PceaFileError, match="ply_data_train0.h5: cannot read as HDF5"):
        load_h5_split(tmp_path, "train")
    with h5py.File(tmp_path / "ply_data_train0.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((2, 4, 3), np.float32))  # no 'label'
    with pytest.raises(PceaFileError, match="ply_data_train0.h5: has no 'label' dataset"):
        load_h5_split(tmp_path, "train")


def test_the_h5_dataset_checks_apply(tmp_path):
    # The baseline reads through ModelNet40H5, so its checks hold here too: labels in range, and
    # one number of points per shape across the split's files.
    (tmp_path / "shape_names.txt").write_text("a\nb\n")
    (tmp_path / "train_files.txt").write_text("ply_data_train0.h5\nply_data_train1.h5\n")
    for index, (points, label) in enumerate([(4, 1), (4, 2)]):
        with h5py.File(tmp_path / f"ply_data_train{index}.h5", "w") as f:
            f.create_dataset("data", data=np.ones((2, points, 3), np.float32))
            f.create_dataset("label", data=np.full((2, 1), label, np.uint8))
    with pytest.raises(PceaFileError, match="ply_data_train1.h5: label 2 outside the 2 classes"):
        load_h5_split(tmp_path, "train")
    with h5py.File(tmp_path / "ply_data_train1.h5", "w") as f:
        f.create_dataset("data", data=np.ones((2, 6, 3), np.float32))
        f.create_dataset("label", data=np.zeros((2, 1), np.uint8))
    with pytest.raises(PceaFileError, match="train files store 4 or 6 points per shape"):
        load_h5_split(tmp_path, "train")
