"""The three ModelNet40 layouts, ModelNet10 subsets and layout detection, on small generated files."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pcea.data import (
    MODELNET10_CLASSES,
    ModelNet40H5,
    ModelNet40Princeton,
    ModelNet40Resampled,
    dataset_class_names,
    open_dataset,
)
from pcea.errors import PceaError, PceaFileError
from pcea.io import PceaWarning

CLASSES = ["airplane", "bed", "chair", "night_stand"]  # bed, chair, night_stand are ModelNet10 classes
STORED = 64


def make_h5(root, *, normals=True, prefix="data/modelnet40_ply_hdf5_2048/", seed=0):
    """Two train files and one test file; returns {split: (data, normal, label)} as written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    written = {}
    for split, parts in (("train", 2), ("test", 1)):
        names, arrays = [], []
        for part in range(parts):
            count = 6 + part
            data = rng.normal(size=(count, STORED, 3)).astype(np.float32)
            normal = rng.normal(size=(count, STORED, 3)).astype(np.float32)
            label = rng.integers(0, len(CLASSES), size=(count, 1)).astype(np.uint8)
            name = f"ply_data_{split}{part}.h5"
            with h5py.File(root / name, "w") as h5:
                h5["data"], h5["label"] = data, label
                if normals:
                    h5["normal"] = normal
            names.append(prefix + name)
            arrays.append((data, normal, label))
        (root / f"{split}_files.txt").write_text("\n".join(names) + "\n")
        written[split] = tuple(np.concatenate(column) for column in zip(*arrays, strict=True))
    return written


def write_off(path, scale=1.0, glued=False):
    vertices = np.array([(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]) * scale
    faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    head = "OFF4 4 0\n" if glued else "OFF\n4 4 0\n"
    text = head + "".join(f"{x} {y} {z}\n" for x, y, z in vertices)
    text += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", "\r\n").encode())


def make_mesh(root, per_split=2):
    for label, name in enumerate(CLASSES):
        for split in ("train", "test"):
            for number in range(per_split):
                path = root / name / split / f"{name}_{number + 1:04d}.off"
                write_off(path, scale=1 + label, glued=number == 0)
    return root


def make_resampled(root, prefix="modelnet40", points=STORED, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{prefix}_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    clouds = {}
    for split, numbers in (("train", (1, 2, 3)), ("test", (4,))):
        ids = [f"{name}_{number:04d}" for name in CLASSES for number in numbers]
        (root / f"{prefix}_{split}.txt").write_text("\n".join(ids) + "\n")
        for shape_id in ids:
            cloud = rng.normal(size=(points, 6)).astype(np.float32)
            folder = root / shape_id.rsplit("_", 1)[0]
            folder.mkdir(exist_ok=True)
            write_resampled_text(folder / f"{shape_id}.txt", cloud)
            clouds[shape_id] = cloud
    return clouds


def write_resampled_text(path, cloud):
    path.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in cloud) + "\n")


def add_noise(points, rng):
    return points + rng.normal(size=points.shape).astype(np.float32)


# --- h5 ---------------------------------------------------------------------------------


def test_h5_items_are_the_first_points_with_labels(tmp_path):
    written = make_h5(tmp_path)
    data, normal, label = written["train"]
    dataset = ModelNet40H5(tmp_path, "train", num_points=32)
    assert len(dataset) == 13 and dataset.class_names == CLASSES
    np.testing.assert_array_equal(dataset.labels, label[:, 0])
    assert dataset.labels.dtype == np.int64
    points, target = dataset[7]
    assert isinstance(points, torch.Tensor) and points.dtype == torch.float32 and points.shape == (32, 3)
    assert isinstance(target, int) and target == label[7, 0]
    np.testing.assert_array_equal(points.numpy(), data[7, :32])
    with_normals = ModelNet40H5(tmp_path, "test", num_points=STORED, normals=True)
    test_data, test_normal, _ = written["test"]
    expected = np.concatenate([test_data[2], test_normal[2]], axis=1)
    np.testing.assert_array_equal(with_normals[2][0].numpy(), expected)


