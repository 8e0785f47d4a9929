"""pcea-shapes: the three layouts, determinism, atomic writes, the shapes themselves."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import trimesh

from pcea.cli import main
from pcea.data import synth
from pcea.data.baseline import load_h5_split
from pcea.errors import PceaError, PceaFileError

CLASSES, PER_CLASS, POINTS = 3, 6, 256
TRAIN, TEST = 5, 1  # 20 % of 6, rounded, is one test shape per class
NAMES = ["chair", "stool", "table"]  # the first three classes, in alphabetical label order


def _generate(path, seed=0, **kwargs):
    return synth.generate(path, classes=CLASSES, per_class=PER_CLASS, seed=seed, points=POINTS, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("a") / "pcea-shapes")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_three_layouts_have_the_exact_file_names(dataset):
    expected = {"pcea-shapes.json", "h5/ply_data_train0.h5", "h5/ply_data_test0.h5", "h5/shape_names.txt",
                "h5/train_files.txt", "h5/test_files.txt", "resampled/modelnet40_shape_names.txt",
                "resampled/modelnet40_train.txt", "resampled/modelnet40_test.txt"}
    for name in NAMES:
        for number in range(1, PER_CLASS + 1):
            split = "train" if number <= TRAIN else "test"
            expected.add(f"mesh/{name}/{split}/{name}_{number:04d}.off")
            expected.add(f"resampled/{name}/{name}_{number:04d}.txt")
    assert set(_files(dataset)) == expected


def test_class_name_files_and_split_lists(dataset):
    assert (dataset / "h5" / "shape_names.txt").read_text().splitlines() == NAMES
    assert (dataset / "resampled" / "modelnet40_shape_names.txt").read_text().splitlines() == NAMES
    assert set(NAMES) == set(synth.CLASS_NAMES[:CLASSES])
    for split in ("train", "test"):
        listing = (dataset / "h5" / f"{split}_files.txt").read_text()
        assert listing == f"data/modelnet40_ply_hdf5_2048/ply_data_{split}0.h5\n"
    test_list = (dataset / "resampled" / "modelnet40_test.txt").read_text().splitlines()
    train_list = (dataset / "resampled" / "modelnet40_train.txt").read_text().splitlines()
    assert test_list == [f"{name}_{PER_CLASS:04d}" for name in NAMES]
    assert len(train_list) == CLASSES * TRAIN and not set(train_list) & set(test_list)
    params = json.loads((dataset / "pcea-shapes.json").read_text())
    assert params["classes"] == CLASSES and params["per_class"] == PER_CLASS and params["points"] == POINTS


@pytest.mark.parametrize(("split", "per_class"), [("train", TRAIN), ("test", TEST)])
def test_h5_arrays(dataset, split, per_class):
    with h5py.File(dataset / "h5" / f"ply_data_{split}0.h5", "r") as f:
        data, label, normal = f["data"][:], f["label"][:], f["normal"][:]
        dtypes = f["data"].dtype, f["normal"].dtype, f["label"].dtype
    assert dtypes == (np.float32, np.float32, np.uint8)
    assert data.shape == normal.shape == (CLASSES * per_class, POINTS, 3)
    assert label.shape == (CLASSES * per_class, 1)
    assert np.bincount(label.ravel(), minlength=CLASSES).tolist() == [per_class] * CLASSES
    np.testing.assert_allclose(np.linalg.norm(normal, axis=2), 1.0, atol=1e-4)
    radius = np.linalg.norm(data, axis=2).max(axis=1)
    np.testing.assert_allclose(radius, 1.0, atol=1e-5)
    np.testing.assert_allclose(data.mean(axis=1), 0.0, atol=1e-5)
    if split == "train":  # shuffled, not in class order
        assert not np.all(np.diff(label.ravel().astype(int)) >= 0)


def test_a_large_split_is_spread_over_several_h5_files(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "H5_SHAPES_PER_FILE", 4)
    root = synth.generate(tmp_path / "d", classes=2, per_class=5, points=8)
    listing = (root / "h5" / "train_files.txt").read_text().splitlines()
    assert listing == [f"data/modelnet40_ply_hdf5_2048/ply_data_train{i}.h5" for i in range(2)]
    points, labels = load_h5_split(root, "train")
    assert points.shape == (8, 8, 3) and np.bincount(labels).tolist() == [4, 4]


def test_resampled_text_holds_the_h5_clouds(dataset):
    with h5py.File(dataset / "h5" / "ply_data_test0.h5", "r") as f:
        clouds = np.concatenate([f["data"][:], f["normal"][:]], axis=2)
        labels = f["label"][:, 0]
    for name_index, name in enumerate(NAMES):
        text = np.loadtxt(dataset / "resampled" / name / f"{name}_{PER_CLASS:04d}.txt", delimiter=",")
        assert text.shape == (POINTS, 6)
        (match,) = np.flatnonzero(labels == name_index)
        np.testing.assert_allclose(text, clouds[match], atol=1e-6)


def test_off_files_parse_as_meshes_with_outward_normals(dataset):
    for name in NAMES:
        path = dataset / "mesh" / name / "test" / f"{name}_{PER_CLASS:04d}.off"
        assert path.read_text().startswith("OFF\n")
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.faces) > 10 and mesh.area > 0
        assert mesh.volume > 0  # every part's faces wound outwards


@pytest.mark.slow
def test_same_seed_same_files_other_seed_other_files(dataset, tmp_path):
    again = _files(_generate(tmp_path / "again", seed=0, workers=2))  # also: processes change nothing
    assert again == _files(dataset)
    other = _files(_generate(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    assert other["h5/ply_data_train0.h5"] != again["h5/ply_data_train0.h5"]
    assert other["mesh/table/train/table_0001.off"] != again["mesh/table/train/table_0001.off"]


@pytest.mark.parametrize("name", synth.CLASS_NAMES)
def test_every_class_builds_an_outward_mesh(name):
    for index in range(3):
        mesh = synth.make_shape(name, np.random.default_rng([7, index]))
        assert np.isfinite(mesh.vertices).all() and mesh.area > 0
        assert mesh.volume > 0


def test_shapes_are_y_up():
    # a table's top dominates its area, and faces the up axis whatever the turn about it
    for index in range(5):
        mesh = synth.make_shape("table", np.random.default_rng([3, index]))
        facing = mesh.area_faces[:, None] * (np.abs(mesh.face_normals) > 0.98)
        area_x, area_y, area_z = facing.sum(axis=0)
        assert area_y > 2 * max(area_x, area_z)


def test_a_shape_does_not_depend_on_the_number_of_classes(dataset, tmp_path):
    more = synth.generate(tmp_path / "more", classes=4, per_class=PER_CLASS, points=POINTS)
    name = "table/train/table_0002.off"
    assert (more / "mesh" / name).read_bytes() == (dataset / "mesh" / name).read_bytes()


def test_shapes_of_a_class_vary():
    clouds = [synth.make_shape("chair", np.random.default_rng([0, i])).extents for i in range(6)]
    assert np.ptp(np.array(clouds), axis=0).min() > 0.05


def test_unknown_class():
    with pytest.raises(ValueError, match="unknown shape class 'sofa2'"):
        synth.make_shape("sofa2", np.random.default_rng(0))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_h5", fail)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PceaFileError, match="file: cannot create the dataset here"):
        _generate(tmp_path / "file" / "data")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(PceaError, match="not a pcea-shapes dataset"):
        _generate(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_ensure_synthetic_generates_once_and_regenerates_on_a_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PCEA_DATA", str(tmp_path))
    kwargs = {"classes": 2, "per_class": 2, "points": 32}
    root = synth.ensure_synthetic(**kwargs)
    assert root == tmp_path / "pcea-shapes" and (root / "h5" / "ply_data_train0.h5").is_file()
    stamp = (root / "pcea-shapes.json").stat().st_mtime_ns
    assert synth.ensure_synthetic(**kwargs) == root
    assert (root / "pcea-shapes.json").stat().st_mtime_ns == stamp  # found, not regenerated
    synth.ensure_synthetic(**{**kwargs, "points": 48})
    with h5py.File(root / "h5" / "ply_data_train0.h5", "r") as f:
        assert f["data"].shape == (2, 48, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pcea-shapes"]  # no temp dirs left


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"classes": 1}, "--classes must be between 2 and 12"),
    ({"classes": 13}, "--classes must be between 2 and 12"),
    ({"per_class": 1}, "--per-class must be at least 2"),
    ({"points": 0}, "points=0: expected a positive integer"),
])
def test_bad_parameters(tmp_path, kwargs, message):
    with pytest.raises(PceaError, match=message):
        synth.generate(tmp_path / "x", **{"classes": 2, "per_class": 2, "points": 16, **kwargs})
    assert not (tmp_path / "x").exists()


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--points", "16"]) == 0
    assert "2 classes x 2 shapes" in capsys.readouterr().out
    assert (out / "resampled" / "chair" / "chair_0002.txt").is_file()
    assert main(["synth", "--out", str(out), "--classes", "99"]) == 1
    assert "pcea: error: --classes must be between 2 and 12" in capsys.readouterr().err


def test_pcea_synth_does_not_silently_regenerate_an_existing_dataset(tmp_path, capsys):
    """Issue 22 item 8: `pcea synth` over a dataset it made rewrote it without a word."""
    from pcea.cli import main

    out = tmp_path / "shapes"
    argv = ["synth", "--out", str(out), "--classes", "2", "--per-class", "3", "--points", "16"]
    assert main(argv) == 0
    stamp = (out / "h5" / "ply_data_train0.h5").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0  # the same settings: nothing to write
    assert "already holds this dataset" in capsys.readouterr().out
    assert main([*argv[:-1], "32"]) == 1  # other settings: refused without --force
    assert capsys.readouterr().err == (f"pcea: error: {out}: holds pcea-shapes generated with other settings "
                                       "(2 classes x 3 shapes, 16 points, seed 0); give another --out, or "
                                       "--force to replace it\n")
    assert (out / "h5" / "ply_data_train0.h5").stat().st_mtime_ns == stamp
    assert main([*argv[:-1], "32", "--force"]) == 0
    assert "32 points each" in capsys.readouterr().out
