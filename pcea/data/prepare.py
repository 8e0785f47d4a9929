"""Convert a Princeton-layout ModelNet40 into the h5 layout training reads fast.

``pcea prepare modelnet40 --src ModelNet40/ --out DIR`` reads every shape file of
``<class>/{train,test}/`` once, in parallel over all cores: meshes are sampled (2048
points by area, with face normals), point files (the ``.npy``, ``.ply``, ``.txt``, ``.pcd``
conversions) subsampled (without normals; ``--points`` at most what each file holds);
all are normalised to the unit sphere and turned from the source's up axis (z, as the
Princeton release; ``--up y`` for a y-up copy) into pcea's y-up frame, the frame the h5
layout declares. It writes the ``modelnet40_ply_hdf5_2048`` layout that
:class:`pcea.data.ModelNet40H5` reads: ``ply_data_{train,test}{k}.h5`` with ``data``,
``label`` and, from meshes, ``normal``; ``shape_names.txt`` (sorted class directories,
the label order) and ``{train,test}_files.txt``. A split the source lacks (a copy with
only ``train/`` folders) is left out, and said so.

It is built for a 12,311-file run that may be interrupted or meet a broken file:

* each sampled shape is kept in ``DIR/.prepare-work/`` as soon as it is done, so
  running the same command again continues where the last run stopped;
* a mesh that cannot be read is skipped, listed at the end and in ``DIR/skipped.txt``;
* every output file is written to a temporary name and renamed, so ``DIR`` never
  holds a half-written h5 file; the work directory is removed once all are written.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pcea.atomic import replacing, write_atomic
from pcea.data.modelnet import (
    SPLITS,
    ModelNet40Princeton,
    detect_layout,
    mesh_classes,
    mesh_seed,
    shape_files,
)
from pcea.errors import MissingSplitError, PceaError, PceaFileError, PceaWarning, check_positive_int
from pcea.io import MESH_EXTENSIONS, load_points

__all__ = ["PrepareReport", "prepare_modelnet40"]

SHAPES_PER_FILE = 2048  # as in the original release: ply_data_train0..4.h5, ply_data_test0..1.h5


@dataclass
class PrepareReport:
    """What :func:`prepare_modelnet40` did."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)       # split -> shapes written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (mesh relative to src, problem)
    reused: int = 0                                             # shapes sampled by an earlier run


