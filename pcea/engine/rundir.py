"""The run directory of ``pcea train``: what it holds, preparing it, and its curves plot.

One run writes into its directory::

    config.yaml     the resolved TrainConfig
    metrics.jsonl   one JSON line per completed epoch
    curves.png      loss, accuracies and learning rate per epoch
    last.pt         the last completed epoch (last.prev.pt: the one before)
    best.pt         the epoch chosen by ``select_on`` (validation OA by default)
    results.json    test figures at the end, each labelled with its protocol
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pcea.atomic import write_atomic
from pcea.errors import PceaFileError

__all__ = ["RUN_FILES", "prepare_run_dir", "write_curves"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "last.prev.pt", "best.pt",
             "results.json")


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False, force: bool = False,
                    needed_bytes: int = 0) -> Path:
    """Create the run directory and make sure a run can write there, before any training.

    Args:
        out: the run directory.
        resume: the directory holds a run to continue.
        force: start over in a directory that already holds a run.
        needed_bytes: free space required (a few checkpoints' worth).

    Returns:
        The directory.

    Raises:
        PceaError: it already holds a run (without resume/force), it is not
            writable, or the disk is too full.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PceaFileError(out, "exists and is not a directory")
    holds_run = any((out / name).exists() for name in ("config.yaml", "last.pt", "last.prev.pt"))
    if resume and not holds_run:
        raise PceaFileError(out, "no run to resume here (no config.yaml or last.pt)")
    if holds_run and not resume and not force:
        raise PceaFileError(out, f"already holds a run; continue it with --resume {out} "
                                 "or start over with --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PceaFileError(out, f"run directory is not writable: {err.strerror or err}") from None
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise PceaFileError(out, f"only {free / 1e6:.0f} MB free, a run needs about "
                                 f"{needed_bytes / 1e6:.0f} MB for its checkpoints")
    if force and not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    for name in RUN_FILES:  # temporary files of a process that was killed while writing
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    return out


def write_curves(history: list[dict], path: Path) -> bool:
    """Plot loss, accuracies and learning rate per epoch to a PNG, atomically.

    Returns:
        False when matplotlib is not installed (the ``plot`` extra), else True.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    ax_loss.set_title("loss")
    for key, label in [("train_acc", "train accuracy"), ("val_oa", "val OA"), ("val_macc", "val mAcc"),
                       ("test_oa", "test OA"), ("test_macc", "test mAcc")]:
        values = [row.get(key) for row in history]
        if any(v is not None and not math.isnan(v) for v in values):
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in values], label=label)
    ax_acc.set_title("accuracy (%)")
    ax_lr.plot(epochs, [row["lr"] for row in history])
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
    return True

