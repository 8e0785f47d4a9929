"""The run directory of ``pcea train``: what it holds, preparing it, and its curves plot.

One run writes into its directory::

    config.yaml     the resolved TrainConfig
    metrics.jsonl   one JSON line per completed epoch
    curves.png      loss, accuracies and learning rate per epoch, the selected epoch marked
    last.pt         the last completed epoch (last.prev.pt: the one before)
    best.pt         the epoch chosen by ``select_on`` (validation OA by default)
    results.json    test figures at the end, each labelled with its protocol
    .lock           while a run is going: who holds the directory (:class:`RunLock`)

Killed writers leave ``.NAME.*.tmp`` files; the next start removes them. The checks that
protect these files live here too: the lock, the free space, whether ``best.pt`` still holds
the selected epoch (and its repair from ``last.pt``), and whether a run is complete.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pcea.atomic import remove_stale_temporaries, temporary_pattern, write_atomic
from pcea.engine.checkpoint import MODEL_KEYS, RESUME_KEYS, load_checkpoint, previous_path, save_checkpoint
from pcea.errors import PceaFileError
from pcea.lock import HolderLock, Timeout

__all__ = ["LOCK_FILE", "RUN_FILES", "RunLock", "best_problem", "check_free_space", "check_run_dir",
           "clean_stale_temporaries", "curves_figure", "is_complete", "prepare_run_dir", "rebuild_best",
           "run_state", "write_curves"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "last.prev.pt", "best.pt",
             "results.json")
LOCK_FILE = ".lock"
# Files of a run that mean it completed at least one epoch (or its first checkpoint).
_PROGRESS_FILES = ("last.pt", "last.prev.pt", "best.pt", "metrics.jsonl", "results.json")


def run_state(out: str | os.PathLike) -> str:
    """What a directory holds: "none" (no run), "unstarted" (a config.yaml but no
    checkpoint or metrics: the run was stopped before its first checkpoint was written)
    or "run"."""
    out = Path(out)
    if any((out / name).exists() for name in _PROGRESS_FILES):
        return "run"
    return "unstarted" if (out / "config.yaml").exists() else "none"


def check_run_dir(out: str | os.PathLike, *, resume: bool = False, force: bool = False,
                  clean: bool = True) -> str:
    """The checks of :func:`prepare_run_dir` that create nothing, so that they can run before
    the rest of a run is validated; returns :func:`run_state`.

    Stale temporary files of killed writers are removed here too, so that they go on the
    next start whatever that start then does (unless ``clean`` is False: the caller holds
    the lock and cleans).

    Raises:
        PceaFileError: ``out`` is not a directory, another process is running in it (naming
            it), it holds a run (without resume/force), or it holds nothing to resume.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PceaFileError(out, "exists and is not a directory")
    if out.is_dir() and clean:
        try:
            lock = RunLock(out).acquire()  # a live run in the directory: its holder is named
        except OSError:
            pass  # read-only: nothing to clean
        else:
            try:
                clean_stale_temporaries(out)
            finally:
                lock.release()
    state = run_state(out)
    if resume and state == "none":
        raise PceaFileError(out, "no run to resume here (no config.yaml or last.pt)")
    if state == "run" and not resume and not force:
        raise PceaFileError(out, f"already holds a run; continue it with --resume {out} "
                                 "or start over with --force")
    return state


class RunLock:
    """The advisory lock on ``RUN/.lock``, held for the life of one run (:class:`pcea.lock.HolderLock`).

    A second ``pcea train`` into the same directory is refused at once, naming the holder
    (pid, host, start time). The kernel drops the lock however its holder ends, so a killed
    run never leaves a stale lock; the file itself is removed on :meth:`release`.
    """

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / LOCK_FILE
        self._lock = HolderLock(self.path)

    def acquire(self) -> RunLock:
        """Take the lock, or raise a :class:`PceaFileError` naming the process that holds it."""
        try:
            self._lock.acquire(wait=False)
        except Timeout:
            raise PceaFileError(self.path.parent, f"another pcea train is using this run directory "
                                                  f"({self._lock.holder()}); wait for it to end, or use "
                                                  "another --out") from None
        return self

    def release(self) -> None:
        """Remove the lock file and unlock (nothing if not held)."""
        self._lock.release()


