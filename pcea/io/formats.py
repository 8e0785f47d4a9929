"""The per-format parsers behind :func:`pcea.io.load_points` and :func:`pcea.io.load_mesh`.

ASCII OFF (with the ModelNet40 variants), the binary STL header, the PLY header and
PLY vertices, ``.npy``, ``.npz`` and text point files, and the checks they share on
declared counts and finite values. Each takes a path that :mod:`pcea.io` has already
checked for existence, extension and size, and raises :class:`pcea.errors.PceaFileError`
naming it. They are kept apart from :mod:`pcea.io` so that the public API reads in one
sitting; this module imports nothing from :mod:`pcea.io`, so there is no import cycle.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from pcea.errors import PceaFileError, PceaWarning

# The keys tried, in order, when an .npz holds several arrays.
_NPZ_POINT_KEYS = ("points", "data", "xyz", "pc", "pos", "vertices")
_NPZ_NORMAL_KEYS = ("normals", "normal", "norm")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


_MAX_COLUMNS = 4096  # values per point; PCL's widest descriptors (FPFH 33, SHOT 352) fit


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
    content = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        encoding = _text_encoding(content)
        if encoding:
            raise PceaFileError(path, f"is {encoding}; save it as ASCII to read it") from None
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
    faces = _parse_faces(path, body[num_vertices:num_vertices + num_faces], max_points)
    return vertices, faces


def _text_encoding(content: bytes) -> str | None:
    """``"UTF-16 text"`` or ``"UTF-32 text"`` when ``content`` is that (with or without a BOM), else None."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if content.startswith(bom):
            try:
                content.decode(name.lower())
            except UnicodeDecodeError:
                return None
            return f"{name} text"
    # without a BOM, ASCII-range UTF-16 has a zero in every other byte
    if len(content) >= 4 and len(content) % 2 == 0 and (not content[1::2].strip(b"\x00")
                                                        or not content[0::2].strip(b"\x00")):
        return "UTF-16 text"
    return None


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


def _parse_faces(path: Path, lines: list[str], max_points: int) -> np.ndarray:
    """OFF face lines ``k i1 ... ik [colour]`` as fan-triangulated (F, 3) indices."""
    if not lines:
        return np.zeros((0, 3), dtype=np.int64)
    tokens = " ".join(lines).split()
    if len(tokens) == 4 * len(lines):  # the common case: triangles without colours
        try:
            table = np.array(tokens, dtype=np.int64).reshape(len(lines), 4)
        except ValueError:
            raise PceaFileError(path, "a face line holds something that is not an integer") from None
        except OverflowError:
            raise PceaFileError(path, _HUGE_INDEX) from None
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
        if max(corners) >= 2**63 or min(corners) < -2**63:
            raise PceaFileError(path, _HUGE_INDEX)
        triangles.extend((corners[0], corners[j], corners[j + 1]) for j in range(1, size - 1))
        if len(triangles) > max_points:
            raise PceaFileError(path, f"its polygons make more than {max_points:,} triangles, over the limit "
                                      "(raise max_points to read it)")
    return np.array(triangles, dtype=np.int64)


_HUGE_INDEX = "a face refers to a vertex index too large for any file (over 2^63)"


