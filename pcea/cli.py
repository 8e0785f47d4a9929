"""The ``pcea`` command line: argparse over the library's functions.

Each subcommand has an ``_add_<name>`` function that declares its arguments
and a ``_cmd_<name>`` function that runs it (``_cmd_train`` also merges the defaults,
``--config`` and the flags, and picks a run, a resume or a ``--seeds`` sweep). A
:class:`pcea.PceaError` (a user's mistake: a bad file, a bad option) is printed as one
line and exits with status 1; argparse's usage errors exit with status 2.

This is the one module that imports the rest of pcea inside its functions (each
``_cmd_<name>`` imports what it runs); everywhere else imports sit at the top of the
module, which ``tests/test_imports.py`` checks.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from pcea.errors import MAX_POINTS, MAX_VOTES, PceaError, is_positive_int, too_large_problem


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, device, and a model's size and stages")
    p.add_argument("--model", help="also describe this model preset (pcea, pct, pct-sa)")
    p.add_argument("--num-classes", type=_positive_int, default=40, help="output classes of the model (40)")
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
    print(builtin_weights_lines())
    if args.model:
        try:
            model = pcea.build_model(args.model, num_classes=args.num_classes)
        except ValueError as err:
            raise PceaError(str(err)) from None
        print()
        print(describe_model(model, args.model))
    return 0


def builtin_weights_lines() -> str:
    """What ``pcea info`` says about the weights that ship with pcea (pcea/weights)."""
    from pcea.engine.metrics import percent_down
    from pcea.weights import BUILTIN, builtin_card

    lines = ["built-in weights (pcea classify NAME FILES, pcea.load_model(NAME)):"]
    for name in BUILTIN:
        try:
            card = builtin_card(name)
        except PceaError as err:
            lines.append(f"  {name:<11} not available: {err}")
            continue
        pad = " " * 20
        lines.append(f"  {name:<18} {card['model']}, {card['num_points']} points, {card['up']}-up; "
                     f"{card['val_protocol']}:")
        lines.append(f"{pad}aligned: val OA {100 * card['val_oa']:.2f} %, "
                     f"mAcc {100 * card['val_macc']:.2f} %")
        suite = card.get("robustness")
        if suite:
            lines.append(f"{pad}any yaw: val OA {100 * suite['yaw_5_oa']:.2f} %, mAcc "
                         f"{100 * suite['yaw_5_macc']:.2f} %; mean over the robustness suite "
                         f"{percent_down(suite['mean_oa'])} % (docs/robustness.md)")
        shipped = (f"shipped the {card['selection']} ({', '.join(m['file'] for m in card['average'])})"
                   if card.get("average") else f"shipped epoch {card['epoch']} ({card['selection']})")
        lines.append(f"{pad}data: {card['data']}; recipe {card['recipe']}, {card['epochs']} epochs, "
                     f"{shipped}" + (f", started from {card['init']}" if card.get("init") else ""))
    return "\n".join(lines)


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
    p.add_argument("--url", help="a mirror you trust, instead of the URLs in pcea/data/checksums.json")
    p.add_argument("--sha256", help="the archive's expected SHA-256; without a known one the archive is "
                                    "used unverified, with a warning that prints its SHA-256")
    p.add_argument("--max-gb", type=float, default=8.0, help="refuse a larger download (default: 8)")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from pcea.data.download import fetch_modelnet40

    if not (args.max_gb > 0 and math.isfinite(args.max_gb)):
        raise PceaError(f"--max-gb {args.max_gb}: must be a positive, finite number of GiB")
    fetch_modelnet40(args.format, args.root, url=args.url, sha256=args.sha256,
                     max_download_bytes=int(args.max_gb * 1024**3), keep_archive=args.keep_archive)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier (PCT's ModelNet40 recipe by default)",
                       description="Train a classifier. Defaults: PCT's ModelNet40 recipe "
                                   "(configs/pct_modelnet40.yaml); a --config FILE overrides them and "
                                   "flags override both. Under torchrun it trains with DDP.")
    run = p.add_argument_group("the run")
    run.add_argument("--out", help="run directory to create, e.g. runs/NAME")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    run.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    run.add_argument("--config", metavar="FILE", help="YAML file of settings (see configs/)")
    run.add_argument("--seeds", help="comma-separated seeds: one run each in OUT/seed<S>, then mean ± std")
    run.add_argument("--max-time", type=_duration, metavar="TIME",
                     help="stop resumably before an epoch that would end later than TIME after the start "
                          "(5400, 90m, 1h30m), judged by the slowest of the last three epochs; exit status "
                          "75: continue with --resume")
    _add_train_settings(p)
    p.set_defaults(func=_cmd_train)


def _duration(text: str) -> float:
    """Seconds from ``5400``, ``5400s``, ``90m``, ``2h`` or ``1h30m`` (each part a decimal number)."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?", text.strip())
    seconds = sum(float(part) * unit for part, unit in zip(match.groups(), (3600, 60, 1), strict=True)
                  if part) if match else 0.0
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive time such as 5400, 90m or 1h30m")
    return seconds


