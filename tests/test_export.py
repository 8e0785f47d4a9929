"""pcea.export: one ONNX graph, FPS and kNN included, that ONNX Runtime runs as PyTorch does.

The parity tests compare ONNX Runtime with the eager model a user gets (accelerated, as
pcea.load_model returns it) within 1e-4; the plain FPS and kNN the graph is traced from are
compared with the loop they replaced and with the compiled kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pcea
from pcea import ops
from pcea.cli import main
from pcea.export import export_onnx
from pcea.geometry import normalize_unit_sphere, to_canonical

# Slow: each ONNX export takes seconds (tracing, the checker, ONNX Runtime); make test-fast leaves them out.
pytestmark = pytest.mark.slow
SMALL = {"num_classes": 10, "num_points": 256, "centers": (128, 64)}
TINY = {"num_points": 128, "centers": (64, 32), "neighbors": (8, 8), "embed_dim": 16, "stage_dims": (32, 64),
        "fuse_dim": 128, "head_dims": (64, 32), "memory": 16}
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "modelnet40-npy" / "ModelNet40"
REAL_SAMPLE = ["airplane", "bathtub", "chair", "guitar", "lamp", "monitor", "sofa", "toilet"]


def calibrated(model: pcea.PCTClassifier, seed: int) -> pcea.PCTClassifier:
    """Random BatchNorm affine terms, and running statistics measured on clouds like the tests'.

    Folding them into the Linears is then tested, and the logits depend on the cloud as a
    trained model's do (with the initial statistics every cloud gets nearly the same logits,
    which would hide a wrong sampling or grouping).
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches below
        model.train()
        for batch in range(3):
            model(torch.from_numpy(clouds(8, model.config.num_points, 100 + batch,
                                          model.config.in_channels)))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def clouds(batch: int, num_points: int, seed: int, channels: int = 3) -> np.ndarray:
    """Clouds on bumpy ellipsoids, normalised like pcea's inputs: (B, N, 3), or (B, N, 6) with the
    directions from the centre as stand-in normals."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(batch, num_points, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    radii = 1 + 0.3 * rng.random((batch, 1, 3))  # a different ellipsoid per cloud
    points = directions * radii + 0.02 * rng.normal(size=(batch, num_points, 3))
    points = np.stack([normalize_unit_sphere(cloud) for cloud in points])
    return np.concatenate([points, directions.astype(np.float32)], axis=-1) if channels == 6 else points


def _eager(model: pcea.PCTClassifier, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(points)).numpy()


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="pip install 'pcea[export]'")
    return pytest.importorskip("onnxruntime", reason="pip install 'pcea[export]'")


@pytest.fixture(scope="module")
def small(ort, tmp_path_factory):
    """The small model exported once: (eager accelerated model, session, ONNX path)."""
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea", **SMALL), seed=1)
    model.class_names = [f"shape{i}" for i in range(SMALL["num_classes"])]
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    result = export_onnx(model, path)
    assert result.path == path and result.size_bytes == path.stat().st_size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return pcea.accelerate(model).eval(), session, path


def _run(session, points: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"points": points})[0]


# --- the plain ops the graph is traced from -------------------------------------------------


def _previous_fps(xyz: torch.Tensor, m: int, first: torch.Tensor) -> torch.Tensor:
    """The plain FPS loop as it was before the export (index assignment and out=)."""
    B, N, _ = xyz.shape
    batch = torch.arange(B)
    picked = torch.empty(B, m, dtype=torch.long)
    min_dist = torch.full((B, N), float("inf"), dtype=xyz.dtype)
    current = first
    for i in range(m):
        picked[:, i] = current
        last = xyz[batch, current].unsqueeze(1)
        dist = (xyz - last).square().sum(-1)
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist[batch, current] = -1.0
        current = min_dist.argmax(dim=1)
    return picked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_fps_picks_what_the_previous_loop_picked(seed):
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(5, 300, 3, generator=generator)
    xyz[1, 150:] = xyz[1, :150]  # a cloud of duplicated points
    first = torch.randint(300, (5,), generator=generator)
    for m in (1, 64, 300):
        assert torch.equal(ops._farthest_point_sample_torch(xyz, m, first), _previous_fps(xyz, m, first))


def test_plain_knn_finds_the_compiled_kernels_neighbours_and_the_nearest_ones():
    generator = torch.Generator().manual_seed(3)
    query, ref = torch.rand(3, 100, 3, generator=generator), torch.rand(3, 400, 3, generator=generator)
    got = ops._knn_torch(query, ref, 16)  # (B, M, k)
    exact = (query.double().unsqueeze(2) - ref.double().unsqueeze(1)).square().sum(-1)  # (B, M, N)
    expected = exact.topk(16, dim=-1, largest=False).values
    assert torch.allclose(exact.gather(-1, got), expected, rtol=0, atol=1e-6)
    from pcea.fast import sampling

    if sampling.available():  # the same float operations: the same indices
        assert torch.equal(got, sampling.knn_cpu(query, ref, 16))


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 32])
def test_onnx_runtime_logits_match_pytorch(small, batch):
    model, session, _ = small
    points = clouds(batch, SMALL["num_points"], seed=batch)
    expected = _eager(model, points)
    got = _run(session, points)
    assert got.shape == (batch, SMALL["num_classes"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_the_same_predictions_at_every_batch_size(small):
    _, session, _ = small
    points = clouds(32, SMALL["num_points"], seed=7)
    whole = _run(session, points)
    threes = np.concatenate([_run(session, points[i:i + 3]) for i in range(0, 32, 3)])
    singles = np.concatenate([_run(session, points[i:i + 1]) for i in range(32)])
    for other in (threes, singles):
        np.testing.assert_allclose(other, whole, rtol=0, atol=1e-5)
        assert (other.argmax(1) == whole.argmax(1)).all()
    assert len(set(whole.argmax(1).tolist())) > 1  # the clouds are told apart, not one constant answer


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real ModelNet40 clouds not found at {REAL}")
def test_onnx_runtime_matches_pytorch_on_real_shapes(small):
    model, session, _ = small
    files = [sorted((REAL / name / "train").glob("*.npy"))[0] for name in REAL_SAMPLE]
    points = np.stack([pcea.load_points(path, SMALL["num_points"], seed=0) for path in files])
    expected = _eager(model, points)
    got = _run(session, points)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


# --- what the file says about itself --------------------------------------------------------


def test_metadata_records_classes_points_frame_normalisation_and_opset(small):
    import onnx

    model, _, path = small
    proto = onnx.load(str(path))
    meta = {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    assert meta["class_names"] == [f"shape{i}" for i in range(10)]
    assert meta["num_points"] == 256 and meta["in_channels"] == 3 and meta["batch"] == "dynamic"
    assert meta["opset"] == 17 == next(op.version for op in proto.opset_import if op.domain == "")
    assert meta["frame"]["up"] == "y"
    assert meta["frame"]["default_up"][".obj"] == "y" and meta["frame"]["default_up"][".off"] == "z"
    cloud = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    turned = cloud @ np.asarray(meta["frame"]["z_up_to_y_up"], dtype=np.float32).T
    np.testing.assert_array_equal(turned, to_canonical(cloud, "z"))
    assert meta["normalization"]["center"] == "mean" and meta["normalization"]["scale"] == "unit_sphere"
    assert meta["model_config"] == json.loads(json.dumps(model.config.to_dict()))
    (points,) = proto.graph.input
    dims = points.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 256, 3]


def test_a_fixed_batch_is_fixed(ort, tmp_path):
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea", num_classes=4, **TINY), seed=3)
    result = export_onnx(model, tmp_path / "b2.onnx", batch=2, opset=13)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    points = clouds(2, 128, seed=0)
    np.testing.assert_allclose(_run(session, points), _eager(model, points), rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run(session, clouds(3, 128, seed=0))


@pytest.mark.parametrize("name, options", [
    ("pct", {}),
    ("pct-sa", {}),
    ("pcea", {"in_channels": 6, "pool": "max+mean", "heads": 2}),
])
def test_every_preset_and_option_exports(ort, tmp_path, name, options):
    torch.manual_seed(0)
    model = calibrated(pcea.build_model(name, num_classes=4, **TINY, **options), seed=4)
    result = export_onnx(model, tmp_path / "m.onnx")  # checked against PyTorch on a random batch of 3
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    points = clouds(2, 128, seed=5, channels=model.config.in_channels)
    np.testing.assert_allclose(_run(session, points), _eager(model, points), rtol=0, atol=1e-4)


def test_an_accelerated_model_is_exported_plain_and_stays_accelerated(ort, tmp_path):
    torch.manual_seed(0)
    model = pcea.accelerate(calibrated(pcea.build_model("pcea", num_classes=4, **TINY), seed=6))
    classes = [type(module) for module in model.modules()]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    result = export_onnx(model, tmp_path / "m.onnx")  # a copy, made plain by pcea.fast.plain
    assert type(model).__name__ == "FastPCTClassifier"
    assert [type(module) for module in model.modules()] == classes
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    points = clouds(2, 128, seed=7)
    np.testing.assert_allclose(_run(session, points), _eager(model, points), rtol=0, atol=1e-4)


# --- bad input ------------------------------------------------------------------------------


def test_points_the_model_cannot_take_are_one_clear_error(ort, tmp_path):
    model = pcea.build_model("pcea", num_classes=4, **TINY)
    with pytest.raises(pcea.PceaError, match=r"num_points=40: the model needs at least 64 points"):
        export_onnx(model, tmp_path / "m.onnx", num_points=40)
    with pytest.raises(pcea.PceaError, match="batch=0"):
        export_onnx(model, tmp_path / "m.onnx", batch=0)
    with pytest.raises(pcea.PceaError, match="opset=9: the exporter writes opsets 11 to 20"):
        export_onnx(model, tmp_path / "m.onnx", opset=9)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_paths_fail_before_the_export(ort, tmp_path):
    model = pcea.build_model("pcea", num_classes=4, **TINY)
    with pytest.raises(pcea.PceaFileError, match="no such directory"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(pcea.PceaFileError, match="is a directory"):
        export_onnx(model, tmp_path)


def test_a_model_the_exporter_cannot_convert_is_one_error_and_no_file(ort, tmp_path):
    # scaled_dot_product_attention (the pct-sa core) has an ONNX form from opset 14 on.
    model = pcea.build_model("pct-sa", num_classes=4, **TINY)
    target = tmp_path / "sa.onnx"
    target.write_bytes(b"the previous file")
    with pytest.raises(pcea.PceaError, match="self-attention model cannot be exported at opset 13"):
        export_onnx(model, target, opset=13)
    assert target.read_bytes() == b"the previous file"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa.onnx"]


def test_a_failed_check_writes_nothing(ort, tmp_path, monkeypatch):
    import pcea.export

    def disagree(*args):
        raise pcea.PceaError("the exported graph's logits differ")

    monkeypatch.setattr(pcea.export, "_verify", disagree)
    with pytest.raises(pcea.PceaError, match="differ"):
        export_onnx(pcea.build_model("pcea", num_classes=4, **TINY), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# --- the command line -----------------------------------------------------------------------


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea", num_classes=4, **TINY), seed=2)
    model.class_names = ["ball", "box", "disc", "rod"]
    return pcea.save_classifier(path, model)


def test_cli_export_writes_a_model_that_agrees_with_the_checkpoint(ort, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(out), "--points", "160", "--opset", "18"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "160 points" in printed and "opset 18" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == ["ball", "box", "disc",
                                                                                      "rod"]
    points = clouds(3, 160, seed=4)
    np.testing.assert_allclose(_run(session, points), _eager(pcea.load_model(checkpoint), points),
                               rtol=0, atol=1e-4)


def test_cli_export_errors_are_one_line_and_exit_1(ort, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "tiny.pt")
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--points", "40"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcea: error: num_points=40: the model needs at least 64") and "\n" not in err
    assert list(tmp_path.iterdir()) == [checkpoint]
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, as for every other option
        main(["export", str(checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--batch", "many"])
    assert usage.value.code == 2 and "expected 'dynamic' or a positive batch size" in capsys.readouterr().err


def test_cli_export_of_a_missing_checkpoint_or_to_a_missing_folder(ort, tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 1
    assert "none.pt" in capsys.readouterr().err
    checkpoint = _checkpoint(tmp_path / "tiny.pt")
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "no" / "m.onnx")]) == 1
    assert "no such directory" in capsys.readouterr().err


# --- the default model ----------------------------------------------------------------------


def test_the_default_model_exports_and_matches(ort, tmp_path):
    torch.manual_seed(0)
    model = calibrated(pcea.build_model("pcea"), seed=5)
    result = export_onnx(model, tmp_path / "default.onnx")
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    points = clouds(2, 1024, seed=6)
    np.testing.assert_allclose(_run(session, points), _eager(pcea.accelerate(model).eval(), points),
                               rtol=0, atol=1e-4)


# --- issue 23 item 10: what export writes over, and what a killed export leaves ----------------------


def test_export_refuses_a_device_or_fifo_before_the_work(ort, tmp_path, capsys):
    import os

    model = pcea.build_model("pcea", num_classes=4, **TINY)
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    null = tmp_path / "null.onnx"
    null.symlink_to(os.devnull)
    for path, kind in ((fifo, "a FIFO"), (null, "a device")):
        with pytest.raises(pcea.PceaFileError, match=f"is {kind}, not a regular file"):
            export_onnx(model, path)
    assert fifo.is_fifo() and null.is_char_device()
    pcea.save_classifier(tmp_path / "c.pt", model)
    assert main(["export", str(tmp_path / "c.pt"), "--onnx", str(null)]) == 1
    assert capsys.readouterr().err == (f"pcea: error: {null}: is a device, not a regular file; pcea writes "
                                       "only to a regular file or a new name\n")


def test_a_rerun_removes_what_a_killed_export_left(ort, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    # kill -9 inside the write of the file and inside the trace's scratch directory.
    script = ("import os, sys, time, tempfile\n"
              "from pcea.atomic import replacing, temporary_dir\n"
              "with temporary_dir(tempfile.gettempdir(), prefix='pcea-export-') as scratch, "
              "replacing(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'x' * 1000); print(scratch, flush=True); time.sleep(1000)\n")
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_root)}
    target = tmp_path / "out" / "m.onnx"
    target.parent.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                              env=env)
    scratch = Path(killed.stdout.readline().strip())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert scratch.is_dir() and len(list(target.parent.iterdir())) == 1  # the .m.onnx.*.tmp
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    export_onnx(pcea.build_model("pcea", num_classes=4, **TINY), target)
    assert [p.name for p in target.parent.iterdir()] == ["m.onnx"]
    assert list(scratch_root.iterdir()) == []