def _check_stl_header(path: Path, max_points: int) -> None:
    """Refuse a binary STL whose declared triangle count is too large or exceeds the file.

    A file is binary when its size is exactly what its triangle count says (84 + 50 per
    triangle), whatever its 80-byte header holds (some binary writers start it with
    ``solid``). Otherwise it is ASCII when, after a UTF-8 byte-order mark and leading
    spaces, tabs or blank lines, it starts with ``solid`` and a ``facet`` or ``endsolid``
    follows within the first 64 KiB (however long the ``solid`` line); trimesh then parses the
    text, bounded by ``max_bytes``.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    count = int.from_bytes(head[80:84], "little") if len(head) >= 84 else None
    if count is not None and 84 + 50 * count == size:
        _check_count(path, "triangles", count, max_points)
        return
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").lower()
    if text.startswith(b"solid") and (b"facet" in text or b"endsolid" in text):
        return
    if count is None:
        raise PceaFileError(path, "too short for a binary STL and not an ASCII STL")
    _check_count(path, "triangles", count, max_points)
    expected = 84 + 50 * count
    if size < expected:
        raise PceaFileError(path, f"binary STL declares {count:,} triangles ({expected:,} bytes) "
                                  f"but the file has {size:,} bytes (truncated?)")


def _obj_face_problem(path: Path) -> str | None:
    """The first OBJ face whose index is out of range, described for the user (None if none is).

    OBJ indices start at 1; negative ones count back from the last vertex read so far.
    Called only after trimesh failed, to replace numpy's ``IndexError`` text.
    """
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    total = sum(1 for line in lines if line.startswith("v ") or line.startswith("v\t"))
    seen = faces = 0
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "v":
            seen += 1
        elif words[0] == "f":
            faces += 1
            for word in words[1:]:
                try:
                    index = int(word.split("/")[0])
                except ValueError:
                    return f"face {faces} ({line.strip()[:60]}) has an index that is not an integer"
                if index == 0 or index > total or index < -seen:
                    return (f"face {faces} ({line.strip()[:60]}) refers to vertex {index} but the file has "
                            f"{total} vertices")
    return None


# --- PLY ----------------------------------------------------------------------------------


def _read_ply_header(path: Path, max_points: int) -> dict:
    """Parse a PLY header without reading the body.

    Returns ``{"format", "vertices", "faces", "properties": [(name, dtype)], "offset",
    "elements": [(name, count, [(property, kind, count kind or None for a list)])]}``
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
              "first": None, "elements": []}
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
                header["elements"].append((element, count, []))
            elif words[0] == "property":
                if element is None:
                    raise PceaFileError(path, "PLY property before any element")
                if words[1] == "list":
                    size = np.dtype(_PLY_TYPES[words[2]]).itemsize
                    layout = (words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]])
                else:
                    size = np.dtype(_PLY_TYPES[words[1]]).itemsize
                    layout = (words[2], _PLY_TYPES[words[1]], None)
                    if element == "vertex":
                        header["properties"].append((words[2], _PLY_TYPES[words[1]]))
                header["elements"][-1][2].append(layout)  # (name, kind, kind of the list's count or None)
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
    layout = header["elements"][0][2]  # every vertex property, lists included, in file order
    with path.open("rb") as handle:
        handle.seek(header["offset"])
        data = handle.read()
    if header["format"] == "ascii":
        lines = data.decode("ascii", errors="replace").splitlines()
        lines = [line for line in lines if line.strip()][:count]
        if len(lines) < count:
            raise PceaFileError(path, f"PLY declares {count} vertices but has {len(lines)} lines")
        columns = _ply_ascii_columns(path, layout, lines)
        table = _parse_rows(path, lines, "vertex", width=max(columns.values()) + 1, dtype=np.float64)
        cloud = table[:, [columns[name] for name in wanted]]
    else:
        order = "<" if header["format"] == "binary_little_endian" else ">"
        dtype = _ply_row_dtype(path, layout, order, data, count)
        records = np.frombuffer(data, dtype=dtype, count=count)
        _check_list_lengths(path, records, dtype)
        cloud = np.stack([records[name].astype(np.float64) for name in wanted], axis=1)
    _check_finite(path, cloud)
    return cloud


