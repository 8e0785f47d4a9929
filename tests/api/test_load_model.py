"""pcea.load_model: round trip, run directories, class names, refusal of unsafe or mismatched files."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

import pcea
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint

TINY = {"num_points": 128, "centers": (64, 32), "neighbors": (8, 8), "embed_dim": 16, "stage_dims": (32, 64),
        "fuse_dim": 128, "head_dims": (64, 32), "memory": 16}
NAMES = ["ball", "box", "disc", "rod"]


def _trained_model(seed: int) -> pcea.PCTClassifier:
    """The tiny model after two SGD steps, so BatchNorm statistics and weights differ from the init."""
    torch.manual_seed(seed)
    model = pcea.build_model("pcea", num_classes=4, **TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 128, 3)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _save(path, model):
    model.class_names = NAMES
    return pcea.save_classifier(path, model)


def test_round_trip_gives_the_same_outputs(tmp_path):
    model = _trained_model(0)
    _save(tmp_path / "model.pt", model)
    loaded = pcea.load_model(tmp_path / "model.pt")
    assert not loaded.training
    assert loaded.class_names == NAMES and loaded.config.num_points == 128
    assert loaded.config == model.config
    points = torch.randn(3, 128, 3)
    with torch.no_grad():
        expected = model(points).softmax(-1)
    assert torch.allclose(loaded.predict(points), expected, atol=1e-6)
    assert torch.allclose(loaded.predict(points[0].numpy()), expected[0], atol=1e-6)
    # Loaded accelerated (pcea.fast): at inference every BatchNorm is folded into its Linear.
    lbrs = [m for m in loaded.modules() if isinstance(m, pcea.layers.LBR)]
    assert lbrs and all(type(m) is pcea.fast.layers.FastLBR for m in lbrs)
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_save_classifier_is_the_inverse_of_load_model(tmp_path, tiny_model):
    """The preset's name, the classes (numbered where the model has none) and the weights."""
    model = tiny_model("pct", num_classes=3, trained=True)
    path = pcea.save_classifier(tmp_path / "pct.pt", model, extra={"epoch": 7})
    loaded = pcea.load_model(path)
    assert loaded.class_names == ["class0", "class1", "class2"] and loaded.config == model.config
    payload = load_checkpoint(path)
    assert (payload["model_name"], payload["epoch"]) == ("pct", 7)
    points = torch.randn(2, model.config.num_points, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), atol=1e-5, rtol=1e-5)


def test_run_directory_prefers_best(tmp_path):
    best, last = _trained_model(1), _trained_model(2)
    _save(tmp_path / "last.pt", last)
    points = torch.randn(2, 128, 3)
    assert torch.allclose(pcea.load_model(tmp_path).predict(points), last.predict(points), atol=1e-6)
    _save(tmp_path / "best.pt", best)
    assert torch.allclose(pcea.load_model(tmp_path).predict(points), best.predict(points), atol=1e-6)
    assert not torch.allclose(best.predict(points), last.predict(points), atol=1e-4)


def test_missing_and_empty_run_directory(tmp_path):
    with pytest.raises(pcea.PceaFileError, match="without best.pt or last.pt"):
        pcea.load_model(tmp_path)
    with pytest.raises(pcea.PceaFileError, match="no such checkpoint"):
        pcea.load_model(tmp_path / "nope.pt")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model = _trained_model(0)
    config = {**model.config.to_dict(), "memory": 8}
    save_checkpoint(tmp_path / "bad.pt", {"model": model.state_dict(), "model_config": config,
                                          "class_names": NAMES})
    with pytest.raises(pcea.PceaFileError, match="bad.pt: the stored weights do not fit"):
        pcea.load_model(tmp_path / "bad.pt")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    body = pickle.dumps({"format": "pcea-checkpoint/1", "model": _RunsCode(str(marker))}, protocol=2)
    header = f"PCEA-CHECKPOINT/1 {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    (tmp_path / "evil.pt").write_bytes(header + body)
    with pytest.raises(pcea.PceaFileError, match="evil.pt: refused"):
        pcea.load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_list_models_names_the_presets_and_the_builtin_weights():
    assert pcea.list_models() == ["pcea", "pct", "pct-sa"]
    assert pcea.list_models(pretrained=True) == ["modelnet40", "modelnet40-aligned"]
    assert "list_models" in pcea.__all__
    for name in pcea.list_models():
        assert pcea.build_model(name, num_classes=2, **TINY).config.num_classes == 2


def test_classify_takes_raw_arrays_as_a_file_holding_them(tmp_path):
    model = _trained_model(0)
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(300, 3)) * [3.0, 1.0, 0.5] + 10.0, rng.normal(size=(200, 3)) * 50]  # raw units
    for i, cloud in enumerate(clouds):
        np.save(tmp_path / f"c{i}.npy", cloud)
    files = pcea.classify([tmp_path / "c0.npy", tmp_path / "c1.npy"], model, top_k=4, up="z")
    arrays = pcea.classify(clouds, model, top_k=4, up="z")
    assert [r["index"] for r in arrays] == [0, 1] and all("path" not in r for r in arrays)
    for from_file, from_array in zip(files, arrays, strict=True):
        assert (from_array["up"], from_array["up_from"]) == ("z", "option")
        assert from_array["top_k"] == from_file["top_k"]   # the same sampling, normalisation and turn

    # A tensor, a (B, N, C) batch and an (N, C) array on its own; up="auto" picks the same as for the file.
    tensor = pcea.classify(torch.from_numpy(clouds[0]).float().requires_grad_(), model, top_k=4)
    auto_file = pcea.classify(tmp_path / "c0.npy", model, top_k=4)
    assert tensor[0]["up"] == auto_file[0]["up"] and tensor[0]["up_from"] == "model"
    assert dict(tensor[0]["top_k"]) == pytest.approx(dict(auto_file[0]["top_k"]), abs=1e-5)
    batch = pcea.classify(np.stack([clouds[1][:200], clouds[1]]), model, top_k=1, up="y")
    assert len(batch) == 2 and batch[0]["top_k"] == batch[1]["top_k"]
    # What predict() gets instead: the raw cloud, neither centred, scaled nor turned.
    raw = model.predict(torch.from_numpy(clouds[0][:128]).float()).numpy()
    assert not np.allclose(sorted(raw, reverse=True), [p for _, p in files[0]["top_k"]], atol=1e-3)


def test_classify_reports_a_bad_array_and_refuses_a_mix():
    model = _trained_model(0)
    good = np.random.default_rng(1).normal(size=(150, 3))
    results = pcea.classify([good, good.T, np.full((150, 3), np.nan), good[:, :2]], model, top_k=1)
    assert "top_k" in results[0]
    assert results[1]["error"].startswith("array 1: shape (3, 150) is channels-first (C, N)")
    assert results[2]["error"] == "array 2: coordinates contain NaN or infinite values"
    assert results[3]["error"].startswith("array 3: points have shape (150, 2)")
    with pytest.raises(pcea.PceaError, match="mix point arrays and paths"):
        pcea.classify([good, "chair.off"], model)
    with pytest.raises(pcea.PceaError, match=r"an array of shape \(150,\)"):
        pcea.classify(good[:, 0], model)
    with pytest.raises(pcea.PceaError, match="up='x'"):
        pcea.classify(good, model, up="x")
