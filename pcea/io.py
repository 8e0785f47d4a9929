"""Reading a user's file into a normalised point cloud.

Meshes (``.off .ply .obj .stl .glb``) are sampled uniformly by surface area; point
files (``.ply`` without faces, ``.xyz .txt .pts .csv .npy .npz``) are subsampled.
Either way the result gets the normalisation of the training data
(:func:`pcea.data.transforms.normalize_unit_sphere`).

Files from the internet are messy or hostile, so every reader here

* checks the size of the file and the counts its header declares *before*
  allocating anything (a PLY header declaring 10^9 vertices fails at once),
* reads the messy variants real datasets contain: OFF with CRLF line ends or the
  glued ``OFF490 518 0`` first line of the Princeton ModelNet40 release, ASCII PLY
  with extra vertex properties, OBJ whose ``.mtl`` or texture image is missing,
  ASCII STL in E-notation, point files with CRLF, a header line, and comma, space,
  semicolon or tab separators,
* turns every failure into a :class:`pcea.errors.PceaFileError` naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from pcea.data.transforms import normalize_unit_sphere
from pcea.errors import PceaError, PceaFileError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_POINTS",
    "MESH_EXTENSIONS",
    "POINT_EXTENSIONS",
    "PceaWarning",
    "load_mesh",
    "load_points",
    "sample_surface",
]

MESH_EXTENSIONS = (".off", ".ply", ".obj", ".stl", ".glb")
POINT_EXTENSIONS = (".ply", ".xyz", ".txt", ".pts", ".csv", ".npy", ".npz")
DEFAULT_MAX_BYTES = 512 * 1024**2
DEFAULT_MAX_POINTS = 10_000_000

# The keys tried, in order, when an .npz holds several arrays.
_NPZ_POINT_KEYS = ("points", "data", "xyz", "pc", "pos", "vertices")
_NPZ_NORMAL_KEYS = ("normals", "normal", "norm")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PceaWarning(UserWarning):
    """Something pcea worked around in a user's file (the CLI prints these)."""


