"""The robustness suite (pcea eval --corrupt): end to end on the tiny model, its JSON, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcea.cli import main
from pcea.data.corruptions import CORRUPTIONS
from pcea.engine.evaluate import evaluate_checkpoint
from pcea.engine.robustness import corrupted_clouds, evaluate_robustness, format_robustness


def _cells(report: dict) -> list[dict]:
    return [cell for rows in report["corruptions"].values() for cell in rows.values()]


def test_the_suite_runs_end_to_end_and_writes_its_json_and_plot(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", str(tiny_checkpoint), "--data", str(tiny_h5), "--corrupt", "all",
                 "--severities", "1,5", "--batch-size", "5", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    on_disk = json.loads((out / "robustness.json").read_text())
    assert printed == on_disk
    assert set(printed["clean"]) == {"oa", "macc"}
    assert list(printed["corruptions"]) == list(CORRUPTIONS)
    for rows in printed["corruptions"].values():
        assert list(rows) == ["1", "5"]
        assert all(set(cell) == {"oa", "macc"} and 0 <= cell["oa"] <= 1 for cell in rows.values())
    assert printed["mean_oa"] == pytest.approx(np.mean([cell["oa"] for cell in _cells(printed)]))
    assert "not the published ModelNet-C" in printed["note"]
    assert (printed["split"], printed["num_shapes"]) == ("test", 16)
    # The clean figure is the report's single pass.
    report = json.loads((out / "eval.json").read_text())
    assert printed["clean"]["oa"] == pytest.approx(report["results"]["single_pass"]["overall_accuracy"])
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_names_every_corruption_and_the_mean(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint), "--data", str(tiny_h5), "--corrupt", "yaw,partial",
                 "--severities", "2", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "yaw" in text and "partial" in text and "jitter" not in text
    assert "mean OA over all corruptions and severities" in text
    assert "not the published ModelNet-C" in text


def test_the_mean_is_printed_rounded_down_so_a_near_miss_does_not_read_as_a_target_met():
    cells = {"1": {"oa": 0.84994, "macc": 0.8}, "2": {"oa": 0.85, "macc": 0.8}}
    report = {"severities": [1, 2], "corruptions": {"yaw": cells}, "clean": {"oa": 0.88, "macc": 0.86},
              "mean_oa": 0.84997, "note": "n"}
    text = format_robustness(report)
    assert "mean OA over all corruptions and severities 84.99%" in text
    assert "85.0" not in text.splitlines()[-2]
    # The row's mean too: (0.84994 + 0.85) / 2 = 0.84997 prints as 84.99, not 85.0.
    assert text.splitlines()[1].split()[-1] == "84.99%"


def test_the_same_seed_gives_the_same_figures_whatever_the_batch_size(tiny_checkpoint, tiny_h5):
    runs = [evaluate_checkpoint(tiny_checkpoint, tiny_h5, corruptions=("drop_local", "add_global"),
                                severities=(3,), batch_size=size, seed=seed, write=False)["robustness"]
            for size, seed in ((4, 1), (16, 1), (16, 2))]
    assert runs[0]["corruptions"] == runs[1]["corruptions"]


@pytest.mark.parametrize("outliers", ["keep", "remove"])
def test_corrupted_clouds_come_back_at_the_model_size_except_density(outliers):
    rng = np.random.default_rng(0)
    clouds = rng.standard_normal((3, 64, 3)).astype(np.float32)
    for name in CORRUPTIONS:   # removing outliers drops a different number of points from each cloud
        out = corrupted_clouds(clouds, name, 5, seed=0, num_points=64, min_points=32, outliers=outliers)
        expected = 32 if name == "density" else 64     # density keeps 37.5 % = 24, filled up to 32
        assert out.shape == (3, expected, 3), name
        # With fewer centres than density keeps, it keeps its 24 points, filtered or not.
        assert corrupted_clouds(clouds, name, 5, seed=0, num_points=64, min_points=8,
                                outliers=outliers).shape == (3, 24 if name == "density" else 64, 3)
        radius = np.linalg.norm(out - out.mean(axis=1, keepdims=True), axis=2).max(axis=1)
        np.testing.assert_allclose(radius, 1, atol=1e-5)
    again = corrupted_clouds(clouds, "jitter", 2, seed=0, num_points=64, min_points=32)
    np.testing.assert_array_equal(again, corrupted_clouds(clouds, "jitter", 2, seed=0, num_points=64,
                                                          min_points=32))


def test_a_model_that_ignores_its_input_scores_the_same_everywhere():
    clouds = np.zeros((6, 16, 3), dtype=np.float32) + np.arange(16)[None, :, None]
    labels = np.array([0, 0, 1, 1, 1, 2])

    def always_one(batch: np.ndarray) -> np.ndarray:
        return np.tile([0.1, 0.8, 0.1], (len(batch), 1))

    report = evaluate_robustness(always_one, clouds, labels, num_classes=3, corruptions=("yaw", "jitter"),
                                 severities=(1, 3))
    assert report["clean"] == {"oa": 0.5, "macc": pytest.approx(1 / 3)}
    assert all(cell["oa"] == 0.5 for cell in _cells(report)) and report["mean_oa"] == 0.5


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--corrupt", "fog", "unknown corruption 'fog'"),
    ("--severities", "0,3", "severity '0': expected integers from 1 to 5"),
])
def test_bad_names_and_severities_are_one_usage_line(tiny_checkpoint, flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tiny_checkpoint), "--data", "x", "--corrupt", "yaw", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _spheres(count: int, points: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    clouds = rng.standard_normal((count, points, 3))
    return (clouds / np.linalg.norm(clouds, axis=2, keepdims=True)).astype(np.float32)


def test_removing_outliers_takes_the_added_strays_out_of_the_suite_clouds():
    clouds = _spheres(4, 512)
    inside = {}
    for outliers in ("keep", "remove"):
        out = corrupted_clouds(clouds, "add_global", 5, seed=0, num_points=512, min_points=256,
                               outliers=outliers)
        radius = np.linalg.norm(out - out.mean(axis=1, keepdims=True), axis=2)    # (4, 512)
        inside[outliers] = (radius < 0.6).mean()    # the sphere's own points are all near radius 1
    assert inside["keep"] > 0.01 and inside["remove"] < inside["keep"] / 5, inside


def test_the_suite_with_outliers_removed_says_so(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint), "--data", str(tiny_h5), "--corrupt", "add_global",
                 "--severities", "5", "--outliers", "remove", "--out", str(tmp_path)]) == 0
    assert "stray points removed from every cloud first" in capsys.readouterr().out
    assert json.loads((tmp_path / "robustness.json").read_text())["outliers"] == "remove"


def test_outliers_without_the_suite_is_a_usage_error(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tiny_checkpoint), "--data", "x", "--outliers", "remove"])
    assert exit_info.value.code == 2
    assert "--outliers applies to the robustness suite" in capsys.readouterr().err
