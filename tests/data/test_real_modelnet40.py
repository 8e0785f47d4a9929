"""The Princeton-folder reader, `pcea prepare` and the frame handling on real ModelNet40 files.

These use the real npy release in ../shared/data (the project's workplace copy); a user's
clone has none, so every test here skips with the reason when it is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pcea.data import ModelNet40H5, ModelNet40Princeton, open_dataset
from pcea.data.prepare import prepare_modelnet40
from pcea.data.transforms import normalize_unit_sphere, to_canonical
from pcea.errors import MissingSplitError
from pcea.io import load_points

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "modelnet40-npy" / "ModelNet40"
pytestmark = pytest.mark.slow  # every test here reads the real data
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real ModelNet40 npy release not found at {REAL} "
                                                          "(only the project's workplace has it)")
CLASSES = ("airplane", "bottle", "chair")
PER_CLASS = 3


@pytest.fixture
def mini(tmp_path) -> Path:
    """A Princeton-layout copy of three real shapes of three classes, train split only."""
    root = tmp_path / "ModelNet40"
    for name in CLASSES:
        (root / name / "train").mkdir(parents=True)
        for source in sorted((REAL / name / "train").glob("*.npy"))[:PER_CLASS]:
            shutil.copy(source, root / name / "train" / source.name)
    (root / "README.md").write_text("not a shape\n")  # ignored: not a shape file
    return root


@needs_real
def test_princeton_layout_of_point_files_is_recognised_and_turned_y_up(mini):
    dataset = open_dataset(mini, "train", num_points=1024)
    assert isinstance(dataset, ModelNet40Princeton)
    assert dataset.class_names == list(CLASSES) and dataset.up == "z"
    assert np.bincount(dataset.labels).tolist() == [PER_CLASS] * len(CLASSES)
    first = sorted((mini / "airplane" / "train").glob("*.npy"))[0]
    stored = normalize_unit_sphere(np.load(first))              # (1024, 3), z up as published
    turned = to_canonical(stored, "z")                          # (x, y, z) -> (x, z, -y)
    np.testing.assert_allclose(turned[:, 1], stored[:, 2])
    np.testing.assert_allclose(turned[:, 2], -stored[:, 1])
    points = dataset[0][0].numpy()
    # the same 1024 points (a subsample of all of them is a permutation), in the y-up frame
    order = lambda a: a[np.lexsort(a.T)]  # noqa: E731
    np.testing.assert_allclose(order(points), order(turned), atol=1e-6)
    # a bottle is tall: after the turn its extent along y (up) is the largest
    bottle = dataset[int(np.flatnonzero(dataset.labels == 1)[0])][0].numpy()
    extent = bottle.max(0) - bottle.min(0)
    assert extent.argmax() == 1


@needs_real
def test_missing_test_split_is_a_clear_error(mini):
    with pytest.raises(MissingSplitError, match="no test/ folder.*only the train split"):
        open_dataset(mini, "test")


@needs_real
def test_up_override_reads_a_y_up_copy(mini, tmp_path):
    """A copy converted y-up, declared so with up="y", gives the same clouds as the z-up original."""
    copy = tmp_path / "y_up"
    for source in mini.glob("*/train/*.npy"):
        target = copy / source.relative_to(mini)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, to_canonical(np.load(source), "z"))
    original = open_dataset(mini, "train", num_points=512)
    turned = open_dataset(copy, "train", num_points=512, up="y")
    for i in range(len(original)):
        np.testing.assert_allclose(original[i][0].numpy(), turned[i][0].numpy(), atol=1e-5)


@needs_real
def test_prepare_converts_point_files_to_the_h5_layout(mini, tmp_path):
    out = tmp_path / "h5"
    report = prepare_modelnet40(mini, out, points=512, workers=1, log=lambda line: None)
    assert report.counts == {"train": len(CLASSES) * PER_CLASS} and not report.skipped
    h5 = open_dataset(out, "train", num_points=512)
    assert isinstance(h5, ModelNet40H5) and h5.up == "y"
    princeton = ModelNet40Princeton(mini, "train", num_points=512)
    # the same shapes, the same seeded subsample, the same y-up frame (the h5 writes in label order)
    for i in range(len(h5)):
        assert h5[i][1] == princeton[i][1]
        np.testing.assert_allclose(h5[i][0].numpy(), princeton[i][0].numpy(), atol=1e-6)
    with pytest.raises(MissingSplitError):
        open_dataset(out, "test")


@needs_real
def test_prepare_refuses_more_points_than_the_files_hold(mini, tmp_path):
    # Checked on the first, middle and last files before the others are read (issue 22 item 8).
    expected = (r"--points 2048 is more than the files hold \(.*only 1,024 points, 2048 requested"
                r".*use a smaller --points")
    with pytest.raises(Exception, match=expected):
        prepare_modelnet40(mini, tmp_path / "h5", points=2048, workers=1, log=lambda line: None)


@needs_real
def test_load_points_turns_each_file_by_its_up_axis(mini, tmp_path):
    source = sorted((mini / "chair" / "train").glob("*.npy"))[0]
    y_up = tmp_path / "chair_y_up.npy"
    np.save(y_up, to_canonical(np.load(source), "z"))
    as_z = load_points(source, 1024, seed=3)                    # auto: .npy is taken as z-up
    as_y = load_points(y_up, 1024, seed=3, up="y")
    np.testing.assert_allclose(as_z, as_y, atol=1e-5)
    assert not np.allclose(load_points(source, 1024, seed=3, up="y"), as_z, atol=1e-2)
