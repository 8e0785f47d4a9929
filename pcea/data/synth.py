"""pcea-shapes: a procedurally generated stand-in for ModelNet40, in its three layouts.

The shapes themselves (primitives, one builder per class, :func:`make_shape`) live in
:mod:`pcea.data.shapes`; this module samples them and writes the dataset. Shapes are
built z-up and turned y-up, pcea's frame; each layout is written in the frame of its
public release, so that the loaders' turns are exercised as on the real data: the h5 and
resampled clouds y-up, the Princeton OFF meshes z-up (turned back before they are written).

Layout written by :func:`generate` (``out/``)::

    pcea-shapes.json                      the generation parameters
    mesh/<class>/{train,test}/<class>_NNNN.off              Princeton ModelNet40 layout
    h5/ply_data_{train,test}0.h5, shape_names.txt,
       {train,test}_files.txt              modelnet40_ply_hdf5_2048 layout, with normals
    resampled/<class>/<class>_NNNN.txt, modelnet40_shape_names.txt,
       modelnet40_{train,test}.txt        modelnet40_normal_resampled layout
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pcea.atomic import replacing_dir
from pcea.data import default_root
from pcea.data.shapes import CLASS_NAMES, make_shape
from pcea.errors import MAX_POINTS, PceaError, PceaFileError, check_memory, check_positive_int
from pcea.geometry import normalize_unit_sphere
from pcea.io import sample_surface

if TYPE_CHECKING:
    from trimesh import Trimesh as Mesh

__all__ = ["CLASS_NAMES", "FORMAT", "check_settings", "generate", "ensure_synthetic", "make_shape"]

FORMAT = "pcea-shapes/2"  # 2: the OFF meshes are z-up, as in the Princeton release
PARAMS_FILE = "pcea-shapes.json"
TEST_FRACTION = 0.2
H5_SHAPES_PER_FILE = 2048  # as in the ModelNet40 h5 release
H5_PREFIX = "data/modelnet40_ply_hdf5_2048/"  # the directory prefix of the release's file lists


# --- writing the layouts -------------------------------------------------------------------

def _write_off(path: Path, mesh: Mesh) -> None:
    lines = [f"OFF\n{len(mesh.vertices)} {len(mesh.faces)} 0\n"]
    lines += [f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in mesh.vertices]
    lines += [f"3 {a} {b} {c}\n" for a, b, c in mesh.faces]
    path.write_text("".join(lines))


def z_up(mesh: Mesh) -> Mesh:
    """A copy of a y-up mesh turned z-up, the frame of the Princeton release: (x, y, z) -> (x, -z, y)."""
    turned = mesh.copy()
    turned.vertices = np.asarray(mesh.vertices)[:, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])
    return turned


def _shape_name(name: str, number: int) -> str:
    return f"{name}_{number:04d}"


def _split_sizes(per_class: int) -> tuple[int, int]:
    test = max(1, round(per_class * TEST_FRACTION))
    return per_class - test, test


def _build_one(task: tuple[Path, str, int, int, int, str]) -> np.ndarray:
    """Make shape ``index`` of a class, write its OFF and text files; return its points."""
    out, name, index, seed, points, split = task
    # seeded by the class's place in CLASS_NAMES, so chair_0001 is the same whatever --classes
    rng = np.random.default_rng([seed, CLASS_NAMES.index(name), index])
    mesh = make_shape(name, rng)
    xyz, normals = sample_surface(mesh, points, rng)
    cloud = normalize_unit_sphere(np.concatenate([xyz, normals], axis=1))
    stem = _shape_name(name, index + 1)
    _write_off(out / "mesh" / name / split / f"{stem}.off", z_up(mesh))
    np.savetxt(out / "resampled" / name / f"{stem}.txt", cloud, fmt="%.6f", delimiter=",")
    return cloud


def _write_h5(out: Path, split: str, clouds: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator) -> None:
    import h5py  # here, as trimesh in pcea.data.shapes: import pcea does not wait for it

    order = rng.permutation(len(clouds))
    clouds, labels = clouds[order], labels[order]
    names = []
    for number, start in enumerate(range(0, len(clouds), H5_SHAPES_PER_FILE)):
        name = f"ply_data_{split}{number}.h5"
        chunk = slice(start, start + H5_SHAPES_PER_FILE)
        with h5py.File(out / "h5" / name, "w", track_order=False) as f:
            f.create_dataset("data", data=clouds[chunk, :, :3], track_times=False)
            f.create_dataset("label", data=labels[chunk, None].astype(np.uint8), track_times=False)
            f.create_dataset("normal", data=clouds[chunk, :, 3:], track_times=False)
        names.append(H5_PREFIX + name)
    (out / "h5" / f"{split}_files.txt").write_text("".join(f"{n}\n" for n in names))


def _params(classes: int, per_class: int, seed: int, points: int) -> dict:
    return {"format": FORMAT, "classes": classes, "per_class": per_class, "seed": seed, "points": points,
            "test_fraction": TEST_FRACTION, "class_names": _class_names(classes)}


def _class_names(classes: int) -> list[str]:
    """The first ``classes`` of CLASS_NAMES in label order: alphabetical, as in ModelNet40's files."""
    return sorted(CLASS_NAMES[:classes])


def check_settings(classes: int, per_class: int, points: int) -> None:
    """Refuse bad counts before any work: the whole dataset's clouds are held in memory at once."""
    if not 2 <= classes <= len(CLASS_NAMES):
        raise PceaError(f"--classes must be between 2 and {len(CLASS_NAMES)}, got {classes}")
    check_positive_int("per_class", per_class)
    if per_class < 2:
        raise PceaError(f"--per-class must be at least 2 (one train and one test shape), got {per_class}")
    check_positive_int("points", points, at_most=MAX_POINTS)
    # float32 clouds of xyz and normals, collected per shape and then stacked: two copies at the peak.
    check_memory(f"--per-class {per_class} x --classes {classes} x --points {points}",
                 2 * classes * per_class * points * 6 * 4)


