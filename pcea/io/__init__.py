"""Reading a user's file into a normalised point cloud.

Meshes (``.off .ply .obj .stl .glb``) are sampled uniformly by surface area; point
files (``.ply`` without faces, ``.xyz .txt .pts .csv .npy .npz .pcd``) are subsampled.
Either way the result gets the normalisation of the training data
(:func:`pcea.geometry.normalize_unit_sphere`) and is turned into pcea's y-up frame
(:func:`pcea.geometry.to_canonical`) from the file's up axis: ``up="z"`` or ``"y"``, or
``"auto"`` (the default): the axis the file declares (:func:`declared_up`: glTF by its
specification, PointNet++'s resampled text layout), else a guess by format (:func:`default_up`:
y for ``.obj`` and ``.glb``, z for STL, OFF, PLY, PCD and the rest). Only a model can do
better than that guess: :func:`pcea.classify` reads an undeclared file both ways and keeps the
reading it is more confident in. Arrays in memory go the same way through :func:`points_from_array`.

Files from the internet are messy or hostile, so every reader here

* checks the size of the file and the counts its header declares *before*
  allocating anything (a PLY header declaring 10^9 vertices fails at once),
* reads the messy variants real datasets contain: OFF with CRLF line ends or the
  glued ``OFF490 518 0`` first line of the Princeton ModelNet40 release, ASCII PLY
  with extra vertex properties, OBJ whose ``.mtl`` or texture image is missing,
  ASCII STL in E-notation, point files with CRLF, a header line, and comma, space,
  semicolon or tab separators,
* turns every failure into a :class:`pcea.errors.PceaFileError` naming the file.

The public functions and the dispatch on a file's extension live here; the parser of
each format, and the checks they share, live in :mod:`pcea.io.formats`, so that each
of the two files reads in one sitting.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from pcea.errors import PceaError, PceaFileError, PceaWarning, check_positive_int, check_regular
from pcea.geometry import UP_AXES, check_outliers, normalize_unit_sphere, outlier_mask, to_canonical
from pcea.io.formats import (
    _check_finite,
    _check_stl_header,
    _describe,
    _load_npy,
    _load_npz,
    _load_pcd,
    _load_ply_points,
    _load_text_points,
    _obj_face_problem,
    _read_off,
    _read_ply_header,
)
from pcea.io.meshes import mesh_source

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_UP",
    "MESH_EXTENSIONS",
    "POINT_EXTENSIONS",
    "PceaWarning",
    "declared_up",
    "default_up",
    "load_mesh",
    "load_points",
    "points_from_array",
    "resolve_up",
    "sample_surface",
]

MESH_EXTENSIONS = (".off", ".ply", ".obj", ".stl", ".glb")
POINT_EXTENSIONS = (".ply", ".xyz", ".txt", ".pts", ".csv", ".npy", ".npz", ".pcd")
DEFAULT_MAX_BYTES = 512 * 1024**2
DEFAULT_MAX_POINTS = 10_000_000
DEFAULT_UP = "auto"
_Y_UP_EXTENSIONS = (".obj", ".glb")  # Wavefront OBJ and glTF are y-up by convention
_Y_UP_BY_SPEC = (".glb",)  # glTF 2.0, section "Coordinate System and Units": +Y is up
# PointNet++'s resampled ModelNet40: <class>/<class>_NNNN.txt, rows "x,y,z,nx,ny,nz", y-up.
_RESAMPLED_NAME = re.compile(r"(?P<shape_class>.+)_\d{4}\.txt", re.IGNORECASE)
_RESAMPLED_ROW = re.compile(r"\s*(?:[-+0-9.eE]+\s*,\s*){5}[-+0-9.eE]+\s*")


def declared_up(path: str | os.PathLike) -> str | None:
    """The up axis a file itself declares, or None where it says nothing.

    Two things declare one. A format's specification: glTF 2.0 (``.glb``) is +Y up. A known layout
    recognisable from one file: PointNet++'s resampled ModelNet40, a ``<class>/<class>_NNNN.txt``
    whose first row is ``x,y,z,nx,ny,nz`` (y-up, as :class:`pcea.data.ModelNet40Resampled` reads
    it). Nothing else does: OBJ is y-up by convention only, and z-up OBJ files are common (CAD
    exports, converted ModelNet meshes); STL, OFF, PLY, PCD, npy and text files have no field for it.
    An unreadable file declares nothing (its reader reports the problem).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _Y_UP_BY_SPEC:
        return "y"
    match = _RESAMPLED_NAME.fullmatch(path.name)
    if suffix != ".txt" or match is None or match["shape_class"] != path.parent.name:
        return None
    try:
        with path.open("rb") as file:
            head = file.read(512).decode("utf-8", errors="replace")
    except OSError:
        return None
    first = next((line for line in head.splitlines() if line.strip()), "")
    return "y" if _RESAMPLED_ROW.fullmatch(first) else None


