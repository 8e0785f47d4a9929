"""pcea eval: the report's figures against an independent computation, voting, files, the CLI."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

import pcea
from pcea.cli import main
from pcea.engine.evaluate import evaluate_checkpoint, vote_probabilities

TINY = {"num_points": 128, "centers": (64, 32), "neighbors": (8, 8), "embed_dim": 16, "stage_dims": (32, 64),
        "fuse_dim": 128, "head_dims": (64, 32), "memory": 16}


def _read_split(root, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The h5 test data read with h5py directly, not through pcea.data."""
    with h5py.File(root / f"ply_data_{split}0.h5", "r") as h5:
        points, labels = h5["data"][:, :128].astype(np.float32), h5["label"][:, 0].astype(np.int64)
    return points, labels, (root / "shape_names.txt").read_text().split()


@pytest.fixture(scope="module")
def run_dir(tiny_h5, tmp_path_factory):
    """A run directory whose best.pt holds the tiny model after a few SGD steps on the train split."""
    torch.manual_seed(0)
    points, labels, names = _read_split(tiny_h5, "train")
    model = pcea.build_model("pcea", num_classes=len(names), **TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(points), torch.from_numpy(labels)
    for step in range(6):
        batch = torch.arange(8) + 8 * (step % (len(x) // 8))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run = tmp_path_factory.mktemp("run")
    model.class_names = names
    pcea.save_classifier(run / "best.pt", model,
                         extra={"epoch": 3, "protocol": "best on val", "train_config": {}})
    return run


def test_report_figures_match_an_independent_computation(run_dir, tiny_h5):
    report = evaluate_checkpoint(run_dir, tiny_h5, votes=1)
    points, labels, names = _read_split(tiny_h5, "test")
    model = pcea.load_model(run_dir / "best.pt")
    pred = model.predict(points).argmax(dim=1).numpy()

    single = report["results"]["single_pass"]
    assert set(report["results"]) == {"single_pass"}
    assert single["overall_accuracy"] == pytest.approx((pred == labels).mean())
    per_class = [(pred[labels == c] == c).mean() for c in range(len(names))]
    assert list(single["per_class_accuracy"].values()) == pytest.approx(per_class)
    assert single["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    matrix = np.array(single["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix.sum() == len(labels)
    assert list(np.diag(matrix)) == [int(((pred == c) & (labels == c)).sum()) for c in range(4)]
    assert (report["split"], report["num_shapes"], report["class_names"]) == ("test", len(labels), names)
    assert (report["epoch"], report["selection"], report["votes"]) == (3, "best on val", 1)

    # Files next to the checkpoint: the JSON is the report, the CSV has one row per class, a real PNG.
    on_disk = json.loads((run_dir / "eval.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    rows = list(csv.DictReader((run_dir / "per_class.csv").open()))
    assert [row["class"] for row in rows] == names
    assert [int(row["support"]) for row in rows] == list(np.bincount(labels, minlength=4))
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_voting_averages_distinct_augmented_copies(run_dir):
    model = pcea.load_model(run_dir)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 128, 3)).astype(np.float32))
    keys = [(0, i) for i in range(3)]

    voted = vote_probabilities(model, points, votes=4, keys=keys)
    copies = torch.cat(seen)  # (4 * 3, 128, 3)
    assert len(copies) == 12
    assert len({tuple(c.flatten()[:6].tolist()) for c in copies}) == 12  # every copy its own scaling
    assert not any(torch.allclose(c, p) for c in copies for p in points)
    # Anisotropic scaling: each axis scaled by its own factor, same for every point of a copy.
    ratios = copies[0] / points[0]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), atol=1e-4)
    assert len(set(ratios[0].round(decimals=4).tolist())) == 3

    single = model.predict(points)
    assert voted.shape == single.shape and torch.allclose(voted.sum(1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(voted, single)
    seen.clear()
    again = vote_probabilities(model, points, votes=4, keys=keys)
    assert torch.equal(again, voted)  # seeded


def test_report_with_votes_keeps_both_figures_labelled(run_dir, tiny_h5, tmp_path):
    report = evaluate_checkpoint(run_dir, tiny_h5, votes=3, out=tmp_path)
    results = report["results"]
    assert set(results) == {"single_pass", "voted"}
    assert results["single_pass"]["label"] == "single pass"
    assert results["voted"]["label"].startswith("3 votes")
    for result in results.values():
        assert 0 <= result["overall_accuracy"] <= 1
        assert np.array(result["confusion_matrix"]).sum() == report["num_shapes"]
    assert report["vote_seed"] == 0
    header = (tmp_path / "per_class.csv").read_text().splitlines()[0]
    assert header == "class,support,accuracy_single_pass,accuracy_voted"


def test_cli_eval_json_and_errors(run_dir, tiny_h5, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--data", str(tiny_h5), "--json", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"]["single_pass"]["overall_accuracy"] == pytest.approx(
        json.loads((tmp_path / "eval.json").read_text())["results"]["single_pass"]["overall_accuracy"])

    assert main(["eval", str(tmp_path / "missing.pt"), "--data", str(tiny_h5)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error: ") and "missing.pt" in err and len(err.splitlines()) == 1

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run_dir), "--data", str(tiny_h5), "--votes", "0"])
    assert exit_info.value.code == 2


def test_an_average_of_checkpoints_is_named_by_its_selection_not_an_epoch(run_dir, tiny_h5, tmp_path, capsys):
    model = pcea.load_model(run_dir / "best.pt")
    pcea.save_classifier(tmp_path / "soup.pt", model, extra={
        "protocol": "uniform average of the weights of 2 checkpoints", "train_config": {}})
    assert main(["eval", str(run_dir), "--data", str(tiny_h5), "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0
    assert "(epoch 3, best on val)" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "soup.pt"), "--data", str(tiny_h5), "--out", str(tmp_path / "b"),
                 "--device", "cpu"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("soup.pt (uniform average of the weights of 2 checkpoints)"), header


def test_dataset_with_other_classes_is_refused(run_dir, tiny_h5, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for path in tiny_h5.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    (other / "shape_names.txt").write_text("ball\nb\nc\nd\n")
    with pytest.raises(pcea.PceaError, match="not the model's 4 .* nor a subset of them: "
                                             "the model has no b, c, d$"):
        evaluate_checkpoint(run_dir, other, write=False)


def _subset_copy(source, target, keep: list[str], names: list[str] | None = None):
    """An h5-layout copy of ``source`` holding only the classes ``keep``, in that label order (named
    ``names`` in its shape_names.txt when given)."""
    target.mkdir(parents=True)
    all_names = (source / "shape_names.txt").read_text().split()
    for split in ("train", "test"):
        with h5py.File(source / f"ply_data_{split}0.h5", "r") as h5:
            data, label = h5["data"][:], h5["label"][:, 0]
        chosen = np.isin(label, [all_names.index(name) for name in keep])
        relabelled = np.array([keep.index(all_names[old]) for old in label[chosen]], dtype=np.uint8)
        with h5py.File(target / f"ply_data_{split}0.h5", "w") as h5:
            h5["data"], h5["label"] = data[chosen], relabelled[:, None]
            h5["normal"] = np.zeros_like(data[chosen])
        (target / f"{split}_files.txt").write_text(f"data/x/ply_data_{split}0.h5\n")
    (target / "shape_names.txt").write_text("\n".join(names or keep) + "\n")
    return target


def test_a_dataset_with_a_subset_of_the_classes_is_evaluated_on_them(run_dir, tiny_h5, tmp_path, capsys):
    subset = _subset_copy(tiny_h5, tmp_path / "two", ["disc", "ball"])   # not the model's order either
    report = evaluate_checkpoint(run_dir, subset, out=tmp_path / "out", votes=2)
    points, labels, names = _read_split(tiny_h5, "test")
    kept = np.isin(labels, [names.index("disc"), names.index("ball")])
    probs = pcea.load_model(run_dir).predict(points[kept]).numpy()
    pred = probs[:, [names.index("disc"), names.index("ball")]].argmax(1)   # 0: disc, 1: ball
    truth = (labels[kept] == names.index("ball")).astype(int)
    single = report["results"]["single_pass"]
    assert report["class_names"] == ["disc", "ball"] and report["model_classes"] == 4
    assert "restricted to the dataset's 2 classes, a subset of the model's 4" in report["class_subset"]
    assert report["num_shapes"] == kept.sum() and np.array(single["confusion_matrix"]).shape == (2, 2)
    assert single["overall_accuracy"] == pytest.approx((pred == truth).mean())
    assert (pred == truth).mean() > (probs.argmax(1) == np.where(truth, 0, 2)).mean()  # restriction matters
    assert np.array(report["results"]["voted"]["confusion_matrix"]).sum() == kept.sum()
    on_disk = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert on_disk["class_subset"] == report["class_subset"]

    assert main(["eval", str(run_dir), "--data", str(subset), "--device", "cpu", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "classes     predictions restricted to the dataset's 2 classes" in out
    assert "note: predictions restricted" in err


def test_without_data_a_missing_recorded_dataset_asks_for_data(run_dir, tmp_path, capsys):
    model = pcea.load_model(run_dir)
    pcea.save_classifier(tmp_path / "moved.pt", model,
                         extra={"train_config": {"data": str(tmp_path / "gone")}})
    assert main(["eval", str(tmp_path / "moved.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error: ") and len(err.splitlines()) == 1
    assert "is not on this machine; give --data" in err


def test_builtin_weights_without_data_use_the_download_location_or_ask(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PCEA_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "modelnet40", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pcea: error: modelnet40: no dataset given; pass --data DIR")
    assert len(err.splitlines()) == 1
    assert "shared" not in err and "pcea download modelnet40" in err   # the weights' record is never shown

    # Where `pcea download modelnet40` puts the h5 layout: four ModelNet40 classes, 2,048 points each.
    from engine_tiny import write_tiny_h5

    source = write_tiny_h5(tmp_path / "src", train_per_class=1, test_per_class=2, points=2048)
    names = ["airplane", "bathtub", "bed", "bench"]
    _subset_copy(source, tmp_path / "modelnet40_ply_hdf5_2048",
                 (source / "shape_names.txt").read_text().split(), names=names)
    notes = []
    report = evaluate_checkpoint("modelnet40", device="cpu", write=False, log=notes.append)
    assert report["data"] == str(tmp_path / "modelnet40_ply_hdf5_2048") and report["num_shapes"] == 8
    assert report["class_names"] == names and report["model_classes"] == 40
    assert any("pcea download" in note for note in notes) and not any("shared" in note for note in notes)


def test_amp_evaluates_in_bf16_where_native_and_notes_why_not_elsewhere(run_dir, tiny_h5, monkeypatch):
    from pcea import precision

    fp32 = evaluate_checkpoint(run_dir, tiny_h5, write=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    bf16 = evaluate_checkpoint(run_dir, tiny_h5, write=False, amp=True)
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bf16 autocast")
    # Not exact, but close: the tiny model's test accuracy moves by at most a couple of shapes.
    accuracy = [r["results"]["single_pass"]["overall_accuracy"] for r in (fp32, bf16)]
    assert abs(accuracy[0] - accuracy[1]) <= 2 / fp32["num_shapes"]

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    notes = []
    report = evaluate_checkpoint(run_dir, tiny_h5, write=False, amp=True, log=notes.append)
    assert report["precision"] == "float32"
    assert report["results"] == fp32["results"]
    assert len(notes) == 1 and "--amp ignored" in notes[0] and "no native bf16" in notes[0]


def _report(num_classes: int, *, voted: bool) -> dict:
    """A report as evaluate_checkpoint makes it, for write_report alone."""
    from pcea.engine.evaluate import summarize

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(num_classes)]
    labels = np.arange(3 * num_classes) % num_classes
    results = {"single_pass": summarize(labels, rng.random((len(labels), num_classes)), names, "single pass")}
    if voted:
        results["voted"] = summarize(labels, rng.random((len(labels), num_classes)), names, "3 votes")
    return {"split": "test", "class_names": names, "results": results}


def test_the_confusion_image_is_the_single_pass_and_the_csv_holds_the_matrix(tmp_path, monkeypatch):
    """Issue 22 item 8: the demo's confusion.png showed the voted matrix, the README the single pass."""
    import pcea.engine.evaluate as evaluate

    drawn = []
    monkeypatch.setattr(evaluate, "_confusion_png", lambda result, names, title: drawn.append(title) or b"x")
    report = _report(4, voted=True)
    files = evaluate.write_report(report, tmp_path, log=lambda line: pytest.fail(line))
    assert drawn == [drawn[0]] and "single pass" in drawn[0]
    rows = list(csv.reader(files["confusion_csv"].open()))
    assert rows[0] == ["true \\ predicted", "c0", "c1", "c2", "c3"]
    matrix = [[int(v) for v in row[1:]] for row in rows[1:]]
    assert matrix == report["results"]["single_pass"]["confusion_matrix"]


@pytest.mark.slow
def test_a_thousand_class_matrix_is_not_drawn_but_written_whole(tmp_path):
    """Issue 23 item 6: 1,500 classes drew a 46,000-pixel image and were killed at 16.8 GB."""
    from pcea.engine.evaluate import MAX_DRAWN_CLASSES, write_report

    lines: list[str] = []
    (tmp_path / "confusion.png").write_bytes(b"an old image")
    files = write_report(_report(1500, voted=False), tmp_path, log=lines.append)
    assert "png" not in files and MAX_DRAWN_CLASSES == 100
    assert not (tmp_path / "confusion.png").exists()  # an earlier evaluation's image would not match
    assert lines == [f"note: 1,500 classes, over the 100 a confusion.png can show readably: not drawn; "
                     f"the whole matrix is in {tmp_path / 'confusion.csv'}"]
    rows = list(csv.reader(files["confusion_csv"].open()))
    assert len(rows) == 1501 and all(len(row) == 1501 for row in rows)
