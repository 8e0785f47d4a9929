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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcea",
        description="Point-cloud classification with External Attention (PCT-style, ModelNet40).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_prepare(sub)
    _add_download(sub)
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