def default_up(path: str | os.PathLike) -> str:
    """The up axis :func:`load_points` takes with ``up="auto"`` for a file that declares none.

    "y" for OBJ and glTF (their convention), "z" for every other format. A guess by extension, so
    :func:`pcea.classify` does not use it: where :func:`declared_up` says nothing, it lets the
    model choose between the two readings.
    """
    return "y" if Path(path).suffix.lower() in _Y_UP_EXTENSIONS else "z"


def resolve_up(path: str | os.PathLike, up: str) -> str:
    """``up`` itself; for "auto" what the file declares (:func:`declared_up`), else its format's
    default (:func:`default_up`); PceaError for anything else."""
    if up == "auto":
        return declared_up(path) or default_up(path)
    if up not in UP_AXES:
        raise PceaError(f"up={up!r}: expected auto, {' or '.join(UP_AXES)}")
    return up


def _memory_is_a_file_error(read):
    """``read`` with a :class:`MemoryError` (the machine's, or an address-space limit) turned into a
    :class:`PceaFileError` naming the file: the limits bound what a file may declare, and this is the
    one line for the rest."""
    @functools.wraps(read)
    def guarded(path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except MemoryError:
            raise PceaFileError(path, "not enough memory to read it (lower max_points or max_bytes, or "
                                      "free memory)") from None
    return guarded


@_memory_is_a_file_error
def load_points(
    path: str | os.PathLike,
    num_points: int = 1024,
    seed: int = 0,
    normals: bool = False,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_points: int = DEFAULT_MAX_POINTS,
    up: str = DEFAULT_UP,
    outliers: str = "keep",
) -> np.ndarray:
    """Read a mesh or point file into a normalised, y-up cloud of ``num_points`` points.

    Meshes are sampled by area with face normals; point files are subsampled
    without replacement (with replacement, and a :class:`PceaWarning`, when the
    file holds fewer points than asked for). The same ``seed`` gives the same points.
    A point file must hold at least 3 points not all on one line: a single point, points
    that all coincide, or an exact line segment has no shape and no extent to normalise, and
    is refused. In ``.pcd`` files, points with a NaN coordinate (PCL's mark for an invalid
    point) are dropped with a :class:`PceaWarning`; infinite values are refused.

    Args:
        path: the file; its extension picks the reader (see ``MESH_EXTENSIONS`` and
            ``POINT_EXTENSIONS``; a ``.ply`` without faces is read as points).
        num_points: points in the result.
        seed: seed of the sampling.
        normals: also return normals (columns 3:6); a point file then needs 6 columns.
        max_bytes: larger files are refused.
        max_points: files declaring more vertices, faces or points are refused.
        up: the file's up axis, "y" or "z", or "auto": what the file declares
            (:func:`declared_up`), else its format's usual axis (:func:`default_up`: y for OBJ and
            glTF, z otherwise), a guess; the cloud is turned from it into pcea's y-up frame.
        outliers: "keep", or "remove" to drop a point file's stray points first
            (:func:`pcea.geometry.outlier_mask` on up to twice ``num_points`` points of the file);
            for scans with stray returns. Meshes are sampled on their surface and have none.

    Returns:
        (num_points, 3) float32, or (num_points, 6) with normals, centred, scaled
        into the unit sphere, y up.

    Raises:
        PceaFileError: the file is missing, too large, unreadable or degenerate (a mesh with
            no area, a point file with fewer than 3 points off one line).
        PceaError: num_points is below 1.
    """
    check_positive_int("num_points", num_points)
    check_outliers(outliers, PceaError)
    path = Path(path)
    up = resolve_up(path, up)
    suffix = _check_file(path, max_bytes, MESH_EXTENSIONS + POINT_EXTENSIONS)
    rng = np.random.default_rng(seed)
    mesh = None
    if suffix == ".ply":
        header = _read_ply_header(path, max_points)
        if header["faces"] > 0:
            mesh = _load_mesh_checked(path, suffix, max_points, max_bytes=max_bytes)
        else:
            cloud = _load_ply_points(path, header, normals)
    elif suffix in MESH_EXTENSIONS:
        mesh = _load_mesh_checked(path, suffix, max_points, max_bytes=max_bytes)
    else:
        cloud = _load_point_file(path, suffix, normals, max_bytes, max_points)
    if mesh is None:
        _check_extent(path, cloud)

    if mesh is not None:
        points, face_normals, _ = _sample_scaled(mesh, num_points, rng, path)
        cloud = np.concatenate([points, face_normals], axis=1) if normals else points
    else:
        cloud = _subsample_scaled(path, cloud, num_points, rng, outliers)
    return _normalized(path, cloud, up)


def points_from_array(points: np.ndarray, num_points: int = 1024, seed: int = 0, normals: bool = False, *,
                      up: str = "y", name: str = "array", outliers: str = "keep") -> np.ndarray:
    """Raw points in memory into the cloud :func:`load_points` makes of a point file holding them.

    The same checks (a finite ``(N, C)`` array, C >= 3, at least 3 points off one line), the
    same sampling for the same ``seed``, the same normalisation and turn into the y-up frame.

    Args:
        points: (N, C) array-like, C >= 3 (x y z, then nx ny nz when ``normals``); a (1, N, C)
            array is taken as (N, C).
        num_points: points in the result (with replacement, and a :class:`PceaWarning`, when N is
            smaller).
        seed: seed of the sampling.
        normals: also return normals (columns 3:6); the array then needs 6 columns.
        up: the array's up axis, "y" or "z" (no file, so nothing declares one).
        name: how errors and warnings name the array.
        outliers: "keep", or "remove" to drop stray points first (as :func:`load_points`).

    Returns:
        (num_points, 3) or (num_points, 6) float32, centred, scaled into the unit sphere, y up.

    Raises:
        PceaFileError: starting with ``name``: a wrong shape, NaN or infinite values, no extent.
        PceaError: num_points below 1, or ``up`` not "y" or "z".
    """
    check_positive_int("num_points", num_points)
    check_outliers(outliers, PceaError)
    if up not in UP_AXES:
        raise PceaError(f"up={up!r}: expected {' or '.join(UP_AXES)} for an array")
    try:
        array = np.asarray(points)
    except (TypeError, ValueError) as err:
        raise PceaFileError(name, f"not an array of numbers ({_describe(err)})") from None
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise PceaFileError(name, f"holds {array.dtype}, expected real numbers")
    if array.ndim == 2 and array.shape[0] in (3, 6) and array.shape[1] > array.shape[0]:
        # PointNet-style code keeps clouds channels-first; read as rows it would be 3 points
        raise PceaFileError(name, f"shape {array.shape} is channels-first (C, N); pass (N, C) points "
                                  "(the transpose, array.T)")
    cloud = _point_columns(name, array, normals)
    _check_extent(name, cloud)
    cloud = _subsample_scaled(name, cloud, num_points, np.random.default_rng(seed), outliers)
    return _normalized(name, cloud, up)


def _subsample_scaled(path, cloud: np.ndarray, num_points: int, rng: np.random.Generator,
                      outliers: str = "keep") -> np.ndarray:
    """:func:`_subsample` and a uniform scale, in float64, so that huge but finite coordinates
    (1e300) neither overflow float32 nor the squares in the normalisation.

    With ``outliers="remove"`` the stray points of a pool of at most twice ``num_points`` points
    are dropped before the subsample: the pool keeps the filter's cost bounded on a scan of
    millions of points, and is dense enough that each point's neighbours are its surface's.
    """
    if outliers == "remove":
        pool_size = 2 * num_points
        pool = cloud if len(cloud) <= pool_size else cloud[rng.choice(len(cloud), pool_size, replace=False)]
        pool = _scaled(pool)
        keep = outlier_mask(pool)
        return _subsample(path, pool[keep], num_points, rng, removed=int((~keep).sum()))
    return _scaled(_subsample(path, cloud, num_points, rng))


def _scaled(cloud: np.ndarray) -> np.ndarray:
    """A float64 copy whose coordinates are at most 1 in absolute value."""
    cloud = np.array(cloud, dtype=np.float64)
    scale = np.abs(cloud[:, :3]).max() if len(cloud) else 0.0
    if scale > 0:
        cloud[:, :3] /= scale
    return cloud


def _normalized(path, cloud: np.ndarray, up: str) -> np.ndarray:
    """The training data's normalisation, then the turn from ``up`` into the y-up frame."""
    cloud = normalize_unit_sphere(cloud)
    if not np.isfinite(cloud).all():  # only normals can still be huge
        raise PceaFileError(path, "values too large for float32")
    return to_canonical(cloud, up)


@_memory_is_a_file_error
def load_mesh(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
              max_points: int = DEFAULT_MAX_POINTS):
    """Read a triangle mesh (``.off .ply .obj .stl .glb``), geometry only.

    OFF files are parsed by pcea (trimesh rejects the glued ``OFF490 518 0`` header
    of ModelNet40); the others go through trimesh with materials skipped, so a
    missing ``.mtl`` or texture image does not matter. Polygons are triangulated.

    Args:
        path: the mesh file.
        max_bytes: larger files are refused.
        max_points: files declaring more vertices or faces are refused.

    Returns:
        A ``trimesh.Trimesh`` with at least one face, finite vertices and face
        indices in range (not yet checked for surface area).

    Raises:
        PceaFileError: the file is missing, too large, unreadable or empty.
    """
    path = Path(path)
    suffix = _check_file(path, max_bytes, MESH_EXTENSIONS)
    if suffix == ".ply":
        header = _read_ply_header(path, max_points)
        if header["faces"] == 0:
            raise PceaFileError(path, "PLY file has no faces (a point cloud, not a mesh); "
                                      "use load_points")
    return _load_mesh_checked(path, suffix, max_points, max_bytes=max_bytes)


def sample_surface(mesh, n: int, seed: int | np.random.Generator = 0, *,
                   path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample points uniformly over a mesh's surface (faces chosen by area).

    A face is drawn with probability proportional to its area, then a point
    uniformly inside it with the square-root barycentric construction (Osada et al.
    2002, "Shape distributions", eq. 1).

    Args:
        mesh: a ``trimesh.Trimesh`` (only ``vertices`` and ``faces`` are used).
        n: number of points.
        seed: an int seed or a ``numpy.random.Generator``.
        path: the file the mesh came from, named in errors.

    Returns:
        points (n, 3) float32 and the unit normals of their faces (n, 3) float32.

    Raises:
        PceaFileError: the mesh has no faces or zero surface area.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    points, face_normals, scale = _sample_scaled(mesh, n, rng, path)
    return (points * scale).astype(np.float32), face_normals.astype(np.float32)


def _sample_scaled(mesh, n: int, rng: np.random.Generator, path) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`sample_surface` on the mesh divided by its largest coordinate (so areas cannot
    overflow): float64 points (n, 3) in that unit, normals (n, 3), and the scale."""
    where = path if path is not None else "<mesh>"
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise PceaFileError(where, "mesh has no faces")
    scale = float(np.abs(vertices).max()) or 1.0
    corners = vertices[faces] / scale                          # (F, 3 corners, 3)
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # (F, 3)
    double_area = np.hypot(np.hypot(cross[:, 0], cross[:, 1]), cross[:, 2])  # (F,), no under/overflow
    total = double_area.sum()
    if not total > 0:
        raise PceaFileError(where, "mesh has zero surface area (all faces degenerate)")
    chosen = rng.choice(len(faces), size=n, p=double_area / total)  # (n,)
    r1 = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    a, b, c = corners[chosen, 0], corners[chosen, 1], corners[chosen, 2]  # (n, 3) each
    points = (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c    # (n, 3)
    face_normals = cross[chosen] / double_area[chosen, None]   # (n, 3), unit length
    return points, face_normals, scale


# --- checks shared by every reader ---------------------------------------------------------


def _check_file(path: Path, max_bytes: int, allowed: tuple[str, ...]) -> str:
    """The file's lower-case extension, after :func:`pcea.errors.check_regular` and a non-empty check.

    The file is opened once here, so one the user may not read (mode 600 of another owner) is refused
    like a broken one.
    """
    size = check_regular(path, max_bytes, "point or mesh file", "raise max_bytes to read it")
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise PceaFileError(path, f"unknown extension {suffix or '(none)'!r}; "
                                  f"expected one of {' '.join(sorted(set(allowed)))}")
    if size == 0:
        raise PceaFileError(path, "file is empty")
    return suffix


def _subsample(path: Path, cloud: np.ndarray, num_points: int, rng: np.random.Generator, *,
               removed: int = 0) -> np.ndarray:
    """``num_points`` rows of ``cloud``: without replacement when there are enough (``removed``: the
    outliers already dropped, for the warning)."""
    count = len(cloud)
    if count == 0:
        raise PceaFileError(path, "file contains no points")
    if count < num_points:
        after = f" after removing {_count(removed, 'outlier')}" if removed else ""
        warnings.warn(f"{path}: only {_count(count, 'point')}{after}, {num_points} requested; "
                      "sampling with replacement", PceaWarning, stacklevel=4)  # the caller of load_points
        index = rng.choice(count, size=num_points, replace=True)
    else:
        index = rng.choice(count, size=num_points, replace=False)
    return cloud[index]


def _count(number: int, noun: str) -> str:
    """``1 point``, ``5 points``."""
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _check_extent(path: Path, cloud: np.ndarray) -> None:
    """Refuse a point file whose points do not span a plane: one point, coinciding points, a line.

    Such a cloud has no shape to classify, and one with no extent cannot be scaled into the
    unit sphere (it would become all zeros). Exactly collinear points count as a line; any
    measured cloud, however thin, has noise off the line and passes.
    """
    xyz = cloud[:, :3]
    if len(xyz) == 0:
        raise PceaFileError(path, "file contains no points")
    first = xyz[0]
    moved = (xyz != first).any(axis=1)                           # (N,)
    if not moved.any():
        raise PceaFileError(path, f"{_count(len(xyz), 'point')}, all at one position: a cloud needs at "
                                  "least 3 points not on one line")
    scale = np.abs(xyz).max()  # divide first, so that neither huge nor tiny values under/overflow
    direction = (xyz[np.argmax(moved)] - first) / scale          # (3,)
    off_line = np.cross((xyz - first) / scale, direction)        # (N, 3), zero on the line
    if not off_line.any():
        raise PceaFileError(path, f"the {_count(len(xyz), 'point')} all lie on one line: a cloud needs at "
                                  "least 3 points not on one line")


# --- meshes -------------------------------------------------------------------------------


def _load_mesh_checked(path: Path, suffix: str, max_points: int, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """Read a mesh and check it has faces, finite vertices and valid indices.

    What the file declares is bounded first (:func:`pcea.io.meshes.mesh_source`), so that trimesh
    never starts work the limits would refuse afterwards.
    """
    import trimesh

    if suffix == ".off":
        vertices, faces = _read_off(path, max_points)
    else:
        if suffix == ".stl":
            _check_stl_header(path, max_points)
        source = mesh_source(path, suffix, max_bytes=max_bytes, max_points=max_points)
        # trimesh logs a traceback for some broken files before raising; the error below says it once
        logger = logging.getLogger("trimesh")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            scene = trimesh.load(source, file_type=suffix[1:], force="scene",
                                 process=False, skip_materials=True)
            # Geometry only. Joining the meshes copies each one, and copying a textured mesh (an
            # OBJ with texture coordinates) needs Pillow, which pcea does not otherwise depend on.
            for mesh in scene.geometry.values():
                if isinstance(mesh, trimesh.Trimesh):
                    mesh.visual = trimesh.visual.ColorVisuals()
            loaded = trimesh.util.concatenate(
                [mesh for mesh in scene.dump() if isinstance(mesh, trimesh.Trimesh)])
        except Exception as err:  # trimesh raises anything on garbage: turn all of it into one error
            problem = _obj_face_problem(path) if suffix == ".obj" and isinstance(err, IndexError) else None
            problem = problem or f"cannot read as {suffix[1:].upper()}: {_describe(err)}"
            raise PceaFileError(path, problem) from None
        finally:
            logger.setLevel(level)
        if not isinstance(loaded, trimesh.Trimesh):
            raise PceaFileError(path, "file contains no triangle mesh")
        vertices = np.asarray(loaded.vertices, dtype=np.float64)
        faces = np.asarray(loaded.faces, dtype=np.int64)
    if len(vertices) == 0 or len(faces) == 0:
        raise PceaFileError(path, "mesh is empty (no vertices or no faces)")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise PceaFileError(path, f"faces have shape {faces.shape}, expected (F, 3)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        bad = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise PceaFileError(path, f"a face refers to vertex {bad} but there are {len(vertices)} vertices")
    _check_finite(path, vertices)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


# --- point files --------------------------------------------------------------------------


def _load_point_file(path: Path, suffix: str, normals: bool, max_bytes: int, max_points: int) -> np.ndarray:
    """A point file as (N, 3) or (N, 6) float64, checked for shape and finiteness."""
    if suffix == ".pcd":
        array, dropped = _load_pcd(path, normals, max_bytes, max_points)
        if dropped:
            warnings.warn(f"{path}: dropped {_count(dropped, 'point')} with NaN coordinates "
                          "(PCL's mark for invalid points)", PceaWarning, stacklevel=4)
    elif suffix == ".npy":
        array = _load_npy(path, max_points)
    elif suffix == ".npz":
        array = _load_npz(path, max_bytes, max_points, 6 if normals else 3)
    else:
        array = _load_text_points(path, max_points)
    return _point_columns(path, array, normals)


def _point_columns(path, array: np.ndarray, normals: bool) -> np.ndarray:
    """The (N, 3) or (N, 6) float64 columns of a point array, checked for shape and finiteness."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] < 3:
        raise PceaFileError(path, f"points have shape {array.shape}, expected (N, 3) or (N, 6)")
    width = 6 if normals else 3
    if array.shape[1] < width:
        raise PceaFileError(path, f"normals requested but the points have {array.shape[1]} columns "
                                  "(x y z nx ny nz needs 6)")
    cloud = np.asarray(array[:, :width], dtype=np.float64)
    _check_finite(path, cloud)
    return cloud
