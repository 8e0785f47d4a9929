"""Turn a finished run's checkpoint into the weights that ship with pcea (pcea/weights/NAME.pt + NAME.json).

    python scripts/ship_weights.py runs/modelnet40_cpu --cpu "AMD EPYC 7B12, CPU family 23"
        [--name modelnet40] [--recipe configs/modelnet40_robust.yaml] [--half]
        [--robustness DIR/robustness.json] [--checkpoint last] [--init-as TEXT]
    python scripts/ship_weights.py runs/soup/soup.pt --robustness runs/soup_suite/robustness.json ...

The shipped file keeps what inference and the model card need (weights, model config,
class names, frame, the training config and per-epoch metrics) and drops the optimiser,
scheduler and RNG states, which only resuming needs; it is written with
pcea.engine.checkpoint.save_checkpoint, so it loads with torch.load(weights_only=True)
after its header's SHA-256 check, and the card records the file's own SHA-256 too.
With --half the weights are stored in float16 (half the file; they load back into the
float32 model); check the validation OA of the shipped file before committing it.
--robustness copies the robustness suite's figures of the shipped file into the card.
--checkpoint last ships the run's last epoch instead of its best.pt: the end of the schedule,
where a run with an average of the weights (--ema) or a trade between clean and corrupted
accuracy is judged on the whole suite rather than on validation OA alone; the card says so.
A checkpoint file written by scripts/average_weights.py ships the same way; no epoch of a run is
its own, so the card takes its validation figures from the suite's clean row (--robustness is
required) and lists the averaged checkpoints.
"""

import argparse
import json
from pathlib import Path

from pcea.atomic import write_atomic
from pcea.digest import file_sha256
from pcea.engine.checkpoint import load_checkpoint, save_checkpoint, train_seconds
from pcea.engine.splits import holdout_seed
from pcea.errors import PceaFileError
from pcea.weights import HERE

KEEP = ("model", "model_name", "model_config", "class_names", "train_config", "epoch", "metrics",
        "protocol", "up")


def machine(text: str) -> str:
    """--cpu's type: a card's figures compare with others only on the same kind of CPU."""
    if "CPU family" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} does not name lscpu's CPU family, e.g. 'AMD EPYC 7B12, CPU family 23'")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory, or an average_weights.py checkpoint")
    parser.add_argument("--name", default="modelnet40")
    parser.add_argument("--cpu", type=machine, required=True,
                        help="the training machine with lscpu's CPU family, for the card")
    parser.add_argument("--recipe", default="configs/modelnet40_cpu.yaml", help="the recipe, for the card")
    parser.add_argument("--half", action="store_true", help="store the floating-point tensors as float16")
    parser.add_argument("--robustness", type=Path, help="robustness.json of pcea eval --corrupt on the file")
    parser.add_argument("--init-as", help="the name the --init weights ship under now, if renamed")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="ship best.pt (the epoch selected on val) or last.pt (the last epoch)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where NAME.pt and NAME.json go")
    args = parser.parse_args()
    averaged = args.run.is_file()
    if averaged and not args.robustness:
        parser.error(f"{args.run}: an averaged checkpoint's card takes its figures from --robustness")
    try:
        payload = load_checkpoint(args.run if averaged else args.run / f"{args.checkpoint}.pt")
    except PceaFileError as err:
        parser.error(str(err))
    if averaged and "average" not in payload:
        parser.error(f"{args.run}: not an average of checkpoints (scripts/average_weights.py); "
                     f"give its run directory instead")
    if payload["train_config"].get("init") == args.name and not args.init_as:
        parser.error(f"the run started from the {args.name} this file replaces; "
                     f"describe those weights with --init-as for the card")
    # every input is read before the first write: NAME.pt and NAME.json change together or not at all
    results = {} if averaged else json.loads((args.run / "results.json").read_text())
    suite = json.loads(args.robustness.read_text()) if args.robustness else None
    shipped = {key: payload[key] for key in KEEP if key in payload}
    if args.half:
        shipped["model"] = {key: value.half() if value.is_floating_point() else value
                            for key, value in shipped["model"].items()}
    out = save_checkpoint(args.out_dir / f"{args.name}.pt", shipped)
    config = payload["train_config"]
    if averaged:  # its own figures are the suite's clean row; its cost is its members'
        epoch, row = None, {"val_oa": suite["clean"]["oa"], "val_macc": suite["clean"]["macc"]}
    else:
        epoch = payload["epoch"]
        row = payload["metrics"]["history"][epoch - 1]
    card = {
        "name": args.name,
        "file": out.name,
        "sha256": file_sha256(out),  # what pcea.weights checks the file against
        "bytes": out.stat().st_size,
        "model": payload["model_name"],
        "parameters": sum(t.numel() for k, t in payload["model"].items() if not k.endswith(
            ("running_mean", "running_var", "num_batches_tracked"))),
        "num_points": payload["model_config"]["num_points"],
        "up": payload.get("up", "y"),
        "data": "ModelNet40 official train split (9,843 shapes, 40 classes), 1024-point npy release",
        "split": f"trained on the other {1 - config['val_split']:.0%} of the train split; selected on a "
                 f"stratified {config['val_split']:.0%} validation hold-out of it "
                 f"(seed {holdout_seed(config)})",
        "recipe": args.recipe,
        "train_config": {**config, "data": Path(config["data"]).name},  # not the training machine's path
        "epoch": epoch,
        "epochs": config["epochs"],
        "selection": payload["protocol"],
        "val_oa": row["val_oa"],
        "val_macc": row["val_macc"],
        "val_protocol": ("validation split, single pass, the averaged weights" if averaged
                         else "validation split, single pass, best epoch on val" if args.checkpoint == "best"
                         else "validation split, single pass, last epoch of the schedule"),
        # the epochs' own times (an average: its members' epochs)
        "train_seconds": (round(sum(m["train_seconds"] for m in payload["average"]), 1) if averaged
                          else train_seconds(payload) or results.get("train_seconds_this_session")),
        "cpu": args.cpu,
        "test": "not measured: the ModelNet40 test split was not available",
        "storage": "float16" if args.half else "float32",
    }
    if config.get("init"):
        card["init"] = args.init_as or config["init"]
    if averaged:
        card["average"] = payload["average"]
    if suite is not None:
        rows = suite["corruptions"]
        card["robustness"] = {
            "protocol": f"pcea eval --corrupt on the {suite['split']} split, single pass, "
                        f"seed {suite['seed']}",
            "clean_oa": suite["clean"]["oa"],
            "mean_oa": suite["mean_oa"],
            "mean_oa_by_corruption": {name: sum(r["oa"] for r in cells.values()) / len(cells)
                                      for name, cells in rows.items()},
            "yaw_5_oa": rows["yaw"]["5"]["oa"] if "5" in rows.get("yaw", {}) else None,
            "yaw_5_macc": rows["yaw"]["5"]["macc"] if "5" in rows.get("yaw", {}) else None,
        }
    write_atomic(args.out_dir / f"{args.name}.json", json.dumps(card, indent=2) + "\n")
    print(f"wrote {out} ({card['bytes']:,} bytes) and {args.name}.json: val OA {100 * card['val_oa']:.2f} %")


if __name__ == "__main__":
    main()
