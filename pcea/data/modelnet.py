"""ModelNet40 (and ModelNet10) in the three layouts users arrive with.

* :class:`ModelNet40H5`: ``modelnet40_ply_hdf5_2048`` (PointNet, DGCNN, PCT).
* :class:`ModelNet40Princeton`: the Princeton folders, ``<class>/{train,test}/<class>_NNNN.<ext>``,
  one mesh or point file per shape in any format :func:`pcea.io.load_points` reads (the
  release's ``.off`` meshes, or the public conversions to ``.npy``, ``.ply``, ``.txt``, ``.pcd``).
* :class:`ModelNet40Resampled`: ``modelnet40_normal_resampled`` (PointNet++), one text file per shape.

All three share one interface: an item is ``(points FloatTensor (num_points, C), label int)``
with C = 3, or 6 with normals; ``.class_names``, ``.labels``, ``.root`` and ``.up``;
``set_epoch(epoch)``; and the transform of item ``i`` is called with
``np.random.default_rng((seed, epoch, i))`` (:func:`pcea.data.transforms.augment_item`,
which the training subsets use too), so a run is reproducible whatever the
number of DataLoader workers. Each layout declares the up axis its release uses
(``UP``: y for h5 and resampled, z for the Princeton folders) and every cloud is turned
from it into pcea's y-up frame (:func:`pcea.geometry.to_canonical`); ``up=``
overrides the declared axis for a copy that was converted in another frame.
``classes=`` selects a subset (ModelNet10 is
``classes=MODELNET10_CLASSES``) with labels renumbered 0..K-1 in the dataset's class order.

Each item holds the *first* ``num_points`` points of the stored cloud (the h5 release
stores 2048 points per shape in random order, the resampled release 10,000 in
farthest-point order, so the first ones are a fair subsample; PCT trains on the first
1024 of the h5 points the same way).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pcea.atomic import replacing
from pcea.data.transforms import augment_item
from pcea.errors import (
    MissingSplitError,
    PceaError,
    PceaFileError,
    PceaWarning,
    check_positive_int,
    check_regular,
)
from pcea.geometry import UP_AXES, normalize_unit_sphere, to_canonical
from pcea.io import DEFAULT_MAX_BYTES, MESH_EXTENSIONS, POINT_EXTENSIONS, load_points

__all__ = [
    "MODELNET10_CLASSES",
    "ModelNet40H5",
    "ModelNet40Princeton",
    "ModelNet40Resampled",
    "dataset_class_names",
    "open_dataset",
]

MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser",
                      "monitor", "night_stand", "sofa", "table", "toilet")
SPLITS = ("train", "test")

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class _PointCloudDataset(Dataset):
    """The shared interface; subclasses fill ``class_names``, ``labels`` and ``_clouds``."""

    UP: str = "y"            # the up axis of the layout's public release
    ALL_POINTS = False       # whether num_points=None (every stored point) is allowed
    root: Path
    class_names: list[str]
    labels: np.ndarray       # (n,) int64
    _clouds: np.ndarray      # (n, num_points, 3 or 6) float32

    def __init__(self, root, split: str, num_points: int | None, transform: Transform | None,
                 normals: bool, seed: int, up: str | None = None):
        if up is not None and up not in UP_AXES:
            raise PceaError(f"up={up!r}: expected one of {', '.join(UP_AXES)}")
        self.up = up or self.UP
        if split not in SPLITS:
            raise PceaError(f"split={split!r}: expected 'train' or 'test'")
        if num_points is not None or not self.ALL_POINTS:
            check_positive_int("num_points", num_points)
        self.root = Path(root)
        if not self.root.is_dir():
            problem = "not a directory" if self.root.exists() else "no such directory"
            raise PceaFileError(self.root, problem)
        self.split = split
        self.num_points = num_points
        self.transform = transform
        self.normals = normals
        self.seed = seed
        self.epoch = 0

    def _to_canonical(self, clouds: np.ndarray) -> np.ndarray:
        """(n, num_points, C) clouds in the dataset's frame -> pcea's y-up frame."""
        return to_canonical(clouds, self.up) if len(clouds) else clouds

    @property
    def clouds(self) -> np.ndarray:
        """Every item's points at once, un-augmented: (n, num_points, C) float32, y up."""
        return self._clouds

    def set_epoch(self, epoch: int) -> None:
        """Change the random augmentation of every item (call at the start of each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        points = self._clouds[index]                        # (num_points, C)
        if self.transform is not None:
            points = augment_item(points, self.transform, seed=self.seed, epoch=self.epoch, index=index)
        return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"shapes={len(self)}, classes={len(self.class_names)}, num_points={self.num_points}, "
                f"normals={self.normals}, up={self.up!r})")

    def _select(self, all_names: list[str], labels: np.ndarray, classes: Sequence[str] | None) -> np.ndarray:
        """Set ``class_names``/``labels`` for a class subset; returns the kept item indices."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if classes is None:
            self.class_names, self.labels = list(all_names), labels
            return np.arange(len(labels))
        if isinstance(classes, str):
            raise PceaError(f"classes={classes!r}: expected a list of class names")
        unknown = sorted(set(classes) - set(all_names))
        if unknown:
            raise PceaError(f"{self.root}: unknown classes {', '.join(unknown)}; "
                            f"this dataset has {', '.join(all_names)}")
        kept_names = [name for name in all_names if name in set(classes)]  # dataset order
        remap = np.full(len(all_names), -1, dtype=np.int64)
        for new, name in enumerate(kept_names):
            remap[all_names.index(name)] = new
        keep = np.flatnonzero(remap[labels] >= 0)
        self.class_names, self.labels = kept_names, remap[labels[keep]]
        return keep


