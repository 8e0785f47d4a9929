"""Where a training epoch's time goes: the loop around the model against the model's own steps.

    python scripts/epoch_profile.py DATA [--steps 40] [--points 512] [--centers 256,128]

Runs the same number of SGD steps of the default ``pcea`` model three ways, in one process,
one after the other (run it with nothing else on the machine):

* ``steps only``: the training steps on batches collated beforehand (the lower bound);
* ``loader, workers=0``: items read, augmented and collated in the training process, as
  ``pcea train --workers 0`` (configs/modelnet40_cpu.yaml) does;
* ``loader, workers=W``: the same through W DataLoader worker processes, as PCT's recipe
  (``workers: 4``, capped at the core count) does;

and then times one pass of validation (eval mode, no grad) over the validation split. It prints
clouds/s for each and what an epoch of the training split would cost.
"""

import argparse
import os
import time

import torch

from pcea.data import open_dataset
from pcea.data.transforms import pct_train_transform
from pcea.engine.splits import AugmentedSubset, split_train_val
from pcea.fast import accelerate  # the CPU kernels, applied as pcea train applies them
from pcea.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--centers", default="256,128")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(2)
    centers = [int(c) for c in args.centers.split(",")]
    base = open_dataset(args.data, "train", num_points=args.points)
    train_idx, val_idx = split_train_val(base.labels, 0.1, 0)
    train = AugmentedSubset(base, train_idx, transform=pct_train_transform(), seed=0)
    val = AugmentedSubset(base, val_idx)
    model = accelerate(build_model("pcea", num_classes=len(base.class_names), num_points=args.points,
                                   centers=centers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.2)

    def step(points, labels) -> None:
        loss = criterion(model(points), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def loader(workers: int):
        return torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                           num_workers=workers, generator=torch.Generator().manual_seed(0))

    model.train()
    batches = []
    for points, labels in loader(0):
        batches.append((points, labels))
        if len(batches) == args.steps + 2:
            break
    for points, labels in batches[:2]:  # warm-up: numba compilation, allocator growth
        step(points, labels)
    rows = []
    t0 = time.perf_counter()
    for points, labels in batches[2:]:
        step(points, labels)
    rows.append(("steps only (batches collated beforehand)", time.perf_counter() - t0))
    for workers in (0, args.workers):
        t0 = time.perf_counter()  # includes starting the workers, as every epoch of pcea train does
        for done, (points, labels) in enumerate(loader(workers), start=1):
            step(points, labels)
            if done == args.steps:
                break
        rows.append((f"loader, workers={workers}", time.perf_counter() - t0))
    clouds = args.steps * args.batch_size
    print(f"{len(train)} train / {len(val)} val clouds, {args.points} points, centres {centers}, "
          f"batch {args.batch_size}, {args.steps} steps each")
    for name, seconds in rows:
        print(f"  {name:<42} {clouds / seconds:6.1f} clouds/s  -> {len(train) * seconds / clouds:6.0f} s "
              "per training epoch")
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for points, _ in torch.utils.data.DataLoader(val, batch_size=args.batch_size):
            model(points)
    seconds = time.perf_counter() - t0
    name = "validation pass (eval, no grad)"
    print(f"  {name:<42} {len(val) / seconds:6.1f} clouds/s  -> {seconds:6.0f} s")


if __name__ == "__main__":
    main()
