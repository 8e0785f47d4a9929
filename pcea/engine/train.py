"""The training loop behind ``pcea train``: data, optimiser, selection, checkpoints, resume.

What one run writes is listed in :mod:`pcea.engine.rundir`; the data of a run
(validation split, augmentation) is :mod:`pcea.engine.splits`, and
``--seeds`` sweeps are :mod:`pcea.engine.seeds` (which calls :func:`train`; the
command line, :mod:`pcea.cli`, picks one or the other).

Resuming is exact: every epoch's shuffling and augmentation depend only on
(seed, epoch, sample), and the checkpoint holds the optimiser, scheduler and
RNG states, so on the CPU an interrupted and resumed run ends with the same
weights as one that never stopped.

Reading order: :func:`pcea.engine.run.build_run` makes a :class:`~pcea.engine.run.Run`
(data, model, optimiser, schedule, the resumed state); :func:`train_one_epoch` and
:func:`evaluate_loader` are one pass each; :meth:`Trainer.run` is the loop over epochs,
from the checks before anything is written to ``results.json``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from pcea.atomic import write_atomic
from pcea.data.mixing import mix_batch
from pcea.engine.checkpoint import load_checkpoint, model_payload, previous_path, rng_state, save_checkpoint
from pcea.engine.config import TrainConfig
from pcea.engine.distributed import DistEnv, average_batchnorm_buffers, resolve_device
from pcea.engine.metrics import accuracy_from_counts
from pcea.engine.run import (
    Run,
    build_run,
    forward,
    init_weights,
    resume_config,
    train_transform,
    warmup_cosine,
)
from pcea.engine.rundir import (
    RunLock,
    best_problem,
    check_free_space,
    check_run_dir,
    is_complete,
    prepare_run_dir,
    rebuild_best,
    run_state,
    write_curves,
)
from pcea.engine.splits import epoch_seed
from pcea.errors import PceaError, PceaFileError

# build_run and its parts (init_weights, train_transform, warmup_cosine) live in pcea.engine.run;
# they are re-exported here, where callers of the training loop have imported them from.
__all__ = ["PROTOCOLS", "Run", "Trainer", "build_run", "evaluate_loader", "init_weights", "resume_config",
           "train", "train_one_epoch", "train_transform", "warmup_cosine"]

PROTOCOLS = {"val": "best on val", "test": "best on test", "last": "last epoch"}
def _format_pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after every step; a second SIGINT aborts."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# -- one epoch, one evaluation ---------------------------------------------------------------------


def train_one_epoch(run: Run, epoch: int, stop: _StopRequest) -> dict | None:
    """One pass over the training set, stepping the optimiser (and a per-step schedule).

    Returns:
        ``{"train_loss", "train_acc"}`` averaged over every rank, or None when a signal (or a
        killed DataLoader worker) stopped it mid-epoch.

    Raises:
        PceaError: a non-finite loss (on any rank: all stop at the same step).
    """
    from tqdm import tqdm

    env, device = run.env, run.device
    run.train_set.set_epoch(epoch)
    run.loader_generator.manual_seed(epoch_seed(run.stream_seed, epoch))
    if isinstance(run.train_loader.sampler, DistributedSampler):
        run.train_loader.sampler.set_epoch(epoch)
    run.net.train()
    wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    loss_sum = torch.zeros((), dtype=wide, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = torch.zeros((), dtype=torch.int64, device=device)
    steps = 0
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{run.config.epochs}", leave=False,
               disable=not (env.is_main and sys.stderr.isatty()), dynamic_ncols=True)
    try:
        for step, (points, labels) in enumerate(bar, start=1):
            points = points.to(device, non_blocking=True)  # (B, N, C)
            labels = labels.to(device, non_blocking=True)  # (B,)
            targets = labels  # --rsmix: (B, num_classes) mixed targets; train_acc still counts `labels`
            if run.config.rsmix > 0:
                points, targets = mix_batch(points, labels, run.num_classes, p=run.config.rsmix,
                                            stream=(run.stream_seed, epoch, env.rank, step))
            logits = forward(run, points)  # (B, num_classes)
            loss = run.criterion(logits.float(), targets)
            # One all-reduce per step tells every rank about a bad loss or a stop signal,
            # so that all of them stop at the same step instead of hanging.
            check = torch.stack([loss.detach().to(wide),
                                 torch.tensor(float(stop.signum is not None), dtype=wide, device=device)])
            env.sum_(check)
            loss_value, stop_flag = check.tolist()
            if not math.isfinite(loss_value):
                raise PceaError(
                    f"non-finite loss ({loss_value}) at epoch {epoch}, step {step}; training stopped, "
                    f"{run.out / 'last.pt'} keeps epoch {epoch - 1} (a lower --lr may help)"
                )
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            if run.ema is not None:
                run.ema.update_parameters(run.model)
            if run.step_schedule:
                run.scheduler.step()
            loss_sum += loss.detach().to(wide)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += labels.numel()
            steps += 1
            if env.is_main and bar.disable is False:
                bar.set_postfix(loss=f"{loss_value / env.world_size:.3f}")
            if stop_flag > 0:
                return None
    except RuntimeError as err:
        if stop.signum is not None:  # a DataLoader worker died from the same Ctrl-C
            return None
        if _worker_died(run, err):  # kill -9, the OOM killer: resumable as a stop
            return None
        raise
    finally:
        bar.close()
    totals = env.sum_(torch.stack([loss_sum, correct.to(wide), seen.to(wide),
                                   torch.tensor(float(steps), dtype=wide, device=device)]))
    loss_total, correct_total, seen_total, steps_total = totals.tolist()
    average_batchnorm_buffers(run.model, env)
    if run.ema is not None:
        average_batchnorm_buffers(run.ema.module, env)
    return {"train_loss": loss_total / max(steps_total, 1), "train_acc": correct_total / max(seen_total, 1)}


@torch.no_grad()
def _worker_died(run: Run, err: RuntimeError) -> bool:
    """Whether ``err`` is the DataLoader's report of a worker killed from outside (said in one line)."""
    if not str(err).startswith("DataLoader worker"):
        return False
    run.log(f"a data-loading worker died: {str(err).strip()}")
    return True


