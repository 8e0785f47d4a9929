"""Evaluation of a trained classifier: OA, mAcc, per-class accuracy, confusion, test-time voting.

Voting is the usual ModelNet40 test-time augmentation (PointNet++, DGCNN and PCT's
released code): each test cloud is classified K times, every copy with its own random
anisotropic scaling, and the K softmax outputs are averaged. It is reported next to the
single pass, never instead of it, because published numbers mix the two.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pcea.atomic import write_atomic
from pcea.data import default_root, open_dataset
from pcea.data.corruptions import SEVERITIES
from pcea.data.download import archive_spec
from pcea.data.synth import ensure_synthetic
from pcea.data.transforms import vote_transform
from pcea.engine.checkpoint import open_checkpoint
from pcea.engine.config import MAX_SEED
from pcea.engine.distributed import resolve_device
from pcea.engine.metrics import mean_class_accuracy, overall_accuracy, per_class_accuracy, percent_down
from pcea.engine.robustness import evaluate_robustness, model_predictor, write_robustness
from pcea.engine.splits import AugmentedSubset, holdout_seed, recorded_split
from pcea.errors import MAX_VOTES, PceaError, PceaFileError, check_positive_int
from pcea.fast import accelerate
from pcea.model import PCTClassifier
from pcea.precision import autocast, use_amp
from pcea.weights import is_builtin

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "format_report",
    "summarize",
    "vote_probabilities",
    "write_report",
]

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@torch.no_grad()
def vote_probabilities(model: torch.nn.Module, points: torch.Tensor, *, votes: int,
                       keys: Sequence[tuple[int, ...]], transform: Augmentation | None = None
                       ) -> torch.Tensor:
    """Mean softmax over ``votes`` augmented copies of each cloud.

    Copy ``v`` of cloud ``b`` is ``transform(points[b], np.random.default_rng((*keys[b], v)))``,
    so the result depends only on the seed keys, not on batching.

    Args:
        model: the classifier, in eval mode.
        points: (B, N, C) clouds.
        votes: copies per cloud.
        keys: B integer tuples seeding the copies of each cloud.
        transform: the augmentation; :func:`pcea.data.transforms.vote_transform` by default.

    Returns:
        (B, num_classes) averaged probabilities, on the CPU.
    """
    if len(keys) != len(points):
        raise ValueError(f"{len(keys)} seed keys for {len(points)} clouds")
    transform = transform or vote_transform()
    device = next(model.parameters()).device
    clouds = points.cpu().numpy()  # (B, N, C)
    total = None
    for vote in range(votes):
        copies = np.stack([transform(cloud.copy(), np.random.default_rng((*key, vote)))
                           for cloud, key in zip(clouds, keys, strict=True)])  # (B, N, C)
        logits = model(torch.from_numpy(copies).to(device, torch.float32))  # bf16 under --amp
        probs = logits.float().softmax(dim=-1).cpu()
        total = probs if total is None else total + probs
    return total / votes  # (B, num_classes)


@torch.no_grad()
def evaluate(model: PCTClassifier, dataset, *, votes: int = 1, seed: int = 0, batch_size: int = 32,
             amp: bool = False) -> dict[str, np.ndarray]:
    """Class probabilities for every item of a dataset, with and without voting.

    Args:
        model: the classifier; it is put in eval mode.
        dataset: items ``(points (N, C), label)``, without augmentation.
        votes: 1 for the single pass only; K > 1 also computes K-copy voting.
        seed: seeds the voting augmentations (copy v of item i uses the key (seed, i, v)).
        batch_size: clouds per forward pass.
        amp: run under bf16 autocast (:mod:`pcea.precision`); float32 otherwise.

    Returns:
        ``labels`` (n,), ``single`` (n, num_classes) probabilities and, with votes > 1,
        ``voted`` (n, num_classes).
    """
    check_positive_int("votes", votes, at_most=MAX_VOTES)
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    labels, single, voted = [], [], []
    start = 0
    for points, target in loader:  # (B, N, C), (B,)
        with autocast(device, amp):
            single.append(model(points.to(device)).float().softmax(dim=-1).cpu())
            if votes > 1:
                keys = [(seed, start + b) for b in range(len(points))]
                voted.append(vote_probabilities(model, points, votes=votes, keys=keys))
        labels.append(target)
        start += len(points)
    out = {"labels": torch.cat(labels).numpy(), "single": torch.cat(single).numpy()}
    if votes > 1:
        out["voted"] = torch.cat(voted).numpy()
    return out


def summarize(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], label: str) -> dict:
    """OA, mAcc, per-class accuracy and the confusion matrix of one set of predictions.

    Args:
        labels: (n,) true labels.
        probs: (n, num_classes) probabilities.
        class_names: names in label order.
        label: how these predictions were made, e.g. "single pass".

    Returns:
        A JSON-ready dict; accuracies are fractions in [0, 1] (``None`` for a class
        without test samples), the confusion matrix has true classes as rows.
    """
    from sklearn.metrics import confusion_matrix  # here: scikit-learn takes seconds to import

    num_classes = len(class_names)
    pred = probs.argmax(axis=1)
    per_class = per_class_accuracy(labels, pred, num_classes)
    return {
        "label": label,
        "overall_accuracy": overall_accuracy(labels, pred),
        "mean_class_accuracy": mean_class_accuracy(labels, pred, num_classes),
        "per_class_accuracy": {name: None if math.isnan(acc) else float(acc)
                               for name, acc in zip(class_names, per_class, strict=True)},
        "confusion_matrix": confusion_matrix(labels, pred, labels=range(num_classes)).tolist(),
    }


def _per_class_csv(report: dict) -> bytes:
    results = report["results"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "support"] + [f"accuracy_{key}" for key in results])
    matrix = np.asarray(results["single_pass"]["confusion_matrix"])
    for i, name in enumerate(report["class_names"]):
        row = [name, int(matrix[i].sum())]
        for result in results.values():
            acc = result["per_class_accuracy"][name]
            row.append("" if acc is None else f"{acc:.4f}")
        writer.writerow(row)
    return buffer.getvalue().encode()


def _confusion_png(result: dict, class_names: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matrix = np.asarray(result["confusion_matrix"])
    num_classes = len(class_names)
    size = max(5.0, 0.28 * num_classes + 2.5)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(matrix / totals, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(num_classes), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(num_classes), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if num_classes <= 20:
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count / totals[row, 0] > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


MAX_DRAWN_CLASSES = 100  # a readable confusion.png; 1,500 classes drew 46,000 pixels and took 16.8 GB


def _confusion_csv(result: dict, class_names: Sequence[str]) -> bytes:
    """The whole confusion matrix: true classes as rows, predicted classes as columns, counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, result["confusion_matrix"], strict=True):
        writer.writerow([name, *row])
    return buffer.getvalue().encode()


