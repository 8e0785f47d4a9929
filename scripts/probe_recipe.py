"""Short recipe probes on a Princeton-layout ModelNet40 copy (used to choose configs/modelnet40_cpu.yaml).

Each probe is a complete miniature run: STEPS optimiser steps at batch 32 on 512 points
(centres 256/128), a linear warm-up over the first tenth, cosine to zero, the same data,
augmentation and validation split as ``pcea train`` (seed 0); it prints the validation OA.
The probes only rank optimisers and learning rates against each other; run them alone.

    python scripts/probe_recipe.py DATA STEPS sgd:0.01 sgd:0.05 adamw:0.001
"""

import math
import sys
import time

import torch

from pcea.data import open_dataset
from pcea.data.transforms import pct_train_transform
from pcea.engine.splits import AugmentedSubset, split_train_val
from pcea.model import build_model


def main() -> None:
    data, steps, recipes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(2)
    base = open_dataset(data, "train", num_points=512)
    train_idx, val_idx = split_train_val(base.labels, 0.1, 0)
    train = AugmentedSubset(base, train_idx, transform=pct_train_transform(), seed=0)
    val = AugmentedSubset(base, val_idx)
    for recipe in recipes:
        name, lr = recipe.split(":")
        lr = float(lr)
        torch.manual_seed(0)
        model = build_model("pcea", num_classes=40, num_points=512, centers=[256, 128])
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
        correct = 0
        with torch.no_grad():
            for points, labels in torch.utils.data.DataLoader(val, batch_size=64):
                correct += int((model(points).argmax(1) == labels).sum())
        print(f"{recipe}: {steps} steps in {seconds:.0f} s, loss {loss.item():.3f}, "
              f"val OA {100 * correct / len(val):.1f} % ({len(val)} shapes)", flush=True)


if __name__ == "__main__":
    main()
