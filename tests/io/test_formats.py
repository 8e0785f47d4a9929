"""pcea.io's formats: every extension, the messy variants real datasets contain, and every error
(reading meshes and sampling their surfaces: test_meshes.py)."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_files import (
    TETRA_VERTICES,
    assert_normalised,
    lzf_compress,
    pcd_bytes,
    random_cloud,
    tetra_off,
    write,
)

from pcea.data.transforms import to_canonical
from pcea.errors import PceaError, PceaFileError
from pcea.io import MESH_EXTENSIONS, POINT_EXTENSIONS, PceaWarning, load_mesh, load_points

# --- point files ----------------------------------------------------------------------------


def test_every_point_extension(tmp_path):
    cloud = random_cloud(60, columns=6)
    files = {
        ".xyz": "\n".join(" ".join(f"{v:.8f}" for v in row) for row in cloud),
        ".txt": "x\ty\tz\tnx\tny\tnz\n" + "\n".join("\t".join(f"{v:.8f}" for v in row) for row in cloud),
        ".pts": f"{len(cloud)}\n" + "\n".join(" ".join(f"{v:.8f}" for v in row) for row in cloud),
        ".csv": "x,y,z,nx,ny,nz\n" + "\n".join(",".join(f"{v:.8f}" for v in row) for row in cloud),
    }
    for suffix, text in files.items():
        write(tmp_path / f"p{suffix}", text + "\n", "\r\n")
    np.save(tmp_path / "p.npy", cloud)
    np.savez(tmp_path / "p.npz", points=cloud[:, :3], normals=cloud[:, 3:])
    (tmp_path / "p.pcd").write_bytes(pcd_bytes(cloud, "binary"))
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 60\n"
              + "".join(f"property float {name}\n" for name in ("x", "y", "z", "nx", "ny", "nz"))
              + "property uchar alpha\nend_header\n")
    records = np.zeros(60, dtype=[("xyz", "<f4", 6), ("alpha", "u1")])
    records["xyz"] = cloud
    (tmp_path / "p.ply").write_bytes(header.encode() + records.tobytes())
    expected = to_canonical(normalize(cloud[np.random.default_rng(3).choice(60, 40, replace=False)]), "z")
    for suffix in POINT_EXTENSIONS:  # every point format is z-up by default
        points = load_points(tmp_path / f"p{suffix}", 40, seed=3, normals=True)
        np.testing.assert_allclose(points, expected, atol=1e-5, err_msg=suffix)
        assert_normalised(load_points(tmp_path / f"p{suffix}", 40, seed=3), 40, 3)


def normalize(cloud):
    from pcea.data.transforms import normalize_unit_sphere

    return normalize_unit_sphere(cloud)


@pytest.mark.parametrize("separator", [" ", "\t", ",", ";", ", "])
def test_point_separators(tmp_path, separator):
    cloud = random_cloud(20)
    text = "\n".join(separator.join(f"{v}" for v in row) for row in cloud)
    points = load_points(write(tmp_path / "p.txt", text), 20, seed=1, up="y")  # y: no turn into the frame
    expected = normalize(cloud[np.random.default_rng(1).choice(20, 20, replace=False)])
    np.testing.assert_allclose(points, expected, atol=1e-6)


def test_ascii_ply_point_cloud_with_normals(tmp_path):
    cloud = random_cloud(10, columns=6)
    header = ("ply\nformat ascii 1.0\nelement vertex 10\nproperty double x\nproperty double y\n"
              "property double z\nproperty double nx\nproperty double ny\nproperty double nz\n"
              "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    body = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in cloud)
    points = load_points(write(tmp_path / "p.ply", header + body + "\n"), 10, normals=True)
    assert sorted(points[:, 3].round(6)) == sorted(cloud[:, 3].astype(np.float32).round(6))


def test_fewer_points_than_requested_warns_and_samples_with_replacement(tmp_path):
    path = tmp_path / "few.npy"
    np.save(path, random_cloud(5))
    with pytest.warns(PceaWarning, match="only 5 points, 32 requested"):
        points = load_points(path, 32)
    assert points.shape == (32, 3)
    assert len(np.unique(points, axis=0)) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_points(path, 5)


# --- errors ---------------------------------------------------------------------------------


def raises_naming(path, match):
    return pytest.raises(PceaFileError, match=f"^{_escape(path)}: .*{match}")


def _escape(path):
    import re

    return re.escape(str(path))


def test_missing_directory_unknown_extension_and_empty(tmp_path):
    with raises_naming(tmp_path / "nope.off", "no such point or mesh file"):
        load_points(tmp_path / "nope.off")
    folder = tmp_path / "dir.off"
    folder.mkdir()
    with raises_naming(folder, "is a directory"):
        load_points(folder)
    with raises_naming(write(tmp_path / "m.dae", "x"), "unknown extension '.dae'"):
        load_points(tmp_path / "m.dae")
    for suffix in MESH_EXTENSIONS + POINT_EXTENSIONS:
        path = write(tmp_path / f"empty{suffix}", "")
        with raises_naming(path, "empty"):
            load_points(path)


def test_symlink_loop(tmp_path):
    loop = tmp_path / "loop.off"
    os.symlink(loop, loop)
    with raises_naming(loop, "cannot read the point or mesh file: "):
        load_points(loop)


def test_file_larger_than_the_limit(tmp_path):
    path = write(tmp_path / "m.off", tetra_off())
    with pytest.raises(PceaError, match="num_points=0: expected a positive integer"):
        load_points(path, 0)
    with raises_naming(path, "over the 50-byte limit of a point or mesh file"):
        load_points(path, max_bytes=50)


@pytest.mark.parametrize("suffix", MESH_EXTENSIONS + POINT_EXTENSIONS)
def test_garbage_content(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"\x00\x01hello \xff\xfe not a point cloud at all\n" * 3)
    with raises_naming(path, ""):
        load_points(path)


def test_nan_and_inf_coordinates(tmp_path):
    off = write(tmp_path / "m.off", tetra_off().replace("1 0 0\n", "nan 0 0\n", 1))
    with raises_naming(off, "NaN or infinite"):
        load_points(off)
    csv = write(tmp_path / "p.csv", "1,2,3\n4,inf,6\n7,8,9\n")
    with raises_naming(csv, "NaN or infinite"):
        load_points(csv)
    npy = tmp_path / "p.npy"
    np.save(npy, np.array([[0, 0, np.nan]] * 4))
    with raises_naming(npy, "NaN or infinite"):
        load_points(npy)


def test_empty_mesh_and_zero_area(tmp_path):
    no_faces = write(tmp_path / "nofaces.off", "OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with raises_naming(no_faces, "mesh is empty"):
        load_points(no_faces)
    flat = write(tmp_path / "line.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n")
    with raises_naming(flat, "zero surface area"):
        load_points(flat)


def test_truncated_and_inconsistent_files(tmp_path):
    truncated = write(tmp_path / "t.off", "OFF\n4 4 0\n0 0 0\n1 0 0\n")
    with raises_naming(truncated, "truncated"):
        load_points(truncated)
    bad_index = write(tmp_path / "i.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    with raises_naming(bad_index, "refers to vertex 7 but there are 3 vertices"):
        load_points(bad_index)
    obj = write(tmp_path / "i.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    with pytest.raises(PceaFileError, match=_escape(obj)):
        load_points(obj)
    ragged = write(tmp_path / "r.xyz", "1 2 3\n4 5\n6 7 8\n")
    with raises_naming(ragged, "row 2 has 2 values"):
        load_points(ragged)
    stl = tmp_path / "t.stl"
    stl.write_bytes(b"\0" * 80 + (1000).to_bytes(4, "little") + b"\0" * 100)
    with raises_naming(stl, "declares 1,000 triangles"):
        load_points(stl)


def test_header_counts_beyond_the_limit_fail_before_allocating(tmp_path):
    ply = write(tmp_path / "huge.ply", "ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\n"
                                       "property float x\nproperty float y\nproperty float z\nend_header\n")
    with open(ply, "ab") as handle:
        handle.write(b"\0" * 120)
    off = write(tmp_path / "huge.off", "OFF\n1000000000 1 0\n0 0 0\n")
    tracemalloc.start()
    try:
        with raises_naming(ply, "declares 1,000,000,000 vertex elements, over the limit"):
            load_points(ply)
        with raises_naming(off, "declares 1,000,000,000 vertices"):
            load_points(off)
        # under a raised limit the count is still checked against the bytes present
        with raises_naming(ply, "more than the 120 bytes of data can hold"):
            load_points(ply, max_points=10**10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024**2
    npy = tmp_path / "big.npy"
    np.save(npy, np.zeros((100, 3)))
    with raises_naming(npy, "declares 100 points, over the limit of 50"):
        load_points(npy, max_points=50)


def test_wrong_shapes_and_missing_normals(tmp_path):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(12))
    with raises_naming(flat, r"shape \(12,\)"):
        load_points(flat)
    two = tmp_path / "two.csv"
    write(two, "1,2\n3,4\n")
    with raises_naming(two, r"shape \(2, 2\)"):
        load_points(two)
    xyz = write(tmp_path / "p.xyz", "\n".join("1 2 3" for _ in range(4)))
    with raises_naming(xyz, "normals requested but the points have 3 columns"):
        load_points(xyz, normals=True)
    ply = write(tmp_path / "p.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                                    "property float y\nproperty float z\nend_header\n1 2 3\n")
    with raises_naming(ply, "no nx ny nz properties"):
        load_points(ply, normals=True)
    strings = tmp_path / "s.npy"
    np.save(strings, np.array([["a", "b", "c"]]))
    with raises_naming(strings, "expected numbers"):
        load_points(strings)
    several = tmp_path / "several.npz"
    np.savez(several, a=np.zeros((3, 3)), b=np.zeros((3, 3)))
    with raises_naming(several, "several arrays"):
        load_points(several)
    with raises_naming(ply, "no faces"):
        load_mesh(ply)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from(MESH_EXTENSIONS + POINT_EXTENSIONS),
       prefix=st.sampled_from([b"", b"OFF\n", b"ply\nformat ascii 1.0\n", b"solid x\n", b"v 0 0 0\n"]))
def test_random_bytes_only_ever_raise_pcea_file_error(tmp_path, data, suffix, prefix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(prefix + data)
    try:
        points = load_points(path, 8)
    except PceaFileError as err:
        assert str(err).startswith(str(path))
    else:
        assert points.shape == (8, 3) and np.isfinite(points).all()


def test_huge_but_finite_coordinates_and_swapped_endianness(tmp_path):
    npy = tmp_path / "huge.npy"
    cloud = random_cloud(30) * 1e300
    np.save(npy, cloud)
    points = load_points(npy, 30, seed=2, up="y")
    np.testing.assert_allclose(points, normalize(cloud[np.random.default_rng(2).choice(30, 30, replace=False)]
                                                 / 1e300), atol=1e-5)
    off = write(tmp_path / "huge.off", tetra_off().replace("1 0 0\n", "1e300 0 0\n"))
    assert_normalised(load_points(off, 64), 64, 3)
    # a little-endian mesh declared big-endian: garbage indices must end in a clear error
    path = tmp_path / "box.ply"
    trimesh.creation.box().export(path)
    path.write_bytes(path.read_bytes().replace(b"binary_little_endian", b"binary_big_endian", 1))
    with raises_naming(path, ""):
        load_points(path)
    negative = write(tmp_path / "neg.off", "OFF\n-3 1 0\n")
    with raises_naming(negative, "negative number of vertices"):
        load_points(negative)


# --- PCD ------------------------------------------------------------------------------------

PCD_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "samples" / "pcd"
def test_lzf_round_trip_and_a_hand_made_stream(tmp_path):
    from pcea.io.formats import _lzf_decompress

    # literal "a", then a back reference of 9 bytes at distance 1 (an overlapping copy)
    assert _lzf_decompress(tmp_path, b"\x00a\xe0\x00\x00", 10) == b"a" * 10
    # literal "abc", then 4 bytes from distance 3: "abca"
    assert _lzf_decompress(tmp_path, b"\x02abc\x40\x02", 7) == b"abcabca"
    rng = np.random.default_rng(0)
    for data in (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), b"xyz" * 200 + bytes(300),
                 np.round(rng.normal(size=300), 1).astype(np.float32).tobytes()):
        packed = lzf_compress(data)
        assert _lzf_decompress(tmp_path, packed, len(data)) == data
    with pytest.raises(PceaFileError, match="reaches outside the data"):
        _lzf_decompress(tmp_path, b"\x00a\xe0\x00\x05", 10)   # distance 6 before byte 1
    with pytest.raises(PceaFileError, match="reaches outside the data"):
        _lzf_decompress(tmp_path, b"\x00a\xe0\xff\x00", 10)   # 264 bytes into a 10-byte buffer
    with pytest.raises(PceaFileError, match="unpacks to 10 bytes, not 11"):
        _lzf_decompress(tmp_path, b"\x00a\xe0\x00\x00", 11)
    with pytest.raises(PceaFileError, match="literal run goes past the end"):
        _lzf_decompress(tmp_path, b"\x05ab", 6)


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_pcd_encodings_read_like_the_same_points_in_npy(tmp_path, data):
    cloud = random_cloud(50, seed=4, columns=6)
    path = tmp_path / f"p_{data}.pcd"
    path.write_bytes(pcd_bytes(cloud, data))
    np.save(tmp_path / "p.npy", cloud.astype(np.float32))
    for normals in (False, True):
        expected = load_points(tmp_path / "p.npy", 40, seed=5, normals=normals)
        np.testing.assert_allclose(load_points(path, 40, seed=5, normals=normals), expected, atol=1e-6)
    # z is the default up axis of .pcd, as of every format but OBJ and glTF
    np.testing.assert_array_equal(load_points(path, 40, up="auto"), load_points(path, 40, up="z"))
    assert not np.array_equal(load_points(path, 40, up="y"), load_points(path, 40, up="z"))


@pytest.mark.slow
def test_pcd_real_samples():
    files = sorted(PCD_SAMPLES.glob("*.pcd")) if PCD_SAMPLES.is_dir() else []
    if not files:
        pytest.skip(f"no real PCD samples at {PCD_SAMPLES} (../shared/data is not part of a user's clone)")
    assert len(files) == 50
    for path in files:
        raw = np.frombuffer(path.read_bytes()[-1024 * 12:], dtype="<f4").reshape(1024, 3).astype(np.float64)
        order = np.random.default_rng(0).choice(1024, 1024, replace=False)
        expected = to_canonical(normalize(raw[order] / np.abs(raw).max()), "z")
        points = load_points(path, 1024, seed=0)
        assert_normalised(points, 1024, 3)
        np.testing.assert_allclose(points, expected, atol=1e-5, err_msg=path.name)


def pcd_header(**changes) -> str:
    lines = {"VERSION": "0.7", "FIELDS": "x y z", "SIZE": "4 4 4", "TYPE": "F F F", "COUNT": "1 1 1",
             "WIDTH": "4", "HEIGHT": "1", "POINTS": "4"}
    lines.update(changes)
    return "".join(f"{key} {value}\n" for key, value in lines.items() if value is not None)


TETRA_POINTS = np.array(TETRA_VERTICES, np.float32)


@pytest.mark.parametrize("changes, match", [
    ({"SIZE": "2 4 4"}, "field 'x' has TYPE F SIZE 2"),
    ({"TYPE": "F X F"}, "field 'y' has TYPE X SIZE 4"),
    ({"COUNT": "1 0 1"}, "field 'y' has COUNT 0"),
    ({"COUNT": "1 1 2"}, "field 'z' has COUNT 2, expected 1"),
    ({"SIZE": "4 4"}, "3 FIELDS but 2 SIZE"),
    ({"FIELDS": "x y intensity"}, "no z fields"),
    ({"WIDTH": "5"}, r"WIDTH 5 x HEIGHT 1 = 5 points but POINTS 4"),
    ({"POINTS": "abc"}, "not an integer"),
    ({"POINTS": "-4", "WIDTH": None}, "negative number of points"),
    ({"VERSION": None, "FIELDS": None, "SIZE": None, "TYPE": None}, "no FIELDS"),
])
def test_pcd_inconsistent_headers_are_refused(tmp_path, changes, match):
    path = tmp_path / "bad.pcd"
    path.write_bytes((pcd_header(**changes) + "DATA binary\n").encode() + TETRA_POINTS.tobytes())
    with raises_naming(path, match):
        load_points(path)


def test_pcd_huge_declared_counts_and_truncated_data(tmp_path):
    cloud = random_cloud(20, columns=3)
    billion = pcd_header(WIDTH="1000000000", POINTS="1000000000")
    paths = {}
    for data in ("ascii", "binary", "binary_compressed"):
        body = pcd_bytes(cloud, data).split(f"DATA {data}\n".encode(), 1)[1]
        paths[data] = tmp_path / f"huge_{data}.pcd"
        paths[data].write_bytes((billion + f"DATA {data}\n").encode() + body)
    tracemalloc.start()
    try:
        for path in paths.values():
            with raises_naming(path, "declares 1,000,000,000 points, over the limit"):
                load_points(path)
        # under a raised limit, the data present decides before anything is allocated
        with raises_naming(paths["binary"], "declares 1,000,000,000 points of 12 bytes but the file has"):
            load_points(paths["binary"], max_points=10**10)
        with raises_naming(paths["binary_compressed"], "unpacks to"):
            load_points(paths["binary_compressed"], max_points=10**10)
        with raises_naming(paths["ascii"], "declares 1,000,000,000 points but the file has 20 data lines"):
            load_points(paths["ascii"], max_points=10**10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024**2
    for data in ("binary", "ascii", "binary_compressed"):
        content = pcd_bytes(cloud, data)
        cut = content.rstrip(b"\n").rindex(b"\n") + 1 if data == "ascii" else len(content) - 5
        path = tmp_path / f"cut_{data}.pcd"
        path.write_bytes(content[:cut])
        with raises_naming(path, "truncated"):
            load_points(path)
    sizes = tmp_path / "sizes.pcd"
    content = bytearray(pcd_bytes(cloud, "binary_compressed"))
    start = content.index(b"binary_compressed\n") + len(b"binary_compressed\n")
    content[start + 4:start + 8] = (10**9).to_bytes(4, "little")  # a lying uncompressed size
    sizes.write_bytes(bytes(content))
    with raises_naming(sizes, "says it unpacks to 1,000,000,000 bytes"):
        load_points(sizes)


def test_pcd_nan_points_are_dropped_with_a_warning_and_inf_is_refused(tmp_path):
    cloud = random_cloud(30, seed=2, columns=3)
    holes = cloud.copy()
    holes[[3, 7, 8]] = np.nan                    # PCL writes NaN for invalid points
    holes[12, 1] = np.nan
    for data in ("ascii", "binary", "binary_compressed"):
        path = tmp_path / f"holes_{data}.pcd"
        path.write_bytes(pcd_bytes(holes, data))
        with pytest.warns(PceaWarning, match="dropped 4 points with NaN coordinates"):
            points = load_points(path, 26, seed=1)
        np.save(tmp_path / "kept.npy", np.delete(cloud, [3, 7, 8, 12], axis=0).astype(np.float32))
        np.testing.assert_allclose(points, load_points(tmp_path / "kept.npy", 26, seed=1), atol=1e-6)
    path = tmp_path / "all_nan.pcd"
    path.write_bytes(pcd_bytes(np.full((5, 3), np.nan), "binary"))
    with raises_naming(path, "all 5 points are NaN"):
        load_points(path)
    infinite = cloud.copy()
    infinite[4, 2] = np.inf
    path.write_bytes(pcd_bytes(infinite, "binary"))
    with raises_naming(path, "NaN or infinite"):
        load_points(path)


# --- issue 15: real files a new user hit ----------------------------------------------------


@pytest.mark.parametrize("rows, match", [
    ("1 2 3\n", "1 point, all at one position"),
    ("1 2 3\n1 2 3\n1 2 3\n", "3 points, all at one position"),
    ("0 0 0\n1 1 1\n2 2 2\n-3 -3 -3\n", "the 4 points all lie on one line"),
    ("5 5 5\n6 5 5\n", "the 2 points all lie on one line"),
])
def test_a_cloud_without_extent_or_on_one_line_is_refused(tmp_path, rows, match):
    path = write(tmp_path / "degenerate.xyz", rows)
    with raises_naming(path, match):
        load_points(path)
    np.save(tmp_path / "degenerate.npy", np.loadtxt(path, ndmin=2))
    with raises_naming(tmp_path / "degenerate.npy", match):
        load_points(tmp_path / "degenerate.npy")


def test_three_points_off_a_line_are_enough_and_the_warning_reads_as_english(tmp_path):
    path = write(tmp_path / "few.xyz", "0 0 0\n1 0 0\n0 1 0\n")
    with pytest.warns(PceaWarning, match=r"few.xyz: only 3 points, 8 requested"):
        assert_normalised_radius(load_points(path, 8))
    from pcea.io import _count

    assert _count(1, "point") == "1 point" and _count(1000, "point") == "1,000 points"


def assert_normalised_radius(points):
    assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0, abs=1e-5)


def test_utf16_off_says_what_the_file_is(tmp_path):
    path = tmp_path / "utf16.off"
    path.write_bytes(tetra_off().encode("utf-16"))
    with raises_naming(path, "UTF-16 text; save it as ASCII"):
        load_points(path)
    binary = tmp_path / "binary.off"
    binary.write_bytes(b"OFF BINARY\n" + bytes(range(200, 256)))
    with raises_naming(binary, "not an ASCII OFF file"):
        load_points(binary)


def test_obj_with_out_of_range_faces_names_the_face_and_the_vertex_count(tmp_path):
    obj = write(tmp_path / "i.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 9\n")
    with raises_naming(obj, r"face 2 \(f 1 2 9\) refers to vertex 9 but the file has 3 vertices"):
        load_points(obj)
    negative = write(tmp_path / "n.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf -1 -2 -7\n")
    with raises_naming(negative, r"face 1 \(f -1 -2 -7\) refers to vertex -7 but the file has 3 vertices"):
        load_points(negative)


# --- issue 23: layouts read right or refused, channels-first arrays --------------------------


def ply_with_a_vertex_list(cloud, fmt="binary_little_endian", lengths=None) -> bytes:
    """A PLY point cloud whose vertex element has a list (``extra``) before x y z (issue 23, item 9)."""
    lengths = lengths or [2] * len(cloud)
    head = (f"ply\nformat {fmt} 1.0\nelement vertex {len(cloud)}\nproperty list uchar float extra\n"
            "property float x\nproperty float y\nproperty float z\nend_header\n").encode()
    if fmt == "ascii":
        rows = [" ".join([str(k)] + ["7.5"] * k + [repr(float(v)) for v in row])
                for k, row in zip(lengths, cloud, strict=True)]
        return head + ("\n".join(rows) + "\n").encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    return head + b"".join(np.array([k], "u1").tobytes() + np.full(k, 7.5, order + "f4").tobytes()
                           + np.asarray(row, order + "f4").tobytes()
                           for k, row in zip(lengths, cloud, strict=True))


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
def test_ply_with_a_list_before_xyz_is_read_like_trimesh_reads_it(tmp_path, fmt):
    cloud = random_cloud(30).astype(np.float32)
    path = tmp_path / "listed.ply"
    path.write_bytes(ply_with_a_vertex_list(cloud, fmt))
    from pcea.io.formats import _load_ply_points, _read_ply_header

    read = _load_ply_points(path, _read_ply_header(path, 1000), normals=False)
    np.testing.assert_array_equal(read, cloud.astype(np.float64))
    np.testing.assert_array_equal(read, np.asarray(trimesh.load(path, process=False).vertices))
    chosen = np.random.default_rng(1).choice(30, 20, replace=False)
    expected = to_canonical(normalize(cloud.astype(np.float64)[chosen]), "z")
    np.testing.assert_allclose(load_points(path, 20, seed=1), expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_lists_of_changing_length_before_xyz_are_refused_not_misread(tmp_path, fmt):
    path = tmp_path / "ragged.ply"
    path.write_bytes(ply_with_a_vertex_list(random_cloud(10), fmt, lengths=[2, 2, 3, 2, 2, 2, 2, 2, 2, 1]))
    with raises_naming(path, "changes length between rows"):
        load_points(path)


@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_channels_first_arrays_are_transposed_with_a_note(tmp_path, suffix, channels):
    """PointNet-style (C, N) arrays (issue 22, item 4): the points they hold, never C points."""
    cloud = random_cloud(50, columns=channels)
    path = tmp_path / f"first{suffix}"
    (np.save if suffix == ".npy" else lambda p, a: np.savez(p, points=a))(path, cloud.T.copy())
    reference = tmp_path / f"last{suffix}"
    (np.save if suffix == ".npy" else lambda p, a: np.savez(p, points=a))(reference, cloud)
    with pytest.warns(PceaWarning, match=rf"shape \({channels}, 50\) is read as 50 points saved channels"):
        points = load_points(path, 40, seed=2, normals=channels == 6)
    np.testing.assert_array_equal(points, load_points(reference, 40, seed=2, normals=channels == 6))


def test_channels_first_in_fortran_order_and_in_a_batch_of_one(tmp_path):
    cloud = random_cloud(50)
    text = "\n".join(" ".join(map(repr, row)) for row in cloud.tolist())
    expected = load_points(write(tmp_path / "p.xyz", text), 40)
    for name, array in (("fortran.npz", np.asfortranarray(cloud.T)), ("last.npz", np.asfortranarray(cloud)),
                        ("batch.npz", cloud.T[None]), ("batch.npy", cloud.T[None])):
        path = tmp_path / name
        np.save(path, array) if name.endswith(".npy") else np.savez(path, points=array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PceaWarning)
            np.testing.assert_allclose(load_points(path, 40), expected, atol=1e-6, err_msg=name)


def test_a_few_columns_that_could_be_either_layout_are_refused(tmp_path):
    path = tmp_path / "ambiguous.npy"
    np.save(path, random_cloud(5).T.copy())  # (3, 5): 3 points of 5 values, or 5 points channels-first
    with raises_naming(path, r"shape \(3, 5\) is ambiguous"):
        load_points(path)


def test_polygon_faces_and_text_rows_keep_their_points(tmp_path):
    """The PLY triangle count and the text parser read valid files as before (issue 23, items 6 and 9)."""
    quads = (b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
             b"property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n")
    quads += np.array([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1)], "<f4").tobytes()
    quads += np.array([4], "u1").tobytes() + np.array([0, 1, 2, 3], "<i4").tobytes()
    quads += np.array([4], "u1").tobytes() + np.array([0, 1, 4, 3], "<i4").tobytes()
    path = tmp_path / "quads.ply"
    path.write_bytes(quads)
    assert len(load_mesh(path, max_points=5).faces) == 4  # 2 quads, 4 triangles: within the limit
    rows = write(tmp_path / "rows.csv", "x;y;z\n# a comment\n\n1;2;3\n4,5,6 // a note\n7\t8\t9;\n1 0 0\n")
    from pcea.io.formats import _load_text_points

    np.testing.assert_array_equal(_load_text_points(rows, 100), [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 0, 0]])
    assert load_points(rows, 4).shape == (4, 3)
    with raises_naming(write(tmp_path / "word.xyz", "1 2 3\n4 five 6\n"), "not a number"):
        load_points(tmp_path / "word.xyz")
