"""pcea prepare: Princeton meshes to the h5 layout, in parallel, resumable, skipping bad meshes."""

from __future__ import annotations

import errno
import os
import signal

import h5py
import numpy as np
import pytest

from pcea.cli import main
from pcea.data import ModelNet40H5, open_dataset
from pcea.data import prepare as prepare_module
from pcea.data.modelnet import mesh_seed
from pcea.data.prepare import prepare_modelnet40
from pcea.io import load_points

CLASSES = ["bowl", "cone", "stool"]  # written unsorted below; labels follow the sorted names
POINTS = 32


def write_mesh(path, scale):
    """A tetrahedron stretched by ``scale`` along x, as a Princeton-style glued-header OFF."""
    vertices = [(0, 0, 0), (scale, 0, 0), (0, 1, 0), (0, 0, 1)]
    faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    text = "OFF4 4 0\n" + "".join(f"{x} {y} {z}\n" for x, y, z in vertices)
    text += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", "\r\n").encode())


def make_princeton(root, train=3, test=1):
    for label, name in enumerate(reversed(CLASSES)):
        for split, count in (("train", train), ("test", test)):
            for number in range(count):
                write_mesh(root / name / split / f"{name}_{number + 1:04d}.off", scale=1 + label + number)
    return root


def run(src, out, **kwargs):
    lines = []
    kwargs.setdefault("workers", 1)
    report = prepare_modelnet40(src, out, points=POINTS, progress=False, log=lines.append, **kwargs)
    return report, lines


def read_h5(out, split):
    files = (out / f"{split}_files.txt").read_text().split()
    parts = [h5py.File(out / name, "r") for name in files]
    try:
        return tuple(np.concatenate([part[key][()] for part in parts]) for key in ("data", "normal", "label"))
    finally:
        for part in parts:
            part.close()


