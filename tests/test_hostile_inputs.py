"""Hostile and broken files against every reader pcea has (issue 7).

The property, for every generated case: the reader either returns a finite float32
array of the promised shape, or raises :class:`pcea.errors.PceaError` whose message
names the file. Any other exception fails the test, and so does a read that takes
longer than ``READ_SECONDS`` (a SIGALRM guard) or, for the huge declared counts,
one that allocates more than ``ALLOC_LIMIT`` bytes before refusing (tracemalloc).

Examples are derandomised, so every run tries the same cases. The figures in
docs/reliability.md come from:
    .venv/bin/pytest -q tests/test_hostile_inputs.py --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pcea.errors import PceaError
from pcea.io import load_points

READ_SECONDS = 10
ALLOC_LIMIT = 64 * 1024**2
NUM_POINTS = 32
EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True, database=None)
FEW_EXAMPLES = settings(max_examples=25, deadline=None, derandomize=True, database=None)


class ReadTimedOut(BaseException):
    """A BaseException, so that a reader's ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise ReadTimedOut(f"read took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read, path: Path, *, channels: int, rows: int) -> str:
    """Run ``read()`` under the guards and check the property; return "loaded" or "refused"."""
    try:
        with time_limit(READ_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = read()
    except PceaError as err:
        message = str(err)
        assert str(path) in message, f"error does not name the file: {message!r}"
        assert "\n" not in message, f"error is not one line: {message!r}"
        return "refused"
    assert isinstance(result, np.ndarray) and result.dtype == np.float32, type(result)
    assert result.shape == (rows, channels), result.shape
    assert np.isfinite(result).all()
    return "loaded"


def check_load_points(path: Path, normals: bool = False, **limits) -> str:
    return outcome(lambda: load_points(path, NUM_POINTS, normals=normals, **limits), path,
                   channels=6 if normals else 3, rows=NUM_POINTS)


# --- valid files of every kind, the seeds that truncation and corruption start from -----------

OCTA_VERTICES = np.array([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], float)
OCTA_FACES = np.array([(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5),
                       (0, 3, 5)])
CLOUD = np.random.default_rng(0).normal(size=(40, 6))


def off_text(vertices, faces, glued=False) -> bytes:
    head = f"OFF{len(vertices)} {len(faces)} 0\n" if glued else f"OFF\n{len(vertices)} {len(faces)} 0\n"
    body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in vertices)
    body += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)
    return (head + body).encode()


def ply_mesh(vertices, faces, fmt="ascii") -> bytes:
    head = (f"ply\nformat {fmt} 1.0\nelement vertex {len(vertices)}\nproperty float x\nproperty float y\n"
            f"property float z\nelement face {len(faces)}\nproperty list uchar int vertex_indices\n"
            f"end_header\n").encode()
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in vertices)
        return head + (body + "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)).encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    body = b"".join(struct.pack(order + "3f", *row) for row in vertices)
    return head + body + b"".join(struct.pack(order + "B3i", 3, *face) for face in faces)


def ply_points(cloud, fmt="binary_little_endian") -> bytes:
    names = ["x", "y", "z", "nx", "ny", "nz"]
    head = (f"ply\nformat {fmt} 1.0\nelement vertex {len(cloud)}\n"
            + "".join(f"property float {n}\n" for n in names) + "end_header\n").encode()
    if fmt == "ascii":
        return head + "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in cloud).encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    return head + b"".join(struct.pack(order + "6f", *row) for row in cloud)


def obj_text(vertices, faces) -> bytes:
    text = "mtllib missing.mtl\nusemtl skin\n"
    text += "".join(f"v {x!r} {y!r} {z!r}\n" for x, y, z in vertices.tolist())
    text += "vt 0 0\nvt 1 0\nvt 0 1\n"
    text += "".join(f"f {a + 1}/1 {b + 1}/2 {c + 1}/3\n" for a, b, c in faces)
    return text.encode()


def stl_ascii(vertices, faces) -> bytes:
    text = "solid hostile\n"
    for face in faces:
        text += " facet normal 0 0 0\n  outer loop\n"
        text += "".join("   vertex " + " ".join(f"{v:.6e}" for v in vertices[i]) + "\n" for i in face)
        text += "  endloop\n endfacet\n"
    return (text + "endsolid hostile\n").encode()


def stl_binary(vertices, faces, count=None) -> bytes:
    body = b"".join(struct.pack("<12fH", 0, 0, 0, *vertices[a], *vertices[b], *vertices[c], 0)
                    for a, b, c in faces)
    return b"\0" * 80 + struct.pack("<I", len(faces) if count is None else count) + body


def glb(vertices, faces) -> bytes:
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False).export(file_type="glb")