def write_report(report: dict, out: str | os.PathLike, *, log: Callable[[str], None] | None = None
                 ) -> dict[str, Path]:
    """Write ``eval.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` into ``out``.

    Each file is written atomically. The confusion matrix written is the single pass's (the figure
    pcea reports; a voted one is in ``eval.json``). ``confusion.csv`` holds all of it; ``confusion.png``
    is drawn only up to
    :data:`MAX_DRAWN_CLASSES` classes, beyond which an image would be unreadable and its memory
    grows with the square of the class count: ``log`` then says where the matrix is.

    Returns:
        The paths written, by kind ("json", "csv", "confusion_csv" and "png").
    """
    out = Path(out)
    log = log or (lambda line: print(line, file=sys.stderr))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaError(f"{out}: cannot create the output directory: {err.strerror or err}") from None
    paths = {"json": out / "eval.json", "csv": out / "per_class.csv", "confusion_csv": out / "confusion.csv",
             "png": out / "confusion.png"}
    write_atomic(paths["json"], (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(paths["csv"], _per_class_csv(report))
    shown = report["results"]["single_pass"]
    write_atomic(paths["confusion_csv"], _confusion_csv(shown, report["class_names"]))
    if len(report["class_names"]) > MAX_DRAWN_CLASSES:
        paths.pop("png").unlink(missing_ok=True)  # an earlier evaluation's image would not match the report
        log(f"note: {len(report['class_names']):,} classes, over the {MAX_DRAWN_CLASSES} a confusion.png "
            f"can show readably: not drawn; the whole matrix is in {paths['confusion_csv']}")
        return paths
    title = (f"{report['split']} split, {shown['label']}: OA {shown['overall_accuracy']:.1%}, "
             f"mAcc {shown['mean_class_accuracy']:.1%}")
    write_atomic(paths["png"], _confusion_png(shown, report["class_names"], title))
    return paths


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike | None = None, *,
                        split: str = "test",
                        votes: int = 1, seed: int = 0, batch_size: int = 32, device: str = "auto",
                        out: str | os.PathLike | None = None, write: bool = True, amp: bool = False,
                        log=None, up: str | None = None, corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] = SEVERITIES, outliers: str = "keep") -> dict:
    """Evaluate a checkpoint on a dataset split and write the report next to it.

    Args:
        checkpoint: a checkpoint file or a run directory (best.pt, else last.pt).
        data: a dataset directory in any ModelNet40 layout, or "synthetic" for pcea-shapes;
            None: the dataset the checkpoint was trained on (its ``train_config``), or, for built-in
            weights, ModelNet40 where ``pcea download`` puts it. A dataset whose classes are a
            subset of the model's (ModelNet10 for a ModelNet40 model) is evaluated on its own
            classes: the prediction is the most likely of them (the report's ``class_subset``).
        split: "test", "train", or "val": the run's own validation hold-out of the train
            split (:func:`pcea.engine.splits.split_train_val` with the run's hold-out seed and
            ``val_split``).
        votes: K > 1 adds K-copy voting (random anisotropic scaling) to the single pass.
        seed: seed of the voting augmentations.
        batch_size: clouds per forward pass.
        device: "auto", "cpu", "cuda", "cuda:1", "mps".
        out: directory of the report files; the checkpoint's directory by default
            (``eval_<name>/`` in the working directory for built-in weights such as "modelnet40").
        write: False to only return the report.
        amp: bf16 autocast where the device runs it natively (:func:`pcea.precision.amp_support`);
            elsewhere a note goes to ``log`` and the evaluation runs in float32.
        log: called with one-line notes (default: print to stderr).
        up: the up axis of the dataset's clouds ("y" or "z"); default: the one its layout's
            public release uses (y for h5 and resampled, z for the Princeton folders).
        corruptions: also run the robustness suite (:mod:`pcea.engine.robustness`) with these
            corruptions of :data:`pcea.data.corruptions.CORRUPTIONS`, seeded by ``seed``;
            its report is ``report["robustness"]`` and ``robustness.json``/``.png``.
        severities: the suite's severities (1 to 5).
        outliers: the suite's clouds (clean and corrupted) keep their stray points, or "remove"
            them first, as ``pcea classify --outliers remove`` does; the plain evaluation (the
            ModelNet40 protocol) is not changed by it.

    Returns:
        The report (the contents of ``eval.json``); ``report["files"]`` lists what was written.

    Raises:
        PceaError: bad data path, no data given for built-in weights and none downloaded, a dataset
            with a class the model lacks, an unwritable ``out``.
    """
    check_positive_int("votes", votes, at_most=MAX_VOTES)  # before the checkpoint is read
    model, payload, path = open_checkpoint(checkpoint, device=resolve_device(device))
    accelerate(model).eval()  # the CPU speed-ups of pcea.fast: the same logits within 1e-5
    log = log or (lambda line: print(line, file=sys.stderr))
    amp = use_amp(amp, next(model.parameters()).device,
                  lambda why: log(f"note: --amp ignored, float32 it is: {why}"))
    train_config = payload.get("train_config") or {}
    if data is None:
        data = _default_data(checkpoint, path, train_config, log)
    if os.fspath(data) == "synthetic":
        data = ensure_synthetic()
    config = model.config
    if split == "val" and not _is_fraction(train_config.get("val_split")):
        raise PceaFileError(path, "the run held out no validation split (val_split 0 or not recorded); "
                                  "use --split test or train")
    if split == "val":  # a crafted seed would fail in scikit-learn; the hold-out's is checked after the run's
        for key, value in (("seed", train_config.get("seed")), ("split_seed", holdout_seed(train_config))):
            if not _is_seed(value):
                raise PceaFileError(path, f"malformed checkpoint: its train_config {key}={value!r} is not a "
                                          f"run's seed (0 to {MAX_SEED}); use --split test or train")
    dataset = open_dataset(data, split="train" if split == "val" else split, num_points=config.num_points,
                           normals=config.in_channels >= 6, up=up,
                           **({"seed": train_config["seed"]} if split == "val" else {}))
    columns = _class_columns(dataset, model.class_names)   # None: the model's own classes
    class_names = list(model.class_names if columns is None else dataset.class_names)
    items = dataset
    if split == "val":  # the same clouds the run selected its best epoch on
        _, val_idx = recorded_split(dataset.labels, train_config)
        items = AugmentedSubset(dataset, val_idx)
    if len(items) == 0:
        raise PceaError(f"{dataset.root}: the {split} split is empty")
    preds = evaluate(model, items, votes=votes, seed=seed, batch_size=batch_size, amp=amp)
    if columns is not None:  # the dataset's classes only: its labels index them, argmax over their columns
        preds = {key: value if key == "labels" else value[:, columns] for key, value in preds.items()}
        log(f"note: {_subset_note(len(class_names), len(model.class_names))}")
    results = {"single_pass": summarize(preds["labels"], preds["single"], class_names, "single pass")}
    if votes > 1:
        results["voted"] = summarize(preds["labels"], preds["voted"], class_names,
                                     f"{votes} votes, random anisotropic scaling")
    report = {
        "checkpoint": str(path),
        "model": payload.get("model_name"),
        "epoch": payload.get("epoch"),
        "selection": payload.get("protocol"),
        "data": str(dataset.root),
        "split": split,
        "up": dataset.up,
        "num_shapes": len(items),
        "num_points": config.num_points,
        "votes": votes,
        "precision": "bf16 autocast" if amp else "float32",
        "vote_seed": seed if votes > 1 else None,
        "class_names": class_names,
        "model_classes": len(model.class_names),
        "class_subset": None if columns is None else _subset_note(len(class_names), len(model.class_names)),
        "results": results,
    }
    if corruptions:
        clouds = np.stack([np.asarray(items[i][0], dtype=np.float32) for i in range(len(items))])  # (n, N, C)
        log(f"robustness suite: {len(corruptions)} corruption(s) x {len(severities)} severities "
            f"on {len(items)} shapes (OA per severity)")
        robustness = evaluate_robustness(
            model_predictor(model, batch_size=batch_size, amp=amp, columns=columns), clouds, preds["labels"],
            num_classes=len(class_names), corruptions=corruptions, severities=severities, seed=seed,
            num_points=config.num_points, min_points=config.centers[0], outliers=outliers, log=log)
        where = ("checkpoint", "data", "split", "up", "num_shapes", "num_points", "precision")
        report["robustness"] = {key: report[key] for key in where} | robustness
    if write:
        if out is None:  # next to the checkpoint; built-in weights live inside the installed package
            out = Path(f"eval_{checkpoint}") if is_builtin(checkpoint) else path.parent
        files = write_report(report, out)
        if corruptions:
            title = (f"{Path(report['checkpoint']).name} on the {split} split ({len(items)} shapes): "
                     f"mean OA {percent_down(report['robustness']['mean_oa'])}% under corruption")
            files.update(write_robustness(report["robustness"], out, title))
        report["files"] = {kind: str(file) for kind, file in files.items()}
    return report


