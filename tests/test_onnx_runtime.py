"""pcea-onnx (pcea/onnx_runner.py, also scripts/onnx_classify.py): files to classes without torch.

It must classify as ``pcea classify`` does (same reader, same seed, same classes), run in a
process where importing torch fails, take folders and globs, and turn every hostile model
file (bad metadata, an endless loop, a tensor declaring terabytes, external data, NaN
weights, escape codes in class names) into one line.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from test_export import TINY, calibrated

import pcea
from pcea import onnx_runner
from pcea.export import export_onnx

onnx = pytest.importorskip("onnx", reason="pip install 'pcea[export]'")
pytest.importorskip("onnxruntime", reason="pip install 'pcea[export]'")
from onnx import TensorProto, helper  # noqa: E402  (after the skip: onnx may be missing)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "onnx_classify.py"
SHARED = ROOT.parent / "shared" / "data"
NAMES = ["ball", "box", "disc", "rod", "ring", "cone"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the model as pcea.load_model gives it, its ONNX file)."""
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea", num_classes=len(NAMES), **TINY), seed=0)
    model.class_names = NAMES
    path = tmp_path_factory.mktemp("runtime") / "tiny.onnx"
    export_onnx(model, path)
    return pcea.accelerate(model).eval(), path


def _shape(rng: np.random.Generator, n: int) -> np.ndarray:
    """An uneven box-ish cloud, z up, in raw units (not normalised): (n, 3)."""
    points = rng.random((n, 3)) * [2.0, 1.0, 0.5] + [10.0, -3.0, 4.0]
    return points + 0.01 * rng.normal(size=(n, 3))


def _write_files(folder: Path) -> list[Path]:
    """One file of each kind of format, from the same kinds of shapes."""
    import trimesh

    rng = np.random.default_rng(0)
    np.save(folder / "cloud.npy", _shape(rng, 300).astype(np.float32))
    (folder / "cloud.txt").write_text("x,y,z\n" + "\n".join(",".join(f"{v:.6f}" for v in row)
                                                           for row in _shape(rng, 300)))
    trimesh.PointCloud(_shape(rng, 250)).export(folder / "points.ply")
    box = trimesh.creation.box(extents=[2.0, 1.0, 0.4])
    box.export(folder / "box.stl")
    trimesh.creation.cone(radius=0.5, height=2.0, sections=12).export(folder / "cone.obj")
    box.export(folder / "box.glb")
    names = ("cloud.npy", "cloud.txt", "points.ply", "box.stl", "cone.obj", "box.glb")
    return [folder / name for name in names]


def _real_files() -> list[Path]:
    npy = sorted((SHARED / "modelnet40-npy" / "ModelNet40").glob("*/train/*_0001.npy"))[:4]
    pcd = sorted((SHARED / "samples" / "pcd").glob("*_0001.pcd"))[:4]
    return npy + pcd


def _blocked_env(tmp_path: Path, *modules: str) -> dict:
    """An environment whose Python cannot import ``modules`` (a module of that name first on the path
    that raises ModuleNotFoundError, as a missing package does)."""
    blocker = tmp_path / "blocked"
    blocker.mkdir(exist_ok=True)
    for name in modules:
        (blocker / f"{name}.py").write_text(f"raise ModuleNotFoundError('{name} is blocked in this test', "
                                            f"name='{name}')\n")
    return {**os.environ, "PYTHONPATH": str(blocker)}


