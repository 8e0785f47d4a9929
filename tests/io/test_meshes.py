"""pcea.io's meshes: OFF, PLY, OBJ, STL and GLB variants read as the same surface; seeded, area-weighted
sampling (the point formats and every error are in test_formats.py)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from io_files import TETRA_FACES, TETRA_VERTICES, assert_normalised, tetra_off, write

from pcea.io import load_mesh, load_points, sample_surface


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("glued", [False, True])
def test_off_variants_read_the_same_surface(tmp_path, newline, glued):
    path = tmp_path / "m.off"
    path.write_bytes(tetra_off(newline, glued).encode())
    points = load_points(path, 256, normals=True)
    assert_normalised(points, 256, 6)
    reference = tmp_path / "ref.off"
    reference.write_text(tetra_off())
    np.testing.assert_array_equal(points, load_points(reference, 256, normals=True))


def test_off_polygons_and_colours_are_triangulated(tmp_path):
    # a unit square as one quad with a colour after the indices, plus coloured vertices
    text = "OFF\n4 1 0\n0 0 0 255 0 0\n1 0 0 255 0 0\n1 1 0 0 255 0\n0 1 0 0 0 255\n4 0 1 2 3 10 20 30\n"
    mesh = load_mesh(write(tmp_path / "quad.off", text))
    assert mesh.faces.shape == (2, 3)
    assert mesh.area == pytest.approx(1.0)


def test_ply_mesh_with_extra_vertex_properties(tmp_path):
    header = ("ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 4\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nproperty float confidence\nelement face 4\n"
              "property list uchar int vertex_indices\nend_header\n")
    body = "".join(f"{x} {y} {z} 10 20 30 0.5\n" for x, y, z in TETRA_VERTICES)
    body += "".join(f"3 {a} {b} {c}\n" for a, b, c in TETRA_FACES)
    points = load_points(write(tmp_path / "m.ply", header + body, "\r\n"), 128, normals=True)
    assert_normalised(points, 128, 6)
    np.testing.assert_allclose(np.linalg.norm(points[:, 3:], axis=1), 1.0, atol=1e-5)


def test_binary_ply_mesh_and_glb_and_binary_stl(tmp_path):
    box = trimesh.creation.box(extents=(1, 2, 3))
    for suffix in (".ply", ".glb", ".stl"):
        path = tmp_path / f"box{suffix}"
        box.export(path)
        assert_normalised(load_points(path, 200, normals=True), 200, 6)
        mesh = load_mesh(path)
        assert mesh.area == pytest.approx(22.0), suffix
        # every sampled point lies on a face of the box: one coordinate is at its extreme
        points, _ = sample_surface(mesh, 200, seed=0)
        on_face = np.isclose(np.abs(points), [0.5, 1.0, 1.5], atol=1e-5).any(axis=1)
        assert on_face.all(), suffix


@pytest.mark.parametrize("mtl", ["none", "missing_image"])
def test_obj_with_texture_coordinates_and_missing_material(tmp_path, mtl):
    if mtl == "missing_image":
        write(tmp_path / "mat.mtl", "newmtl skin\nKd 1 1 1\nmap_Kd no_such_image.png\n")
    text = "mtllib mat.mtl\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in TETRA_VERTICES)
    text += "vt 0 0\nvt 1 0\nvt 0 1\nvn 0 0 1\nusemtl skin\n"
    text += "".join(f"f {a + 1}/1/1 {b + 1}/2/1 {c + 1}/3/1\n" for a, b, c in TETRA_FACES)
    mesh = load_mesh(write(tmp_path / "m.obj", text))
    assert mesh.faces.shape == (4, 3)
    assert_normalised(load_points(tmp_path / "m.obj", 64), 64, 3)


def test_ascii_stl_in_e_notation(tmp_path):
    text = "solid s\n"
    for a, b, c in TETRA_FACES:
        text += "  facet normal 0.0E+00 0.0E+00 0.0E+00\n    outer loop\n"
        for index in (a, b, c):
            text += "      vertex " + " ".join(f"{value:.6E}" for value in TETRA_VERTICES[index]) + "\n"
        text += "    endloop\n  endfacet\n"
    text += "endsolid s\n"
    mesh = load_mesh(write(tmp_path / "m.stl", text, "\r\n"))
    assert mesh.area == pytest.approx(1.5 + np.sqrt(3) / 2)


def test_sampling_is_seeded_and_area_weighted(tmp_path):
    path = write(tmp_path / "m.off", tetra_off())
    first = load_points(path, 300, seed=7, normals=True)
    np.testing.assert_array_equal(first, load_points(path, 300, seed=7, normals=True))
    assert not np.array_equal(first, load_points(path, 300, seed=8, normals=True))
    # two triangles in the plane z=0 with areas 1 and 3: 3/4 of the points land in the big one
    mesh = trimesh.Trimesh(vertices=[(0, 0, 0), (2, 0, 0), (0, 1, 0), (10, 0, 0), (16, 0, 0), (10, 1, 0)],
                           faces=[(0, 1, 2), (3, 4, 5)], process=False)
    points, normals = sample_surface(mesh, 20000, seed=0)
    assert points.shape == normals.shape == (20000, 3)
    assert (points[:, 0] >= 10).mean() == pytest.approx(0.75, abs=0.02)
    np.testing.assert_allclose(normals, np.tile([0, 0, 1], (20000, 1)), atol=1e-6)
    # inside the small triangle: x/2 + y <= 1
    small = points[points[:, 0] < 10]
    assert (small[:, 0] / 2 + small[:, 1] <= 1 + 1e-6).all()