def test_h5_without_list_files_and_errors(tmp_path):
    make_h5(tmp_path, normals=False)
    (tmp_path / "train_files.txt").unlink()
    assert len(ModelNet40H5(tmp_path, "train", num_points=8)) == 13
    with pytest.raises(PceaFileError, match=r"ply_data_test0\.h5: has no 'normal' dataset"):
        ModelNet40H5(tmp_path, "test", normals=True, num_points=8)
    with pytest.raises(PceaFileError, match=r"test0\.h5: stores 64 points per shape, num_points=100"):
        ModelNet40H5(tmp_path, "test", num_points=100)
    (tmp_path / "ply_data_test0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(PceaFileError, match=r"ply_data_test0\.h5: cannot read as HDF5"):
        ModelNet40H5(tmp_path, "test", num_points=8)
    (tmp_path / "ply_data_test0.h5").unlink()
    with pytest.raises(PceaFileError, match=r"test_files\.txt: lists ply_data_test0\.h5, not found"):
        ModelNet40H5(tmp_path, "test", num_points=8)
    with pytest.raises(PceaError, match="split='val'"):
        ModelNet40H5(tmp_path, "val")


@pytest.mark.slow
def test_transform_rng_depends_on_seed_epoch_and_index_only(tmp_path):
    make_h5(tmp_path)
    dataset = ModelNet40H5(tmp_path, "train", num_points=16, transform=add_noise, seed=3)
    first = [dataset[i][0] for i in range(len(dataset))]
    # the same item gives the same points whatever was read before it
    assert torch.equal(dataset[5][0], first[5])
    assert not torch.equal(first[0], ModelNet40H5(tmp_path, num_points=16)[0][0])  # the transform ran
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5][0], first[5])
    dataset.set_epoch(0)
    assert torch.equal(dataset[5][0], first[5])
    other_seed = ModelNet40H5(tmp_path, "train", num_points=16, transform=add_noise, seed=4)
    assert not torch.equal(other_seed[5][0], first[5])
    # DataLoader workers see the same per-item streams as the main process
    serial = torch.cat([points for points, _ in DataLoader(dataset, batch_size=4)])
    parallel = torch.cat([points for points, _ in DataLoader(dataset, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel) and torch.equal(serial, torch.stack(first))


def test_modelnet10_subset_remaps_labels(tmp_path):
    written = make_h5(tmp_path)
    ours = [name for name in MODELNET10_CLASSES if name in CLASSES]
    subset = ModelNet40H5(tmp_path, "train", num_points=8, classes=ours[::-1])  # order does not matter
    assert subset.class_names == ["bed", "chair", "night_stand"]
    original = written["train"][2][:, 0]
    kept = np.flatnonzero(original != 0)           # airplane (0) is not in ModelNet10
    np.testing.assert_array_equal(subset.labels, original[kept] - 1)
    np.testing.assert_array_equal(subset[0][0].numpy(), written["train"][0][kept[0], :8])
    with pytest.raises(PceaError, match="unknown classes sofa_bed"):
        ModelNet40H5(tmp_path, "train", num_points=8, classes=["chair", "sofa_bed"])


# --- meshes -------------------------------------------------------------------------------


def test_mesh_layout_samples_each_mesh_once(tmp_path):
    make_mesh(tmp_path)
    dataset = ModelNet40Princeton(tmp_path, "test", num_points=128, normals=True)
    assert dataset.class_names == CLASSES and len(dataset) == 8
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1, 1, 2, 2, 3, 3])
    points, label = dataset[3]
    assert points.shape == (128, 6) and label == 1
    assert torch.linalg.norm(points[:, :3], dim=1).max() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(dataset[3][0], points)  # cached: no resampling per access
    again = ModelNet40Princeton(tmp_path, "test", num_points=128, normals=True)
    assert torch.equal(again[3][0], points)
    # the two meshes of one class are the same shape but sampled with different seeds
    assert not torch.equal(dataset[2][0], dataset[3][0])
    subset = ModelNet40Princeton(tmp_path, "train", num_points=32, classes=["chair", "night_stand"])
    assert subset.class_names == ["chair", "night_stand"] and list(subset.labels) == [0, 0, 1, 1]