def _runner(args: list, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcea.onnx_runner", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_it_classifies_without_torch_as_pcea_does(exported, tmp_path):
    model, onnx_path = exported
    env = _blocked_env(tmp_path, "torch")
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr  # the block works
    folder = tmp_path / "files"
    folder.mkdir()
    files = _write_files(folder) + _real_files()
    run = _runner([onnx_path, *files, "--json", "--top-k", "3", "--threads", "1"], env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    expected = pcea.classify(files, model, top_k=3)
    assert [line["path"] for line in lines] == [str(path) for path in files]
    for line, want in zip(lines, expected, strict=True):
        assert [entry["class"] for entry in line["top_k"]] == [name for name, _ in want["top_k"]]
        np.testing.assert_allclose([entry["probability"] for entry in line["top_k"]],
                                   [prob for _, prob in want["top_k"]], rtol=0, atol=1e-4)
        if "up" in want:  # the axis pcea classify chose (the file's, or the model's choice)
            assert (line["up"], line["up_from"]) == (want["up"], want["up_from"]), line["path"]


@pytest.mark.skipif(not (SHARED / "samples" / "pcd").is_dir(), reason=f"no real PCD files in {SHARED}")
@pytest.mark.slow
def test_real_files_are_part_of_the_comparison():
    assert len(_real_files()) >= 4  # the comparison above then covers real PCD (and npy) files


@pytest.mark.slow
def test_the_old_script_and_the_module_are_one_command(exported, tmp_path):
    _, onnx_path = exported
    np.save(tmp_path / "cloud.npy", _shape(np.random.default_rng(1), 200))
    env = _blocked_env(tmp_path, "torch")
    by_module = _runner([onnx_path, tmp_path / "cloud.npy"], env=env)
    by_script = subprocess.run([sys.executable, str(SCRIPT), str(onnx_path), str(tmp_path / "cloud.npy")],
                               env=env, capture_output=True, text=True, timeout=120)
    assert by_module.returncode == by_script.returncode == 0, by_module.stderr + by_script.stderr
    assert by_module.stdout == by_script.stdout and by_module.stdout.startswith(str(tmp_path / "cloud.npy"))


def test_the_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pcea-onnx"] == "pcea.onnx_runner:main"
    assert any(dep.startswith("onnxruntime") for dep in project["optional-dependencies"]["export"])


@pytest.mark.slow
def test_folders_and_globs_are_expanded_like_pcea_classify(exported, tmp_path, capsys):
    _, onnx_path = exported
    (tmp_path / "scans" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(2)
    np.save(tmp_path / "scans" / "a.npy", _shape(rng, 200))
    np.save(tmp_path / "scans" / "deep" / "b.npy", _shape(rng, 200))
    (tmp_path / "scans" / "notes.md").write_text("not a cloud")  # not an extension pcea reads: not taken
    (tmp_path / "empty").mkdir()
    status = onnx_runner.main([str(onnx_path), str(tmp_path / "scans"), f"{tmp_path}/scans/**/*.npy",
                               str(tmp_path / "empty"), str(tmp_path / "missing"), "--top-k", "1"])
    out, err = capsys.readouterr()
    assert status == 1  # the empty folder and the missing name are reported and skipped
    assert [line.split()[0] for line in out.splitlines()] == [str(tmp_path / "scans" / "a.npy"),
                                                             str(tmp_path / "scans" / "deep" / "b.npy")]
    assert err.splitlines() == [f"pcea-onnx: skipped {tmp_path / 'empty'}: is a directory holding no file "
                                f"pcea reads ({' '.join(pcea.io.inputs.KNOWN_EXTENSIONS)})",
                                f"pcea-onnx: skipped {tmp_path / 'missing'}: no such file"]
    assert onnx_runner.main([str(onnx_path), str(tmp_path / "missing")]) == 1  # nothing at all to classify
    missing = tmp_path / "missing"
    assert capsys.readouterr().err == f"pcea-onnx: error: no input files: {missing}: no such file\n"


def _glb_with_external_buffer(uri: str) -> bytes:
    """A one-triangle GLB whose vertices and indices are in the file ``uri`` beside it."""
    doc = {"asset": {"version": "2.0"}, "buffers": [{"uri": uri, "byteLength": 48}],
           "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36},
                           {"buffer": 0, "byteOffset": 36, "byteLength": 12}],
           "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                          "min": [0, 0, 0], "max": [1, 1, 0]},
                         {"bufferView": 1, "componentType": 5125, "count": 3, "type": "SCALAR"}],
           "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
           "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}], "scene": 0}
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned
    return b"glTF" + struct.pack("<II", 2, 20 + len(text)) + struct.pack("<I", len(text)) + b"JSON" + text


@pytest.mark.slow
def test_bad_files_are_skipped_in_one_line_and_the_others_classified(exported, tmp_path):
    _, onnx_path = exported
    env = _blocked_env(tmp_path, "torch")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "flat.txt").write_text("1 2\n3 4\n")
    (tmp_path / "huge_index.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n"
                                             "3 0 1 99999999999999999999999\n")
    os.mkfifo(tmp_path / "pipe.npy")  # read, it would block for ever
    os.mkfifo(tmp_path / "pipe.bin")  # and so would a GLB whose buffer it is
    (tmp_path / "fifo.glb").write_bytes(_glb_with_external_buffer("pipe.bin"))
    good = tmp_path / "cloud.npy"
    np.save(good, _shape(np.random.default_rng(1), 200))
    bad = [tmp_path / name for name in ("empty.npy", "missing.off", "flat.txt", "huge_index.off", "pipe.npy",
                                        "fifo.glb")]
    run = _runner([onnx_path, *bad, good], env=env)
    assert run.returncode == 1
    skipped = run.stderr.strip().splitlines()
    assert len(skipped) == len(bad) and all(line.startswith("pcea-onnx: skipped ") for line in skipped)
    assert "missing.off: no such file" in run.stderr and "pipe.npy: " in run.stderr
    assert "fifo.glb: GLB buffer 'pipe.bin': is a FIFO, not a regular file" in run.stderr
    assert run.stdout.splitlines()[0].startswith(str(good))  # the good file is still classified


@pytest.mark.slow
def test_a_textured_obj_needs_no_pillow(exported, tmp_path):
    _, onnx_path = exported
    rows = ["v 0 0 0", "v 1 0 0", "v 0 1 0", "v 0 0 1", "vt 0 0", "vt 1 0", "vt 0 1", "usemtl a",
            "f 1/1 2/2 3/3", "f 1/1 2/2 4/3", "usemtl b", "f 1/1 3/2 4/3", "f 2/1 3/2 4/3"]
    (tmp_path / "textured.obj").write_text("mtllib missing.mtl\n" + "\n".join(rows) + "\n")
    run = _runner([onnx_path, tmp_path / "textured.obj"], env=_blocked_env(tmp_path, "torch", "PIL"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(tmp_path / "textured.obj"))


@pytest.mark.slow
def test_names_are_escaped_on_the_terminal(tmp_path, capsys):
    forged = "\x1b[2Jchair\npcea-onnx: error: forged"
    model = _tiny_model(tmp_path / "m.onnx", classes=[forged, "table"])
    cloud = tmp_path / "a\nb é.npy"
    np.save(cloud, _shape(np.random.default_rng(3), 64))
    assert onnx_runner.main([str(model), str(cloud)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1 and "\x1b" not in out
    assert "a\\nb é.npy" in out and "\\x1b[2Jchair\\npcea-onnx: error: forged" in out
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}  # a terminal that cannot show é
    run = _runner([model, cloud], env=env)
    assert run.returncode == 0 and "a\\nb \\xe9.npy" in run.stdout, run.stderr


# --- hostile model files: tiny graphs built here --------------------------------------------


def _frame() -> dict:
    return {"up": "y", "z_up_to_y_up": [[1, 0, 0], [0, 0, 1], [0, -1, 0]]}


def _tiny_model(path: Path, *, classes=("a", "b"), meta: dict | None = None, num_points: int = 16,
                out_dim: int | str | None = None, weight: np.ndarray | None = None, nodes=(),
                initializers=(), logits: str = "logits") -> Path:
    """points (batch, N, 3) -> mean over the points (batch, 3) -> @ weight (3, K) -> logits (batch, K).

    ``meta`` replaces or (with a value of None) removes metadata entries: a string as it is (the raw
    metadata text), anything else JSON-encoded.
    """
    count = len(classes) if isinstance(classes, list | tuple) else 2
    weight = np.arange(3 * count, dtype=np.float32).reshape(3, count) if weight is None else weight
    metadata = {"class_names": list(classes) if isinstance(classes, tuple) else classes,
                "num_points": num_points, "in_channels": 3, "frame": _frame(), "batch": "dynamic"}
    metadata = {key: json.dumps(value) for key, value in metadata.items()}
    for key, value in (meta or {}).items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["points", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "weight"], ["logits"]), *nodes],
        "tiny", [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["batch", num_points, 3])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", out_dim or count])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("weight", TensorProto.FLOAT, list(weight.shape), weight.ravel().tolist()),
         *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, metadata)
    path.write_bytes(model.SerializeToString())
    return path


