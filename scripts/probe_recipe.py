"""Short recipe probes on a ModelNet40 copy (used to choose configs/modelnet40_cpu.yaml).

Each probe is a complete miniature run: STEPS optimiser steps at batch 32 on 512 points
(centres 256/128), a linear warm-up over the first tenth, cosine to zero, the same data,
augmentation and validation split as ``pcea train`` (seed 0, label smoothing 0.2); it prints
the validation OA and mAcc (single pass), the parameters, the forward FLOPs per cloud
(``torch.utils.flop_counter``), and the clouds/s of the training steps and of the validation
pass. The probes rank recipes, or models under one recipe, against each other; run them alone.

    python scripts/probe_recipe.py DATA STEPS sgd:0.01 sgd:0.05 adamw:0.001
    python scripts/probe_recipe.py DATA STEPS adamw:0.001 --models pcea,pct,pct-sa
"""

import argparse
import math
import time

import numpy as np
import torch

from pcea.data import open_dataset
from pcea.data.transforms import pct_train_transform
from pcea.engine.metrics import accuracy_from_counts
from pcea.engine.splits import AugmentedSubset, split_train_val
from pcea.fast import accelerate  # the CPU kernels, applied as pcea train applies them
from pcea.model import build_model


def gflops(model, points: int) -> float:
    """Forward FLOPs of one cloud, as torch's FlopCounterMode counts them (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, points, 3))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("steps", type=int)
    parser.add_argument("recipes", nargs="+", help="optimizer:lr, e.g. adamw:0.001")
    parser.add_argument("--models", default="pcea")
    args = parser.parse_args()
    data, steps = args.data, args.steps
    torch.set_num_threads(2)
    base = open_dataset(data, "train", num_points=512)
    train_idx, val_idx = split_train_val(base.labels, 0.1, 0)
    train = AugmentedSubset(base, train_idx, transform=pct_train_transform(), seed=0)
    val = AugmentedSubset(base, val_idx)
    for model_name, recipe in [(m, r) for m in args.models.split(",") for r in args.recipes]:
        name, lr = recipe.split(":")
        lr = float(lr)
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=40, num_points=512, centers=[256, 128])
        flops = gflops(model, 512)
        params = sum(p.numel() for p in model.parameters())
        model = accelerate(model)
        if name == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        warm = steps // 10
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t, w=warm: (t + 1) / w if t < w else
                                                  0.5 * (1 + math.cos(math.pi * (t - w) / (steps - w))))
        loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(0))
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
        t0, done = time.time(), 0
        model.train()
        while done < steps:
            for points, labels in loader:
                loss = criterion(model(points), labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if done == steps:
                    break
        seconds = time.time() - t0
        model.eval()
        correct, total = np.zeros(40, np.int64), np.zeros(40, np.int64)
        t0 = time.time()
        with torch.no_grad():
            for points, labels in torch.utils.data.DataLoader(val, batch_size=32):
                hit = (model(points).argmax(1) == labels).numpy()
                np.add.at(total, labels.numpy(), 1)
                np.add.at(correct, labels.numpy()[hit], 1)
        val_seconds = time.time() - t0
        oa, macc = accuracy_from_counts(correct, total)
        print(f"{model_name} {recipe}: {steps} steps in {seconds:.0f} s "
              f"({steps * 32 / seconds:.1f} clouds/s), "
              f"loss {loss.item():.3f}, val OA {100 * oa:.1f} % mAcc {100 * macc:.1f} % ({len(val)} shapes, "
              f"{len(val) / val_seconds:.1f} clouds/s), {params:,} parameters, {flops:.2f} GFLOP/cloud",
              flush=True)


if __name__ == "__main__":
    main()