def evaluate_loader(run: Run, loader: DataLoader) -> tuple[float, float] | None:
    """(OA, mAcc) of the run's current weights on a loader's split, exact across ranks; None when
    a DataLoader worker was killed during the pass (the caller stops the run resumably)."""
    run.net.eval()
    # Under DDP, evaluate the unwrapped module: the DDP wrapper may broadcast buffers on a
    # forward, a collective that ranks with different numbers of batches would not match.
    # With --ema, the average (never wrapped) is what is evaluated.
    net = run.eval_model if run.env.enabled or run.ema is not None else None
    correct = torch.zeros(run.num_classes, dtype=torch.int64, device=run.device)
    total = torch.zeros(run.num_classes, dtype=torch.int64, device=run.device)
    try:
        for points, labels in loader:
            labels = labels.to(run.device)
            predictions = forward(run, points.to(run.device), net).argmax(dim=1)  # (B,)
            total += torch.bincount(labels, minlength=run.num_classes)
            correct += torch.bincount(labels[predictions == labels], minlength=run.num_classes)
    except RuntimeError as err:
        if _worker_died(run, err):
            return None
        raise
    run.env.sum_(correct)
    run.env.sum_(total)
    return accuracy_from_counts(correct.cpu().numpy(), total.cpu().numpy())


def _final_scores(run: Run, loader: DataLoader) -> tuple[float, float]:
    """The end of run's test figures; a killed worker is one line, and --resume evaluates again."""
    scores = evaluate_loader(run, loader)
    if scores is None:
        raise PceaError(f"the final test evaluation stopped; the weights are saved, continue with: "
                        f"pcea train --resume {run.out}")
    return scores


def _check_finite_weights(run: Run, epoch: int) -> None:
    """Stop like a non-finite loss when a weight or running statistic is NaN or infinite, so
    that no checkpoint holds one (an overflowing step can leave the loss finite)."""
    for name, tensor in run.model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PceaError(f"non-finite weights ({name}) after epoch {epoch}; training stopped, "
                            f"{run.out / 'last.pt'} keeps epoch {epoch - 1} (a lower --lr may help)")


def _epoch_line(run: Run, row: dict, improved: bool) -> str:
    parts = [f"epoch {row['epoch']:>3}/{run.config.epochs}", f"lr {row['lr']:.5f}",
             f"loss {row['train_loss']:.4f}", f"train {_format_pct(row['train_acc'])}"]
    if "val_oa" in row:
        parts.append(f"val OA {_format_pct(row['val_oa'])} mAcc {_format_pct(row['val_macc'])}")
    if "test_oa" in row:
        parts.append(f"test OA {_format_pct(row['test_oa'])} mAcc {_format_pct(row['test_macc'])}")
    parts.append(f"{row['time_s']:.1f}s")
    return "  ".join(parts) + ("  *" if improved and run.config.select_on != "last" else "")