def _ply_row_dtype(path: Path, layout: list, order: str, data: bytes, count: int) -> np.dtype:
    """The numpy dtype of one binary PLY row, a list property read as a fixed-size field.

    A list (``property list uchar float extra``) may come before ``x y z``; its length is
    read from the first row and :func:`_check_list_lengths` then checks every row has it,
    so no layout is read at wrong offsets. Scalar fields are named as in the header, the
    lists' counts ``#NAME``.
    """
    fields, position = [], 0
    for name, kind, count_kind in layout:
        if count_kind is None:
            fields.append((name, order + kind))
            position += np.dtype(kind).itemsize
            continue
        if len(data) < position + np.dtype(count_kind).itemsize:
            raise PceaFileError(path, "PLY data is truncated")
        length = int(np.frombuffer(data, order + count_kind, count=1, offset=position)[0]) if count else 0
        if length < 0:
            raise PceaFileError(path, f"PLY list {name!r} has a negative length ({length})")
        fields.append((f"#{name}", order + count_kind))
        fields.append((name, order + kind, (length,)))
        position += np.dtype(count_kind).itemsize + length * np.dtype(kind).itemsize
    try:
        dtype = np.dtype(fields)
    except ValueError as err:  # two properties of one name
        raise PceaFileError(path, f"PLY vertex properties cannot be laid out ({_describe(err)})") from None
    if len(data) < dtype.itemsize * count:
        raise PceaFileError(path, f"PLY data is truncated ({count:,} rows of {dtype.itemsize} bytes need "
                                  f"{dtype.itemsize * count:,}, the file has {len(data):,})")
    return dtype


def _check_list_lengths(path: Path, records: np.ndarray, dtype: np.dtype) -> None:
    """Refuse rows whose lists are not as long as the first row's (the offsets would be wrong)."""
    for field in dtype.names:
        if field.startswith("#"):
            expected = dtype[field[1:]].shape[0]
            if (records[field] != expected).any():
                raise PceaFileError(path, f"PLY list {field[1:]!r} changes length between rows; pcea reads "
                                          "lists in point elements only when every row has the same length")


def _ply_ascii_columns(path: Path, layout: list, lines: list[str]) -> dict[str, int]:
    """The token column of each scalar property of ASCII PLY rows, lists counted from the first row."""
    first = lines[0].split() if lines else []
    columns, position = {}, 0
    for name, _, count_kind in layout:
        if count_kind is None:
            columns[name] = position
            position += 1
            continue
        try:
            length = int(float(first[position]))
        except (IndexError, ValueError):
            raise PceaFileError(path, f"PLY list {name!r} has no length in the first row") from None
        columns[f"#{name}"] = position
        position += 1 + max(length, 0)
    # every row must have the first row's list lengths, or the columns after a list would shift
    for name, column in columns.items():
        if name.startswith("#") and any(line.split()[column:column + 1] != [first[column]] for line in lines):
            raise PceaFileError(path, f"PLY list {name[1:]!r} changes length between rows; pcea reads "
                                      "lists in point elements only when every row has the same length")
    return columns


# --- point files --------------------------------------------------------------------------


def _load_npy(path: Path, max_points: int) -> np.ndarray:
    """The points of an ``.npy`` as an (N, C) array still on disk: a memory map, read when sliced."""
    try:
        # A memory map reads only the header, so the shape is checked before any data is read.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise PceaFileError(path, f"cannot read as .npy: {_describe(err)}") from None
    _check_dtype(path, array.dtype)
    transposed, _, _ = _point_layout(path, array.shape, max_points)
    array = array.reshape(array.shape[-2:]) if array.ndim == 3 else array
    return array.T if transposed else array