LIST_MAX_BYTES = 64 * 1024**2  # name and list files are kilobytes; this stops a /dev/zero in their place


def _plain_name(listing: Path, name: str, line: str) -> str:
    """``name`` when it is a plain file name inside the dataset root; otherwise refuse ``listing``."""
    if not name or name in (".", "..") or any(char in name for char in "/\\\0"):
        raise PceaFileError(listing, f"line {line!r} names a path outside the dataset root "
                                     "(entries must be plain names inside it)")
    return name


def _read_names(path: Path) -> list[str]:
    check_regular(path, LIST_MAX_BYTES, "dataset file", "pcea.data.modelnet.LIST_MAX_BYTES")
    try:
        names = [line.strip() for line in path.read_bytes().decode("utf-8").splitlines() if line.strip()]
    except OSError as err:
        raise PceaFileError(path, f"cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise PceaFileError(path, "not a text file") from None
    if not names:
        raise PceaFileError(path, "file is empty")
    return names


# --- h5 ---------------------------------------------------------------------------------


class ModelNet40H5(_PointCloudDataset):
    """The ``modelnet40_ply_hdf5_2048`` layout.

    ``ply_data_train{0..4}.h5`` / ``ply_data_test{0,1}.h5`` hold ``data`` (n, 2048, 3)
    float32, ``label`` (n, 1) and optionally ``normal`` (n, 2048, 3);
    ``shape_names.txt`` names the classes; ``train_files.txt`` / ``test_files.txt``
    list the h5 files, usually with a directory prefix such as
    ``data/modelnet40_ply_hdf5_2048/`` that is ignored (each basename is looked up in
    ``root``; without the list file, ``ply_data_<split>*.h5`` are used).

    The clouds are read into memory once, at construction, because they fit: the
    12,311 ModelNet40 shapes take 12,311 x 2048 x 3 x 4 bytes = 303 MB at 2048 points
    (605 MB with normals), and only the first ``num_points`` are kept (151 MB at
    PCT's 1024 points). Reading items from h5 instead would cost a file access per
    item, and open h5py handles do not survive the fork into DataLoader workers
    well, while a plain array is shared copy-on-write.

    Args:
        root: the directory holding the files above.
        split: "train" or "test".
        num_points: points per item (at most the stored 2048); None: every stored point (each
            file must then store the same number).
        transform: called as ``transform(points (num_points, C), rng)``.
        normals: also return the normals (columns 3:6); needs the ``normal`` dataset.
        classes: names of a class subset (e.g. ModelNet10), labels renumbered 0..K-1.
        seed: seed of the per-item augmentation.
        up: the up axis of the stored clouds (default ``UP``, y as in the release).
    """

    ALL_POINTS = True

    def __init__(self, root, split: str = "train", num_points: int | None = 1024,
                 transform: Transform | None = None,
                 normals: bool = False, classes: Sequence[str] | None = None, seed: int = 0,
                 up: str | None = None):
        super().__init__(root, split, num_points, transform, normals, seed, up)
        import h5py

        names = _read_names(self.root / "shape_names.txt")
        files = self._files()
        clouds, labels = [], []
        for path in files:
            check_regular(path, None, "dataset file")
            try:
                with h5py.File(path, "r") as h5:
                    cloud, label = self._read(path, h5, len(names))
            except PceaError:
                raise
            except Exception as err:  # h5py raises OSError, KeyError, TypeError on broken files
                raise PceaFileError(path, f"cannot read as HDF5 ({type(err).__name__}: {err})") from None
            clouds.append(cloud)
            labels.append(label)
        if self.num_points is None:  # every stored point, as many in every file
            counts = sorted({cloud.shape[1] for cloud in clouds})
            if len(counts) > 1:
                stored = " or ".join(map(str, counts))
                raise PceaFileError(self.root, f"its {self.split} files store {stored} points per shape; "
                                               "give num_points")
            self.num_points = counts[0]
        keep = self._select(names, np.concatenate(labels), classes)
        self._clouds = self._to_canonical(np.concatenate(clouds)[keep])

    def _files(self) -> list[Path]:
        listing = self.root / f"{self.split}_files.txt"
        if listing.is_file():
            # Only the base name counts (the release's lines carry a data/... prefix), so a line
            # naming ../elsewhere/x.h5 still reads root/x.h5: nothing outside the root is opened.
            files = [self.root / _plain_name(listing, Path(line.replace("\\", "/")).name, line)
                     for line in _read_names(listing)]
            missing = [path.name for path in files if not path.exists() and not path.is_symlink()]
            if missing:
                raise PceaFileError(listing, f"lists {', '.join(missing)}, not found in {self.root}")
            return files
        files = sorted(self.root.glob(f"ply_data_{self.split}*.h5"))
        if not files:
            raise MissingSplitError(self.root, f"no {listing.name} and no ply_data_{self.split}*.h5 files")
        return files

    def _read(self, path: Path, h5, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, num_points, C) float32 clouds and (n,) labels of one h5 file, checked."""
        for key in ("data", "label") + (("normal",) if self.normals else ()):
            if not _stored_here(path, h5, key):
                what = " (normals=True needs it)" if key == "normal" else ""
                raise PceaFileError(path, f"has no {key!r} dataset{what}; it has {', '.join(h5.keys())}")
        data, label = h5["data"], h5["label"]
        if data.ndim != 3 or data.shape[2] != 3:
            raise PceaFileError(path, f"'data' has shape {data.shape}, expected (n, points, 3)")
        if self.num_points is not None and data.shape[1] < self.num_points:
            raise PceaFileError(path, f"stores {data.shape[1]} points per shape, "
                                      f"num_points={self.num_points} asks for more")
        if label.size != data.shape[0]:
            raise PceaFileError(path, f"{data.shape[0]} shapes but {label.size} labels")
        for key in ("data", "label") + (("normal",) if self.normals else ()):
            _check_stored(path, key, h5[key])
        labels = np.asarray(label[()]).reshape(-1).astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise PceaFileError(path, f"label {labels.max()} outside the {num_classes} classes "
                                      "of shape_names.txt")
        parts = [np.asarray(data[:, :self.num_points], dtype=np.float32)]
        if self.normals:
            normal = h5["normal"]
            if normal.shape != data.shape:
                raise PceaFileError(path, f"'normal' has shape {normal.shape}, 'data' {data.shape}")
            parts.append(np.asarray(normal[:, :self.num_points], dtype=np.float32))
        clouds = np.concatenate(parts, axis=2)               # (n, num_points, C)
        if not np.isfinite(clouds).all():
            raise PceaFileError(path, "contains NaN or infinite values")
        return clouds, labels


def _stored_here(path: Path, h5, key: str) -> bool:
    """Whether ``h5`` holds a dataset ``key`` whose data is in this very file.

    A link (external, soft or user-defined), external raw storage or a virtual dataset
    would make h5py open or read other files (a 1 kB file could point at gigabytes, or at a
    FIFO that blocks for ever): each is refused before anything follows it. The link is
    inspected with the low-level API because ``key in h5`` already traverses it.
    """
    import h5py

    name = key.encode()
    if not h5.id.links.exists(name):
        return False
    kind = h5.id.links.get_info(name).type
    if kind == h5py.h5l.TYPE_EXTERNAL:
        target = h5.id.links.get_val(name)[0].decode("utf-8", "replace")
        raise PceaFileError(path, f"{key!r} is an external link to {target!r}; pcea reads only data stored "
                                  "in the file itself")
    if kind != h5py.h5l.TYPE_HARD:
        raise PceaFileError(path, f"{key!r} is a link, not a dataset; pcea reads only data stored in the "
                                  "file itself")
    dataset = h5[key]
    if not isinstance(dataset, h5py.Dataset):
        raise PceaFileError(path, f"{key!r} is a group, not a dataset")
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise PceaFileError(path, f"{key!r} keeps its data in external files; pcea reads only data stored "
                                  "in the file itself")
    if dataset.is_virtual:
        raise PceaFileError(path, f"{key!r} is a virtual dataset mapping other files; pcea reads only data "
                                  "stored in the file itself")
    return True


def _check_stored(path: Path, key: str, dataset) -> None:
    """Refuse a dataset that declares far more bytes than the file stores for it.

    A few-kB h5 file can declare a chunked dataset of gigabytes that was never
    written; reading it would allocate all of that. Uncompressed data must be
    stored in full; compressed data is allowed a 100:1 ratio.
    """
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if declared and stored < (declared / 100 if filtered else declared):
        raise PceaFileError(path, f"{key!r} declares shape {dataset.shape} ({declared:,} bytes) but the "
                                  f"file stores {stored:,} bytes of it (truncated or never written)")


# --- Princeton folders --------------------------------------------------------------------

def _shape_extensions() -> tuple[str, ...]:
    return tuple(dict.fromkeys(MESH_EXTENSIONS + POINT_EXTENSIONS))


def mesh_classes(root: Path) -> list[str]:
    """Sorted class directories of a Princeton layout (those with a train/ or test/ folder)."""
    return sorted(entry.name for entry in root.iterdir()
                  if entry.is_dir() and any((entry / split).is_dir() for split in SPLITS))


def shape_files(root: Path, split: str, class_names: list[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` of every shape file of one split, in class then name order.

    A shape file is an entry whose extension :func:`pcea.io.load_points` reads; anything
    else in the folders (READMEs, hidden files) is ignored. An entry with such an extension
    that is not a regular file (a directory, a FIFO, a dangling link) is kept, so that the
    reader refuses it and the dataset's warning names it instead of dropping it silently.

    Raises:
        PceaFileError: no class has a ``split`` folder (a copy holding only the train split).
    """
    if not any((root / name / split).is_dir() for name in class_names):
        present = [other for other in SPLITS if any((root / name / other).is_dir() for name in class_names)]
        raise MissingSplitError(root, f"no {split}/ folder in any class directory; this copy holds only the "
                                  f"{' and '.join(present) or 'no'} split")
    extensions = _shape_extensions()
    return [(path, label) for label, name in enumerate(class_names)
            for path in sorted((root / name / split).glob("*"))
            if path.suffix.lower() in extensions and not path.name.startswith(".")]


def mesh_seed(path: Path, root: Path, seed: int) -> int:
    """A sampling seed that depends on the shape, not on its position in a list."""
    return zlib.crc32(f"{seed}/{path.relative_to(root).as_posix()}".encode())


class ModelNet40Princeton(_PointCloudDataset):
    """The Princeton layout ``<root>/<class>/{train,test}/<class>_NNNN.<ext>``.

    One file per shape, in any format :func:`pcea.io.load_points` reads: the release's
    ``.off`` meshes (sampled by area, glued ``OFF490 518 0`` headers included), or point
    files such as the public ``.npy``, ``.ply``, ``.txt`` and ``.pcd`` conversions
    (subsampled). Every shape is normalised and kept in memory; its sample seed depends
    on ``seed`` and the file's name. The release is z-up (``UP``), so clouds are turned
    into pcea's y-up frame. Meshes are sampled on every construction, in one process,
    which takes minutes for ModelNet40's 12,311 meshes: convert them once, on all cores,
    with ``pcea prepare modelnet40 --src ModelNet40/ --out DIR`` and train on the h5
    layout instead (point files load in seconds). A file that cannot be read is skipped
    with a :class:`pcea.io.PceaWarning` naming it.

    Args: as :class:`ModelNet40H5` (``root`` holds the class directories; ``up``
    defaults to z).

    Raises:
        PceaFileError: no class directories, or none of them has a ``split`` folder.
    """

    UP = "z"

    def __init__(self, root, split: str = "train", num_points: int = 1024, transform: Transform | None = None,
                 normals: bool = False, classes: Sequence[str] | None = None, seed: int = 0,
                 up: str | None = None):
        super().__init__(root, split, num_points, transform, normals, seed, up)
        names = mesh_classes(self.root)
        if not names:
            raise PceaFileError(self.root, "no class directories with train/ or test/ folders")
        files = shape_files(self.root, split, names)
        keep = self._select(names, np.array([label for _, label in files], dtype=np.int64), classes)
        clouds, kept_labels, skipped = [], [], []
        for index, label in zip(keep, self.labels, strict=True):
            path, _ = files[index]
            try:
                clouds.append(load_points(path, num_points, seed=mesh_seed(path, self.root, seed),
                                          normals=normals, up="y"))  # turned below, all at once
            except PceaError as err:
                skipped.append(str(err))
                continue
            except Exception as err:  # as in pcea prepare: a bug on one odd file must not end a whole run
                skipped.append(f"{path}: unexpected {type(err).__name__}: {err}")
                continue
            kept_labels.append(label)
        if skipped:
            warnings.warn(f"{self.root}: skipped {len(skipped)} unreadable files: " + "; ".join(skipped[:5])
                          + (" ..." if len(skipped) > 5 else ""), PceaWarning, stacklevel=2)
        self.labels = np.asarray(kept_labels, dtype=np.int64)
        channels = 6 if normals else 3
        self._clouds = self._to_canonical(
            np.stack(clouds) if clouds else np.zeros((0, num_points, channels), np.float32))


# --- resampled text files -----------------------------------------------------------------


def resampled_prefix(root: Path) -> str | None:
    """``modelnet40`` or ``modelnet10``: whose ``*_shape_names.txt`` the directory has."""
    for prefix in ("modelnet40", "modelnet10"):
        if (root / f"{prefix}_shape_names.txt").is_file():
            return prefix
    return None


class ModelNet40Resampled(_PointCloudDataset):
    """The ``modelnet40_normal_resampled`` layout (PointNet++).

    ``modelnet40_shape_names.txt`` names the classes, ``modelnet40_{train,test}.txt``
    list shape ids (``airplane_0001``), and ``<class>/<shape id>.txt`` holds one
    ``x,y,z,nx,ny,nz`` line per point (10,000 per shape). The ``modelnet10_*`` lists
    are used when they are the only ones, or when ``classes`` names exactly their classes.

    Parsing thousands of text files is slow, so the first time the first
    ``num_points`` points of every listed shape are parsed once, normalised to the
    unit sphere, and saved as one ``.npy`` (written atomically) in ``cache_dir``
    (default ``<root>/.pcea-cache``); later constructions with the same file list and
    ``num_points`` load that array in a fraction of a second.

    Args: as :class:`ModelNet40H5`, plus
        cache_dir: where the parsed array is kept (``None``: ``<root>/.pcea-cache``).
    """

    def __init__(self, root, split: str = "train", num_points: int = 1024, transform: Transform | None = None,
                 normals: bool = False, classes: Sequence[str] | None = None, seed: int = 0,
                 up: str | None = None, *, cache_dir: str | os.PathLike | None = None):
        super().__init__(root, split, num_points, transform, normals, seed, up)
        prefix = resampled_prefix(self.root)
        if prefix is None:
            raise PceaFileError(self.root, "no modelnet40_shape_names.txt or modelnet10_shape_names.txt")
        names = _read_names(self.root / f"{prefix}_shape_names.txt")
        ten = self.root / "modelnet10_shape_names.txt"
        if (prefix == "modelnet40" and classes is not None and ten.is_file()
                and (self.root / f"modelnet10_{split}.txt").is_file()
                and set(classes) == set(_read_names(ten))):
            prefix, names = "modelnet10", _read_names(ten)  # the release's own ModelNet10 lists
        shape_ids = _read_names(self.root / f"{prefix}_{split}.txt")
        labels = []
        for shape_id in shape_ids:
            # root/<class>/<shape id>.txt must stay inside the root: no ../, no /, no absolute path
            _plain_name(self.root / f"{prefix}_{split}.txt", shape_id, shape_id)
            class_name = shape_id.rsplit("_", 1)[0]
            if class_name not in names:
                raise PceaFileError(self.root / f"{prefix}_{split}.txt", f"shape {shape_id!r} has class "
                                    f"{class_name!r}, not in {prefix}_shape_names.txt")
            labels.append(names.index(class_name))
        keep = self._select(names, np.array(labels, dtype=np.int64), classes)
        cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".pcea-cache"
        clouds = self._cached(shape_ids, cache_dir)         # (n_all, num_points, 6)
        self._clouds = self._to_canonical(clouds[keep][:, :, : 6 if normals else 3])

    def _cached(self, shape_ids: list[str], cache_dir: Path) -> np.ndarray:
        key = hashlib.sha256("\n".join([f"v1 {self.num_points}", *shape_ids]).encode()).hexdigest()[:16]
        cache = cache_dir / f"{self.split}_{self.num_points}_{key}.npy"
        expected = (len(shape_ids), self.num_points, 6)
        if cache.is_file():
            try:
                clouds = np.load(cache, allow_pickle=False)
                if clouds.shape == expected and clouds.dtype == np.float32 and np.isfinite(clouds).all():
                    return clouds
            except Exception:  # a damaged cache (truncated, garbage) is rebuilt below
                pass
        clouds = np.stack([self._parse(self.root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt")
                           for shape_id in shape_ids])
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with replacing(cache) as temp, open(temp, "wb") as out:
                np.save(out, clouds)
        except OSError as err:  # a read-only dataset still loads, just slowly every time
            warnings.warn(f"{cache_dir}: cannot write the parsed cache ({err.strerror or err}); "
                          "pass cache_dir= to a writable place", PceaWarning, stacklevel=3)
        return clouds

    def _parse(self, path: Path) -> np.ndarray:
        """The first ``num_points`` ``x,y,z,nx,ny,nz`` lines of one shape, normalised."""
        check_regular(path, DEFAULT_MAX_BYTES, "dataset file", "pcea.io.DEFAULT_MAX_BYTES")
        try:
            with path.open("rb") as handle:
                lines = list(islice(handle, self.num_points))
        except OSError as err:
            raise PceaFileError(path, f"cannot read ({err.strerror or err})") from None
        if len(lines) < self.num_points:
            raise PceaFileError(path, f"has {len(lines)} points, num_points={self.num_points} asks for more")
        try:
            cloud = np.array(b" ".join(lines).replace(b",", b" ").split(), dtype=np.float32)
            cloud = cloud.reshape(self.num_points, 6)
        except ValueError:
            raise PceaFileError(path, "expected lines of six numbers x,y,z,nx,ny,nz") from None
        if not np.isfinite(cloud).all():
            raise PceaFileError(path, "contains NaN or infinite values")
        return normalize_unit_sphere(cloud)


# --- layout detection ---------------------------------------------------------------------

LAYOUTS = {"h5": ModelNet40H5, "resampled": ModelNet40Resampled, "mesh": ModelNet40Princeton}
EXPECTED = ("expected one of: the h5 layout (shape_names.txt, train_files.txt, ply_data_train0.h5, ...); "
            "the resampled layout (modelnet40_shape_names.txt, modelnet40_train.txt, "
            "<class>/<class>_0001.txt); the Princeton layout (<class>/train/<class>_0001.off, "
            "or one .npy/.ply/.txt/.pcd point file per shape)")


def detect_layout(path: Path) -> str | None:
    """The layout ``path`` itself holds ("h5", "resampled" or "mesh", the Princeton folders), or None."""
    if not path.is_dir():
        return None
    if (path / "shape_names.txt").is_file() and (
            any(path.glob("*_files.txt")) or any(path.glob("ply_data_*.h5"))):
        return "h5"
    if resampled_prefix(path) is not None:
        return "resampled"
    try:
        extensions = _shape_extensions()
        for name in mesh_classes(path):
            for split in SPLITS:
                folder = path / name / split
                if folder.is_dir() and any(f.suffix.lower() in extensions for f in folder.iterdir()):
                    return "mesh"
    except OSError:
        return None
    return None


def find_layout(path: str | os.PathLike) -> tuple[Path, str]:
    """The directory and layout a path points at (itself, a child, or a grandchild).

    A parent holding several layouts of one dataset (the synthetic root with
    ``mesh/ h5/ resampled/``) gives the fastest: h5, then resampled, then mesh.

    Raises:
        PceaFileError: nothing recognised, or several different datasets.
    """
    path = Path(path)
    if not path.exists():
        raise PceaFileError(path, "no such directory")
    if not path.is_dir():
        raise PceaFileError(path, "not a directory; " + EXPECTED)
    layout = detect_layout(path)
    if layout is not None:
        return path, layout
    children = _subdirectories(path)
    for depth in (1, 2):
        groups: dict[Path, list[tuple[Path, str]]] = {}
        for child in children:
            for candidate in [child] if depth == 1 else _subdirectories(child):
                found = detect_layout(candidate)
                if found is not None:
                    groups.setdefault(path if depth == 1 else child, []).append((candidate, found))
        if len(groups) > 1:
            raise PceaFileError(path, "holds several datasets (" + ", ".join(
                str(group) for group in groups) + "); name one of them")
        if groups:
            (found,) = groups.values()
            found.sort(key=lambda item: list(LAYOUTS).index(item[1]))
            if len(found) > 1 and found[0][1] == found[1][1]:
                raise PceaFileError(path, f"holds several {found[0][1]} datasets ("
                                    + ", ".join(str(item[0]) for item in found) + "); name one of them")
            return found[0]
    raise PceaFileError(path, "no ModelNet40 layout found; " + EXPECTED)


def _subdirectories(path: Path) -> list[Path]:
    """Sorted visible subdirectories; none where the directory cannot be listed."""
    try:
        return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    except OSError:
        return []


def dataset_class_names(path: str | os.PathLike) -> list[str]:
    """The class names of the dataset at ``path``, in label order, read from its lists or folders
    without loading a cloud: what ``open_dataset(path).class_names`` holds (no ``classes=`` subset)."""
    root, layout = find_layout(path)
    if layout == "h5":
        return _read_names(root / "shape_names.txt")
    if layout == "resampled":
        return _read_names(root / f"{resampled_prefix(root)}_shape_names.txt")
    return mesh_classes(root)


def open_dataset(path: str | os.PathLike, split: str = "train", **kwargs) -> _PointCloudDataset:
    """Open the ModelNet40/10 dataset at ``path`` in whichever layout it is.

    Args:
        path: a directory holding one of the three layouts, or a parent of one
            (see :func:`find_layout`).
        split: "train" or "test".
        **kwargs: ``num_points``, ``transform``, ``normals``, ``classes``, ``seed``, ``up``.

    Returns:
        A :class:`ModelNet40H5`, :class:`ModelNet40Resampled` or :class:`ModelNet40Princeton`.

    Raises:
        PceaError: no layout recognised (the message says what each looks like).
    """
    root, layout = find_layout(path)
    return LAYOUTS[layout](root, split, **kwargs)