def generate(out: str | os.PathLike, *, classes: int = 10, per_class: int = 100, seed: int = 0,
             points: int = 2048, workers: int | None = None) -> Path:
    """Write the pcea-shapes dataset in the three ModelNet40 layouts under ``out``.

    The same arguments always give the same files. The dataset is built in a temporary
    directory next to ``out`` and renamed into place, so an interrupted run never leaves
    half a dataset; an existing pcea-shapes dataset at ``out`` is replaced, any other
    non-empty directory is refused.

    Args:
        out: the dataset root to create.
        classes: number of classes, the first ``classes`` of :data:`CLASS_NAMES`; labels
            number them alphabetically, as ModelNet40's ``shape_names.txt`` does.
        per_class: shapes per class; 20 % of them (at least one) form the test split.
        seed: the seed of every random choice.
        points: points per shape in the h5 and text layouts.
        workers: processes to build shapes with; default: up to 2, one for small datasets.

    Returns:
        ``out`` as a Path.
    """
    check_settings(classes, per_class, points)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PARAMS_FILE).is_file())):
        raise PceaError(f"{out}: exists and is not a pcea-shapes dataset; refusing to overwrite it")
    names = _class_names(classes)
    n_train, n_test = _split_sizes(per_class)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaFileError(out.parent, f"cannot create the dataset here: {err.strerror or err}") from None
    try:
        with replacing_dir(out) as tmp:  # the umask's mode; an old pcea-shapes at out is swapped out
            _write_dataset(tmp, names, n_train, per_class, seed, points, workers)
    except OSError as err:  # a full disk, a quota: one line, nothing half-written left
        raise PceaFileError(out, f"cannot write the dataset: {err.strerror or err}") from None
    return out


def _write_dataset(tmp: Path, names: list[str], n_train: int, per_class: int, seed: int, points: int,
                   workers: int | None) -> None:
    """Write the three layouts of :func:`generate` into the empty directory ``tmp``."""
    classes = len(names)
    for name in names:
        for split in ("train", "test"):
            (tmp / "mesh" / name / split).mkdir(parents=True)
        (tmp / "resampled" / name).mkdir(parents=True)
    (tmp / "h5").mkdir()
    tasks = [(tmp, name, index, seed, points, "train" if index < n_train else "test")
             for name in names for index in range(per_class)]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(tasks) >= 200 else 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            clouds = list(pool.map(_build_one, tasks, chunksize=16))
    else:
        clouds = [_build_one(task) for task in tasks]
    clouds = np.stack(clouds).reshape(classes, per_class, points, 6)
    labels = np.repeat(np.arange(classes), per_class).reshape(classes, per_class)
    shuffle = np.random.default_rng([seed, 2**31])
    for split, part in (("train", slice(0, n_train)), ("test", slice(n_train, per_class))):
        _write_h5(tmp, split, clouds[:, part].reshape(-1, points, 6), labels[:, part].ravel(), shuffle)
    shape_names = "".join(f"{n}\n" for n in names)
    (tmp / "h5" / "shape_names.txt").write_text(shape_names)
    (tmp / "resampled" / "modelnet40_shape_names.txt").write_text(shape_names)
    for split, numbers in (("train", range(n_train)), ("test", range(n_train, per_class))):
        lines = "".join(f"{_shape_name(n, i + 1)}\n" for n in names for i in numbers)
        (tmp / "resampled" / f"modelnet40_{split}.txt").write_text(lines)
    (tmp / PARAMS_FILE).write_text(json.dumps(_params(classes, per_class, seed, points), indent=2) + "\n")


def dataset_params(root: str | os.PathLike) -> dict | None:
    """The settings the pcea-shapes dataset at ``root`` was generated with, or None when there is none."""
    try:
        found = json.loads((Path(root) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def existing_dataset(root: str | os.PathLike, *, classes: int = 10, per_class: int = 100, seed: int = 0,
                     points: int = 2048) -> str | None:
    """What ``pcea synth`` would overwrite at ``root``: None (no pcea-shapes there), "same" (the
    dataset these settings give), or the other settings, e.g. "3 classes x 10 shapes, 64 points, seed 0"."""
    found = dataset_params(root)
    if found is None:
        return None
    if found == _params(classes, per_class, seed, points):
        return "same"
    return (f"{found.get('classes')} classes x {found.get('per_class')} shapes, "
            f"{found.get('points')} points, seed {found.get('seed')}")


def ensure_synthetic(root: str | os.PathLike | None = None, **kwargs) -> Path:
    """The pcea-shapes dataset at ``root``, generated first if it is missing or differs.

    Args:
        root: the dataset root; default ``pcea.data.default_root() / "pcea-shapes"``.
        **kwargs: the arguments of :func:`generate` (classes, per_class, seed, points, workers).

    Returns:
        The dataset root.
    """
    root = Path(root) if root is not None else default_root() / "pcea-shapes"
    unknown = set(kwargs) - {"classes", "per_class", "seed", "points", "workers"}
    if unknown:
        raise TypeError(f"ensure_synthetic() got unexpected arguments: {', '.join(sorted(unknown))}")
    wanted = {"classes": 10, "per_class": 100, "seed": 0, "points": 2048}
    wanted.update({k: v for k, v in kwargs.items() if k != "workers"})
    if dataset_params(root) == _params(**wanted):
        return root
    return generate(root, **wanted, workers=kwargs.get("workers"))