def _default_data(checkpoint, path: Path, train_config: dict, log) -> str:
    """The dataset to evaluate on when none is given: the one the run recorded, when it is on this
    machine; for built-in weights, ModelNet40 where ``pcea download`` puts it (their card's record
    is a folder of the machine they were trained on, never shown or used)."""
    if is_builtin(checkpoint):
        for fmt in ("h5", "resampled", "mesh"):   # the fastest layout to read first
            found = default_root() / archive_spec("modelnet40", fmt).extracts_to
            if found.is_dir():
                log(f"note: evaluating on {found}, the ModelNet40 copy pcea download put there")
                return str(found)
        raise PceaError(f"{checkpoint}: no dataset given; pass --data DIR (ModelNet40 in any layout), "
                        f"or fetch one into {default_root()}/ with `pcea download modelnet40`")
    data = train_config.get("data")
    if not isinstance(data, str):
        raise PceaFileError(path, "the checkpoint records no training dataset; give --data")
    if data != "synthetic" and not Path(data).is_dir():
        raise PceaFileError(path, f"the dataset it was trained on ({data}) is not on this machine; "
                                  "give --data")
    log(f"note: evaluating on {data}, the dataset the checkpoint was trained on")
    return data


def _class_columns(dataset, model_classes: Sequence[str]) -> list[int] | None:
    """The model's output column of each of the dataset's classes, in the dataset's label order;
    None where the dataset has exactly the model's classes.

    A dataset holding a subset of the model's classes (ModelNet10 for a ModelNet40 model, a
    partial copy) is evaluated on its own classes; one with a class the model lacks is refused.
    """
    names = list(dataset.class_names)
    if names == list(model_classes):
        return None
    missing = [name for name in names if name not in model_classes]
    if missing:
        raise PceaError(f"{dataset.root}: the dataset's {len(names)} classes are not the model's "
                        f"{len(model_classes)} ({', '.join(model_classes[:4])}, ...) nor a subset of them: "
                        f"the model has no {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}")
    return [list(model_classes).index(name) for name in names]