def _add_train_settings(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, made from the field (its type, choices, help and group): a new
    setting is a new field, and its flag follows; :func:`_setting_type` says how its values are checked.

    A flag that is not given is not in the namespace (``argparse.SUPPRESS``), so that it overrides
    neither --config nor a resumed run's settings.
    """
    from pcea.engine.config import settings

    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in settings():
        if setting.group not in groups:
            groups[setting.group] = p.add_argument_group(setting.group)
        group = groups[setting.group]
        if setting.name == "model_options":  # a mapping: KEY=VALUE items, parsed in _cmd_train
            group.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                               help="model option override, e.g. memory=32 or centers=[256,128] (repeatable)")
            continue
        help = setting.help if setting.default is None else \
            f"{setting.help} (default: {_shown(setting.default)})"
        options = {"help": help.replace("%", "%%"), "default": argparse.SUPPRESS}
        if setting.parse is None:  # a switch: --amp / --no-amp
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=_setting_type(setting), choices=setting.choices, metavar=setting.metavar)
        group.add_argument(setting.flag, **options)


def _setting_type(setting) -> Callable[[str], object]:
    """argparse type of a setting's flag. Text that does not read as the setting's type (``--epochs 2.5``,
    ``--optimizer x``, ``--data ''``) is a usage error in the words TrainConfig gives it in a config file
    (``epochs='2.5': expected an integer``); a number it reads but refuses (``--lr inf``) or one out of
    range is refused in those words too, where the TrainConfig is built, with the other settings."""
    def parse(text: str) -> object:
        value = setting.parse(text)
        problem = setting.type_problem(value) if isinstance(value, str) else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _shown(value: object) -> str:
    """A default as --help shows it: on/off for a switch."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _cmd_train(args: argparse.Namespace) -> int:
    """Merge the defaults, the config file and the flags, then train, resume, or sweep --seeds.

    Returns:
        The exit status: 0 when finished, 130/143 when stopped by SIGINT/SIGTERM, 75 by --max-time.
    """
    from pcea.engine.config import TrainConfig, load_config_file, parse_model_options
    from pcea.engine.seeds import train_seeds
    from pcea.engine.train import train

    # The setting flags given (the others are not in args: argparse.SUPPRESS).
    overrides = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
    if args.model_opt:
        overrides["model_options"] = parse_model_options(args.model_opt)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise PceaError(f"--seeds {args.seeds!r}: expected integers like 0,1,2") from None
    out, resume = args.out, args.resume
    if resume and out and Path(out) != Path(resume):
        raise PceaError("give either --out for a new run or --resume RUN_DIR, not both")
    if seeds and args.max_time is not None:
        raise PceaError("--max-time stops one run; a --seeds sweep takes none (stop it with SIGTERM "
                        "and rerun the command to continue)")
    if resume and (seeds or args.config):
        raise PceaError("--resume takes its settings from the run; drop --config/--seeds "
                        "(rerun the --seeds command itself to continue a sweep)")
    if not resume and not out:
        raise PceaError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if resume:
        result = train(None, resume, resume=True, overrides=overrides, max_time=args.max_time)
    else:
        values = load_config_file(args.config) if args.config else {}
        values.update(overrides)
        config = TrainConfig.from_dict(values, source=args.config or "command line")
        if seeds:
            train_seeds(config, out, seeds, force=args.force)
            return 0
        result = train(config, out, force=args.force, max_time=args.max_time)
    if result.get("out_of_time"):
        return 75  # EX_TEMPFAIL: not done, run it again (with --resume) to go on
    if result.get("interrupted"):
        return {"SIGINT": 130, "SIGTERM": 143}.get(result.get("signal"), 1)
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert a Princeton-layout ModelNet40 (meshes or point files) to h5",
                       description="Sample every shape file of <class>/{train,test}/ once on all cores "
                                   "(meshes by area, with normals; point files subsampled) into the h5 "
                                   "layout that training reads fast, turned into pcea's y-up frame. "
                                   "Resumable: run it again after an interruption. Unreadable files are "
                                   "skipped and listed in OUT/skipped.txt.")
    p.add_argument("dataset", choices=["modelnet40"], help="modelnet40 (also takes a ModelNet10 source)")
    p.add_argument("--src", required=True, help="the Princeton directory, e.g. ModelNet40/")
    p.add_argument("--out", required=True, help="output directory for the h5 layout")
    p.add_argument("--points", type=_count(MAX_POINTS), default=2048,
                   help="points per shape (2048; at most what each point file holds, e.g. 1024)")
    p.add_argument("--up", choices=["y", "z"], help="the source's up axis (z, as the Princeton release)")
    p.add_argument("--workers", type=_workers, help="processes (default: all cores)")
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (0)")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pcea.data.prepare import prepare_modelnet40

    prepare_modelnet40(args.src, args.out, points=args.points, workers=args.workers, seed=args.seed,
                       up=args.up)
    return 0


