"""Bounds a mesh file is checked against before trimesh parses it.

trimesh parses PLY, OBJ and GLB well, but it does the work first and asks afterwards: a
PLY of 60,000 faces of 255 corners becomes 15 million triangles, a GLB of 200,000
primitives takes minutes, an OBJ that switches material 100,000 times parses in quadratic
time, and a GLB buffer ``uri`` naming a FIFO blocks for ever. :func:`mesh_source` reads
what a file declares (the PLY face lists, the GLB's JSON chunk) and refuses it before
trimesh starts when the work would exceed ``max_points`` triangles or
``MAX_GLB_PRIMITIVES`` primitives, or when an external buffer is not a regular file
within ``max_bytes``; for OBJ it drops the ``usemtl`` lines pcea never uses (materials are
skipped), which removes the quadratic work rather than refusing valid files.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from pcea.errors import PceaFileError, check_regular
from pcea.io.formats import _describe, _read_ply_header

# trimesh spends about 0.5 ms on each primitive or node (issue 23: 200,000 primitives took 102 s)
MAX_GLB_PRIMITIVES = 10_000
_MAX_GLB_JSON = 16 * 1024**2  # bytes; parsed, JSON takes 13 to 17 times its text in Python objects
_GLB_TRIANGLES_PER_MODE = {4: lambda count: count // 3, 5: lambda count: max(count - 2, 0),
                           6: lambda count: max(count - 2, 0)}  # triangles, strips, fans; others draw none
_USEMTL = re.compile(rb"^[ \t]*usemtl\b[^\n]*", re.MULTILINE)


def mesh_source(path: Path, suffix: str, *, max_bytes: int, max_points: int) -> str | io.BytesIO:
    """What to give ``trimesh.load`` for a ``.ply``, ``.obj``, ``.glb`` or ``.stl``, after the checks above.

    Raises:
        PceaFileError: the file would make more than ``max_points`` triangles, a GLB has more than
            ``MAX_GLB_PRIMITIVES`` primitives or nodes, or an external GLB buffer is not a regular
            file within ``max_bytes``.
    """
    if suffix == ".ply":
        _check_ply_triangles(path, _read_ply_header(path, max_points), max_points)
    elif suffix == ".glb":
        _check_glb(path, max_bytes, max_points)
    elif suffix == ".obj":
        content = path.read_bytes()
        if _USEMTL.search(content):
            return io.BytesIO(_USEMTL.sub(b"", content))
    return str(path)


# --- PLY -------------------------------------------------------------------------------------


def _check_ply_triangles(path: Path, header: dict, max_points: int) -> None:
    """Count the triangles the PLY's polygons make (fan triangulation) and refuse more than ``max_points``."""
    face = next((element for element in header["elements"] if element[0] == "face"), None)
    if face is None or face[1] == 0:
        return
    with path.open("rb") as handle:
        handle.seek(header["offset"])
        data = handle.read()
    if header["format"] == "ascii":
        triangles = _ascii_triangles(path, data, header["elements"], max_points)
    else:
        order = "<" if header["format"] == "binary_little_endian" else ">"
        position = triangles = 0
        for name, count, layout in header["elements"]:
            position, triangles = _binary_rows(path, data, position, count, layout, order, max_points)
            if name == "face":
                break
    if triangles > max_points:
        raise PceaFileError(path, f"its {face[1]:,} faces make {triangles:,} triangles, over the limit of "
                                  f"{max_points:,} (raise max_points to read it)")


def _index_list(layout: list) -> str | None:
    """The list property holding a face's corners (``vertex_indices`` by convention, else the first list)."""
    lists = [name for name, _, count_kind in layout if count_kind is not None]
    named = [name for name in ("vertex_indices", "vertex_index") if name in lists]
    return (named or lists or [None])[0]


def _binary_rows(path: Path, data: bytes, position: int, count: int, layout: list, order: str,
                 max_points: int) -> tuple[int, int]:
    """Where ``count`` binary rows starting at ``position`` end, and the triangles their index list makes.

    When every list is as long as in the first row (all triangles, the usual case), one strided
    view checks every row at once; otherwise the rows are walked one by one, stopping as soon as
    the triangles pass ``max_points``.
    """
    corners = _index_list(layout)
    if count == 0:
        return position, 0
    fields, offset, lengths = [], position, {}
    for name, kind, count_kind in layout:
        size = np.dtype(kind).itemsize
        if count_kind is not None:
            count_size = np.dtype(count_kind).itemsize
            if offset + count_size > len(data):
                raise PceaFileError(path, "PLY data is truncated")
            lengths[name] = max(int(np.frombuffer(data, order + count_kind, 1, offset)[0]), 0)
            fields.append((f"#{name}", order + count_kind))
            offset += count_size
            size *= lengths[name]
        fields.append((f"{len(fields)}", f"V{size}"))
        offset += size
    row = np.dtype(fields)
    if position + row.itemsize * count <= len(data):
        records = np.frombuffer(data, row, count, position)
        if all((records[f"#{name}"] == length).all() for name, length in lengths.items()):
            return position + row.itemsize * count, count * max(lengths.get(corners, 2) - 2, 0)
    triangles, byteorder = 0, "little" if order == "<" else "big"
    for _ in range(count):  # polygons of different sizes: walk the rows
        for name, kind, count_kind in layout:
            size = np.dtype(kind).itemsize
            if count_kind is not None:
                count_size = np.dtype(count_kind).itemsize
                length = int.from_bytes(data[position:position + count_size], byteorder,
                                        signed=np.dtype(count_kind).kind == "i")
                position += count_size
                size *= max(length, 0)
                if name == corners:
                    triangles += max(length - 2, 0)
            position += size
        if position > len(data):
            raise PceaFileError(path, "PLY data is truncated")
        if triangles > max_points:
            break
    return position, triangles


