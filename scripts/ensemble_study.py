"""How far ensembles of checkpoints reach: each one's accuracy, then every ensemble of two or more.

    python scripts/ensemble_study.py CHECKPOINT CHECKPOINT [...] --data PATH/TO/ModelNet40
        [--split val|test|train] [--batch-size 32]

Each CHECKPOINT (a run's checkpoint, a run directory, an average or a shipped name) classifies
the same shapes in one pass, each at its own input size; an ensemble predicts the most likely
class of its members' mean softmax. It prints each checkpoint's shapes right, OA and mAcc, then
for each ensemble size the fewest and most shapes any ensemble of that size gets right and the
best one's members. With --split val every checkpoint must hold out the same shapes (its
recorded val_split and hold-out seed). The best ensemble is picked on the shapes it is scored on,
so it is optimistic: a bound on what recombining these weights (averaging, distilling) could be
hoped to reach, not a measure of what it will. Session 36 ran it on the aligned lineage's members
before starting segment F1 (docs/modelnet40.md).
"""

import argparse
import itertools
import os

import numpy as np
import torch

from pcea.data import open_dataset
from pcea.engine.checkpoint import open_checkpoint
from pcea.engine.evaluate import evaluate
from pcea.engine.metrics import mean_class_accuracy
from pcea.engine.splits import AugmentedSubset, recorded_split
from pcea.errors import PceaError, PceaFileError
from pcea.fast import accelerate

MAX_MEMBERS = 12  # 4,083 ensembles; each is a mean of softmax arrays, so cheap, but the list must end


def member_probabilities(checkpoint: str, data: str, split: str, batch_size: int):
    """(labels (n,), softmax (n, classes), the indices of the shapes read, class names, file)."""
    model, payload, path = open_checkpoint(checkpoint)
    accelerate(model).eval()
    train_config = payload.get("train_config") or {}
    hold_out = train_config.get("val_split")
    if split == "val" and not (isinstance(hold_out, float | int) and 0 < hold_out < 1):
        raise PceaFileError(path, "records no validation hold-out; use --split test or train")
    dataset = open_dataset(data, split="train" if split == "val" else split,
                           num_points=model.config.num_points, normals=model.config.in_channels >= 6,
                           **({"seed": train_config.get("seed", 0)} if split == "val" else {}))
    if [str(name) for name in dataset.class_names] != list(model.class_names):
        raise PceaError(f"{data}: its classes are not the ones {path} was trained on")
    index = np.arange(len(dataset.labels))
    if split == "val":
        _, index = recorded_split(dataset.labels, train_config)
    preds = evaluate(model, AugmentedSubset(dataset, index), batch_size=batch_size)
    return preds["labels"], preds["single"], index, list(model.class_names), path


def ensembles(probs: list[np.ndarray], labels: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
    """(shapes right, member indices) of every ensemble of two or more of ``probs`` (each (n, classes)),
    smallest ensembles first; an ensemble predicts the argmax of its members' mean softmax."""
    return [(int((np.mean([probs[i] for i in members], axis=0).argmax(1) == labels).sum()), members)
            for size in range(2, len(probs) + 1)
            for members in itertools.combinations(range(len(probs)), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+",
                        help=f"two to {MAX_MEMBERS} checkpoints of one set of classes")
    parser.add_argument("--data", required=True, help="the dataset, in any layout pcea reads")
    parser.add_argument("--split", default="val", choices=["val", "test", "train"],
                        help="val: the checkpoints' own hold-out of the train split (default)")
    parser.add_argument("--batch-size", type=int, default=32, help="clouds per forward pass")
    args = parser.parse_args()
    if not 2 <= len(args.checkpoints) <= MAX_MEMBERS:
        parser.error(f"give two to {MAX_MEMBERS} checkpoints, not {len(args.checkpoints)}")
    if args.batch_size < 1:
        parser.error("--batch-size: at least 1")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    names, probs, first = [], [], None
    try:
        for checkpoint in args.checkpoints:
            labels, single, index, classes, path = member_probabilities(checkpoint, args.data, args.split,
                                                                        args.batch_size)
            if first is None:
                first = (labels, index, classes, path)
            elif classes != first[2]:
                raise PceaError(f"{path}: its classes are not those of {first[3]}")
            elif not np.array_equal(index, first[1]):
                raise PceaError(f"{path}: holds out other shapes than {first[3]}; "
                                "an ensemble needs the same ones")
            names.append(checkpoint)
            probs.append(single)
            predicted = single.argmax(1)
            right = int((predicted == labels).sum())
            macc = mean_class_accuracy(labels, predicted, len(classes))
            print(f"{checkpoint}: {right} of {len(labels)} {args.split} shapes right "
                  f"({100 * right / len(labels):.2f} % OA, {100 * macc:.2f} % mAcc)", flush=True)
    except (PceaError, OSError, ValueError) as err:
        parser.error(str(err))
    scored = ensembles(probs, first[0])
    for size in range(2, len(names) + 1):
        counts = [(count, members) for count, members in scored if len(members) == size]
        most, best = max(counts, key=lambda item: item[0])  # the first of the most right, in the order given
        print(f"ensembles of {size} ({len(counts)}): {min(counts)[0]} to {most} shapes right; "
              f"{most} with {', '.join(names[i] for i in best)}")
    right, n = [count for count, _ in scored], len(first[0])
    print(f"all {len(scored)} ensembles: {min(right)} to {max(right)} of {n} shapes right "
          f"({100 * min(right) / n:.2f} to {100 * max(right) / n:.2f} %); the most is picked on the shapes "
          f"it is scored on")


if __name__ == "__main__":
    main()