def _positive_int(text: str) -> int:
    """argparse type of a count: pcea.errors.is_positive_int, worded as everywhere else."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"{text}: expected a positive integer")
    return value


def _count(at_most: int) -> Callable[[str], int]:
    """argparse type of a count with an upper bound from pcea.errors (MAX_POINTS, MAX_VOTES), checked
    before anything of that size is allocated or started."""
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > at_most:
            raise argparse.ArgumentTypeError(f"{text}: {too_large_problem(at_most)}")
        return value

    return parse


def _bounded_int(low: int, high: Callable[[], int], what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high():
            raise argparse.ArgumentTypeError(f"{value}: need {low} to {high()} ({what})")
        return value

    return parse


def _seed(text: str) -> int:
    from pcea.engine.config import MAX_SEED

    return _bounded_int(0, lambda: MAX_SEED, "2**32 - 1, the seeds NumPy and scikit-learn take")(text)


def _threads(text: str) -> int:
    from pcea.engine.config import max_threads

    return _bounded_int(1, max_threads, "at most 4 per CPU of this machine")(text)


def _workers(text: str) -> int:
    from pcea.engine.config import max_workers

    return _bounded_int(1, max_workers, "at most 4 per CPU of this machine, and 64")(text)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="OA, mAcc, per-class accuracy and confusion of a trained model",
                       description="Evaluate a checkpoint (or a run directory: its best.pt) on a dataset "
                                   "split (by default the test split of the data it was trained on). "
                                   "Writes eval.json, per_class.csv and confusion.png next to the "
                                   "checkpoint (or in --out). With --votes K it also reports K-copy "
                                   "test-time voting (random anisotropic scaling), next to the single pass.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--data", help="dataset directory (any ModelNet40 layout; ModelNet10 or another subset "
                                  "of the model's classes is evaluated on its own classes) or 'synthetic' "
                                  "(default: the dataset the checkpoint was trained on; for built-in "
                                  "weights, ModelNet40 where pcea download puts it)")
    p.add_argument("--split", choices=["test", "train", "val"], default="test",
                   help="test (default), train, or val: the run's own validation hold-out of train")
    p.add_argument("--votes", type=_count(MAX_VOTES), default=1,
                   help=f"voting copies per cloud (1: none; at most {MAX_VOTES})")
    p.add_argument("--up", choices=["y", "z"],
                   help="the data's up axis (default: its layout's: y for h5/resampled, z for Princeton "
                        "folders)")
    p.add_argument("--corrupt", type=_corruptions, metavar="all|NAME[,NAME...]",
                   help="also run the robustness suite: OA under these corruptions (all: yaw, rotate, "
                        "jitter, scale, drop_global, drop_local, add_global, add_local, partial, density) "
                        "at every --severities; writes robustness.json and robustness.png")
    p.add_argument("--severities", type=_severities, default=(1, 2, 3, 4, 5), metavar="S[,S...]",
                   help="severities of --corrupt, 1 (mild) to 5 (default: 1,2,3,4,5)")
    p.add_argument("--outliers", choices=["keep", "remove"], default="keep",
                   help="with --corrupt: remove the stray points of every cloud of the suite first, as "
                        "pcea classify --outliers remove does (keep, the default)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the voting augmentations and corruptions (0)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--out", metavar="DIR", help="directory for the report files")
    p.add_argument("--json", action="store_true",
                   help="print the full report as JSON (with --corrupt: the robustness report)")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast where the hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs): "
                        "measured 1.4x faster inference on an AMX CPU, logits within ~1e-2 of float32")
    p.set_defaults(func=_cmd_eval, parser=p)


def _corruptions(text: str) -> tuple[str, ...]:
    from pcea.data.corruptions import parse_corruptions

    try:
        return parse_corruptions(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _severities(text: str) -> tuple[int, ...]:
    from pcea.data.corruptions import parse_severities

    try:
        return parse_severities(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from pcea.engine.evaluate import evaluate_checkpoint, format_report

    if args.outliers != "keep" and not args.corrupt:
        args.parser.error("--outliers applies to the robustness suite: give --corrupt too")
    report = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, votes=args.votes,
                                 seed=args.seed, batch_size=args.batch_size, device=args.device,
                                 out=args.out, amp=args.amp, up=args.up, corruptions=args.corrupt,
                                 severities=args.severities, outliers=args.outliers)
    if args.corrupt:
        from pcea.engine.robustness import format_robustness

        robustness = report["robustness"]
        print(json.dumps(robustness, indent=2) if args.json else
              format_report(report) + "\n\n" + format_robustness(robustness))
        return 0
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:
    from pcea.io import DEFAULT_MAX_BYTES, DEFAULT_MAX_POINTS

    p = sub.add_parser("classify", help="classify your own mesh or point files with a trained model",
                       description="Print the top-k classes of each file. Inputs are files, directories "
                                   "(searched recursively for known extensions) and globs. An unreadable "
                                   "file is reported on stderr and skipped; the exit status is then 1.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run directory")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--points", type=_count(MAX_POINTS), help="points sampled per file (the model's own)")
    p.add_argument("--votes", type=_count(MAX_VOTES), default=1,
                   help=f"voting copies per file (1: none; at most {MAX_VOTES})")
    p.add_argument("--up", choices=["auto", "y", "z"], default="auto",
                   help="the files' up axis (auto: what the file declares, .glb and PointNet++'s "
                        "resampled .txt; else the axis under which the model is most confident). "
                        "The table and --json name the axis used and who chose it")
    p.add_argument("--outliers", choices=["keep", "remove"], default="keep",
                   help="remove: drop stray points of point files (scans) before sampling, by statistical "
                        "outlier removal; meshes have none (keep, the default)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampling and voting (0)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES,
                   help=f"refuse larger files ({DEFAULT_MAX_BYTES})")
    p.add_argument("--max-points", type=_positive_int, default=DEFAULT_MAX_POINTS,
                   help=f"refuse files declaring more points, vertices or faces ({DEFAULT_MAX_POINTS})")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast where the hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs): "
                        "measured 1.4x faster inference on an AMX CPU, logits within ~1e-2 of float32")
    p.set_defaults(func=_cmd_classify, parser=p)


def _cmd_classify(args: argparse.Namespace) -> int:
    from pcea.api import expand_inputs, load_model, print_classification, unmatched_problem
    from pcea.engine.distributed import resolve_device
    from pcea.precision import use_amp

    files, unmatched = expand_inputs(args.inputs)
    if not files:
        args.parser.error("no input files: " + "; ".join(map(unmatched_problem, unmatched)))
    model = load_model(args.checkpoint, device=resolve_device(args.device))
    amp = use_amp(args.amp, next(model.parameters()).device,
                  lambda why: print(f"pcea: note: --amp ignored, float32 it is: {why}", file=sys.stderr))
    for text in unmatched:
        print(f"pcea: skipped {unmatched_problem(text)}", file=sys.stderr)
    failed = print_classification(files, model, as_json=args.json, top_k=args.top_k,
                                  num_points=args.points, votes=args.votes, seed=args.seed,
                                  batch_size=args.batch_size, max_bytes=args.max_bytes,
                                  max_points=args.max_points, amp=amp, up=args.up, outliers=args.outliers)
    return 1 if failed or unmatched else 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the pcea-shapes stand-in dataset in the ModelNet40 layouts",
                       description="Write procedurally generated shapes as Princeton OFF meshes (mesh/), "
                                   "the h5 layout with normals (h5/) and the resampled text layout "
                                   "(resampled/). The same options always give the same files.")
    p.add_argument("--out", metavar="DIR", help="dataset root (default: $PCEA_DATA/pcea-shapes, "
                                                "or datasets/pcea-shapes)")
    p.add_argument("--classes", type=_positive_int, default=10, help="number of classes (10; at most 12)")
    p.add_argument("--per-class", type=_positive_int, default=100,
                   help="shapes per class, 20%% of them test (100; at most what memory holds)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--points", type=_count(MAX_POINTS), default=2048,
                   help="points per shape (2048; at most what each point file holds, e.g. 1024)")
    p.add_argument("--up", choices=["y", "z"], help="the source's up axis (z, as the Princeton release)")
    p.add_argument("--force", action="store_true",
                   help="write the dataset again over a pcea-shapes dataset already in --out")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from pcea.data import default_root
    from pcea.data.synth import check_settings, existing_dataset, generate

    start = time.perf_counter()
    out = Path(args.out) if args.out else default_root() / "pcea-shapes"
    settings = dict(classes=args.classes, per_class=args.per_class, seed=args.seed, points=args.points)
    check_settings(args.classes, args.per_class, args.points)  # a bad value first, whatever --out holds
    found = None if args.force else existing_dataset(out, **settings)
    if found == "same":  # the same options give the same files: nothing to write
        print(f"pcea-shapes: {out} already holds this dataset ({args.classes} classes x {args.per_class} "
              f"shapes, {args.points} points, seed {args.seed}); nothing to do (--force writes it again)")
        return 0
    if found is not None:
        raise PceaError(f"{out}: holds pcea-shapes generated with other settings ({found}); "
                        "give another --out, or --force to replace it")
    out = generate(out, **settings)
    print(f"pcea-shapes: {args.classes} classes x {args.per_class} shapes, {args.points} points each, "
          f"seed {args.seed} -> {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="test accuracy of the classical D2 shape-distribution baseline",
                       description="D2 histograms (distances between random point pairs) classified by "
                                   "an RBF SVM or a random forest, whichever cross-validates better on "
                                   "the training split; prints the test accuracy.")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="an h5-layout directory, a pcea-shapes root (uses its h5/), or 'synthetic' "
                        "(the default pcea-shapes, generated if missing)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=_cmd_baseline)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from pcea.data.baseline import run_baseline

    data = args.data
    if data == "synthetic":  # as train and eval take it
        from pcea.data.synth import ensure_synthetic

        data = ensure_synthetic()
    result = run_baseline(data, seed=args.seed)
    print(f"D2 baseline ({result['classifier']}, {result['classes']} classes, {result['train']} train / "
          f"{result['test']} test): test accuracy {100 * result['accuracy']:.1f} %")
    return 0


def _csv(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _fps_settings(text: str) -> list[tuple[int, int, int]]:
    try:
        settings = []
        for item in text.split(","):
            shape, m = item.split(":")
            b, n = shape.lower().split("x")
            settings.append((int(b), int(n), int(m)))
        return settings
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxN:M,... like 32x1024:512, got {text!r}") from None


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and memory of the models, attention layers and point ops")
    p.add_argument("--model", type=_csv(str), default=["pcea"], help="pcea,pct,pct-sa")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--points", type=_csv(int), default=[1024],
                   help="points per cloud for the models and tokens for the attention layers, e.g. 1024,4096")
    p.add_argument("--attention", type=_csv(str), default=["external", "offset", "self"],
                   help="attention kinds timed alone (empty string: none)")
    p.add_argument("--attention-batch", type=int, default=8, help="batch size for the attention layers alone")
    p.add_argument("--fps", type=_fps_settings, default=[(32, 1024, 512), (32, 4096, 1024), (8, 8192, 2048)],
                   help="FPS settings BxN:M, comma-separated")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=_threads, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per setting (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--rounds", type=int, default=1, help="run all settings this many times, report medians")
    p.add_argument("--reference", action="store_true",
                   help="also time a plain PCT reimplementation (conv1d, full groups, torch FPS)")
    p.add_argument("--precision", type=_csv(str), default=["fp32"],
                   help="fp32 and/or bf16 (autocast) for the models, e.g. fp32,bf16 (default fp32)")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the training step")
    p.add_argument("--only", type=_csv(str), default=None,
                   help="sections to run: models,attention,ops,weights (default: all but weights)")
    p.add_argument("--weights", type=_csv(str), default=None,
                   help="the weights section: built-in names or checkpoint files, timed at the input size on "
                        "their card (default: every built-in; without --only, implies --only weights)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="measure in this process instead of one child process per setting")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (scripts/plot_bench.py)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import os

    from pcea.atomic import check_destination
    from pcea.bench import BenchConfig, format_report, run_bench, write_json
    from pcea.errors import PceaError, PceaFileError

    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise PceaFileError(args.json, "its directory does not exist")  # say so before a long run
    if args.json:
        check_destination(args.json)  # a device or a FIFO: refused now, not after the run
    chosen = {}  # only what the command line says; BenchConfig holds the defaults
    if args.only is not None:
        chosen["sections"] = args.only
    elif args.weights is not None:
        chosen["sections"] = ["weights"]  # --weights alone asks for that section
    if args.weights is not None:
        if "weights" not in chosen["sections"]:  # asked for, then silently not timed: refuse
            raise PceaError(f"--weights needs the weights section: add it to --only "
                            f"(--only {','.join([*chosen['sections'], 'weights'])})")
        chosen["weights"] = args.weights
    config = BenchConfig(
        models=args.model, batch_size=args.batch_size, points=args.points, attention=args.attention,
        attention_batch=args.attention_batch, fps=args.fps, device=args.device, threads=args.threads,
        repeats=args.repeats, warmup=args.warmup, rounds=args.rounds, reference=args.reference,
        precision=args.precision, train=args.train, isolate=args.isolate, **chosen,
    )
    result = run_bench(config)
    result["command"] = "pcea " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "pcea bench"
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


def _onnx_batch(text: str) -> str | int:
    if text == "dynamic":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive batch size, got {text!r}"
                                         ) from None


def _add_export(sub: argparse._SubParsersAction) -> None:
    from pcea.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = sub.add_parser("export", help="write a trained model as one ONNX file, sampling and grouping in it",
                       description="Export the whole classifier, farthest point sampling and kNN included, "
                                   "as one ONNX graph from (batch, N, 3) points to (batch, classes) logits, "
                                   "with the class names, frame and normalisation in its metadata. "
                                   "ONNX Runtime's logits are checked against PyTorch's before the file is "
                                   "written. scripts/onnx_classify.py runs it without PyTorch.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_NAME",
                   help="a checkpoint file, a run directory, or the name of built-in weights")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--points", type=_count(MAX_POINTS), help="points per cloud, N (the model's own)")
    p.add_argument("--batch", type=_onnx_batch, default="dynamic",
                   help="'dynamic' (default: any batch size) or a fixed batch size")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} ({DEFAULT_OPSET})")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from pcea.api import load_model
    from pcea.export import export_onnx

    model = load_model(args.checkpoint)
    result = export_onnx(model, args.onnx, num_points=args.points, batch=args.batch, opset=args.opset)
    check = (f"; ONNX Runtime's logits within {result.max_abs_error:.1e} of PyTorch's"
             if result.max_abs_error is not None else "; not checked (onnxruntime is not installed)")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}): points "
          f"({result.batch}, {result.num_points} points, {model.config.in_channels}) -> logits "
          f"({result.batch}, {model.config.num_classes}), in {result.seconds:.1f} s{check}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcea",
        description="Point-cloud classification with External Attention (PCT-style, ModelNet40).",
    )
    from pcea import __version__

    parser.add_argument("--version", action="version", version=f"pcea {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_download(sub)
    _add_eval(sub)
    _add_classify(sub)
    _add_synth(sub)
    _add_baseline(sub)
    _add_bench(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file or class name the terminal's encoding cannot show (an ASCII-only C locale,
        # PYTHONIOENCODING=ascii) is printed as a Python escape, never a UnicodeEncodeError.
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not a TextIOWrapper
            stream.reconfigure(errors="backslashreplace")
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_closed()
    except SystemExit:  # argparse's --help, --version and usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_closed()
        raise


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, and the option meant when one is close (--topk: --top-k)
        command = _subcommand_parser(parser, args.command)
        command.error(f"unrecognized arguments: {' '.join(unknown)}{_did_you_mean(command, unknown)}")
    if argv is None:
        # pcea is the whole process (console script or python -m pcea): restart
        # it once with the process settings its command runs fastest under (glibc
        # malloc keeping freed memory for training, short OpenMP spinning; see
        # pcea/runtime.py; PCEA_ALLOCATOR=system turns it off), importing the same pcea.
        # Never from a library caller that passes argv: that would replace its process.
        from pcea.runtime import reexec_if_needed

        reexec_if_needed(args.command, getattr(args, "device", None), sys.argv[1:])
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught in main() rather than at exit
        return status
    except PceaError as err:
        _print_error(str(err))
        return 1
    except BrokenPipeError:
        raise
    except OSError as err:  # a name too long, a folder the user may not enter: the system's reason
        _print_error(os_error_line(err))
        return 1
    except KeyboardInterrupt:
        print("pcea: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:  # the counts are bounded; a model's peak memory is not
        if not (isinstance(err, MemoryError) or _out_of_memory(err)):
            raise
        detail = (str(err).strip().splitlines() or ["MemoryError"])[0][:160]
        _print_error(f"out of memory in pcea {args.command} ({detail}); "
                     "fewer --points or a smaller --batch-size needs less")
        return 1


def _out_of_memory(err: RuntimeError) -> bool:
    """torch's out-of-memory errors: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError."""
    return type(err).__name__ == "OutOfMemoryError" or "DefaultCPUAllocator: not enough memory" in str(err)