def _one_line_error(model: Path, tmp_path: Path, capsys, *extra: str) -> str:
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, _shape(np.random.default_rng(4), 64))
    status = onnx_runner.main([str(model), str(cloud), *extra])
    out, err = capsys.readouterr()
    assert status == 1 and out == "", out
    assert err.startswith("pcea-onnx: error: ") and err.count("\n") == 1, err
    return err


def test_the_tiny_model_itself_runs(tmp_path, capsys):
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, _shape(np.random.default_rng(4), 64))
    assert onnx_runner.main([str(_tiny_model(tmp_path / "m.onnx")), str(cloud), "--up", "z"]) == 0
    assert capsys.readouterr().out.startswith(f"{cloud} z (option) ")


@pytest.mark.parametrize(("meta", "classes", "out_dim", "message"), [
    ({"class_names": "chair, table"}, ("a", "b"), None, "metadata 'class_names' is not JSON"),
    ({"frame": None, "num_points": None}, ("a", "b"), None, "no num_points, frame in its metadata"),
    ({}, {"a": 1, "b": 2}, 2, "metadata 'class_names' is {'a': 1, 'b': 2}; expected a non-empty list"),
    ({}, [1, 2], None, "expected a non-empty list of strings"),
    ({}, [], 2, "expected a non-empty list of strings"),
    ({"class_names": ["a"]}, ("a", "b"), None, "the graph gives 2 classes; its metadata names 1"),
    ({"num_points": 10**12}, ("a", "b"), None, "metadata 'num_points' is 1000000000000; expected an integer"),
    ({"num_points": 32}, ("a", "b"), None, "the graph takes tensor(float) ['batch', 16, 3]"),
    ({"num_points": True}, ("a", "b"), None, "metadata 'num_points' is True"),
    ({"in_channels": '"3"'}, ("a", "b"), None, "metadata 'in_channels' is '3'; expected 3 (xyz) or 6"),
    ({"frame": {"up": "z"}}, ("a", "b"), None, "metadata 'frame' is {'up': 'z'}; expected pcea's frame"),
    ({"batch": 0}, ("a", "b"), None, "metadata 'batch' is 0"),
    ({"class_names": "[" * 100_000 + "]" * 100_000}, ("a", "b"), None, "'class_names' is nested too deeply"),
])
def test_hostile_metadata_is_one_line(tmp_path, capsys, meta, classes, out_dim, message):
    model = _tiny_model(tmp_path / "m.onnx", classes=classes, meta=meta, out_dim=out_dim)
    err = _one_line_error(model, tmp_path, capsys)
    assert message in err and str(model) in err