def text_points(cloud, sep=" ", header="", count_line=False) -> bytes:
    rows = "".join(sep.join(repr(float(v)) for v in row) + "\n" for row in cloud)
    return ((header + "\n" if header else "") + (f"{len(cloud)}\n" if count_line else "") + rows).encode()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz(array) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, points=array)
    return buffer.getvalue()


def valid_files(vertices=OCTA_VERTICES, cloud=CLOUD) -> dict[str, tuple[str, bytes]]:
    """Every kind of file pcea reads, as (extension, content)."""
    return {
        "off": (".off", off_text(vertices, OCTA_FACES)),
        "off-glued": (".off", off_text(vertices, OCTA_FACES, glued=True)),
        "ply-ascii-mesh": (".ply", ply_mesh(vertices, OCTA_FACES)),
        "ply-binary-mesh": (".ply", ply_mesh(vertices, OCTA_FACES, "binary_little_endian")),
        "ply-binary-points": (".ply", ply_points(cloud)),
        "ply-ascii-points": (".ply", ply_points(cloud, "ascii")),
        "obj": (".obj", obj_text(vertices, OCTA_FACES)),
        "stl-ascii": (".stl", stl_ascii(vertices, OCTA_FACES)),
        "stl-binary": (".stl", stl_binary(vertices, OCTA_FACES)),
        "glb": (".glb", glb(vertices, OCTA_FACES)),
        "xyz": (".xyz", text_points(cloud[:, :3])),
        "txt": (".txt", text_points(cloud, sep=",")),
        "pts": (".pts", text_points(cloud[:, :3], count_line=True)),
        "csv": (".csv", text_points(cloud, sep=",", header="x,y,z,nx,ny,nz")),
        "npy": (".npy", npy(cloud.astype(np.float32))),
        "npz": (".npz", npz(cloud)),
    }


VALID = valid_files()
EXTENSIONS = sorted({ext for ext, _ in VALID.values()} | {".txt"})


