"""The ``pcea`` command line: argparse over the library's functions.

Each subcommand has an ``_add_<name>`` function that declares its arguments
and a ``_cmd_<name>`` function that runs it. A :class:`pcea.PceaError` (a
user's mistake: a bad file, a bad option) is printed as one line and exits
with status 1; argparse's usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import platform
import sys

from pcea.errors import PceaError


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, device, and a model's size and stages")
    p.add_argument("--model", help="also describe this model preset (pcea, pct, pct-sa)")
    p.add_argument("--num-classes", type=int, default=40)
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import pcea

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    print(f"pcea     {pcea.__version__}")
    print(f"python   {platform.python_version()}")
    print(f"torch    {torch.__version__}")
    print(f"numpy    {np.__version__}")
    print(f"device   {device}")
    print(f"threads  {torch.get_num_threads()}")
    if args.model:
        try:
            model = pcea.build_model(args.model, num_classes=args.num_classes)
        except ValueError as err:
            raise PceaError(str(err)) from None
        print()
        print(describe_model(model, args.model))
    return 0


def describe_model(model, name: str) -> str:
    """A parameter count and one line per stage, for ``pcea info --model``."""
    c = model.config

    def count(module) -> str:
        return f"{sum(p.numel() for p in module.parameters()):,}"

    attention = {"external": f"external attention, S={c.memory}, heads={c.heads}",
                 "offset": "offset attention", "self": f"self-attention, heads={c.heads}"}
    dim = c.stage_dims[1]
    pooled = c.fuse_dim * (2 if c.pool == "max+mean" else 1)
    rows = [
        ("embedding", f"(B, N, {c.in_channels}) -> LBR x2 -> (B, N, {c.embed_dim})", model.embedding),
        ("stage1", f"FPS {c.centers[0]}, kNN {c.neighbors[0]}, MLP, max -> "
                   f"(B, {c.centers[0]}, {c.stage_dims[0]})", model.stage1),
        ("stage2", f"FPS {c.centers[1]}, kNN {c.neighbors[1]}, MLP, max -> "
                   f"(B, {c.centers[1]}, {dim})", model.stage2),
        ("pre_attention", f"LBR x2 -> (B, {c.centers[1]}, {dim})", model.pre_attention),
        ("blocks", f"{c.num_layers} x [x + LBR(x - attn(x))], {attention[c.attention]}",
         model.blocks),
        ("fuse", f"concat {dim * (c.num_layers + 1)} -> LBR -> {c.fuse_dim}, {c.pool} pool -> "
                 f"(B, {pooled})", model.fuse),
        ("head", f"{pooled} -> {c.head_dims[0]} -> {c.head_dims[1]} -> {c.num_classes}, "
                 f"dropout {c.dropout}", model.head),
    ]
    lines = [f"model    {name}: {count(model)} parameters, {c.num_points} points, "
             f"{c.in_channels} input channels"]
    lines += [f"  {stage:<14}{count(module):>11}  {text}" for stage, text, module in rows]
    return "\n".join(lines)


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch ModelNet40 (resumable, checksummed, safely extracted)")
    p.add_argument("dataset", choices=["modelnet40"])
    p.add_argument("--format", default="h5", choices=["h5", "mesh", "resampled"],
                   help="h5: modelnet40_ply_hdf5_2048, mesh: Princeton OFF meshes, "
                        "resampled: modelnet40_normal_resampled (default: h5)")
    p.add_argument("--root", help="where the archive lands and extracts (default: $PCEA_DATA or datasets/)")
    p.add_argument("--url", help="a mirror you trust, instead of the URLs in datasets/checksums.json")
    p.add_argument("--sha256", help="the archive's expected SHA-256; without a known one the archive is "
                                    "used unverified, with a warning that prints its SHA-256")
    p.add_argument("--max-gb", type=float, default=8.0, help="refuse a larger download (default: 8)")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from pcea.data.download import fetch_modelnet40

    fetch_modelnet40(args.format, args.root, url=args.url, sha256=args.sha256,
                     max_download_bytes=int(args.max_gb * 1024**3), keep_archive=args.keep_archive)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier (PCT's ModelNet40 recipe by default)",
                       description="Train a classifier. Defaults: PCT's ModelNet40 recipe "
                                   "(configs/pct_modelnet40.yaml); a --config FILE overrides them and "
                                   "flags override both. Under torchrun it trains with DDP.")
    p.add_argument("--data", help="dataset directory, or 'synthetic' for pcea-shapes (default)")
    p.add_argument("--out", help="run directory to create, e.g. runs/NAME")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--config", metavar="FILE", help="YAML file of settings (see configs/)")
    p.add_argument("--model", help="pcea (external attention), pct or pct-sa")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="model option override, e.g. memory=32 or centers=[256,128] (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="clouds per step, over all processes")
    p.add_argument("--points", type=int, help="points per cloud")
    p.add_argument("--normals", action=argparse.BooleanOptionalAction, default=None,
                   help="use normals as 3 extra input channels")
    p.add_argument("--lr", type=float, help="initial SGD learning rate (cosine-annealed)")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", help="comma-separated seeds: one run each in OUT/seed<S>, then mean ± std")
    p.add_argument("--val-split", type=float, help="fraction of train held out for selection (0.1)")
    p.add_argument("--select-on", choices=["val", "test", "last"],
                   help="which epoch best.pt holds: best on val (default), best on test, or last")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on CUDA")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (falls back to eager)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from pcea.engine.config import parse_model_options
    from pcea.engine.train import run_train_command

    names = ["data", "model", "epochs", "batch_size", "points", "normals", "lr", "seed", "val_split",
             "select_on", "device", "amp", "compile", "threads", "workers"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.model_opt:
        overrides["model_options"] = parse_model_options(args.model_opt)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise PceaError(f"--seeds {args.seeds!r}: expected integers like 0,1,2") from None
    return run_train_command(out=args.out, resume=args.resume, force=args.force, config_file=args.config,
                             overrides=overrides, seeds=seeds)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert ModelNet40 meshes (Princeton .off layout) to the h5 layout",
                       description="Sample every mesh once (by area, with normals) on all cores into "
                                   "the h5 layout that training reads fast. Resumable: run it again "
                                   "after an interruption. Unreadable meshes are skipped and listed in "
                                   "OUT/skipped.txt.")
    p.add_argument("dataset", choices=["modelnet40"], help="modelnet40 (also takes a ModelNet10 source)")
    p.add_argument("--src", required=True, help="the Princeton directory, e.g. ModelNet40/")
    p.add_argument("--out", required=True, help="output directory for the h5 layout")
    p.add_argument("--points", type=int, default=2048, help="points per shape (2048)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pcea.data.prepare import prepare_modelnet40

    prepare_modelnet40(args.src, args.out, points=args.points, workers=args.workers, seed=args.seed)
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the pcea-shapes stand-in dataset in the ModelNet40 layouts",
                       description="Write procedurally generated shapes as Princeton OFF meshes (mesh/), "
                                   "the h5 layout with normals (h5/) and the resampled text layout "
                                   "(resampled/). The same options always give the same files.")
    p.add_argument("--out", metavar="DIR", help="dataset root (default: $PCEA_DATA/pcea-shapes, "
                                                "or datasets/pcea-shapes)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (10; at most 12)")
    p.add_argument("--per-class", type=int, default=100, help="shapes per class, 20%% of them test (100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=2048, help="points per shape (2048)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from pcea.data import default_root
    from pcea.data.synth import generate

    start = time.perf_counter()
    out = generate(args.out or default_root() / "pcea-shapes", classes=args.classes,
                   per_class=args.per_class, seed=args.seed, points=args.points)
    print(f"pcea-shapes: {args.classes} classes x {args.per_class} shapes, {args.points} points each, "
          f"seed {args.seed} -> {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="test accuracy of the classical D2 shape-distribution baseline",
                       description="D2 histograms (distances between random point pairs) classified by "
                                   "an RBF SVM or a random forest, whichever cross-validates better on "
                                   "the training split; prints the test accuracy.")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="an h5-layout directory, or a pcea-shapes root (uses its h5/)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_baseline)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from pcea.data.baseline import run_baseline

    result = run_baseline(args.data, seed=args.seed)
    print(f"D2 baseline ({result['classifier']}, {result['classes']} classes, {result['train']} train / "
          f"{result['test']} test): test accuracy {100 * result['accuracy']:.1f} %")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcea",
        description="Point-cloud classification with External Attention (PCT-style, ModelNet40).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_download(sub)
    _add_synth(sub)
    _add_baseline(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PceaError as err:
        print(f"pcea: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pcea: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