def test_mesh_layout_skips_a_bad_mesh_with_a_warning(tmp_path):
    make_mesh(tmp_path)
    (tmp_path / "bed" / "train" / "bed_0002.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n")
    with pytest.warns(PceaWarning, match=r"skipped 1 unreadable files: .*bed_0002\.off: mesh has zero"):
        dataset = ModelNet40Princeton(tmp_path, "train", num_points=16)
    assert len(dataset) == 7 and list(dataset.labels) == [0, 0, 1, 2, 2, 3, 3]


# --- resampled ----------------------------------------------------------------------------


def test_resampled_layout_parses_once_and_reuses_the_cache(tmp_path):
    clouds = make_resampled(tmp_path)
    dataset = ModelNet40Resampled(tmp_path, "train", num_points=32, normals=True)
    assert len(dataset) == 12 and dataset.class_names == CLASSES
    points, label = dataset[4]  # bed_0002
    assert label == 1
    from pcea.data.transforms import normalize_unit_sphere

    np.testing.assert_allclose(points.numpy(), normalize_unit_sphere(clouds["bed_0002"][:32]), atol=1e-6)
    cache_files = sorted((tmp_path / ".pcea-cache").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".npy"
    # remove the text files: the next construction must be served from the cache
    (tmp_path / "bed" / "bed_0002.txt").unlink()
    cached = ModelNet40Resampled(tmp_path, "train", num_points=32)
    assert torch.equal(cached[4][0], points[:, :3])
    # another num_points is another cache entry, parsed from the text files again
    with pytest.raises(PceaFileError, match=r"bed_0002\.txt: no such dataset file"):
        ModelNet40Resampled(tmp_path, "train", num_points=16)
    # a damaged cache is rebuilt rather than trusted
    for damage in (b"garbage", b""):
        cache_files[0].write_bytes(damage)
        with pytest.raises(PceaFileError, match=r"bed_0002\.txt"):
            ModelNet40Resampled(tmp_path, "train", num_points=32)
    # and so is one holding NaN
    write_resampled_text(tmp_path / "bed" / "bed_0002.txt", clouds["bed_0002"])
    ModelNet40Resampled(tmp_path, "train", num_points=32)
    poisoned = np.load(cache_files[0])
    poisoned[4, 0, 0] = np.nan
    np.save(cache_files[0], poisoned)
    assert torch.isfinite(ModelNet40Resampled(tmp_path, "train", num_points=32)[4][0]).all()


def test_resampled_prefers_the_release_modelnet10_lists_for_its_classes(tmp_path):
    make_resampled(tmp_path)
    ten = ["bed", "chair"]
    (tmp_path / "modelnet10_shape_names.txt").write_text("\n".join(ten) + "\n")
    (tmp_path / "modelnet10_train.txt").write_text("chair_0002\nbed_0003\n")
    release = ModelNet40Resampled(tmp_path, "train", num_points=8, classes=["chair", "bed"])
    assert release.class_names == ten and release.labels.tolist() == [1, 0]
    filtered = ModelNet40Resampled(tmp_path, "train", num_points=8, classes=["chair"])
    assert filtered.class_names == ["chair"] and len(filtered) == 3


def test_resampled_modelnet10_lists_and_errors(tmp_path):
    make_resampled(tmp_path, prefix="modelnet10")
    dataset = ModelNet40Resampled(tmp_path, "test", num_points=8, cache_dir=tmp_path / "cache")
    assert len(dataset) == 4 and dataset[0][0].shape == (8, 3)
    assert any((tmp_path / "cache").iterdir())
    with pytest.raises(PceaFileError, match=r"airplane_0004\.txt: has 64 points, num_points=100"):
        ModelNet40Resampled(tmp_path, "test", num_points=100, cache_dir=tmp_path / "cache")
    (tmp_path / "airplane" / "airplane_0004.txt").write_text("1,2,3\n" * 80)
    with pytest.raises(PceaFileError, match=r"airplane_0004\.txt: expected lines of six numbers"):
        ModelNet40Resampled(tmp_path, "test", num_points=70, cache_dir=tmp_path / "cache")


# --- detection ----------------------------------------------------------------------------


def test_open_dataset_recognises_each_layout_and_prefers_h5(tmp_path):
    make_h5(tmp_path / "shapes" / "h5")
    make_mesh(tmp_path / "shapes" / "mesh", per_split=1)
    make_resampled(tmp_path / "shapes" / "resampled")
    expected = {"h5": ModelNet40H5, "mesh": ModelNet40Princeton, "resampled": ModelNet40Resampled}
    for name, kind in expected.items():
        dataset = open_dataset(tmp_path / "shapes" / name, "test", num_points=16)
        assert type(dataset) is kind and dataset.class_names == CLASSES
    for parent in (tmp_path / "shapes", tmp_path):  # a parent and a grandparent
        dataset = open_dataset(parent, "train", num_points=16)
        assert type(dataset) is ModelNet40H5 and dataset.root == tmp_path / "shapes" / "h5"
    (tmp_path / "shapes" / "h5" / "shape_names.txt").unlink()
    assert type(open_dataset(tmp_path / "shapes", num_points=16)) is ModelNet40Resampled


def test_dataset_class_names_are_the_opened_datasets_without_reading_a_cloud(tmp_path, monkeypatch):
    make_h5(tmp_path / "h5")
    make_mesh(tmp_path / "mesh", per_split=1)
    make_resampled(tmp_path / "resampled")
    opened = {name: open_dataset(tmp_path / name, "train", num_points=16).class_names
              for name in ("h5", "mesh", "resampled")}
    for kind in (ModelNet40H5, ModelNet40Princeton, ModelNet40Resampled):
        monkeypatch.setattr(kind, "__init__", None)  # reading a cloud would fail
    for name, class_names in opened.items():
        assert dataset_class_names(tmp_path / name) == class_names == CLASSES
    with pytest.raises(PceaFileError, match=r"nowhere: no such directory"):
        dataset_class_names(tmp_path / "nowhere")


def test_open_dataset_errors_say_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PceaError, match=r"empty: no ModelNet40 layout found; expected one of: the h5 layout"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(PceaFileError, match=r"nowhere: no such directory"):
        open_dataset(tmp_path / "nowhere")
    make_h5(tmp_path / "a")
    make_h5(tmp_path / "b")
    with pytest.raises(PceaError, match="several h5 datasets"):
        open_dataset(tmp_path)


def test_special_files_and_unwritten_h5_datasets_are_refused(tmp_path):
    make_h5(tmp_path / "h5")
    names = tmp_path / "h5" / "shape_names.txt"
    names.unlink()
    os.mkfifo(names)  # reading a FIFO without a writer would block forever
    with pytest.raises(PceaFileError, match=r"shape_names\.txt: is a FIFO, not a regular file"):
        ModelNet40H5(tmp_path / "h5", num_points=8)
    names.unlink()
    names.symlink_to("/dev/zero")  # endless bytes
    with pytest.raises(PceaFileError, match=r"shape_names\.txt: is a device, not a regular file"):
        ModelNet40H5(tmp_path / "h5", num_points=8)
    names.unlink()
    names.write_text("\n".join(CLASSES))
    # a few-kB file declaring 10^6 shapes that were never written must not be read
    with h5py.File(tmp_path / "h5" / "ply_data_test0.h5", "w") as h5:
        h5.create_dataset("data", shape=(10**6, 64, 3), dtype="f4", chunks=(1, 64, 3))
        h5.create_dataset("label", shape=(10**6, 1), dtype="u1", chunks=(4096, 1))
    tracemalloc.start()
    try:
        with pytest.raises(PceaFileError, match=r"test0\.h5: 'data' declares shape \(1000000, 64, 3\)"):
            ModelNet40H5(tmp_path / "h5", "test", num_points=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2
    make_resampled(tmp_path / "resampled")
    shape = tmp_path / "resampled" / "chair" / "chair_0001.txt"
    shape.unlink()
    shape.symlink_to("/dev/zero")
    with pytest.raises(PceaFileError, match=r"chair_0001\.txt: is a device, not a regular file"):
        ModelNet40Resampled(tmp_path / "resampled", num_points=8)


# --- issue 16, items 10 and 11: nothing outside the dataset is read ---------------------------


def test_h5_external_links_storage_and_virtual_datasets_are_refused(tmp_path):
    root = tmp_path / "h5"
    make_h5(root)
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as h5:
        h5["data"] = np.zeros((100_000, STORED, 3), np.float32)[:10]
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)  # following a link to it would block for ever
    target = root / "ply_data_train0.h5"
    label = np.zeros((4, 1), np.uint8)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(4 * STORED * 3 * 4))
    cases = {
        "external link": lambda h5: h5.__setitem__("data", h5py.ExternalLink(str(outside), "/data")),
        "link to a fifo": lambda h5: h5.__setitem__("data", h5py.ExternalLink(str(fifo), "/data")),
        "soft link": lambda h5: (h5.__setitem__("stored", np.zeros((4, STORED, 3), np.float32)),
                                 h5.__setitem__("data", h5py.SoftLink("/stored"))),
        "external storage": lambda h5: h5.create_dataset("data", shape=(4, STORED, 3), dtype="<f4",
                                                         external=[(str(raw), 0, h5py.h5f.UNLIMITED)]),
        "virtual": lambda h5: h5.create_virtual_dataset(
            "data", _virtual_layout(outside, (10, STORED, 3))),
    }
    messages = {"external link": "is an external link to", "link to a fifo": "is an external link to",
                "soft link": "is a link, not a dataset",
                "external storage": "keeps its data in external files",
                "virtual": "is a virtual dataset mapping other files"}
    for case, build in cases.items():
        target.unlink()
        with h5py.File(target, "w") as h5:
            h5["label"] = label
            h5["normal"] = np.zeros((4, STORED, 3), np.float32)
            build(h5)
        with pytest.raises(PceaFileError, match=f"^{target}: 'data' {messages[case]}"):
            ModelNet40H5(root, "train", num_points=32)