def clean_stale_temporaries(out: Path) -> list[Path]:
    """Remove what killed writers of a run left: ``.NAME.*.tmp`` for every run file
    (including the ``last.prev.pt`` link) and the ``.write-test.*`` probes. Call it
    with the run's lock held, so that no live writer's file is removed."""
    patterns = [temporary_pattern(name) for name in RUN_FILES] + [".write-test.*"]
    return remove_stale_temporaries(out, patterns, lock_held=True)


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False, force: bool = False) -> RunLock:
    """Create the run directory, lock it, and make sure a run can write there, before any training.

    Args:
        out: the run directory.
        resume: the directory holds a run to continue.
        force: start over in a directory that already holds a run.

    Returns:
        The directory's :class:`RunLock`, held; release it when the run ends.

    Raises:
        PceaError: another process holds the lock (naming it), it already holds a run
            (without resume/force), or it is not writable.
    """
    out = Path(out)
    check_run_dir(out, resume=resume, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaFileError(out, f"run directory is not writable: {err.strerror or err}") from None
    try:
        lock = RunLock(out).acquire()
    except OSError as err:
        raise PceaFileError(out, f"run directory is not writable: {err.strerror or err}") from None
    try:
        clean_stale_temporaries(out)
        check_run_dir(out, resume=resume, force=force, clean=False)  # again: a run may have ended meanwhile
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        lock.release()
        raise PceaFileError(out, f"run directory is not writable: {err.strerror or err}") from None
    except BaseException:
        lock.release()
        raise
    if force and not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    return lock


def check_free_space(out: str | os.PathLike, checkpoint_bytes: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints (last, last.prev, best, a temp).

    The checkpoints a resumed run already holds are replaced, not added to: their space counts.

    Args:
        out: the run directory (it exists).
        checkpoint_bytes: about the size of one checkpoint of this run.

    Raises:
        PceaFileError: naming the free and the needed space.
    """
    out = Path(out)
    total = 4 * checkpoint_bytes  # four files at a time
    held, seen = 0, set()
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        try:
            info = (out / name).stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) not in seen:  # last.prev.pt may be a hard link to last.pt
            seen.add((info.st_dev, info.st_ino))
            held += info.st_size
    needed = max(total - held, checkpoint_bytes)  # a new file is always written next to the old one
    free = shutil.disk_usage(out).free
    if free < needed:
        reused = f" ({held / 1e6:.1f} MB of its {total / 1e6:.1f} MB are already there)" if held else ""
        raise PceaFileError(out, f"only {free / 1e6:.1f} MB free, the checkpoints of this run "
                                 f"need about {needed / 1e6:.1f} MB more{reused}")


def is_complete(out: str | os.PathLike, last_epoch: int, epochs: int) -> bool:
    """Whether a run whose ``last.pt`` holds ``last_epoch`` of ``epochs`` is finished: every epoch
    trained and ``results.json`` written (its final evaluation done)."""
    if last_epoch < epochs:
        return False
    try:
        return isinstance(json.loads((Path(out) / "results.json").read_text()), dict)
    except (OSError, ValueError):
        return False  # finished training, but not its final evaluation


def best_problem(out: str | os.PathLike, epoch: int) -> str | None:
    """Why ``best.pt`` does not hold the selected ``epoch``, or None when it does."""
    best = Path(out) / "best.pt"
    try:
        found = load_checkpoint(best, require=MODEL_KEYS)["epoch"]
    except PceaFileError as err:
        return str(err)
    return None if found == epoch else f"{best} holds epoch {found}, not {epoch}"


def rebuild_best(out: str | os.PathLike, epoch: int, protocol: str) -> Path | None:
    """Rewrite ``best.pt`` from ``last.pt`` or ``last.prev.pt`` when one holds ``epoch``.

    Args:
        out: the run directory, locked by the caller.
        epoch: the selected epoch.
        protocol: the selection's label stored in ``best.pt`` ("best on val", ...).

    Returns:
        The checkpoint it was rebuilt from, or None when neither holds ``epoch``.
    """
    last = Path(out) / "last.pt"
    for candidate in (last, previous_path(last)):
        try:
            payload = load_checkpoint(candidate, require=RESUME_KEYS)
        except PceaFileError:
            continue
        if payload["epoch"] == epoch:
            save_checkpoint(Path(out) / "best.pt", {**payload, "protocol": protocol})
            return candidate
    return None


# (key, label, colour, line style, marker): OA solid and thick, mAcc dashed and thin with other
# markers, so the two stay distinguishable when they coincide (they do on a balanced split).
_ACCURACY_LINES = [("train_acc", "train accuracy", "C0", "-", None),
                   ("val_oa", "val OA", "C1", "-", "o"), ("val_macc", "val mAcc", "C3", "--", "x"),
                   ("test_oa", "test OA", "C2", "-", "o"), ("test_macc", "test mAcc", "C4", "--", "x")]
_LABELS = {key: label for key, label, *_ in _ACCURACY_LINES}


def curves_figure(history: list[dict], *, selected_epoch: int | None = None, selected_key: str | None = None):
    """The figure of :func:`write_curves` (a matplotlib ``Figure``; needs the ``plot`` extra).

    Args:
        history: the rows of ``metrics.jsonl``.
        selected_epoch: the epoch ``best.pt`` holds, marked on every panel.
        selected_key: the accuracy it was selected on (e.g. "val_oa"), starred at that epoch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    dot = "o" if len(epochs) == 1 else "."  # after one epoch a curve is one point: a line cannot show it
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train loss", marker=dot)
    ax_loss.set_title("loss")
    for key, label, color, style, marker in _ACCURACY_LINES:
        values = [row.get(key) for row in history]
        if any(v is not None and not math.isnan(v) for v in values):
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in values], label=label, color=color,
                        linestyle=style, marker=marker or dot, linewidth=2.4 if style == "-" else 1.3,
                        markersize=5, zorder=3 if style == "--" else 2)
    ax_acc.set_title("accuracy (%)")
    ax_lr.plot(epochs, [row["lr"] for row in history], marker=dot)
    ax_lr.set_title("learning rate (each epoch's first step)")  # per-step schedules move within an epoch
    if selected_epoch is not None:
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.axvline(selected_epoch, color="0.4", linestyle=":", linewidth=1.2,
                       label=f"selected: epoch {selected_epoch}" if ax is ax_acc else None)
        row = next((r for r in history if r["epoch"] == selected_epoch), {})
        if selected_key and row.get(selected_key) is not None:
            ax_acc.plot([selected_epoch], [100 * row[selected_key]], marker="*", markersize=15, color="gold",
                        markeredgecolor="black", linestyle="none", zorder=4,
                        label=f"best.pt ({_LABELS.get(selected_key, selected_key)})")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        if epochs and max(epochs) - min(epochs) < 2:  # else matplotlib's 5 % margins tick 0.945, 0.960, ...
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    # Legends below their panels, never over the curves (in a short run "best" has no empty corner).
    for ax in (ax_loss, ax_acc):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8, frameon=False)
    return fig


def write_curves(history: list[dict], path: Path, *, selected_epoch: int | None = None,
                 selected_key: str | None = None) -> bool:
    """Plot loss, accuracies and learning rate per epoch to a PNG, atomically.

    Args:
        history: the rows of ``metrics.jsonl``.
        path: the PNG to write.
        selected_epoch, selected_key: see :func:`curves_figure`.

    Returns:
        False when matplotlib is not installed (the ``plot`` extra), else True.
    """
    try:
        fig = curves_figure(history, selected_epoch=selected_epoch, selected_key=selected_key)
    except ImportError:
        return False
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())
    return True
