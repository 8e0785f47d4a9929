"""The per-format parsers behind :func:`pcea.io.load_points` and :func:`pcea.io.load_mesh`.

ASCII OFF (with the ModelNet40 variants), the binary STL header, the PLY header and
PLY vertices, ``.npy``, ``.npz`` and text point files, and the checks they share on
declared counts and finite values. Each takes a path that :mod:`pcea.io` has already
checked for existence, extension and size, and raises :class:`pcea.errors.PceaFileError`
naming it. They are kept apart from :mod:`pcea.io` so that the public API reads in one
sitting; this module imports nothing from :mod:`pcea.io`, so there is no import cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pcea.errors import PceaFileError

# The keys tried, in order, when an .npz holds several arrays.
_NPZ_POINT_KEYS = ("points", "data", "xyz", "pc", "pos", "vertices")
_NPZ_NORMAL_KEYS = ("normals", "normal", "norm")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


# --- checks shared by every reader ---------------------------------------------------------


def _check_count(path: Path, what: str, count: int, max_points: int) -> None:
    if count < 0:
        raise PceaFileError(path, f"header declares a negative number of {what} ({count})")
    if count > max_points:
        raise PceaFileError(path, f"header declares {count:,} {what}, over the limit of "
                                  f"{max_points:,} (raise max_points to read it)")


def _check_finite(path: Path, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise PceaFileError(path, "coordinates contain NaN or infinite values")


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:200] if text else type(err).__name__


# --- meshes -------------------------------------------------------------------------------


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
