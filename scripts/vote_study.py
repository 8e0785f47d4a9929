"""Which test-time vote helps: OA and mAcc after k = 1..K votes, for several vote augmentations.

Issue 15 found ``--votes`` lowering OA on pcea-shapes. This measures, on one checkpoint and one
split, every vote augmentation below side by side, from the same forward passes:

    scale      pcea's vote transform: anisotropic scale in [0.8, 1.25] of the evaluated points
    train      the training augmentation: scale [2/3, 3/2] and shift [-0.2, 0.2] (PCT's)
    resample   another random subset of the stored points (when the file holds more points
               than the model reads), no scaling
    resample+scale

For each, the report gives the mean softmax over votes 1..k, alone ("copies") and with the
un-augmented single pass as the first vote ("+plain"). Run it alone; it prints one table.

    python scripts/vote_study.py modelnet40 --data ../shared/data/modelnet40-npy/ModelNet40 --split val
    python scripts/vote_study.py runs/demo --split test
"""

import argparse
import time

import numpy as np
import torch

from pcea.data import open_dataset
from pcea.data.synth import ensure_synthetic
from pcea.data.transforms import AnisotropicScale, ScaleTranslate
from pcea.engine.checkpoint import open_checkpoint
from pcea.engine.metrics import mean_class_accuracy, overall_accuracy
from pcea.engine.splits import recorded_split
from pcea.errors import PceaError
from pcea.fast import accelerate


def probabilities(model, clouds: np.ndarray, batch: int = 32) -> np.ndarray:
    """(n, N, C) clouds -> (n, classes) softmax."""
    out = []
    with torch.no_grad():
        for start in range(0, len(clouds), batch):
            logits = model(torch.from_numpy(np.ascontiguousarray(clouds[start:start + batch])))
            out.append(logits.float().softmax(-1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="default: the checkpoint's training data")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--votes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="scale,train,resample,resample+scale")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, payload, path = open_checkpoint(args.checkpoint)
    accelerate(model).eval()
    train_config = payload.get("train_config") or {}
    data = args.data or train_config["data"]
    data = ensure_synthetic() if data == "synthetic" else data
    n_points, normals = model.config.num_points, model.config.in_channels >= 6
    split = "train" if args.split == "val" else args.split
    seed_kw = {"seed": train_config["seed"]} if args.split == "val" else {}
    evaluated = open_dataset(data, split=split, num_points=n_points, normals=normals, **seed_kw)
    try:
        stored = open_dataset(data, split=split, num_points=None, normals=normals, **seed_kw)
    except PceaError:  # layouts that must be told a count (Princeton, resampled): the common 1024
        stored = open_dataset(data, split=split, num_points=max(1024, n_points), normals=normals, **seed_kw)
    labels = np.asarray(evaluated.labels)
    index = np.arange(len(labels))
    if args.split == "val":
        _, index = recorded_split(labels, train_config)
    labels = labels[index]
    fixed = evaluated.clouds[index]  # (n, N, C) what the single pass sees
    full = stored.clouds[index]      # (n, N_stored, C)
    print(f"{path}: {len(index)} {args.split} shapes, model reads {n_points} of "
          f"{full.shape[1]} stored points; {args.votes} votes per kind")
    n_classes = len(model.class_names)
    plain = probabilities(model, fixed)
    scale, train = AnisotropicScale(0.8, 1.25), ScaleTranslate()

    def copy(kind: str, cloud_fixed, cloud_full, rng):
        if kind.startswith("resample"):
            cloud = cloud_full[rng.choice(len(cloud_full), n_points, replace=False)] \
                if len(cloud_full) > n_points else cloud_fixed[rng.permutation(n_points)]
        else:
            cloud = cloud_fixed
        if kind.endswith("scale"):
            cloud = scale(cloud.copy(), rng)
        elif kind == "train":
            cloud = train(cloud.copy(), rng)
        return cloud.astype(np.float32)

    def figures(probs):
        pred = probs.argmax(1)
        return (100 * overall_accuracy(labels, pred),
                100 * mean_class_accuracy(labels, pred, n_classes))

    oa, macc = figures(plain)
    print(f"single pass: OA {oa:.2f} %  mAcc {macc:.2f} %")
    shown = sorted({1, 2, 3, 5, args.votes} & set(range(1, args.votes + 1)))
    print(f"{'kind':16s} " + " ".join(f"{f'k={k} copies/+plain':>22s}" for k in shown))
    for kind in args.kinds.split(","):
        began = time.perf_counter()
        total = np.zeros((len(labels), n_classes))
        row = []
        for vote in range(args.votes):
            copies = np.stack([copy(kind, f, s, np.random.default_rng((args.seed, i, vote)))
                               for i, (f, s) in enumerate(zip(fixed, full, strict=True))])
            total += probabilities(model, copies)
            if vote + 1 in shown:
                alone = figures(total / (vote + 1))[0]
                with_plain = figures((total + plain) / (vote + 2))[0]
                row.append(f"{alone:10.2f} /{with_plain:10.2f}")
        print(f"{kind:16s} " + " ".join(f"{cell:>22s}" for cell in row)
              + f"   ({time.perf_counter() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
