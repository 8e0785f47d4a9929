"""Average the weights of checkpoints of one model into a checkpoint pcea reads (a "model soup").

    python scripts/average_weights.py OUT.pt A.pt B.pt [C.pt ...]

Each tensor of OUT's model is the element-wise mean of the inputs' (in float32, whatever their
storage; BatchNorm's running statistics are averaged like the weights, its step counters are
the last input's). This is the uniform soup of Wortsman et al. 2022 (arXiv 2203.05482), what
timm's avg_checkpoints.py does for a run's best epochs: fine-tuned weights that share their
start lie in one basin, and their mean often scores above each of them, on clean and shifted
data alike. Inputs from unrelated starts average into noise; measure the result (pcea eval
OUT --corrupt all) before shipping it with scripts/ship_weights.py.

An input is a run's checkpoint (runs/NAME/last.pt: its averaged weights, the ones pcea eval
reads) or a shipped file (pcea/weights/NAME.pt). OUT keeps the model description the inputs share
and the last input's training config and history, and records every input (its folder and file
name, SHA-256, epoch, training time) under "average"; it has no epoch of its own (pcea eval names
it by its selection) and no optimiser state, so it cannot be resumed, only evaluated or shipped.
A shipped file's training time is its card's (NAME.json beside it, when its SHA-256 names the
file): a shipped average keeps only its last member's history, so its own epochs undercount it.
"""

import argparse
import json
from pathlib import Path

import torch

from pcea.digest import file_sha256
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint, train_seconds
from pcea.errors import PceaFileError

SAME = ("model_name", "model_config", "class_names", "up")  # what must agree for a mean to mean anything
KEEP = ("train_config", "metrics")  # from the last input, the recipe its weights end; no epoch is the mean's


def average(payloads: list[dict]) -> dict:
    """The element-wise mean of the payloads' floating-point model tensors, in float32."""
    last = payloads[-1]["model"]
    # each tensor: K inputs stacked (K, *shape), their mean (*shape)
    return {key: torch.stack([p["model"][key].float() for p in payloads]).mean(0)
            if value.is_floating_point() else value.clone()
            for key, value in last.items()}


def member_seconds(path: Path, payload: dict, sha256: str) -> float:
    """The training time behind a checkpoint: a shipped file's card's, else its epochs' own.

    ``sha256`` is the file's own digest: a card beside it counts only if it names this file.
    """
    card = path.with_suffix(".json")
    if card.is_file():
        try:
            recorded = json.loads(card.read_text())
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict) and recorded.get("sha256") == sha256 \
                and isinstance(recorded.get("train_seconds"), (int, float)):
            return float(recorded["train_seconds"])
    return train_seconds(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the averaged checkpoint to write")
    parser.add_argument("inputs", type=Path, nargs="+", help="two or more checkpoints of one model")
    args = parser.parse_args()
    if len(args.inputs) < 2:
        parser.error("give two or more checkpoints to average")
    if args.out.resolve() in {path.resolve() for path in args.inputs}:
        parser.error(f"{args.out}: is one of the inputs; write the average to a new file")
    payloads = []
    for path in args.inputs:
        try:
            payloads.append(load_checkpoint(path))
        except PceaFileError as err:
            parser.error(str(err))
    first = payloads[0]
    for path, payload in zip(args.inputs[1:], payloads[1:], strict=True):
        for key in SAME:
            if payload.get(key) != first.get(key):
                parser.error(f"{path}: its {key} differs from {args.inputs[0]}'s; "
                             f"only checkpoints of one model average")
        shapes = {k: tuple(v.shape) for k, v in payload["model"].items()}
        if shapes != {k: tuple(v.shape) for k, v in first["model"].items()}:
            parser.error(f"{path}: its tensors differ from {args.inputs[0]}'s in names or shapes")
    digests = [file_sha256(path) for path in args.inputs]  # for the record and the card check
    members = [{"file": f"{path.parent.name}/{path.name}", "sha256": digest,
                "epoch": payload.get("epoch"), "train_seconds": member_seconds(path, payload, digest)}
               for path, payload, digest in zip(args.inputs, payloads, digests, strict=True)]
    soup = {key: first[key] for key in SAME if key in first}
    soup.update({key: payloads[-1][key] for key in KEEP if key in payloads[-1]})
    soup["model"] = average(payloads)
    soup["protocol"] = f"uniform average of the weights of {len(payloads)} checkpoints"
    soup["average"] = members
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = save_checkpoint(args.out, soup)
    except PceaFileError as err:  # names the file
        parser.error(str(err))
    except OSError as err:
        parser.error(f"{args.out.parent}: cannot create the folder: {err.strerror or err}")
    print(f"wrote {out}: the mean of {len(payloads)} checkpoints' weights "
          f"({', '.join(member['file'] for member in members)})")


if __name__ == "__main__":
    main()