def prepare_modelnet40(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    points: int = 2048,
    workers: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    up: str | None = None,
) -> PrepareReport:
    """Sample every shape of a Princeton-layout ModelNet40 (or 10) into the h5 layout.

    Args:
        src: the directory holding ``<class>/{train,test}/<shape>.<ext>`` (meshes or point files).
        out: the output directory (created if missing).
        points: points per shape.
        workers: processes (default: all cores); 1 runs in this process.
        seed: sampling seed; each mesh's seed also depends on its file name.
        progress: a tqdm bar (default: when stderr is a terminal; otherwise plain
            log lines every 10%).
        log: where progress lines and the summary go (default: stderr).
        up: the source's up axis, "z" (the Princeton release's, the default) or "y".

    Returns:
        A :class:`PrepareReport` with the shapes written per split and those skipped.

    Raises:
        PceaError: ``src`` is not a mesh layout, ``out`` cannot be written, or no
            mesh at all could be read.
    """
    src, out = Path(src), Path(out)
    check_positive_int("points", points)
    if detect_layout(src) != "mesh":
        raise PceaFileError(src, "not the Princeton layout (expected <class>/train/<class>_0001.off, or "
                                 "one .npy/.ply/.txt/.pcd point file per shape, and <class>/test/...)")
    up = up or ModelNet40Princeton.UP
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    class_names = mesh_classes(src)
    work = out / ".prepare-work" / f"points{points}_seed{seed}_up{up}"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaFileError(out, f"cannot create the output directory ({err.strerror or err})") from None

    tasks, by_split, listed = [], {}, {}
    for split in SPLITS:
        try:
            listed[split] = shape_files(src, split, class_names)
        except MissingSplitError as err:
            log(f"prepare: {err}; writing the other split only")
    files = [path for split_files in listed.values() for path, _ in split_files]
    # Normals come from mesh faces; point files have none, so a layout of point files gets no
    # 'normal' dataset (and the h5 files of one run never mix clouds with and without them).
    normals = bool(files) and all(path.suffix.lower() in MESH_EXTENSIONS and path.suffix.lower() != ".ply"
                                  for path in files)
    for split, split_files in listed.items():
        entries = []
        for path, label in split_files:
            relative = path.relative_to(src).as_posix()
            cached = work / (relative[:-len(path.suffix)] + ".npy")
            entries.append((relative, cached, label))
            tasks.append((relative, str(path), str(cached), points, mesh_seed(path, src, seed), normals, up))
        by_split[split] = entries
    if not tasks:
        raise PceaFileError(src, "holds no shape files")

    _check_point_count(src, tasks)
    report = PrepareReport(out=out)
    try:
        problems = _sample_all(tasks, workers, progress, log, report)
        for split in by_split:
            done = [(cached, label) for relative, cached, label in by_split[split]
                    if relative not in problems]
            report.counts[split] = len(done)
            _write_split(out, split, done, len(class_names), normals)
        if sum(report.counts.values()) == 0:
            first = next(iter(problems.values()))
            raise PceaFileError(src, f"no shape could be read; the first problem: {first}")
        write_atomic(out / "shape_names.txt", "".join(f"{name}\n" for name in class_names))
        report.skipped = sorted(problems.items())
        if report.skipped:
            lines = [f"{relative}\t{problem}\n" for relative, problem in report.skipped]
            write_atomic(out / "skipped.txt", "".join(lines))
        elif (out / "skipped.txt").exists():
            (out / "skipped.txt").unlink()
    except OSError as err:  # a full disk, in a worker's work file or in an h5 file (h5py raises OSError too)
        reason = err.strerror or (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PceaFileError(out, f"cannot write ({reason}); the shapes sampled so far are kept, free some "
                                 "space and run the same command to continue") from None
    shutil.rmtree(out / ".prepare-work", ignore_errors=True)

    summary = ", ".join(f"{count} {split}" for split, count in report.counts.items())
    log(f"prepare: wrote {summary} shapes ({len(class_names)} classes, {points} points) to {out}"
        + (f"; {report.reused} reused from an earlier run" if report.reused else ""))
    if report.skipped:
        log(f"prepare: skipped {len(report.skipped)} meshes (listed in {out / 'skipped.txt'}):")
        for relative, problem in report.skipped[:20]:
            log(f"  {relative}: {problem}")
        if len(report.skipped) > 20:
            log(f"  ... and {len(report.skipped) - 20} more")
    return report


def _check_point_count(src: Path, tasks: list[tuple]) -> None:
    """Refuse a ``--points`` over what the release's point files hold before reading them all.

    The first, middle and last files are read here; when all of them hold too few points, every
    file very likely does (a release resamples its shapes to one count, e.g. 1,024), so a sweep
    would only list each file as skipped. One short file among good ones is skipped by the sweep
    as before. Meshes are sampled to any count, so a layout of meshes is not read twice.
    """
    short = []
    for index in sorted({0, len(tasks) // 2, len(tasks) - 1}):
        relative, path, _, points, seed, normals, up = tasks[index]
        if Path(path).suffix.lower() in MESH_EXTENSIONS and Path(path).suffix.lower() != ".ply":
            return
        _, problem = _read_shape(path, points, seed, normals, up)
        if problem is None or not problem.endswith("use a smaller --points"):
            return
        short.append(f"{relative}: {problem.split(';')[0]}")
    raise PceaFileError(src, f"--points {tasks[0][3]} is more than the files hold ({'; '.join(short)}); "
                             "use a smaller --points")


def _sample_one(task: tuple[str, str, str, int, int, bool, str]) -> tuple[str, str | None, bool]:
    """Sample one shape into its work file: ``(relative path, problem or None, reused)``."""
    relative, path, cached, points, seed, normals, up = task
    if os.path.exists(cached):
        return relative, None, True
    cloud, problem = _read_shape(path, points, seed, normals, up)
    if problem is not None:
        return relative, problem, False
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with replacing(cached) as temp, open(temp, "wb") as stream:
        np.save(stream, cloud)
    return relative, None, False


def _read_shape(path: str, points: int, seed: int, normals: bool, up: str
                ) -> tuple[np.ndarray | None, str | None]:
    """A shape file's cloud, (points, 3 or 6), or None and why it cannot be used."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PceaWarning)
            cloud = load_points(path, points, seed=seed, normals=normals, up=up)   # (points, 3 or 6)
        if caught:  # a point file with fewer points than asked for: repeated points, refuse instead
            what = str(caught[0].message).split(": ", 1)[-1].split(";")[0]  # "only 1,024 points, ..."
            return None, f"{what}; use a smaller --points"
    except PceaError as err:
        return None, err.problem if isinstance(err, PceaFileError) else str(err)
    except Exception as err:  # a bug on one odd file must not end a 12,311-file run
        return None, f"unexpected {type(err).__name__}: {err}"
    return cloud, None


def _ignore_interrupts() -> None:
    """In pool workers: Ctrl-C is the parent's to handle (it stops the pool), not theirs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _sample_all(tasks, workers, progress, log, report: PrepareReport) -> dict[str, str]:
    """Run :func:`_sample_one` over all tasks; returns {relative mesh path: problem}."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    if progress is None:
        progress = sys.stderr.isatty()
    problems: dict[str, str] = {}
    bar = tqdm(total=len(tasks), unit="shape", desc="prepare", disable=not progress)
    step = max(1, len(tasks) // 10)
    pool = None
    try:
        if workers > 1:
            # concurrent.futures, not multiprocessing.Pool: a worker killed (by the OOM killer, kill -9)
            # breaks the executor, which raises BrokenProcessPool; Pool would wait for its result for ever.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(),
                                       initializer=_ignore_interrupts)
            results = pool.map(_sample_one, tasks, chunksize=4)
        else:
            results = map(_sample_one, tasks)
        for done, (relative, problem, reused) in enumerate(results, start=1):
            report.reused += reused
            if problem is not None:
                problems[relative] = problem
            bar.update()
            if not progress and (done % step == 0 or done == len(tasks)):
                log(f"prepare: {done}/{len(tasks)} shapes ({100 * done // len(tasks)}%)")
    except KeyboardInterrupt:
        log("prepare: interrupted; the shapes done so far are kept, run the same command to continue")
        raise
    except BrokenProcessPool:
        raise PceaError("prepare: a worker process died (killed, or out of memory); the shapes done so far "
                        "are kept, run the same command to continue") from None
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # the workers finish the shape they hold
    return problems


def _write_split(out: Path, split: str, done: list[tuple[Path, int]], num_classes: int,
                 normals: bool = True) -> None:
    """Write one split's h5 files (SHAPES_PER_FILE shapes each) and its list file."""
    import h5py

    names = []
    label_type = np.uint8 if num_classes <= 256 else np.int32
    for part, start in enumerate(range(0, len(done), SHAPES_PER_FILE)):
        chunk = done[start:start + SHAPES_PER_FILE]
        clouds = np.stack([np.load(cached) for cached, _ in chunk])    # (n, points, 3 or 6)
        labels = np.array([[label] for _, label in chunk], dtype=label_type)  # (n, 1)
        name = f"ply_data_{split}{part}.h5"
        with replacing(out / name) as temp, h5py.File(temp, "w") as h5:  # the umask's mode, not 0600
            h5.create_dataset("data", data=clouds[:, :, :3])
            if normals:
                h5.create_dataset("normal", data=clouds[:, :, 3:6])
            h5.create_dataset("label", data=labels)
        names.append(name)
    for stale in out.glob(f"ply_data_{split}*.h5"):  # parts left by an earlier, larger run
        if stale.name not in names:
            stale.unlink()
    write_atomic(out / f"{split}_files.txt", "".join(f"{name}\n" for name in names))