def test_logits_that_do_not_match_the_class_names_are_an_error(tmp_path):
    # ONNX Runtime infers the output's shape of most graphs, so the metadata check above catches a
    # wrong count first; the check of each run's logits is the guard for a graph it cannot infer.
    model = onnx_runner.open_model(_tiny_model(tmp_path / "m.onnx", classes=("a", "b", "c")))
    model.class_names = ["a", "b"]
    with pytest.raises(pcea.PceaError, match=r"gave logits of shape \(1, 3\) for 1 clouds; its metadata "
                                             r"names 2 classes"):
        model.probabilities([np.zeros((16, 3), dtype=np.float32)])


def test_a_file_that_is_not_onnx_is_one_line(tmp_path, capsys):
    (tmp_path / "not.onnx").write_bytes(b"nonsense \xff\x00")
    assert "not an ONNX model" in _one_line_error(tmp_path / "not.onnx", tmp_path, capsys)
    os.mkfifo(tmp_path / "pipe.onnx")  # opened and refused without waiting for a writer
    assert "is a FIFO, not a regular file" in _one_line_error(tmp_path / "pipe.onnx", tmp_path, capsys)


def test_a_tensor_declaring_terabytes_is_refused_before_onnx_runtime(tmp_path, capsys):
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[10**12], raw_data=b"\0" * 16)
    model = _tiny_model(tmp_path / "m.onnx", initializers=[huge])
    assert "tensor 'huge' declares 4,000,000,000,000 bytes (shape [1000000000000])" in \
        _one_line_error(model, tmp_path, capsys)
    inside = helper.make_node("Constant", [], ["c"], value=huge)  # in a node attribute too
    model = _tiny_model(tmp_path / "n.onnx", nodes=[inside])
    assert "tensor 'huge' declares" in _one_line_error(model, tmp_path, capsys)