def _virtual_layout(source, shape):
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=shape)
    return layout


def test_list_files_cannot_name_paths_outside_the_dataset_root(tmp_path):
    root = tmp_path / "resampled"
    make_resampled(root)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "secret_0001.txt").write_text("1,2,3,0,0,1\n" * STORED)
    listing = root / "modelnet40_train.txt"
    for line in ("../secret/secret_0001", "/etc/passwd_0001", "airplane/../../secret_0001", ".."):
        (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES + ["../secret"]) + "\n")
        listing.write_text(f"airplane_0001\n{line}\n")
        with pytest.raises(PceaFileError, match=f"^{listing}: line '{line}' names a path outside the"):
            ModelNet40Resampled(root, "train", num_points=32, cache_dir=tmp_path / "cache")
    # h5 lists: only the base name counts, so ../elsewhere/x.h5 still reads root/x.h5 ...
    h5_root = tmp_path / "h5"
    written = make_h5(h5_root)
    elsewhere = tmp_path / "elsewhere"
    make_h5(elsewhere, seed=1)
    (h5_root / "train_files.txt").write_text("../elsewhere/ply_data_train0.h5\n"
                                             "../elsewhere/ply_data_train1.h5\n")
    dataset = ModelNet40H5(h5_root, "train", num_points=STORED, up="y")
    np.testing.assert_array_equal(torch.stack([dataset[i][0] for i in range(len(dataset))]).numpy(),
                                  written["train"][0])
    # ... and a line whose base name is '..' is refused, naming the list
    (h5_root / "train_files.txt").write_text("data/..\n")
    with pytest.raises(PceaFileError, match="train_files.txt: line 'data/..' names a path outside"):
        ModelNet40H5(h5_root, "train", num_points=32)


@pytest.mark.slow
def test_a_princeton_folder_of_real_pcd_files_is_read(tmp_path):
    """Issue 12: .pcd joins the per-shape formats; the real samples from ../shared (z up, raw units)."""
    samples = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samples" / "pcd"
    if not samples.is_dir():
        pytest.skip(f"no real PCD samples at {samples} (../shared/data is not part of a user's clone)")
    for name in ("chair", "sofa"):
        for number in (1, 2):
            source = samples / f"{name}_{number:04d}.pcd"
            target = tmp_path / name / "train" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    dataset = open_dataset(tmp_path, "train", num_points=512)
    assert type(dataset).__name__ == "ModelNet40Princeton" and dataset.up == "z"
    assert dataset.class_names == ["chair", "sofa"] and list(dataset.labels) == [0, 0, 1, 1]
    points, _ = dataset[0]
    assert points.shape == (512, 3) and float(points.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)