def _subset_note(dataset_classes: int, model_classes: int) -> str:
    """How a report says its predictions were restricted to the dataset's classes."""
    return (f"predictions restricted to the dataset's {dataset_classes} classes, a subset of the model's "
            f"{model_classes} (argmax over their columns; labels mapped by class name)")


def _is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def _is_fraction(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1


def format_report(report: dict) -> str:
    """A few lines for the terminal: where the figures come from and OA/mAcc of each protocol."""
    chosen = report["selection"]  # an average of checkpoints has no epoch of its own
    if report["epoch"] is not None:
        chosen = f"epoch {report['epoch']}, {chosen}"
    lines = [f"checkpoint  {report['checkpoint']} ({chosen})",
             f"data        {report['data']}, {report['split']} split, {report['num_shapes']} shapes, "
             f"{report['num_points']} points, {report.get('precision', 'float32')}"]
    if report.get("class_subset"):
        lines.append(f"classes     {report['class_subset']}")
    for result in report["results"].values():
        lines.append(f"{result['label']:<40}  OA {result['overall_accuracy']:7.2%}  "
                     f"mAcc {result['mean_class_accuracy']:7.2%}")
    if "files" in report:
        lines.append("wrote       " + ", ".join(report["files"].values()))
    return "\n".join(lines)