def _ascii_triangles(path: Path, data: bytes, elements: list, max_points: int) -> int:
    """The triangles the face rows of an ASCII PLY make; one row per line, read one line at a time."""
    stream = io.BytesIO(data)
    for name, count, layout in elements:
        if name == "face":
            corners, triangles = _index_list(layout), 0
            for _ in range(count):
                words, position = _next_row(stream), 0
                for property_name, _, count_kind in layout:
                    if count_kind is None:
                        position += 1
                        continue
                    try:
                        length = int(words[position])
                    except (IndexError, ValueError):
                        raise PceaFileError(path, "a PLY face row has no list count") from None
                    if property_name == corners:
                        triangles += max(length - 2, 0)
                    position += 1 + max(length, 0)
                if triangles > max_points:
                    break
            return triangles
        for _ in range(count):
            _next_row(stream)
    return 0


def _next_row(stream: io.BytesIO) -> list[bytes]:
    for line in stream:
        words = line.split()
        if words:
            return words
    return []


# --- GLB -------------------------------------------------------------------------------------


def _check_glb(path: Path, max_bytes: int, max_points: int) -> None:
    """Check a GLB's JSON chunk: primitives, nodes and triangles bounded, external buffers regular files."""
    with path.open("rb") as handle:
        head = handle.read(20)
        if len(head) < 20 or head[:4] != b"glTF" or head[16:20] != b"JSON":
            return  # not a GLB trimesh can read either: its own error says so
        length = struct.unpack("<I", head[12:16])[0]
        if length > min(path.stat().st_size, _MAX_GLB_JSON):
            raise PceaFileError(path, f"GLB declares a JSON chunk of {length:,} bytes, more than the file "
                                      f"holds or the limit of {_MAX_GLB_JSON:,}")
        text = handle.read(length)
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PceaFileError(path, f"GLB JSON chunk is not valid JSON ({_describe(err)})") from None
    try:
        _check_gltf_tree(path, tree, max_bytes, max_points)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise PceaFileError(path, f"GLB JSON chunk is malformed ({_describe(err)})") from None


def _check_gltf_tree(path: Path, tree: dict, max_bytes: int, max_points: int) -> None:
    meshes, nodes = tree.get("meshes", []), tree.get("nodes", [])
    accessors = tree.get("accessors", [])
    primitives = sum(len(mesh.get("primitives", [])) for mesh in meshes)
    for what, number in (("primitives", primitives), ("nodes", len(nodes))):
        if number > MAX_GLB_PRIMITIVES:
            raise PceaFileError(path, f"GLB has {number:,} {what}, over the limit of {MAX_GLB_PRIMITIVES:,}")
    for accessor in accessors:  # trimesh allocates an accessor without data at its declared count
        if int(accessor.get("count", 0)) > 3 * max_points:
            raise PceaFileError(path, f"GLB accessor declares {int(accessor['count']):,} elements, over the "
                                      f"limit of {3 * max_points:,}")
    per_mesh = []
    for mesh in meshes:
        triangles = 0
        for primitive in mesh.get("primitives", []):
            source = primitive.get("indices", primitive.get("attributes", {}).get("POSITION"))
            count = int(accessors[source].get("count", 0)) if source is not None else 0
            triangles += _GLB_TRIANGLES_PER_MODE.get(primitive.get("mode", 4), lambda _: 0)(count)
        per_mesh.append(triangles)
    instances = [0] * len(meshes)
    for node in nodes:
        if "mesh" in node:
            instances[node["mesh"]] += 1
    total = sum(triangles * max(uses, 1) for triangles, uses in zip(per_mesh, instances, strict=True))
    if total > max_points:
        raise PceaFileError(path, f"GLB declares {total:,} triangles, over the limit of {max_points:,} "
                                  "(raise max_points to read it)")
    external = 0
    for buffer in tree.get("buffers", []):
        uri = buffer.get("uri")
        if isinstance(uri, str) and "base64," not in uri:  # embedded data is bounded by the file itself
            external += _external_buffer_size(path, uri, max_bytes)
    if external > max_bytes:
        raise PceaFileError(path, f"GLB's external buffers hold {external:,} bytes, over the limit of "
                                  f"{max_bytes:,} (raise max_bytes to read it)")


def _external_buffer_size(path: Path, uri: str, max_bytes: int) -> int:
    """The size of the file a buffer ``uri`` names, checked to be a regular file within ``max_bytes``.

    trimesh tries the name, the name without a leading ``/`` and its last part, each in the
    GLB's folder, and reads the first that exists; every one of them is checked, with and
    without percent-decoding.
    """
    size = 0
    for name in {uri, unquote(uri)}:
        for candidate in (name.strip(), name.strip().lstrip("/"), os.path.split(name)[-1]):
            target = path.parent / candidate
            if not os.path.exists(target):  # nor a name the OS refuses: trimesh skips those as well
                continue
            try:
                size = max(size, check_regular(target, max_bytes, "buffer file", "raise max_bytes"))
            except PceaFileError as err:  # named by the GLB the user gave, as the other GLB checks are
                raise PceaFileError(path, f"GLB buffer {uri[:80]!r}: {err.problem}") from None
    return size