def _load_npz(path: Path, max_bytes: int, max_points: int, width: int) -> np.ndarray:
    """The first ``width`` columns of the points of an ``.npz`` (with a ``normals`` array appended), float64.

    Each member's ``.npy`` header is read first and its shape, dtype and size checked; then only
    the columns kept are read, a block of rows at a time, so memory follows the points kept
    however large the member unpacks.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            keys = list(members)
            key = next((k for k in _NPZ_POINT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise PceaFileError(path, f".npz holds several arrays ({', '.join(keys)}) and none is "
                                          f"named {' or '.join(_NPZ_POINT_KEYS)}")
            normal_key = next((k for k in _NPZ_NORMAL_KEYS if k in keys), None) if width > 3 else None
            for name in [key] + ([normal_key] if normal_key else []):
                size = archive.getinfo(members[name]).file_size
                if size > max_bytes:
                    raise PceaFileError(path, f"array {name!r} unpacks to {size:,} bytes, over the "
                                              f"limit of {max_bytes:,}")
            array, columns = _npz_member(path, archive, members[key], max_points, width)
            if normal_key and columns == 3:
                extra, _ = _npz_member(path, archive, members[normal_key], max_points, 3)
                if extra.shape != array.shape:
                    raise PceaFileError(path, f"array {normal_key!r} has shape {extra.shape}, "
                                              f"points have {array.shape}")
                array = np.concatenate([array, extra], axis=1)
    except PceaFileError:
        raise
    except Exception as err:  # a bad zip, a bad member: all the same to the user
        raise PceaFileError(path, f"cannot read as .npz: {_describe(err)}") from None
    return array


_READ_BLOCK = 1 << 20  # bytes of an .npz member read at a time


def _npz_member(path: Path, archive: zipfile.ZipFile, member: str, max_points: int,
                width: int) -> tuple[np.ndarray, int]:
    """The first ``width`` columns of one ``.npz`` member as (N, <= width) float64, and its column count."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise PceaFileError(path, f"array {member!r} has .npy format version {version}, expected 1 or 2")
        _check_dtype(path, dtype)
        transposed, points, columns = _point_layout(path, shape, max_points)
        kept = min(columns, width)
        # Stored one point after another (the usual (N, C) C-order) or one channel after another
        # ((C, N) saved channels-first, or Fortran order): read blocks of points, or the first channels.
        if fortran == transposed:
            cloud = np.empty((points, kept), dtype=np.float64)
            block = max(1, _READ_BLOCK // max(1, columns * dtype.itemsize))
            for start in range(0, points, block):
                rows = min(block, points - start)
                raw = _read_exactly(path, stream, rows * columns * dtype.itemsize)
                cloud[start:start + rows] = np.frombuffer(raw, dtype).reshape(rows, columns)[:, :kept]
        else:
            raw = _read_exactly(path, stream, kept * points * dtype.itemsize)
            cloud = np.frombuffer(raw, dtype).reshape(kept, points).T.astype(np.float64)
    return cloud, columns


def _read_exactly(path: Path, stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise PceaFileError(path, "an array of the .npz is shorter than its header says (truncated?)")
    return data


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "fiu":
        raise PceaFileError(path, f"array has dtype {dtype}, expected numbers")


_MIN_CLOUD = 10  # points: fewer in one reading of a (C, N) array and at least this many in the other


def _point_layout(path: Path, shape: tuple[int, ...], max_points: int) -> tuple[bool, int, int]:
    """Whether an array of ``shape`` holds its points channels-first, then its points and columns.

    PointNet-style code saves clouds as (3, N) or (6, N). An array of 3 to 9 rows and at
    least ``_MIN_CLOUD`` columns is taken as that, with a :class:`PceaWarning`: read as
    rows it would be a handful of points, which no one classifies. With 3 to 9 rows and
    more columns than rows but fewer than ``_MIN_CLOUD``, neither reading is clearly
    meant, and the file is refused. A leading axis of 1 (one cloud of a batch) is dropped.
    The counts are checked here, from the header, before any data is read.
    """
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise PceaFileError(path, f"points have shape {tuple(shape)}, expected (N, 3) or (N, 6)")
    rows, columns = shape
    transposed = 3 <= rows <= 9 and columns > rows
    if transposed and columns < _MIN_CLOUD:
        raise PceaFileError(path, f"an array of shape {tuple(shape)} is ambiguous: {rows} points of "
                                  f"{columns} values, or {columns} points saved channels-first; save it "
                                  "as (N, 3)")
    if transposed:
        rows, columns = columns, rows
        warnings.warn(f"{path}: an array of shape {tuple(shape)} is read as {rows:,} points saved "
                      f"channels-first ({columns}, N)", PceaWarning, stacklevel=4)
    _check_count(path, "points", rows, max_points)
    if columns > _MAX_COLUMNS:
        raise PceaFileError(path, f"points have {columns:,} values each, over the limit of {_MAX_COLUMNS:,}")
    return transposed, rows, columns


_SEPARATORS = re.compile(r"[,;\t ]+")


_TEXT_HEADER_LINES = 64  # lines a text point file may hold beyond one per point (headers, comments, blanks)
_SEPARATOR_BYTES = bytes.maketrans(b",;\t", b"   ")


def _load_text_points(path: Path, max_points: int) -> np.ndarray:
    """Rows of numbers separated by commas, semicolons, tabs or spaces.

    Leading lines that are not numbers (a header such as ``x,y,z`` or ``//X Y Z``)
    are skipped, as are ``#`` comments and a first line holding only a point count
    (the ``.pts`` convention). The file's line count is checked against ``max_points``
    before anything is parsed, and the rows are parsed by numpy straight into the
    result, so memory follows the points read, not the number of tokens.
    """
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")  # classic Mac line ends
    lines = raw.count(b"\n") + 1
    if lines > max_points + _TEXT_HEADER_LINES:
        raise PceaFileError(path, f"file has {lines:,} lines, over the limit of {max_points:,} points "
                                  "(raise max_points to read it)")
    skip, first = _text_start(path, raw)
    if first is None:
        raise PceaFileError(path, "file contains no rows of numbers")
    width = len(_SEPARATORS.split(first))
    if width > _MAX_COLUMNS:
        raise PceaFileError(path, f"its first row has {width:,} values, over the limit of {_MAX_COLUMNS:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": refused below
            table = np.loadtxt(io.BytesIO(raw.translate(_SEPARATOR_BYTES)), dtype=np.float64,
                               comments=("#", "//"), skiprows=skip, ndmin=2, encoding="utf-8")
    except UnicodeDecodeError:
        raise PceaFileError(path, "not a text file (cannot decode it as UTF-8)") from None
    except ValueError as err:
        raise PceaFileError(path, _text_problem(str(err))) from None
    if len(table) == 0:
        raise PceaFileError(path, "file contains no rows of numbers")
    return table


def _text_problem(numpy_message: str) -> str:
    """numpy's complaint about a text table, in the words of pcea's other readers."""
    changed = re.search(r"columns changed from (\d+) to (\d+) at row (\d+)", numpy_message)
    if changed:
        first, found, row = changed.groups()
        return f"row {row} has {found} values, the first row has {first}"
    word = re.search(r"could not convert string '([^']{0,40})'", numpy_message)
    return "a row holds something that is not a number" + (f" ({word.group(1)!r})" if word else "")


def _text_start(path: Path, raw: bytes) -> tuple[int, str | None]:
    """The number of lines before the first row of points, and that row (None if there is none).

    Only the lines up to the second data row are looked at, one at a time, so a file of
    millions of lines is not split into millions of strings.
    """
    rows: list[tuple[int, str]] = []
    headers = position = number = 0
    while position <= len(raw) and len(rows) < 2:
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end
        if end - position > _MAX_COLUMNS * 64:
            raise PceaFileError(path, f"line {number + 1} is {end - position:,} bytes long; not rows of "
                                      "points")
        try:
            line = raw[position:end].decode("utf-8").strip(",; \t\r")
        except UnicodeDecodeError:
            raise PceaFileError(path, "not a text file (cannot decode it as UTF-8)") from None
        if line and not line.startswith(("#", "//")):
            if not rows and headers < 5 and not _is_numeric_row(line):
                headers += 1
            else:
                rows.append((number, line))
        number, position = number + 1, end + 1
    if not rows:
        return number, None
    if len(rows) == 2 and len(_SEPARATORS.split(rows[0][1])) == 1:
        return rows[1]  # a lone number: the point count of a .pts file
    return rows[0]


def _is_numeric_row(line: str) -> bool:
    try:
        [float(token) for token in _SEPARATORS.split(line.strip(",; \t"))]
    except ValueError:
        return False
    return True


# --- PCD (PCL, Open3D) --------------------------------------------------------------------

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}
_PCD_MAX_COLUMNS = _MAX_COLUMNS


def _read_pcd_header(path: Path, max_points: int) -> dict:
    """Parse and check a PCD header (v0.5-0.7) without reading the data.

    Returns ``{"fields": [(name, numpy kind, count)], "points", "data", "offset"}`` after
    checking that FIELDS, SIZE, TYPE and COUNT agree, that WIDTH x HEIGHT is POINTS, and that
    POINTS is within ``max_points``, so that a header declaring 10^9 points fails before
    anything is allocated.
    """
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    values: dict[str, list[str]] = {}
    offset = 0
    for raw in head.split(b"\n")[:-1]:  # the last piece has no newline: data, or a header cut short
        offset += len(raw) + 1
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise PceaFileError(path, "not a PCD file (its header is not ASCII text)") from None
        if not line or line.startswith("#"):
            continue
        key, *words = line.split()
        key = key.upper()
        if key not in _PCD_KEYS:
            raise PceaFileError(path, f"not a PCD file (unknown header line {line[:40]!r})")
        if key in values:
            raise PceaFileError(path, f"PCD header has two {key} lines")
        values[key] = words
        if key == "DATA":
            break
    else:
        raise PceaFileError(path, "not a PCD file (no DATA line in the first 64 KiB)")
    names = values.get("FIELDS") or []
    sizes, types = values.get("SIZE") or [], values.get("TYPE") or []
    counts = values.get("COUNT") or ["1"] * len(names)
    if not names:
        raise PceaFileError(path, "PCD header has no FIELDS")
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise PceaFileError(path, f"PCD header has {len(names)} FIELDS but {len(sizes)} SIZE, "
                                  f"{len(types)} TYPE and {len(counts)} COUNT values")
    try:
        width = int(values["WIDTH"][0]) if "WIDTH" in values else None
        height = int(values["HEIGHT"][0]) if "HEIGHT" in values else 1
        points = int(values["POINTS"][0]) if "POINTS" in values else None
        sizes = [int(size) for size in sizes]
        counts = [int(count) for count in counts]
    except (IndexError, ValueError):
        raise PceaFileError(path, "PCD header has a SIZE, COUNT, WIDTH, HEIGHT or POINTS that is not "
                                  "an integer") from None
    if points is None and width is None:
        raise PceaFileError(path, "PCD header has neither POINTS nor WIDTH")
    _check_count(path, "points", points if points is not None else width, max_points)
    _check_count(path, "points (WIDTH)", width if width is not None else 0, max_points)
    _check_count(path, "rows (HEIGHT)", height, max_points)
    if points is None:
        points = width * height
        _check_count(path, "points", points, max_points)
    elif width is not None and width * height != points:
        raise PceaFileError(path, f"PCD header says WIDTH {width} x HEIGHT {height} = {width * height:,} "
                                  f"points but POINTS {points:,}")
    fields = []
    for name, size, kind, count in zip(names, sizes, types, counts, strict=True):
        dtype = _PCD_TYPES.get((kind.upper(), size))
        if dtype is None:
            raise PceaFileError(path, f"PCD field {name!r} has TYPE {kind} SIZE {size}; expected F with "
                                      "SIZE 4 or 8, or I/U with SIZE 1, 2, 4 or 8")
        if not 1 <= count <= _PCD_MAX_COLUMNS:
            raise PceaFileError(path, f"PCD field {name!r} has COUNT {count}; expected 1 to "
                                      f"{_PCD_MAX_COLUMNS}")
        fields.append((name, dtype, count))
    if sum(count for _, _, count in fields) > _PCD_MAX_COLUMNS:
        raise PceaFileError(path, f"PCD points have more than {_PCD_MAX_COLUMNS} values each")
    data = (values["DATA"] or [""])[0].lower()
    if data not in ("ascii", "binary", "binary_compressed"):
        raise PceaFileError(path, f"unknown PCD DATA {data!r}; expected ascii, binary or binary_compressed")
    return {"fields": fields, "points": points, "data": data, "offset": offset}


def _load_pcd(path: Path, normals: bool, max_bytes: int, max_points: int) -> tuple[np.ndarray, int]:
    """The points of a PCD file as (N, 3) or (N, 6) float64, and how many NaN points were dropped.

    PCL writes NaN coordinates for invalid points (the holes of an organised cloud from a
    depth camera, points without a normal), so rows with a NaN in a returned column are
    dropped, not refused; infinite values are refused as in every other format.
    """
    header = _read_pcd_header(path, max_points)
    fields, count, offset = header["fields"], header["points"], header["offset"]
    names = [name for name, _, _ in fields]
    wanted = ["x", "y", "z"] + (["normal_x", "normal_y", "normal_z"] if normals else [])
    missing = [name for name in wanted if name not in names]
    if missing:
        what = "normals" if set(missing) <= set(wanted[3:]) else "coordinates"
        raise PceaFileError(path, f"PCD has no {' '.join(missing)} fields ({what} are required); "
                                  f"it has {' '.join(names)}")
    for name in wanted:
        if fields[names.index(name)][2] != 1:
            raise PceaFileError(path, f"PCD field {name!r} has COUNT {fields[names.index(name)][2]}, "
                                      "expected 1")
    row_bytes = sum(np.dtype(kind).itemsize * width for _, kind, width in fields)
    body_bytes = path.stat().st_size - offset
    if header["data"] == "ascii":
        columns = _pcd_ascii(path, offset, fields, count)
    elif header["data"] == "binary":
        if body_bytes < count * row_bytes:
            raise PceaFileError(path, f"PCD header declares {count:,} points of {row_bytes} bytes but the "
                                      f"file has {max(body_bytes, 0):,} bytes of data (truncated?)")
        with path.open("rb") as handle:
            handle.seek(offset)
            body = handle.read(count * row_bytes)
        dtype = np.dtype([(f"f{i}", "<" + kind, (width,) if width > 1 else ())
                          for i, (_, kind, width) in enumerate(fields)])
        records = np.frombuffer(body, dtype=dtype, count=count)
        columns = {name: records[f"f{i}"] for i, name in enumerate(names) if name in wanted}
    else:
        columns = _pcd_compressed(path, offset, fields, count, row_bytes, max_bytes)
    cloud = np.stack([np.asarray(columns[name], dtype=np.float64) for name in wanted], axis=1)
    invalid = np.isnan(cloud).any(axis=1)
    dropped = int(invalid.sum())
    if dropped:
        cloud = cloud[~invalid]
        if len(cloud) == 0:
            raise PceaFileError(path, f"all {count:,} points are NaN (PCL's mark for invalid points)")
    _check_finite(path, cloud)
    return cloud, dropped


def _pcd_ascii(path: Path, offset: int, fields: list, count: int) -> dict[str, np.ndarray]:
    try:
        text = path.read_bytes()[offset:].decode("ascii")
    except UnicodeDecodeError:
        raise PceaFileError(path, "PCD DATA ascii holds bytes that are not ASCII text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < count:
        raise PceaFileError(path, f"PCD header declares {count:,} points but the file has {len(lines):,} "
                                  "data lines (truncated?)")
    width = sum(columns for _, _, columns in fields)
    table = _parse_rows(path, lines[:count], "point", width=width, dtype=np.float64)
    starts = np.cumsum([0] + [columns for _, _, columns in fields])
    return {name: table[:, starts[i]] for i, (name, _, _) in enumerate(fields)}


def _pcd_compressed(path: Path, offset: int, fields: list, count: int, row_bytes: int,
                    max_bytes: int) -> dict[str, np.ndarray]:
    """DATA binary_compressed: two uint32 sizes, then LZF-compressed fields one after another."""
    with path.open("rb") as handle:
        handle.seek(offset)
        sizes = handle.read(8)
        if len(sizes) < 8:
            raise PceaFileError(path, "PCD binary_compressed data is missing its sizes (truncated?)")
        compressed_size = int.from_bytes(sizes[:4], "little")
        uncompressed_size = int.from_bytes(sizes[4:], "little")
        if uncompressed_size != count * row_bytes:
            raise PceaFileError(path, f"PCD binary_compressed data says it unpacks to {uncompressed_size:,} "
                                      f"bytes; {count:,} points of {row_bytes} bytes need "
                                      f"{count * row_bytes:,}")
        if uncompressed_size > max_bytes:
            raise PceaFileError(path, f"PCD data unpacks to {uncompressed_size:,} bytes, over the limit of "
                                      f"{max_bytes:,} (raise max_bytes to read it)")
        compressed = handle.read(compressed_size)
    if len(compressed) < compressed_size:
        raise PceaFileError(path, f"PCD binary_compressed data declares {compressed_size:,} bytes but the "
                                  f"file holds {len(compressed):,} (truncated?)")
    body = _lzf_decompress(path, compressed, uncompressed_size)
    columns, start = {}, 0
    for name, kind, width in fields:  # field-major: every x, then every y, ...
        dtype = np.dtype("<" + kind)
        columns[name] = np.frombuffer(body, dtype=dtype, count=count * width, offset=start)[::width]
        start += dtype.itemsize * width * count
    return columns


def _lzf_decompress(path: Path, data: bytes, size: int) -> bytes:
    """Decompress LZF (Marc Lehmann's liblzf, as PCL uses it) into exactly ``size`` bytes.

    The output buffer is allocated once at the size the caller checked; a literal run or back
    reference that would write past it, or reach before its start, is an error naming the file.
    Each token copies a whole slice, so the loop runs once per token, not once per byte.
    """
    out = bytearray(size)
    ip = op = 0
    end = len(data)
    bad = "PCD binary_compressed data is corrupt"
    while ip < end:
        ctrl = data[ip]
        ip += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            length = ctrl + 1
            if op + length > size or ip + length > end:
                raise PceaFileError(path, f"{bad} (a literal run goes past the end)")
            out[op:op + length] = data[ip:ip + length]
            ip += length
        else:  # a back reference: length, then the distance behind the output position
            length = ctrl >> 5
            if ip >= end:
                raise PceaFileError(path, f"{bad} (cut inside a back reference)")
            if length == 7:
                length += data[ip]
                ip += 1
                if ip >= end:
                    raise PceaFileError(path, f"{bad} (cut inside a back reference)")
            ref = op - ((ctrl & 0x1F) << 8) - 1 - data[ip]
            ip += 1
            length += 2
            if op + length > size or ref < 0:
                raise PceaFileError(path, f"{bad} (a back reference reaches outside the data)")
            distance = op - ref
            if distance >= length:
                out[op:op + length] = out[ref:ref + length]
            else:  # an overlapping copy repeats the last `distance` bytes
                out[op:op + length] = (bytes(out[ref:op]) * (length // distance + 1))[:length]
        op += length
    if op != size:
        raise PceaFileError(path, f"{bad} (it unpacks to {op:,} bytes, not {size:,})")
    return bytes(out)
