"""Recompute a checkpoint's BatchNorm statistics on the clouds it trained on, as it is evaluated.

    python scripts/recompute_batchnorm.py OUT.pt CHECKPOINT --data PATH/TO/ModelNet40
        [--batch-size 32] [--seed 0] [--no-augment]

CHECKPOINT is a run's checkpoint, an average of checkpoints (scripts/average_weights.py) or a
shipped name (modelnet40). Its weights are kept; the running statistics of each BatchNorm layer
are replaced by their mean over one pass through the training part of the checkpoint's own split
(its val_split and hold-out seed: never a validation cloud), each cloud once, in the dataset's
order, augmented as its recipe trained (its per-cloud augmentation, no batch mixing; with
--no-augment, unaugmented, as evaluation feeds them), with dropout off (pcea.engine.batchnorm
says why). OUT keeps CHECKPOINT's model, recipe, metrics, epoch and average (not its optimiser
state: it is evaluated or shipped, never resumed) and records how under "batchnorm"; measure it
(pcea eval OUT --split val) against CHECKPOINT before shipping it. On both shipped files (session
35) it lowered validation OA by 5 to 7 shapes of 985, with and without --no-augment
(docs/modelnet40.md): their statistics stayed.
"""

import argparse
import time
from pathlib import Path

from torch.utils.data import DataLoader

from pcea.data.modelnet import open_dataset
from pcea.digest import file_sha256
from pcea.engine.batchnorm import recompute_batchnorm
from pcea.engine.checkpoint import model_payload, open_checkpoint, save_checkpoint
from pcea.engine.config import TrainConfig
from pcea.engine.run import train_transform
from pcea.engine.splits import AugmentedSubset, recorded_split
from pcea.errors import PceaError

KEEP = ("train_config", "metrics", "epoch", "average")  # with the model's own keys; no optimiser state

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the checkpoint to write")
    parser.add_argument("checkpoint", help="a checkpoint file, run directory or shipped name")
    parser.add_argument("--data", required=True, help="the dataset the checkpoint trained on")
    parser.add_argument("--batch-size", type=int, default=32, help="clouds per batch (at least 2)")
    parser.add_argument("--seed", type=int, default=0, help="the augmentation's random stream")
    parser.add_argument("--no-augment", action="store_true",
                        help="the clouds as evaluation feeds them (default: the recipe's augmentation)")
    args = parser.parse_args()
    if args.batch_size < 2:
        parser.error("--batch-size: BatchNorm needs at least 2 clouds per batch")
    try:
        model, payload, path = open_checkpoint(args.checkpoint)
        if args.out.resolve() == path.resolve():
            raise PceaError(f"{args.out}: is the checkpoint read; write the result to a new file")
        if not isinstance(payload.get("train_config"), dict):
            raise PceaError(f"{path}: records no training config, so not which clouds it trained on")
        config = TrainConfig.from_dict({**payload["train_config"], "data": args.data}, source=str(path))
        base = open_dataset(args.data, split="train", num_points=config.points, normals=config.normals,
                            seed=config.seed)
        if [str(name) for name in base.class_names] != model.class_names:
            raise PceaError(f"{args.data}: its classes are not the ones {path} was trained on")
        train_idx, _ = recorded_split(base.labels, config.to_dict())
        transform = None if args.no_augment else train_transform(config)
        clouds = AugmentedSubset(base, train_idx, transform=transform, seed=args.seed)
        # a last batch of one cloud has no variance to measure: left out
        drop_last = len(clouds) % args.batch_size == 1
        used = len(clouds) - drop_last
        loader = DataLoader(clouds, batch_size=args.batch_size, shuffle=False, drop_last=drop_last)
        start = time.perf_counter()
        batches = recompute_batchnorm(model, (points for points, _ in loader))
        seconds = time.perf_counter() - start
        out = {**{key: payload[key] for key in KEEP if key in payload},
               **model_payload(model, model_name=payload["model_name"])}
        out["protocol"] = (f"{payload.get('protocol', 'a checkpoint')}, BatchNorm statistics recomputed "
                           f"on {used} training clouds")
        out["batchnorm"] = {"source": path.name, "sha256": file_sha256(path), "clouds": used,
                            "batches": batches, "batch_size": args.batch_size, "seed": args.seed,
                            "augmentation": ("none" if transform is None else
                                             "the recipe's per-cloud training augmentation, no mixing"),
                            "dropout": "off", "seconds": round(seconds, 1)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = save_checkpoint(args.out, out)
    except (PceaError, OSError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {written}: {path.name}'s weights with BatchNorm statistics from {batches} batches "
          f"of {used} training clouds ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