def load_points(
    path: str | os.PathLike,
    num_points: int = 1024,
    seed: int = 0,
    normals: bool = False,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> np.ndarray:
    """Read a mesh or point file into a normalised cloud of ``num_points`` points.

    Meshes are sampled by area with face normals; point files are subsampled
    without replacement (with replacement, and a :class:`PceaWarning`, when the
    file holds fewer points than asked for). The same ``seed`` gives the same points.

    Args:
        path: the file; its extension picks the reader (see ``MESH_EXTENSIONS`` and
            ``POINT_EXTENSIONS``; a ``.ply`` without faces is read as points).
        num_points: points in the result.
        seed: seed of the sampling.
        normals: also return normals (columns 3:6); a point file then needs 6 columns.
        max_bytes: larger files are refused.
        max_points: files declaring more vertices, faces or points are refused.

    Returns:
        (num_points, 3) float32, or (num_points, 6) with normals, centred and scaled
        into the unit sphere.

    Raises:
        PceaFileError: the file is missing, too large, unreadable or degenerate.
        PceaError: num_points is below 1.
    """
    if num_points < 1:
        raise PceaError(f"num_points={num_points}: must be at least 1")
    path = Path(path)
    suffix = _check_file(path, max_bytes, MESH_EXTENSIONS + POINT_EXTENSIONS)
    rng = np.random.default_rng(seed)
    mesh = None
    if suffix == ".ply":
        header = _read_ply_header(path, max_points)
        if header["faces"] > 0:
            mesh = _load_mesh_checked(path, suffix, max_points)
        else:
            cloud = _load_ply_points(path, header, normals)
    elif suffix in MESH_EXTENSIONS:
        mesh = _load_mesh_checked(path, suffix, max_points)
    else:
        cloud = _load_point_file(path, suffix, normals, max_bytes, max_points)

    if mesh is not None:
        points, face_normals, _ = _sample_scaled(mesh, num_points, rng, path)
        cloud = np.concatenate([points, face_normals], axis=1) if normals else points
    else:
        cloud = _subsample(path, cloud, num_points, rng)
        # A uniform scale first, in float64, so that huge but finite coordinates
        # (1e300) neither overflow float32 nor the squares in the normalisation.
        scale = np.abs(cloud[:, :3]).max()
        if scale > 0:
            cloud[:, :3] /= scale
    cloud = normalize_unit_sphere(cloud)
    if not np.isfinite(cloud).all():  # only normals can still be huge
        raise PceaFileError(path, "values too large for float32")
    return cloud


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
    return _load_mesh_checked(path, suffix, max_points)


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
    """The file's lower-case extension, after checking it exists, is a file, and is not too big."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PceaFileError(path, "no such file") from None
    except OSError as err:  # a symlink loop, a permission problem, a name too long
        raise PceaFileError(path, f"cannot open ({err.strerror or err})") from None
    if path.is_dir():
        raise PceaFileError(path, "is a directory, expected a file")
    if not path.is_file():
        raise PceaFileError(path, "is not a regular file")
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise PceaFileError(path, f"unknown extension {suffix or '(none)'!r}; "
                                  f"expected one of {' '.join(sorted(set(allowed)))}")
    if info.st_size == 0:
        raise PceaFileError(path, "file is empty")
    if info.st_size > max_bytes:
        raise PceaFileError(path, f"file is {info.st_size:,} bytes, over the limit of "
                                  f"{max_bytes:,} (raise max_bytes to read it)")
    return suffix


def _check_count(path: Path, what: str, count: int, max_points: int) -> None:
    if count < 0:
        raise PceaFileError(path, f"header declares a negative number of {what} ({count})")
    if count > max_points:
        raise PceaFileError(path, f"header declares {count:,} {what}, over the limit of "
                                  f"{max_points:,} (raise max_points to read it)")


def _check_finite(path: Path, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise PceaFileError(path, "coordinates contain NaN or infinite values")


def _subsample(path: Path, cloud: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``num_points`` rows of ``cloud``: without replacement when there are enough."""
    count = len(cloud)
    if count == 0:
        raise PceaFileError(path, "file contains no points")
    if count < num_points:
        warnings.warn(f"{path}: only {count} points, {num_points} requested; "
                      "sampling with replacement", PceaWarning, stacklevel=3)
        index = rng.choice(count, size=num_points, replace=True)
    else:
        index = rng.choice(count, size=num_points, replace=False)
    return cloud[index]


# --- meshes -------------------------------------------------------------------------------


def _load_mesh_checked(path: Path, suffix: str, max_points: int):
    """Read a mesh and check it has faces, finite vertices and valid indices."""
    import trimesh

    if suffix == ".off":
        vertices, faces = _read_off(path, max_points)
    else:
        if suffix == ".stl":
            _check_stl_header(path, max_points)
        # trimesh logs a traceback for some broken files before raising; the error below says it once
        logger = logging.getLogger("trimesh")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            loaded = trimesh.load(str(path), file_type=suffix[1:], force="mesh",
                                  process=False, skip_materials=True)
        except Exception as err:  # trimesh raises anything on garbage: turn all of it into one error
            raise PceaFileError(path, f"cannot read as {suffix[1:].upper()}: {_describe(err)}") from None
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


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:200] if text else type(err).__name__


_OFF_FIRST = re.compile(r"^\s*(?:ST)?C?N?4?n?OFF", re.IGNORECASE)