@contextlib.contextmanager
def hostile_file(name: str, content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        yield path


def test_the_seeds_are_valid():
    """Without this, truncation and corruption would start from files that never loaded."""
    for kind, (ext, content) in VALID.items():
        with hostile_file("seed" + ext, content) as path:
            assert check_load_points(path, normals=kind in ("ply-binary-points", "txt", "csv", "npy",
                                                            "npz")) == "loaded", kind


# --- properties over generated cases ----------------------------------------------------------


@pytest.mark.parametrize("ext", EXTENSIONS)
@EXAMPLES
@given(content=st.binary(max_size=4096))
def test_random_bytes(ext, content):
    with hostile_file("random" + ext, content) as path:
        event(check_load_points(path))


@pytest.mark.parametrize("kind", list(VALID))
@EXAMPLES
@given(data=st.data())
def test_truncated_valid_file(kind, data):
    ext, content = VALID[kind]
    cut = data.draw(st.integers(0, len(content) - 1), label="cut")
    with hostile_file("truncated" + ext, content[:cut]) as path:
        event(check_load_points(path))


@pytest.mark.parametrize("kind", list(VALID))
@EXAMPLES
@given(data=st.data())
def test_corrupted_valid_file(kind, data):
    ext, content = VALID[kind]
    damaged = bytearray(content)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        position = data.draw(st.integers(0, len(damaged) - 1), label="position")
        damaged[position] = data.draw(st.integers(0, 255), label="byte")
    with hostile_file("corrupted" + ext, bytes(damaged)) as path:
        event(check_load_points(path))


COUNTS = st.one_of(st.integers(-10, 100), st.integers(-(2**70), 2**70),
                   st.sampled_from([0, -1, 10**9, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64]))


def with_counts(kind: str, vertices: int, faces: int) -> tuple[str, bytes]:
    """A valid octahedron file whose header declares other counts."""
    ext, content = VALID[kind]
    if kind == "off":
        return ext, content.replace(b"\n6 8 0\n", f"\n{vertices} {faces} 0\n".encode(), 1)
    if kind == "off-glued":
        return ext, content.replace(b"OFF6 8 0", f"OFF{vertices} {faces} 0".encode(), 1)
    if kind.startswith("ply-") and kind.endswith("-mesh"):
        content = content.replace(b"element vertex 6\n", f"element vertex {vertices}\n".encode(), 1)
        return ext, content.replace(b"element face 8\n", f"element face {faces}\n".encode(), 1)
    if kind.startswith("ply-"):
        return ext, content.replace(b"element vertex 40\n", f"element vertex {vertices}\n".encode(), 1)
    if kind == "stl-binary":
        return ext, stl_binary(OCTA_VERTICES, OCTA_FACES, count=faces % 2**32)
    if kind == "pts":
        return ext, content.replace(b"40\n", f"{vertices}\n".encode(), 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["off", "off-glued", "ply-ascii-mesh", "ply-binary-mesh",
                                  "ply-binary-points", "ply-ascii-points", "stl-binary", "pts"])
@EXAMPLES
@given(vertices=COUNTS, faces=COUNTS)
def test_wrong_negative_or_enormous_header_counts(kind, vertices, faces):
    ext, content = with_counts(kind, vertices, faces)
    with hostile_file("counts" + ext, content) as path:
        tracemalloc.start()
        try:
            result = check_load_points(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        event(result)
        assert peak < ALLOC_LIMIT, f"allocated {peak:,} bytes for a {len(content)}-byte file"


NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@pytest.mark.parametrize("kind", ["off", "ply-ascii-mesh", "ply-binary-mesh", "ply-binary-points",
                                  "ply-ascii-points", "obj", "stl-ascii", "stl-binary", "glb", "xyz",
                                  "txt", "pts", "csv", "npy", "npz"])
@FEW_EXAMPLES
@given(row=st.integers(0, 5), column=st.integers(0, 2), value=NON_FINITE)
def test_nan_or_inf_coordinates_are_refused(kind, row, column, value):
    vertices, cloud = OCTA_VERTICES.copy(), CLOUD.copy()
    vertices[row, column] = value
    cloud[row, column] = value
    ext, content = valid_files(vertices, cloud)[kind]
    with hostile_file("nonfinite" + ext, content) as path:
        assert check_load_points(path) == "refused"


# --- named cases ------------------------------------------------------------------------------


def ply_declaring(vertices: int) -> bytes:
    return (f"ply\nformat binary_little_endian 1.0\nelement vertex {vertices}\nproperty float x\n"
            f"property float y\nproperty float z\nend_header\n").encode() + bytes(120)


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(120)


HUGE = {
    "ply-1e9-vertices": (".ply", ply_declaring(10**9), {}),
    "ply-1e9-vertices-limit-raised": (".ply", ply_declaring(10**9), {"max_points": 10**12}),
    "off-1e12-vertices-limit-raised": (".off", b"OFF\n1000000000000 1 0\n0 0 0\n3 0 0 0\n",
                                       {"max_points": 10**13}),
    "stl-4e9-triangles-limit-raised": (".stl", stl_binary(OCTA_VERTICES, OCTA_FACES, count=2**32 - 1),
                                       {"max_points": 10**13}),
    "npy-1e12-points": (".npy", npy_declaring((10**12, 3)), {"max_points": 10**13}),
    "pts-1e12-count-line": (".pts", b"1000000000000\n0 0 0\n1 1 1\n", {}),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_huge_declared_counts_are_refused_before_allocating(case):
    ext, content, limits = HUGE[case]
    with hostile_file("huge" + ext, content) as path:
        tracemalloc.start()
        try:
            result = check_load_points(path, **limits)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < ALLOC_LIMIT, f"allocated {peak:,} bytes before deciding"
    assert result in ("refused", "loaded")
    if case != "pts-1e12-count-line":  # there the count line is only a hint; the two rows are read
        assert result == "refused"


def test_binary_ply_with_the_wrong_endianness():
    for kind in ("ply-binary-mesh", "ply-binary-points"):
        _, content = VALID[kind]
        swapped = content.replace(b"binary_little_endian", b"binary_big_endian", 1)
        with hostile_file("swapped.ply", swapped) as path:
            check_load_points(path)  # whatever the bytes mean, the property holds


@pytest.mark.parametrize("faces", ["f 1 2 99\n", "f -10 -11 -12\n", "f 1 2 99\nf 0 1 2\n",
                                   "f 1 2 3\nf 1 2 4000000000\n"])
def test_obj_faces_indexing_out_of_range(faces):
    content = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n" + faces.encode()
    with hostile_file("faces.obj", content) as path:
        check_load_points(path)


def test_off_faces_indexing_out_of_range():
    content = off_text(OCTA_VERTICES, OCTA_FACES).replace(b"3 0 2 4\n", b"3 0 2 6\n")
    with hostile_file("faces.off", content) as path:
        assert check_load_points(path) == "refused"


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_empty_file(ext):
    with hostile_file("empty" + ext, b"") as path:
        assert check_load_points(path) == "refused"


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_special_paths(ext, tmp_path):
    """A directory, a symlink loop, a dangling link, a FIFO and a device where a file was expected."""
    directory = tmp_path / ("folder" + ext)
    directory.mkdir()
    loop_a, loop_b = tmp_path / ("loop_a" + ext), tmp_path / ("loop_b" + ext)
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling = tmp_path / ("dangling" + ext)
    dangling.symlink_to(tmp_path / "nowhere")
    fifo = tmp_path / ("fifo" + ext)
    os.mkfifo(fifo)  # reading a FIFO with no writer would block forever
    device = tmp_path / ("zero" + ext)
    device.symlink_to("/dev/zero")  # endless data
    for path in (directory, loop_a, dangling, fifo, device):
        assert check_load_points(path) == "refused", path