def test_prepare_writes_the_h5_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "SHAPES_PER_FILE", 4)  # several parts, as in the real release
    src = make_princeton(tmp_path / "ModelNet")
    out = tmp_path / "h5"
    report, lines = run(src, out)
    assert report.counts == {"train": 9, "test": 3} and report.skipped == [] and report.reused == 0
    assert (out / "shape_names.txt").read_text().split() == CLASSES
    assert (out / "train_files.txt").read_text().split() == [f"ply_data_train{k}.h5" for k in range(3)]
    data, normal, label = read_h5(out, "train")
    assert data.shape == normal.shape == (9, POINTS, 3) and label.shape == (9, 1)
    assert label[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(np.linalg.norm(normal, axis=2), 1.0, atol=1e-5)
    # each shape is exactly load_points of its mesh with its per-file seed
    mesh = src / "cone" / "train" / "cone_0002.off"
    expected = load_points(mesh, POINTS, seed=mesh_seed(mesh, src, 0), normals=True)
    np.testing.assert_array_equal(np.concatenate([data[4], normal[4]], axis=1), expected)
    assert not (out / ".prepare-work").exists() and not list(out.glob("*tmp"))  # no leftovers
    dataset = open_dataset(out, "test", num_points=POINTS, normals=True)
    assert isinstance(dataset, ModelNet40H5) and dataset.class_names == CLASSES and len(dataset) == 3
    assert any("wrote 9 train, 3 test shapes" in line for line in lines)


def test_a_bad_mesh_is_skipped_and_reported(tmp_path):
    src = make_princeton(tmp_path / "ModelNet")
    (src / "cone" / "train" / "cone_0003.off").write_text("OFF\n1000000 1 0\n0 0 0\n")
    (src / "stool" / "test" / "stool_0001.off").write_bytes(b"\x00garbage")
    out = tmp_path / "h5"
    report, lines = run(src, out)
    assert report.counts == {"train": 8, "test": 2}
    skipped_meshes = [relative for relative, _ in report.skipped]
    assert skipped_meshes == ["cone/train/cone_0003.off", "stool/test/stool_0001.off"]
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert skipped[0].startswith("cone/train/cone_0003.off\t") and "truncated" in skipped[0]
    assert any("skipped 2 meshes" in line for line in lines)
    assert ModelNet40H5(out, "train", num_points=8).labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_matches_a_fresh_one(tmp_path, monkeypatch):
    src = make_princeton(tmp_path / "ModelNet")
    calls = []
    sample_one = prepare_module._sample_one

    def interrupted(task):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return sample_one(task)

    monkeypatch.setattr(prepare_module, "_sample_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(src, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "train_files.txt").exists()
    monkeypatch.setattr(prepare_module, "_sample_one", sample_one)
    report, _ = run(src, tmp_path / "resumed")
    assert report.reused == 4 and report.counts == {"train": 9, "test": 3}
    fresh, _ = run(src, tmp_path / "fresh", workers=2)  # also: the process pool gives the same result
    assert fresh.reused == 0
    for split in ("train", "test"):
        for resumed_array, fresh_array in zip(read_h5(tmp_path / "resumed", split),
                                              read_h5(tmp_path / "fresh", split), strict=True):
            np.testing.assert_array_equal(resumed_array, fresh_array)


def test_cli_prepare(tmp_path, capsys):
    src = make_princeton(tmp_path / "ModelNet", train=1, test=1)
    assert main(["prepare", "modelnet40", "--src", str(src), "--out", str(tmp_path / "h5"),
                 "--points", "16", "--workers", "1"]) == 0
    assert "wrote 3 train, 3 test shapes" in capsys.readouterr().err
    assert ModelNet40H5(tmp_path / "h5", "test", num_points=16).labels.tolist() == [0, 1, 2]
    assert main(["prepare", "modelnet40", "--src", str(tmp_path / "h5"), "--out", str(tmp_path / "x")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"pcea: error: {tmp_path / 'h5'}: not the Princeton layout")
    assert len(error.strip().splitlines()) == 1


# --- issue 23: a full disk and a killed worker ------------------------------------------------

_REAL_SAMPLE_ONE = prepare_module._sample_one


def _sample_one_killing_its_worker(task):
    """At module level, so that the pool's workers can find it by name (they run the patched module)."""
    if task[0] == "cone/train/cone_0002.off":
        os.kill(os.getpid(), signal.SIGKILL)  # what kill -9 or the OOM killer does to a worker
    return _REAL_SAMPLE_ONE(task)


@pytest.mark.slow
def test_a_killed_worker_is_an_error_not_a_hang(tmp_path, monkeypatch, capsys):
    src = make_princeton(tmp_path / "ModelNet")
    monkeypatch.setattr(prepare_module, "_sample_one", _sample_one_killing_its_worker)

    def hung(signum, frame):
        raise TimeoutError("prepare waited for a dead worker")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        status = main(["prepare", "modelnet40", "--src", str(src), "--out", str(tmp_path / "h5"),
                       "--points", "16", "--workers", "2"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and error[-1].startswith("pcea: error: prepare: a worker process died")
    monkeypatch.setattr(prepare_module, "_sample_one", _REAL_SAMPLE_ONE)
    report, _ = run(src, tmp_path / "h5")  # the same command again completes
    assert report.counts == {"train": 9, "test": 3}


@pytest.mark.parametrize("where", ["work file", "h5 file"])
def test_a_full_disk_is_one_line_and_a_rerun_recovers(tmp_path, monkeypatch, capsys, where):
    src = make_princeton(tmp_path / "ModelNet")
    out = tmp_path / "h5"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "work file":
        monkeypatch.setattr(prepare_module.np, "save", full)
    else:  # h5py words it "Can't write data (file write failed: ... No space left on device ...)"
        monkeypatch.setattr(prepare_module, "_write_split", lambda *args: (_ for _ in ()).throw(
            OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on "
                    "device')\nsecond line")))
    argv = ["prepare", "modelnet40", "--src", str(src), "--out", str(out), "--points", "16", "--workers", "1"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in error if line.startswith("pcea: error:")]) == 1
    assert error[-1].startswith(f"pcea: error: {out}: cannot write (")
    assert "No space left on device" in error[-1]
    monkeypatch.undo()
    assert main(argv) == 0 and ModelNet40H5(out, "test", num_points=16).labels.tolist() == [0, 1, 2]


def _point_files(root, counts):
    """A Princeton folder of .npy point files, one class per count (rows: points of that file)."""
    rng = np.random.default_rng(0)
    for name, count in zip(CLASSES, counts, strict=True):
        for split in ("train", "test"):
            path = root / name / split / f"{name}_0001.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.normal(size=(count, 3)).astype(np.float32))
    return root


def test_too_many_points_for_the_release_is_refused_from_the_first_files(tmp_path, monkeypatch):
    """Issue 22 item 8: --points 2048 on a 1,024-point release read every file before saying so."""
    src = _point_files(tmp_path / "src", [20, 20, 20])
    read = []
    real = prepare_module.load_points
    monkeypatch.setattr(prepare_module, "load_points",
                        lambda path, *args, **kwargs: read.append(path) or real(path, *args, **kwargs))
    with pytest.raises(prepare_module.PceaFileError, match=r"--points 32 is more than the files hold \("
                       r"bowl/train/bowl_0001.npy: only 20 points, 32 requested; .*use a smaller --points"):
        run(src, tmp_path / "out")
    assert len(read) == 3  # the first, middle and last of 6 files, not all of them
    # One short file among files that hold enough is skipped by the sweep, as before.
    report, _ = run(_point_files(tmp_path / "mixed", [64, 20, 64]), tmp_path / "mixed-out")
    skipped = [relative for relative, _ in report.skipped]
    assert skipped == ["cone/test/cone_0001.npy", "cone/train/cone_0001.npy"]
