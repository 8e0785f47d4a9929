"""pcea classify: formats, a corrupt file among good ones, 1,000 files, usage errors, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import CLASS_NAMES

import pcea
from pcea.cli import main
from pcea.geometry import to_canonical


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


@pytest.mark.slow
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


# --- which way is up ---------------------------------------------------------------------------


def _z_up_shapes(folder, count: int = 8):
    """``count`` lopsided clouds saved z-up in ``folder/z``, the same clouds turned y-up in ``folder/y``."""
    rng = np.random.default_rng(7)
    for name in ("z", "y"):
        (folder / name).mkdir()
    for i in range(count):
        cloud = rng.normal(size=(200, 3)) * rng.uniform(0.2, 2.0, size=3) + [0, 0, rng.uniform(-1, 1)]
        cloud[:60, 2] += 1.5  # a heavy top: upside down is not the same shape
        np.save(folder / "z" / f"s{i}.npy", cloud.astype(np.float32))
        np.save(folder / "y" / f"s{i}.npy", to_canonical(cloud, "z"))
    return sorted((folder / "z").glob("*.npy")), sorted((folder / "y").glob("*.npy"))


def _check_orientations_agree(as_z: list[dict], as_y: list[dict]) -> None:
    """Both copies of each shape choose the same reading: the z-up copy's axis is z exactly when the y-up
    copy's is y, and then the answers are equal; some shapes were read upright (not a vacuous pass)."""
    for z_copy, y_copy in zip(as_z, as_y, strict=True):
        assert z_copy["up_from"] == y_copy["up_from"] == "model"
        assert (z_copy["up"] == "z") == (y_copy["up"] == "y")
        if z_copy["up"] == "z":
            assert [c for c, _ in z_copy["top_k"]] == [c for c, _ in y_copy["top_k"]]
            assert [p for _, p in z_copy["top_k"]] == pytest.approx([p for _, p in y_copy["top_k"]], abs=1e-5)
    assert any(result["up"] == "z" for result in as_z)


def test_auto_up_reads_both_orientations_alike_in_python(checkpoint, tmp_path):
    z_files, y_files = _z_up_shapes(tmp_path)
    model = pcea.load_model(checkpoint)
    as_z, as_y = pcea.classify(z_files, model, top_k=4), pcea.classify(y_files, model, top_k=4)
    _check_orientations_agree(as_z, as_y)
    # The answer is the chosen reading's: the same as giving that axis, which is then "option".
    for result, path in zip(as_z, z_files, strict=True):
        (given,) = pcea.classify(path, model, top_k=4, up=result["up"])
        assert given["up_from"] == "option" and dict(given["top_k"]) == pytest.approx(dict(result["top_k"]))


def test_auto_up_reads_both_orientations_alike_on_the_command_line(checkpoint, tmp_path, capsys):
    z_files, _ = _z_up_shapes(tmp_path)

    def rows(*args: str) -> list[dict]:
        assert main(["classify", str(checkpoint), *args, "--json", "--top-k", "4"]) == 0
        return [{**row, "top_k": [(e["class"], e["probability"]) for e in row["top_k"]]}
                for row in map(json.loads, capsys.readouterr().out.splitlines())]

    _check_orientations_agree(rows(str(tmp_path / "z")), rows(str(tmp_path / "y")))
    given = rows(str(tmp_path / "z"), "--up", "z")
    assert {(row["up"], row["up_from"]) for row in given} == {("z", "option")}
    assert main(["classify", str(checkpoint), str(z_files[0])]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["file", "up"] and row.split()[1:3] in (["y", "(model)"], ["z", "(model)"])


def test_a_file_that_declares_its_axis_is_read_so(checkpoint, tmp_path, capsys):
    import trimesh

    resampled = tmp_path / "chair" / "chair_0001.txt"   # PointNet++'s resampled layout: y-up
    resampled.parent.mkdir()
    cloud = np.random.default_rng(3).normal(size=(150, 6))
    resampled.write_text("".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in cloud))
    trimesh.creation.box(extents=(1, 2, 3)).export(tmp_path / "box.glb")   # glTF: y-up by its spec
    plain = tmp_path / "plain.txt"                                         # says nothing
    plain.write_text(resampled.read_text())
    assert main(["classify", str(checkpoint), str(resampled), str(tmp_path / "box.glb"), str(plain),
                 "--json"]) == 0
    found = {json.loads(line)["path"]: json.loads(line) for line in capsys.readouterr().out.splitlines()}
    for path in (resampled, tmp_path / "box.glb"):
        assert (found[str(path)]["up"], found[str(path)]["up_from"]) == ("y", "file")
    assert found[str(plain)]["up_from"] == "model"
    # Without a model, load_points(up="auto") takes what a file declares, else its format's usual axis.
    load = pcea.io.load_points
    np.testing.assert_array_equal(load(resampled, 64, up="auto"), load(resampled, 64, up="y"))
    np.testing.assert_array_equal(load(plain, 64, up="auto"), load(plain, 64, up="z"))


REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "modelnet40-npy" / "ModelNet40"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real ModelNet40 npy release not found at {REAL} "
                                              "(only the project's workplace has it)")
@pytest.mark.slow
def test_real_shapes_in_both_orientations_with_the_shipped_weights(tmp_path, capsys):
    """One real shape of each of 12 classes, as published (z-up) and turned y-up."""
    classes = sorted(path.name for path in REAL.iterdir() if path.is_dir())[::3][:12]
    picked = [sorted((REAL / name / "train").glob("*.npy"))[5] for name in classes]
    for frame in ("z", "y"):
        (tmp_path / frame).mkdir()
        for path in picked:
            points = np.load(path)
            np.save(tmp_path / frame / path.name, points if frame == "z" else to_canonical(points, "z"))
    model = pcea.load_model("modelnet40")
    as_z = pcea.classify(sorted((tmp_path / "z").glob("*.npy")), model, top_k=3)
    as_y = pcea.classify(sorted((tmp_path / "y").glob("*.npy")), model, top_k=3)
    _check_orientations_agree(as_z, as_y)
    upright = sum(result["up"] == "z" for result in as_z)
    assert upright >= 10, [(r["path"], r["up"], r["top_k"][0]) for r in as_z]   # the true axis, nearly always
    same = sum(a["top_k"][0][0] == b["top_k"][0][0] for a, b in zip(as_z, as_y, strict=True))
    assert same >= 11
    assert main(["classify", "modelnet40", str(tmp_path / "y"), "--json", "--top-k", "3"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["up"], row["top_k"][0]["class"]) for row in cli] == [(r["up"], r["top_k"][0][0])
                                                                       for r in as_y]


def test_outliers_remove_reaches_the_reader_from_python_and_the_command_line(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(4)
    scan = rng.standard_normal((500, 3))
    scan = np.concatenate([scan / np.linalg.norm(scan, axis=1, keepdims=True), [[40.0, 0, 0], [0, 0, -40.0]]])
    path = tmp_path / "scan.xyz"
    np.savetxt(path, scan)
    model = pcea.load_model(checkpoint)
    (result,) = pcea.classify(path, model, up="y", outliers="remove")
    cloud = pcea.io.load_points(path, model.config.num_points, up="y", outliers="remove")
    expected = model.predict(torch.from_numpy(cloud)[None])[0].numpy()
    assert dict(result["top_k"]) == pytest.approx(dict(zip(CLASS_NAMES, expected.tolist(), strict=True)))
    assert main(["classify", str(checkpoint), str(path), "--up", "y", "--outliers", "remove", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    printed_top_k = {row["class"]: row["probability"] for row in printed["top_k"]}
    assert printed_top_k == pytest.approx(dict(result["top_k"]), abs=1e-5)     # JSON keeps 6 digits
    with pytest.raises(pcea.PceaError, match="outliers='yes'"):
        pcea.classify(path, model, outliers="yes")
