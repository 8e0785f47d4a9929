"""scripts/onnx_classify.py: files to classes with numpy, trimesh and onnxruntime, never torch.

Its readers must turn a file into the cloud pcea.io.load_points makes (same seed, same
points), and the script must run in a process where importing torch fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import TINY, calibrated

import pcea
from pcea.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "onnx_classify.py"
SHARED = ROOT.parent / "shared" / "data"
NAMES = ["ball", "box", "disc", "rod", "ring", "cone"]

pytest.importorskip("onnx", reason="pip install 'pcea[export]'")
pytest.importorskip("onnxruntime", reason="pip install 'pcea[export]'")


def _script():
    spec = importlib.util.spec_from_file_location("onnx_classify", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the model as pcea.load_model gives it, the ONNX file, the script's view of its metadata)."""
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea", num_classes=len(NAMES), **TINY), seed=0)
    model.class_names = NAMES
    path = tmp_path_factory.mktemp("runtime") / "tiny.onnx"
    export_onnx(model, path)
    _, meta = _script().open_model(str(path))
    return pcea.accelerate(model).eval(), path, meta


def _shape(rng: np.random.Generator, n: int) -> np.ndarray:
    """An uneven box-ish cloud, z up, in raw units (not normalised): (n, 3)."""
    points = rng.random((n, 3)) * [2.0, 1.0, 0.5] + [10.0, -3.0, 4.0]
    return points + 0.01 * rng.normal(size=(n, 3))


def _write_files(folder: Path) -> list[Path]:
    """One file per format the script reads, from the same kinds of shapes."""
    import trimesh

    rng = np.random.default_rng(0)
    files = []
    cloud = _shape(rng, 300)
    np.save(folder / "cloud.npy", cloud.astype(np.float32))
    files.append(folder / "cloud.npy")
    (folder / "cloud.txt").write_text("x,y,z\n" + "\n".join(",".join(f"{v:.6f}" for v in row)
                                                           for row in cloud))
    files.append(folder / "cloud.txt")
    (folder / "few.xyz").write_text("\n".join(" ".join(f"{v:.5f}" for v in row) for row in cloud[:90]))
    files.append(folder / "few.xyz")  # fewer points than the model takes: drawn with replacement
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\n"
              "HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {kind}\n")
    pcd = _shape(rng, 200).astype(np.float32)
    (folder / "ascii.pcd").write_text(header.format(n=len(pcd), kind="ascii")
                                      + "\n".join(" ".join(f"{v:.6f}" for v in row) for row in pcd) + "\n")
    (folder / "binary.pcd").write_bytes(header.format(n=len(pcd), kind="binary").encode()
                                        + b"".join(struct.pack("<3f", *row) for row in pcd))
    files += [folder / "ascii.pcd", folder / "binary.pcd"]
    trimesh.PointCloud(_shape(rng, 250)).export(folder / "points.ply")
    files.append(folder / "points.ply")
    box = trimesh.creation.box(extents=[2.0, 1.0, 0.4])
    cone = trimesh.creation.cone(radius=0.5, height=2.0, sections=12)
    box.export(folder / "box.stl")
    cone.export(folder / "cone.obj")
    box.export(folder / "box.ply")
    # ModelNet40's glued first line, and a quad (a square below the cone) that becomes two triangles.
    square = [[-1.0, -1.0, -0.5], [1.0, -1.0, -0.5], [1.0, 1.0, -0.5], [-1.0, 1.0, -0.5]]
    rows = [" ".join(f"{v:.4f}" for v in row) for row in [*cone.vertices, *square]]
    rows += ["3 " + " ".join(map(str, face)) for face in cone.faces]
    n = len(cone.vertices)
    rows.append(f"4 {n} {n + 1} {n + 2} {n + 3} 255 0 0")  # a face colour after the corners
    (folder / "cone.off").write_text(f"OFF{n + 4} {len(cone.faces) + 1} 0\n" + "\n".join(rows) + "\n")
    files += [folder / "box.stl", folder / "cone.obj", folder / "box.ply", folder / "cone.off"]
    return files


def _real_files() -> list[Path]:
    npy = sorted((SHARED / "modelnet40-npy" / "ModelNet40").glob("*/train/*_0001.npy"))[:4]
    pcd = sorted((SHARED / "samples" / "pcd").glob("*_0001.pcd"))[:4]
    return npy + pcd


def test_the_script_reads_every_format_as_pcea_does(exported, tmp_path):
    _, _, meta = exported
    script = _script()
    files = _write_files(tmp_path) + _real_files()
    for path in files:
        for seed in (0, 3):
            with pytest.warns(pcea.PceaWarning) if path.name == "few.xyz" else contextlib.nullcontext():
                expected = pcea.load_points(path, 128, seed=seed)
            got = script.load_cloud(path, meta, seed=seed)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=str(path))
    up_y = script.load_cloud(files[0], meta, up="y")
    np.testing.assert_allclose(up_y, pcea.load_points(files[0], 128, up="y"), rtol=0, atol=1e-6)


@pytest.mark.skipif(not (SHARED / "samples" / "pcd").is_dir(), reason=f"no real PCD files in {SHARED}")
def test_real_files_are_part_of_the_comparison():
    assert len(_real_files()) >= 4  # the comparison above then covers real PCD (and npy) files


def _without_torch(tmp_path: Path) -> dict:
    """An environment whose Python cannot import torch (a torch.py first on the path that raises)."""
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return {**os.environ, "PYTHONPATH": str(blocker)}


def test_the_script_classifies_without_torch_as_pcea_does(exported, tmp_path):
    model, onnx_path, _ = exported
    env = _without_torch(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr  # the block works
    folder = tmp_path / "files"
    folder.mkdir()
    files = [path for path in _write_files(folder) if path.name != "few.xyz"] + _real_files()
    run = subprocess.run([sys.executable, str(SCRIPT), str(onnx_path), *map(str, files), "--json",
                          "--top-k", "3", "--threads", "1"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    expected = pcea.classify(files, model, top_k=3)
    assert [line["path"] for line in lines] == [str(path) for path in files]
    for line, want in zip(lines, expected, strict=True):
        assert [entry["class"] for entry in line["top_k"]] == [name for name, _ in want["top_k"]]
        np.testing.assert_allclose([entry["probability"] for entry in line["top_k"]],
                                   [prob for _, prob in want["top_k"]], rtol=0, atol=1e-4)


def test_the_script_reports_bad_files_and_models_in_one_line(exported, tmp_path):
    _, onnx_path, _ = exported
    env = _without_torch(tmp_path)
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "flat.txt").write_text("1 2\n3 4\n")
    good = tmp_path / "cloud.npy"
    np.save(good, _shape(np.random.default_rng(1), 200))
    run = subprocess.run([sys.executable, str(SCRIPT), str(onnx_path), str(tmp_path / "empty.npy"),
                          str(tmp_path / "missing.off"), str(tmp_path / "flat.txt"), str(good)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    skipped = run.stderr.strip().splitlines()
    assert len(skipped) == 3 and all(line.startswith("onnx_classify: skipped ") for line in skipped)
    assert "missing.off: no such file" in run.stderr and "flat.txt" in run.stderr
    assert run.stdout.startswith(str(good))  # the good file is still classified
    (tmp_path / "not.onnx").write_bytes(b"nonsense")
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "not.onnx"), str(good)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("onnx_classify: error: ")
    assert len(bad.stderr.strip().splitlines()) == 1
