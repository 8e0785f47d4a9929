"""pcea classify: formats, a corrupt file among good ones, 1,000 files, usage errors, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import CLASS_NAMES

import pcea
from pcea.cli import main


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # the SMALLEST model: the 1,000-file test runs it on 1,000 clouds


def _cube_off() -> str:
    vertices = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    return ("OFF\n8 12 0\n" + "".join(f"{x} {y} {z}\n" for x, y, z in vertices)
            + "".join(f"3 {a} {b} {c}\n" for a, b, c in faces))


def _ply_points(points: np.ndarray) -> str:
    header = f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\n" \
             "property float y\nproperty float z\nend_header\n"
    return header + "".join(f"{x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in points)


@pytest.fixture
def mixed_dir(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    (tmp_path / "cube.off").write_text(_cube_off())
    (tmp_path / "sub" / "cloud.ply").write_text(_ply_points(rng.normal(size=(300, 3))))
    np.save(tmp_path / "sub" / "cloud.npy", rng.normal(size=(200, 3)).astype(np.float32))
    (tmp_path / "broken.off").write_text("OFF\n8 12 0\n0 0 0\n1 1\n")
    (tmp_path / "notes.md").write_text("not a point file, not picked up from a directory")
    return tmp_path


def test_cli_json_classifies_every_format_and_skips_the_corrupt_file(checkpoint, mixed_dir, capsys):
    assert main(["classify", str(checkpoint), str(mixed_dir), "--json", "--top-k", "3"]) == 1
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["path"] for r in results) == sorted(
        str(mixed_dir / name) for name in ("cube.off", "sub/cloud.ply", "sub/cloud.npy"))
    for result in results:
        probs = [entry["probability"] for entry in result["top_k"]]
        assert [entry["class"] in CLASS_NAMES for entry in result["top_k"]] == [True] * 3
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
    assert err.count("\n") == 1 and str(mixed_dir / "broken.off") in err


def test_library_classify_matches_predict_and_reports_errors(checkpoint, mixed_dir):
    results = pcea.classify([mixed_dir / "cube.off", mixed_dir / "broken.off"], checkpoint, top_k=4)
    assert [r["path"] for r in results] == [str(mixed_dir / "cube.off"), str(mixed_dir / "broken.off")]
    assert "error" in results[1] and str(mixed_dir / "broken.off") in results[1]["error"]
    model = pcea.load_model(checkpoint)
    axis = results[0]["up"]  # up="auto": the reading the model was more confident in
    probs = model.predict(pcea.io.load_points(mixed_dir / "cube.off", 128, seed=0, up=axis))
    expected = sorted(zip(CLASS_NAMES, probs.tolist(), strict=True), key=lambda pair: -pair[1])
    assert [name for name, _ in results[0]["top_k"]] == [name for name, _ in expected]
    assert [p for _, p in results[0]["top_k"]] == pytest.approx([p for _, p in expected], abs=1e-6)

    voted = pcea.classify(mixed_dir / "cube.off", model, votes=3)[0]["top_k"]
    assert dict(voted) != pytest.approx(dict(results[0]["top_k"]), abs=1e-7)


def test_thousand_files_with_broken_ones(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(1)
    broken = set(rng.choice(1000, size=25, replace=False).tolist())
    for i in range(1000):
        path = tmp_path / f"shape_{i:04d}.npy"
        if i not in broken:
            np.save(path, rng.normal(size=(128, 3)).astype(np.float32))
        elif i % 3 == 0:
            path.write_bytes(rng.bytes(64))                          # not an npy file
        elif i % 3 == 1:
            np.save(path, np.full((128, 3), np.nan, dtype=np.float32))  # NaN coordinates
        else:
            np.save(path, np.zeros((128, 2), dtype=np.float32))      # wrong shape
    code = main(["classify", str(checkpoint), str(tmp_path), "--json", "--batch-size", "200", "--top-k", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    classified = {json.loads(line)["path"] for line in out.splitlines()}
    assert classified == {str(tmp_path / f"shape_{i:04d}.npy") for i in range(1000) if i not in broken}
    reported = err.splitlines()
    assert len(reported) == len(broken)
    assert {line.split("shape_")[1][:4] for line in reported} == {f"{i:04d}" for i in broken}


def test_table_is_aligned(checkpoint, mixed_dir, capsys):
    assert main(["classify", str(checkpoint), str(mixed_dir / "cube.off"), str(mixed_dir / "sub" / "*.n?y"),
                 "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "up", "top-1", "top-2"] and len(lines) == 3
    up, first, second = lines[0].index("up"), lines[0].index("top-1"), lines[0].index("top-2")
    for row in lines[1:]:  # every row's columns start under their headers; the axis names who chose it
        assert row[up - 1] == " " and row[up:first].split() in (["y", "(model)"], ["z", "(model)"])
        assert row[first - 1] == " " and row[first:first + 3] in {name[:3] for name in CLASS_NAMES}
        assert row[second - 1] == " " and row[second:second + 3] in {name[:3] for name in CLASS_NAMES}


@pytest.mark.parametrize("args", [
    ["{dir}/nothing_here_*.off"],            # a glob matching nothing
    ["{dir}/empty"],                         # a directory without point files
    ["{dir}/empty", "--top-k", "0"],         # a bad option
])
def test_usage_errors_exit_2(checkpoint, tmp_path, args, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(checkpoint)] + [a.format(dir=tmp_path) for a in args])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_limits_refuse_large_files(checkpoint, mixed_dir, capsys):
    ply = str(mixed_dir / "sub" / "cloud.ply")
    assert main(["classify", str(checkpoint), ply, "--max-bytes", "100"]) == 1
    err = capsys.readouterr().err
    assert str(mixed_dir / "sub" / "cloud.ply") in err and len(err.splitlines()) == 1


def test_directory_with_a_symlink_loop(checkpoint, mixed_dir, capsys):
    (mixed_dir / "sub" / "loop").symlink_to(mixed_dir, target_is_directory=True)
    assert main(["classify", str(checkpoint), str(mixed_dir / "sub"), "--json"]) == 0
    paths = sorted(json.loads(line)["path"] for line in capsys.readouterr().out.splitlines())
    assert paths == [str(mixed_dir / "sub" / "cloud.npy"), str(mixed_dir / "sub" / "cloud.ply")]


def test_amp_classifies_in_bf16_where_native_and_says_why_not_elsewhere(checkpoint, mixed_dir, capsys,
                                                                         monkeypatch):
    from pcea import precision

    cube = str(mixed_dir / "cube.off")
    assert main(["classify", str(checkpoint), cube, "--json", "--top-k", "4"]) == 0
    fp32 = json.loads(capsys.readouterr().out)["top_k"]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert main(["classify", str(checkpoint), cube, "--json", "--top-k", "4", "--amp"]) == 0
    out, err = capsys.readouterr()
    bf16 = json.loads(out)["top_k"]
    assert err == "" and bf16 != fp32  # bf16 changes the probabilities, a little
    assert [e["probability"] for e in bf16] == pytest.approx([e["probability"] for e in fp32], abs=0.05)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert main(["classify", str(checkpoint), cube, "--json", "--top-k", "4", "--amp"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["top_k"] == fp32
    assert err.count("\n") == 1 and "--amp ignored" in err and "no native bf16" in err


def test_library_amp_warns_and_stays_float32_without_native_bf16(checkpoint, mixed_dir, monkeypatch):
    from pcea import precision

    cube = mixed_dir / "cube.off"
    fp32 = pcea.classify([cube], checkpoint, top_k=4)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(pcea.PceaWarning, match="amp=True ignored.*no native bf16") as caught:
        assert pcea.classify([cube], checkpoint, top_k=4, amp=True) == fp32
    assert caught[0].filename == __file__  # the warning points at the caller's line