def _print_error(message: str) -> None:
    from pcea.api import printable  # a file name with a newline must not forge a second line

    print(f"pcea: error: {printable(message)}", file=sys.stderr)


def os_error_line(err: OSError) -> str:
    """One line for an OSError: ``PATH: File name too long`` (both paths of a rename), or its text."""
    reason = err.strerror or str(err)
    paths = [os.fsdecode(name) for name in (err.filename, err.filename2) if name is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _show_warning(message, category, *_args, **_kwargs) -> None:
    """Every warning as one escaped line: a file name holding a newline cannot forge a line."""
    from pcea.api import printable

    print(f"pcea: warning: {printable(str(message))}", file=sys.stderr)


def _subcommand_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (its usage line goes with its errors)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command, parser)
    return parser


def _did_you_mean(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """`` (did you mean --top-k?)`` for the first unknown option close to one of ``parser``'s."""
    import difflib

    options = [name for action in parser._actions for name in action.option_strings]
    for token in unknown:
        if token.startswith("-"):
            close = difflib.get_close_matches(token.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def _stdout_closed() -> int:
    """The reader of stdout went away (``pcea info | head -3``): end quietly, as Unix tools do.

    Python would report the failed flush of the remaining output at exit, so stdout is
    pointed at /dev/null first (the recipe of the Python docs, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass
    return 141  # 128 + SIGPIPE, the status of a Unix tool killed by it


if __name__ == "__main__":
    raise SystemExit(main())