# -- the run directory's files ----------------------------------------------------------------------


def _payload(run: Run, epoch: int, protocol: str) -> dict:
    return {
        # What open_checkpoint reads: with --ema the average, and the weights being trained beside it.
        **model_payload(run.eval_model, model_name=run.config.model),
        **({} if run.ema is None else {"train_model": run.model.state_dict(),
                                       "ema_updates": int(run.ema.n_averaged)}),
        "train_config": run.config.to_dict(),
        "epoch": epoch,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(run.loader_generator),
        "stream_seed": run.stream_seed,
        "metrics": {"history": run.history, "best": run.best, "last": run.history[-1] if run.history else {}},
        "protocol": protocol,
    }


def _checkpoint_bytes(run: Run) -> int:
    """About the size of one checkpoint: weights and statistics, optimiser moments, history."""
    state = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in run.model.parameters())
    moments = 2 if run.config.optimizer == "adamw" else 1
    return (1 if run.ema is None else 2) * state + moments * params + 2**18


def _write_epoch_files(run: Run, epoch: int, improved: bool) -> None:
    if not run.env.is_main:
        return
    payload = _payload(run, epoch, "last epoch")
    if improved:
        save_checkpoint(run.out / "best.pt", {**payload, "protocol": PROTOCOLS[run.config.select_on]})
    save_checkpoint(run.out / "last.pt", payload, keep_previous=True)
    write_atomic(run.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in run.history))
    # Drawing takes about half a second: refresh the plot at most every 30 s, and at the end.
    if epoch == run.config.epochs or time.time() - run.curves_written >= 30:
        _write_curves(run)


def _write_curves(run: Run) -> None:
    if not run.env.is_main or not run.history:
        return
    key = {"val": "val_oa", "test": "test_oa"}.get(run.config.select_on)
    run.curves_ok = write_curves(run.history, run.out / "curves.png",
                                 selected_epoch=run.best["epoch"], selected_key=key)
    if not run.curves_ok:
        run.log("note: matplotlib is not installed, so no curves.png (pip install 'pcea[plot]')")
    run.curves_written = time.time()


def _written(run: Run) -> str:
    """The files this session wrote, for the last line of a run."""
    names = [name for name in ("results.json", "best.pt", "last.pt", "metrics.jsonl")
             if (run.out / name).exists()]
    return ", ".join(names + (["curves.png"] if run.curves_ok else []))


def _check_best(run: Run) -> None:
    """On resume, with the directory locked: does best.pt still hold the best epoch so far?"""
    epoch = run.best["epoch"]
    if epoch is not None and run.env.is_main:
        problem = best_problem(run.out, epoch)
        if problem and _repair_best(run.out, run.config, epoch, problem, run.log) is None:
            # best.pt is damaged, or newer than the checkpoint we fell back to: choose again.
            run.log(f"warning: {problem}; the weights of epoch {epoch} (the best so far) "
                    "cannot be recovered, so the best epoch is selected again from here")
            run.best = {"epoch": None, "score": -math.inf}
    run.best = run.env.broadcast_object(run.best)


def _repair_best(out: Path, config: TrainConfig, epoch: int, problem: str,
                 log: Callable[[str], None]) -> Path | None:
    """:func:`pcea.engine.rundir.rebuild_best`, saying so when it could."""
    source = rebuild_best(out, epoch, PROTOCOLS[config.select_on])
    if source is not None:
        log(f"warning: {problem}; rebuilt best.pt from {source}, which holds the same epoch {epoch}: "
            "nothing is lost")
    return source


# -- one run, start to end ----------------------------------------------------------------------------