def test_external_data_is_refused(tmp_path, capsys):
    outside = TensorProto(name="outside", data_type=TensorProto.FLOAT, dims=[4],
                          data_location=TensorProto.EXTERNAL)
    outside.external_data.add(key="location", value="/dev/zero")
    model = _tiny_model(tmp_path / "m.onnx", initializers=[outside])
    assert "keeps its data in another file" in _one_line_error(model, tmp_path, capsys)


def test_nan_weights_are_an_error_not_a_class(tmp_path, capsys):
    model = _tiny_model(tmp_path / "m.onnx", weight=np.full((3, 2), np.nan, dtype=np.float32))
    assert "non-finite logits" in _one_line_error(model, tmp_path, capsys)


def test_a_model_that_cannot_run_is_one_line(tmp_path, capsys):
    model = _tiny_model(tmp_path / "m.onnx", weight=np.ones((4, 2), dtype=np.float32))  # (B, 3) @ (4, 2)
    err = _one_line_error(model, tmp_path, capsys)
    assert "ONNX Runtime cannot load it" in err or "the model failed to run" in err


@pytest.mark.slow
def test_an_endless_loop_is_stopped_by_the_time_limit(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["count_in", "one"], ["count_out"])], "forever",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    loop = [helper.make_node("Loop", ["", "true", "zero"], ["count"], body=body),  # no trip count: forever
            helper.make_node("Add", ["logits", "count"], ["looped"])]
    model = _tiny_model(tmp_path / "m.onnx", nodes=loop, logits="looped",
                        initializers=[helper.make_tensor("true", TensorProto.BOOL, [], [True]),
                                      helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    np.save(tmp_path / "cloud.npy", _shape(np.random.default_rng(5), 64))
    run = _runner([model, tmp_path / "cloud.npy", "--up", "z", "--timeout", "0.5"], timeout=60)  # no hang
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [f"pcea-onnx: error: {model}: a run of 1 clouds took longer than 0.5 s "
                                       "and was stopped (--timeout)"]


@pytest.mark.parametrize("option", [["--top-k", "0"], ["--timeout", "nan"], ["--seed", "-1"],
                                    ["--batch-size", "x"], ["--up", "x"]])
@pytest.mark.slow
def test_bad_options_are_usage_errors(tmp_path, option):
    run = _runner([tmp_path / "m.onnx", tmp_path / "a.npy", *option])
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("pcea-onnx: error: argument ")
