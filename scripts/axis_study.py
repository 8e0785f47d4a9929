"""How well ``up="auto"`` finds the up axis: real ModelNet40 shapes classified as published (z-up) and
turned y-up, with the shipped ``modelnet40`` weights.

    nice -n 19 .venv/bin/python scripts/axis_study.py --per-class 10 --threads 1

Takes up to ``--per-class`` shapes of each class from the validation hold-out the weights were
selected on (the npy release's train split, z-up, 1,024 points; none of them trained on), writes a
y-up copy of each (:func:`pcea.geometry.to_canonical`) to a temporary folder, and classifies both
copies with ``pcea.classify(up="auto")``, and the published copy with ``up="z"`` (the true axis).
Prints (a) how often the two copies get the same top-1, (b) the accuracy with auto and with the true
axis, (c) how often auto chose the true axis.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pcea
import pcea.weights
from pcea.data.modelnet import mesh_classes, shape_files
from pcea.engine.splits import recorded_split
from pcea.geometry import to_canonical

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "modelnet40-npy" / "ModelNet40"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL, help="the npy release's ModelNet40/ folder")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = mesh_classes(args.data)
    files = shape_files(args.data, "train", classes)
    config = pcea.weights.builtin_card("modelnet40")["train_config"]   # the split the weights used
    labels = np.array([label for _, label in files])
    _, val = recorded_split(labels, config)
    taken = [0] * len(classes)
    published = []
    for index in val:
        file, label = files[index]
        if taken[label] < args.per_class:
            taken[label] += 1
            published.append(file)
    model = pcea.load_model("modelnet40")
    with tempfile.TemporaryDirectory() as temp:
        turned = []
        for file in published:
            copy = Path(temp) / file.relative_to(args.data)
            copy.parent.mkdir(parents=True, exist_ok=True)
            np.save(copy, to_canonical(np.load(file), "z"))   # the same shape, y up
            turned.append(copy)
        start = time.perf_counter()
        auto_z = pcea.classify(published, model, top_k=1, up="auto")
        auto_y = pcea.classify(turned, model, top_k=1, up="auto")
        seconds = time.perf_counter() - start
        truth = pcea.classify(published, model, top_k=1, up="z")

    def top1(results: list[dict]) -> np.ndarray:
        return np.array([result["top_k"][0][0] for result in results])

    labels = np.array([file.parent.parent.name for file in published])
    count = len(published)
    print(f"{count} shapes, {len(classes)} classes, {args.per_class} per class; auto on both copies "
          f"took {seconds:.0f} s ({args.threads} thread(s))")
    print(f"(a) same top-1 for the z-up and the y-up copy: {np.mean(top1(auto_z) == top1(auto_y)):.2%}")
    print(f"(b) accuracy: auto on the z-up copy {np.mean(top1(auto_z) == labels):.2%}, on the y-up copy "
          f"{np.mean(top1(auto_y) == labels):.2%}; the true axis given {np.mean(top1(truth) == labels):.2%}")
    chose = [np.mean([result["up"] == axis for result in results]) for results, axis in ((auto_z, "z"),
                                                                                        (auto_y, "y"))]
    print(f"(c) auto chose the true axis: z-up copy {chose[0]:.2%}, y-up copy {chose[1]:.2%}")


if __name__ == "__main__":
    main()