def _on_main_for_all(env: DistEnv, check: Callable[[], object]) -> None:
    """Run a check on rank 0 only; if it fails, every rank raises, so none waits forever."""
    problem = None
    if env.is_main:
        try:
            check()
        except PceaError as err:
            problem = err
    shared = env.broadcast_object(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if shared is not None:
        raise PceaError(shared)


class Trainer:
    """One training run. ``Trainer(config, out).run()`` trains and returns the results dict.

    Args:
        config: the recipe; ignored when resuming (the run's own config is used,
            with only its runtime options, :data:`pcea.engine.config.RUNTIME_KEYS`,
            taken from ``overrides``).
        out: the run directory.
        resume: continue the run in ``out`` from ``last.pt`` (or ``last.prev.pt``).
        force: start over in a directory that already holds a run.
        overrides: with ``resume``, runtime options to change.
        log: where progress lines go (rank 0 only).
        stop_after: stop (as if interrupted) after this many completed epochs;
            used by the resume tests.
        max_time: seconds this process may train: before each epoch, the run stops resumably
            when one more epoch, as long as the slowest of the last three recorded (:func:`out_of_time`),
            would end past it; a run with no epoch recorded yet trains its first epoch regardless.
    """

    def __init__(self, config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False,
                 force: bool = False, overrides: dict | None = None,
                 log: Callable[[str], None] = print, stop_after: int | None = None,
                 max_time: float | None = None):
        if max_time is not None and (isinstance(max_time, bool) or not isinstance(max_time, int | float)
                                     or not 0 < max_time < math.inf):
            raise PceaError(f"max_time={max_time!r}: expected a positive number of seconds")
        self.env = DistEnv.from_env()
        self.out = Path(out)
        self.resume = resume
        self.force = force
        self.stop_after = stop_after
        self.max_time = max_time
        self.log: Callable[[str], None] = log if self.env.is_main else (lambda message: None)
        self.resume_payload: dict | None = None
        self.resume_path: Path | None = None
        if resume:
            config, self.resume_payload, self.resume_path = resume_config(self.out, overrides or {}, self.log)
        elif config is None:
            raise PceaError("no config given")
        self.config: TrainConfig = config
        self.lock: RunLock | None = None
        self.state: Run | None = None  # built by run()

    @property
    def model(self) -> nn.Module:
        """The model being trained (after :meth:`run` has built it)."""
        return self.state.model

    @property
    def amp(self) -> bool:
        """Whether the run trains under bf16 autocast (after :meth:`run` has built it)."""
        return self.state.amp

    def run(self) -> dict:
        """Train, select, evaluate on test once, and write the run directory.

        Returns:
            The results dict (also written to ``results.json``); with
            ``"interrupted": True`` when a signal, ``stop_after`` or ``max_time`` ended it early
            (``"out_of_time": True`` for the last).
        """
        self.began = time.monotonic()  # what max_time counts from
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
            self.env.close()

    def _run(self) -> dict:
        config, env, out = self.config, self.env, self.out
        device = resolve_device(config.device, env)
        env.init(device)
        # Everything is checked before anything is created: the directory (read-only), the data
        # and the model (build_run), and only then the directory is created and locked.
        _on_main_for_all(env, lambda: check_run_dir(out, resume=self.resume, force=self.force))
        if self.resume_payload is not None and is_complete(out, self.resume_payload["epoch"], config.epochs):
            return self._complete()
        unstarted = not self.resume and run_state(out) == "unstarted"
        run = self.state = build_run(config, out, env, device, self.log, resume=self.resume_payload,
                                     resume_path=self.resume_path)
        _on_main_for_all(env, self._lock_run_dir)
        _on_main_for_all(env, lambda: check_free_space(out, _checkpoint_bytes(run)))
        if self.resume_payload is not None:
            _check_best(run)
        if unstarted:
            self.log(f"note: {out} holds a run stopped before its first checkpoint; starting it again")
        if env.is_main:
            write_atomic(out / "config.yaml", config.dump_yaml())
            if not self.resume:
                self.log(f"config ({out / 'config.yaml'}; settings not listed are PCT's defaults):\n  "
                         + config.summary().replace("\n", "\n  "))
        n_params = sum(p.numel() for p in run.model.parameters())
        self.log(f"run {out}: model {config.model} ({n_params:,} parameters), "
                 f"{len(run.train_set)} train / {len(run.val_set) if run.val_set else 0} val / "
                 f"{len(run.test_set) if run.test_set else 0} test clouds, {run.num_classes} classes, "
                 f"device {device}" + (f" x {env.world_size} processes" if env.enabled else ""))
        if run.start_epoch == 0 and env.is_main:
            # An epoch-0 checkpoint, so that a run stopped during its first epoch can be resumed.
            save_checkpoint(out / "last.pt", _payload(run, 0, "last epoch"), keep_previous=True)
        started = run.curves_written = time.time()
        with _StopRequest() as stop:
            for epoch in range(run.start_epoch + 1, config.epochs + 1):
                elapsed = time.monotonic() - self.began
                # one decision for every rank: their clocks differ by a little
                if env.broadcast_object(out_of_time(run.history, elapsed, self.max_time)):
                    return _interrupted(run, epoch - 1, None, finished=True, max_time=self.max_time)
                t0 = time.time()
                lr = run.optimizer.param_groups[0]["lr"]
                train_metrics = train_one_epoch(run, epoch, stop)
                if train_metrics is None:
                    return _interrupted(run, epoch, stop.signum, finished=False)
                _check_finite_weights(run, epoch)
                if not run.step_schedule:
                    run.scheduler.step()
                row = {"epoch": epoch, "lr": lr, **train_metrics}
                for split, loader in (("val", run.val_loader), ("test", run.test_loader)):
                    if loader is None or (split == "test" and config.select_on != "test"):
                        continue
                    scores = evaluate_loader(run, loader)
                    if scores is None:  # a killed worker: this epoch is redone on resume
                        return _interrupted(run, epoch, stop.signum, finished=False)
                    row[f"{split}_oa"], row[f"{split}_macc"] = scores
                row["time_s"] = round(time.time() - t0, 3)
                run.history.append(row)
                if config.select_on == "last":
                    score, improved = epoch, epoch == config.epochs  # best.pt is written once, at the end
                else:
                    score = row["val_oa"] if config.select_on == "val" else row["test_oa"]
                    improved = score > run.best["score"]
                if improved:
                    run.best = {"epoch": epoch, "score": score}
                _write_epoch_files(run, epoch, improved)
                self.log(_epoch_line(run, row, improved))
                if epoch == run.start_epoch + 1 < config.epochs:  # this process's first epoch: an estimate
                    left = row["time_s"] * (config.epochs - epoch)
                    self.log(f"about {left / 60:.0f} min for the remaining {config.epochs - epoch} epochs "
                             f"(ETA {time.strftime('%H:%M', time.localtime(time.time() + left))})")
                # A signal that came after the last step's all-reduce: agree on it across ranks.
                stop_now = env.sum_(torch.tensor([float(stop.signum is not None)], device=device))
                if stop_now.item() > 0 and epoch < config.epochs:
                    return _interrupted(run, epoch, stop.signum, finished=True)
                if self.stop_after is not None and self.stop_after <= epoch < config.epochs:
                    return _interrupted(run, epoch, None, finished=True)
        return _finish(run, time.time() - started)

    def _lock_run_dir(self) -> None:
        self.lock = prepare_run_dir(self.out, resume=self.resume, force=self.force)

    def _complete(self) -> dict:
        """``--resume`` of a finished run: say so and leave its files alone; a damaged best.pt is
        rebuilt when another checkpoint holds its epoch, else reported with what is left."""
        out, config, payload = self.out, self.config, self.resume_payload
        results = json.loads((out / "results.json").read_text())
        epochs = config.epochs
        best_epoch = epochs if config.select_on == "last" else payload["metrics"]["best"]["epoch"]
        problem = best_problem(out, best_epoch) if best_epoch is not None and self.env.is_main else None
        if problem:
            self._lock_run_dir()  # about to write best.pt: no other run may be in the directory
            if _repair_best(out, config, best_epoch, problem, self.log) is None:
                prev = previous_path(out / "last.pt")
                raise PceaFileError(out / "best.pt", (
                    f"damaged ({problem.removeprefix(str(out / 'best.pt') + ': ')}). The weights of the "
                    f"selected epoch {best_epoch} ({PROTOCOLS[config.select_on]}) cannot be recovered: "
                    f"last.pt holds epoch {payload['epoch']}"
                    + (f" and {prev.name} the one before" if prev.exists() else "")
                    + ". Intact: last.pt (the last epoch's weights), metrics.jsonl, and results.json with "
                    f"the test figures measured on best.pt before the damage. Use {out / 'last.pt'}, or "
                    f"retrain with --force"))
        self.log(f"{out} is complete ({epochs}/{epochs} epochs; results in "
                 f"{out / 'results.json'}); nothing to do. A finished run cannot be extended "
                 f"(its learning-rate schedule ends at epoch {epochs}): train a new run with more --epochs")
        return results


def out_of_time(history: list[dict], elapsed: float, max_time: float | None) -> bool:
    """Whether one more epoch, as long as the slowest of the last three in ``history`` (their
    ``time_s``, training and validation), would end more than ``max_time`` seconds after the start;
    False without a limit or a recorded epoch."""
    if max_time is None or not history:
        return False
    return elapsed + max(row["time_s"] for row in history[-3:]) > max_time


def _interrupted(run: Run, epoch: int, signum: int | None, *, finished: bool,
                 max_time: float | None = None) -> dict:
    """Log how the run stopped and how to go on; the result :meth:`Trainer.run` returns for it
    (``max_time``: the limit that stopped it, if that is what did)."""
    done = epoch if finished else epoch - 1
    _write_curves(run)
    why = f"stopped by {signal.Signals(signum).name}" if signum else "stopped"
    if max_time is not None:
        why = f"stopped by --max-time {max_time:g} s (the next epoch would end past it)"
    when = f"after epoch {epoch}" if finished else f"during epoch {epoch}"
    run.log(f"{why} {when}; {run.out / 'last.pt'} holds epoch {done}. "
            f"Continue with: pcea train --resume {run.out}")
    result = {"interrupted": True, "signal": signal.Signals(signum).name if signum else None,
              "epochs_completed": done}
    return result | ({"out_of_time": True} if max_time is not None else {})


def _finish(run: Run, seconds: float) -> dict:
    """Evaluate on test (the last epoch, then best.pt's) and write results.json."""
    config, env, out = run.config, run.env, run.out
    # Every rank returns the results rank 0 writes: its wall time too, which differs by
    # a few tenths of a second from the other ranks' own.
    seconds = env.broadcast_object(round(seconds, 1))
    results: dict = {"run": str(out), "model": config.model, "data": config.data,
                     "seed": config.seed, "epochs": config.epochs, "select_on": config.select_on,
                     "num_test": len(run.test_set) if run.test_set else 0, "class_names": run.class_names,
                     "train_seconds_this_session": seconds, "test": []}
    best_row = run.history[run.best["epoch"] - 1] if run.best["epoch"] is not None else {}
    if "val_oa" in best_row:
        results["val"] = {"protocol": PROTOCOLS[config.select_on], "epoch": run.best["epoch"],
                          "oa": best_row["val_oa"], "macc": best_row["val_macc"]}
    if run.test_loader is None:
        if env.is_main:
            write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
            if "val" in results:
                val = results["val"]
                run.log(f"val ({val['protocol']}, epoch {val['epoch']}): OA {_format_pct(val['oa'])}  "
                        f"mAcc {_format_pct(val['macc'])}  (no test split in the data)")
            run.log(f"wrote {out}: {_written(run)}")
        env.barrier()
        return results
    last_oa, last_macc = _final_scores(run, run.test_loader)
    results["test"].append({"protocol": "last epoch", "epoch": config.epochs,
                            "oa": last_oa, "macc": last_macc})
    if config.select_on != "last" and run.best["epoch"] is not None:
        env.barrier()
        best = load_checkpoint(out / "best.pt", map_location=run.device)
        run.eval_model.load_state_dict(best["model"])
        oa, macc = _final_scores(run, run.test_loader)
        entry = {"protocol": PROTOCOLS[config.select_on], "epoch": best["epoch"], "oa": oa, "macc": macc}
        row = run.history[best["epoch"] - 1]
        if "val_oa" in row:
            entry.update(val_oa=row["val_oa"], val_macc=row["val_macc"])
        results["test"].append(entry)
    if env.is_main:
        write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        for entry in results["test"]:
            run.log(f"test ({entry['protocol']}, epoch {entry['epoch']}): "
                    f"OA {_format_pct(entry['oa'])}  mAcc {_format_pct(entry['macc'])}")
        run.log(f"wrote {out}: {_written(run)}")
    env.barrier()  # all ranks leave together, so none tears the process group down early
    return results


def train(config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False, force: bool = False,
          overrides: dict | None = None, log: Callable[[str], None] = print,
          stop_after: int | None = None, max_time: float | None = None) -> dict:
    """Run one training (see :class:`Trainer`); returns the results dict."""
    return Trainer(config, out, resume=resume, force=force, overrides=overrides, log=log,
                   stop_after=stop_after, max_time=max_time).run()