def _read_off(path: Path, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ASCII OFF file: vertices (V, 3) float64 and triangles (F, 3) int64.

    Accepts CRLF line ends, ``#`` comments, blank lines, per-vertex or per-face
    colours after the coordinates or indices, polygons (fan-triangulated), and the
    Princeton ModelNet40 first line that glues the counts to the keyword
    (``OFF490 518 0``).
    """
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise PceaFileError(path, "not an ASCII OFF file (binary OFF is not supported)") from None
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise PceaFileError(path, "file has no content")
    keyword = _OFF_FIRST.match(lines[0])
    if keyword is None:
        raise PceaFileError(path, f"not an OFF file (first line {lines[0][:40]!r} does not start with OFF)")
    rest = lines[0][keyword.end():].strip()
    body = lines[1:]
    if not rest:  # the usual layout: counts on their own line
        if not body:
            raise PceaFileError(path, "OFF header has no counts line")
        rest, body = body[0], body[1:]
    try:
        counts = [int(token) for token in rest.split()]
    except ValueError:
        raise PceaFileError(path, f"OFF counts line {rest[:40]!r} is not integers") from None
    if len(counts) < 2:
        raise PceaFileError(path, f"OFF counts line {rest[:40]!r} needs vertex and face counts")
    num_vertices, num_faces = counts[0], counts[1]
    _check_count(path, "vertices", num_vertices, max_points)
    _check_count(path, "faces", num_faces, max_points)
    if len(body) < num_vertices + num_faces:
        raise PceaFileError(path, f"OFF header declares {num_vertices} vertices and {num_faces} faces "
                                  f"but the file has only {len(body)} data lines (truncated?)")
    vertices = _parse_rows(path, body[:num_vertices], "vertex", width=3, dtype=np.float64)
    faces = _parse_faces(path, body[num_vertices:num_vertices + num_faces])
    return vertices, faces


def _parse_rows(path: Path, lines: list[str], what: str, *, width: int, dtype) -> np.ndarray:
    """The first ``width`` numbers of each line, as a (len(lines), width) array."""
    if not lines:
        return np.zeros((0, width), dtype=dtype)
    tokens = " ".join(lines).split()
    if len(tokens) == width * len(lines):  # the common case: no extra columns anywhere
        flat = tokens
    else:
        flat = []
        for number, line in enumerate(lines):
            row = line.split()
            if len(row) < width:
                raise PceaFileError(path, f"{what} {number} has {len(row)} values, expected {width}")
            flat.extend(row[:width])
    try:
        return np.array(flat, dtype=np.float64).astype(dtype).reshape(len(lines), width)
    except (ValueError, OverflowError):
        raise PceaFileError(path, f"a {what} line holds something that is not a number") from None


def _parse_faces(path: Path, lines: list[str]) -> np.ndarray:
    """OFF face lines ``k i1 ... ik [colour]`` as fan-triangulated (F, 3) indices."""
    if not lines:
        return np.zeros((0, 3), dtype=np.int64)
    tokens = " ".join(lines).split()
    if len(tokens) == 4 * len(lines):  # the common case: triangles without colours
        try:
            table = np.array(tokens, dtype=np.int64).reshape(len(lines), 4)
        except ValueError:
            raise PceaFileError(path, "a face line holds something that is not an integer") from None
        if (table[:, 0] == 3).all():
            return table[:, 1:]
    try:
        rows = [[int(token) for token in line.split()] for line in lines]
    except ValueError:
        raise PceaFileError(path, "a face line holds something that is not an integer") from None
    triangles = []
    for number, row in enumerate(rows):
        size = row[0]
        if size < 3 or len(row) < size + 1:
            raise PceaFileError(path, f"face {number} declares {size} corners but has {len(row) - 1} values")
        corners = row[1:size + 1]
        triangles.extend((corners[0], corners[j], corners[j + 1]) for j in range(1, size - 1))
    return np.array(triangles, dtype=np.int64)


def _check_stl_header(path: Path, max_points: int) -> None:
    """Refuse a binary STL whose declared triangle count is too large or exceeds the file."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head[:5].lower() == b"solid" and b"facet" in head.lower():
        return  # ASCII STL: trimesh parses text, bounded by max_bytes
    if len(head) < 84:
        raise PceaFileError(path, "too short for a binary STL and not an ASCII STL")
    count = int.from_bytes(head[80:84], "little")
    _check_count(path, "triangles", count, max_points)
    expected = 84 + 50 * count
    if path.stat().st_size < expected:
        raise PceaFileError(path, f"binary STL declares {count:,} triangles ({expected:,} bytes) "
                                  f"but the file has {path.stat().st_size:,} bytes (truncated?)")


# --- PLY ----------------------------------------------------------------------------------


def _read_ply_header(path: Path, max_points: int) -> dict:
    """Parse a PLY header without reading the body.

    Returns ``{"format", "vertices", "faces", "properties": [(name, dtype)], "offset"}``
    after checking the counts against ``max_points`` and the file size, so that a
    header declaring 10^9 vertices fails before anything is allocated.
    """
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    end = re.search(rb"end_header[ \t]*\r?\n", head)
    if not head.startswith(b"ply") or end is None:
        raise PceaFileError(path, "not a PLY file (no 'ply' ... 'end_header' header)")
    try:
        lines = head[:end.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise PceaFileError(path, "PLY header is not ASCII text") from None
    header = {"format": None, "vertices": 0, "faces": 0, "properties": [], "offset": end.end(),
              "first": None}
    element = None
    row_bytes = 0  # minimum bytes per row of every element, summed over the elements
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                header["format"] = words[1]
            elif words[0] == "element":
                element, count = words[1], int(words[2])
                _check_count(path, f"{element} elements", count, max_points)
                header["first"] = header["first"] or element
                if element == "vertex":
                    header["vertices"] = count
                elif element == "face":
                    header["faces"] = count
                header.setdefault("counts", {})[element] = count
            elif words[0] == "property":
                if element is None:
                    raise PceaFileError(path, "PLY property before any element")
                if words[1] == "list":
                    size = np.dtype(_PLY_TYPES[words[2]]).itemsize
                else:
                    size = np.dtype(_PLY_TYPES[words[1]]).itemsize
                    if element == "vertex":
                        header["properties"].append((words[2], _PLY_TYPES[words[1]]))
                count = header["counts"][element]
                row_bytes += count * (size if header["format"] != "ascii" else 2)
        except PceaFileError:
            raise
        except (IndexError, KeyError, ValueError):
            raise PceaFileError(path, f"malformed PLY header line {line[:60]!r}") from None
    if header["format"] not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PceaFileError(path, f"unknown PLY format {header['format']!r}")
    body = path.stat().st_size - header["offset"]
    if row_bytes > body:
        raise PceaFileError(path, f"PLY header declares {header['vertices']:,} vertices and "
                                  f"{header['faces']:,} faces, more than the {body:,} bytes of data "
                                  "can hold (truncated or corrupt)")
    return header


def _load_ply_points(path: Path, header: dict, normals: bool) -> np.ndarray:
    """The vertices of a PLY without faces, (V, 3) or (V, 6) with nx, ny, nz."""
    names = [name for name, _ in header["properties"]]
    wanted = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals else [])
    missing = [name for name in wanted if name not in names]
    if missing:
        what = "normals" if set(missing) <= {"nx", "ny", "nz"} else "coordinates"
        raise PceaFileError(path, f"PLY vertices have no {' '.join(missing)} properties "
                                  f"({what} are required); they have {' '.join(names) or 'none'}")
    if header["first"] != "vertex":
        raise PceaFileError(path, "PLY point cloud whose first element is not 'vertex' is not supported")
    count = header["vertices"]
    data = path.read_bytes()[header["offset"]:]
    if header["format"] == "ascii":
        lines = data.decode("ascii", errors="replace").splitlines()
        lines = [line for line in lines if line.strip()][:count]
        if len(lines) < count:
            raise PceaFileError(path, f"PLY declares {count} vertices but has {len(lines)} lines")
        table = _parse_rows(path, lines, "vertex", width=len(names), dtype=np.float64)
    else:
        order = "<" if header["format"] == "binary_little_endian" else ">"
        dtype = np.dtype([(f"p{i}", order + kind) for i, (_, kind) in enumerate(header["properties"])])
        if len(data) < dtype.itemsize * count:
            raise PceaFileError(path, "PLY vertex data is truncated")
        records = np.frombuffer(data, dtype=dtype, count=count)
        table = np.stack([records[f"p{i}"].astype(np.float64) for i in range(len(names))], axis=1)
    cloud = table[:, [names.index(name) for name in wanted]]
    _check_finite(path, cloud)
    return cloud


# --- point files --------------------------------------------------------------------------


def _load_point_file(path: Path, suffix: str, normals: bool, max_bytes: int, max_points: int) -> np.ndarray:
    """A point file as (N, 3) or (N, 6) float64, checked for shape and finiteness."""
    if suffix == ".npy":
        array = _load_npy(path, max_points)
    elif suffix == ".npz":
        array = _load_npz(path, max_bytes, max_points)
    else:
        array = _load_text_points(path, max_points)
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


def _load_npy(path: Path, max_points: int) -> np.ndarray:
    try:
        # A memory map reads only the header, so the shape is checked before any data is read.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise PceaFileError(path, f"cannot read as .npy: {_describe(err)}") from None
    return _checked_array(path, array, max_points)


def _load_npz(path: Path, max_bytes: int, max_points: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = next((k for k in _NPZ_POINT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise PceaFileError(path, f".npz holds several arrays ({', '.join(keys)}) and none is "
                                          f"named {' or '.join(_NPZ_POINT_KEYS)}")
            normal_key = next((k for k in _NPZ_NORMAL_KEYS if k in keys), None)
            for name in [key] + ([normal_key] if normal_key else []):
                size = archive.zip.getinfo(name + ".npy").file_size
                if size > max_bytes:
                    raise PceaFileError(path, f"array {name!r} unpacks to {size:,} bytes, over the "
                                              f"limit of {max_bytes:,}")
            array = _checked_array(path, archive[key], max_points)
            if normal_key and array.ndim == 2 and array.shape[1] == 3:
                extra = _checked_array(path, archive[normal_key], max_points)
                if extra.shape != array.shape:
                    raise PceaFileError(path, f"array {normal_key!r} has shape {extra.shape}, "
                                              f"points have {array.shape}")
                array = np.concatenate([array, extra], axis=1)
    except PceaFileError:
        raise
    except Exception as err:  # a bad zip, a bad member: all the same to the user
        raise PceaFileError(path, f"cannot read as .npz: {_describe(err)}") from None
    return array


def _checked_array(path: Path, array: np.ndarray, max_points: int) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise PceaFileError(path, f"array has dtype {array.dtype}, expected numbers")
    if array.ndim >= 1:
        _check_count(path, "points", int(np.prod(array.shape[:-1])), max_points)
    return np.asarray(array, dtype=np.float64)


_SEPARATORS = re.compile(r"[,;\t ]+")


def _load_text_points(path: Path, max_points: int) -> np.ndarray:
    """Rows of numbers separated by commas, semicolons, tabs or spaces.

    Leading lines that are not numbers (a header such as ``x,y,z`` or ``//X Y Z``)
    are skipped, as are ``#`` comments and a first line holding only a point count
    (the ``.pts`` convention).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PceaFileError(path, "not a text file (cannot decode it as UTF-8)") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", "//"))]
    start = 0
    while start < len(lines) and start < 5 and not _is_numeric_row(lines[start]):
        start += 1
    if start < len(lines) and len(_SEPARATORS.split(lines[start])) == 1 and len(lines) > start + 1:
        start += 1  # a lone number: the point count of a .pts file
    rows = lines[start:]
    if not rows:
        raise PceaFileError(path, "file contains no rows of numbers")
    _check_count(path, "points", len(rows), max_points)
    width = len(_SEPARATORS.split(rows[0].strip(",; \t")))
    tokens = _SEPARATORS.split(" ".join(row.strip(",; \t") for row in rows))
    if len(tokens) != width * len(rows):
        for number, row in enumerate(rows):
            found = len(_SEPARATORS.split(row.strip(",; \t")))
            if found != width:
                raise PceaFileError(path, f"row {start + number + 1} has {found} values, the first row "
                                          f"has {width}")
    try:
        return np.array(tokens, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        raise PceaFileError(path, "a row holds something that is not a number") from None


def _is_numeric_row(line: str) -> bool:
    try:
        [float(token) for token in _SEPARATORS.split(line.strip(",; \t"))]
    except ValueError:
        return False
    return True

