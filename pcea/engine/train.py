"""The training loop behind ``pcea train``: data, optimiser, selection, checkpoints, resume.

What one run writes is listed in :mod:`pcea.engine.rundir`; the data of a run
(validation split, augmentation) is :mod:`pcea.engine.splits`, and
``--seeds`` sweeps are :mod:`pcea.engine.seeds` (which calls :func:`train`; the
command line, :mod:`pcea.cli`, picks one or the other).

Resuming is exact: every epoch's shuffling and augmentation depend only on
(seed, epoch, sample), and the checkpoint holds the optimiser, scheduler and
RNG states, so on the CPU an interrupted and resumed run ends with the same
weights as one that never stopped.

Reading order: :func:`build_run` makes a :class:`Run` (data, model, optimiser,
schedule, the resumed state); :func:`train_one_epoch` and :func:`evaluate_loader`
are one pass each; :meth:`Trainer.run` is the loop over epochs, from the checks
before anything is written to ``results.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from pcea.atomic import write_atomic
from pcea.data import open_dataset
from pcea.data.corruptions import Occlude
from pcea.data.synth import ensure_synthetic
from pcea.data.transforms import Compose, RotateUp, Transform, pct_train_transform
from pcea.engine.checkpoint import (
    RESUME_KEYS,
    check_resumed_state,
    load_checkpoint,
    load_latest,
    model_payload,
    open_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pcea.engine.config import RUNTIME_KEYS, TrainConfig, load_config_file, max_threads, max_workers
from pcea.engine.distributed import DistEnv, ShardSampler, average_batchnorm_buffers, resolve_device
from pcea.engine.metrics import accuracy_from_counts
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
from pcea.engine.splits import AugmentedSubset, epoch_seed, split_train_val
from pcea.errors import MissingSplitError, PceaError, PceaFileError
from pcea.fast import accelerate
from pcea.model import build_model
from pcea.precision import use_amp
from pcea.runtime import keep_freed_memory

__all__ = ["PROTOCOLS", "Run", "Trainer", "build_run", "evaluate_loader", "init_weights", "resume_config",
           "train", "train_one_epoch", "train_transform"]

PROTOCOLS = {"val": "best on val", "test": "best on test", "last": "last epoch"}
def _format_pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


class warmup_cosine:  # noqa: N801 (a picklable lr_lambda, so the scheduler's state saves)
    """LambdaLR factor at step t: linear from 0.01 to 1 over ``warmup`` steps, then cosine down
    to ``floor`` at step ``total``."""

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = max(total, 1), warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.01 + 0.99 * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(self.total - self.warmup, 1))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_transform(config: TrainConfig) -> Transform | None:
    """The per-cloud training augmentation of a recipe: occlusion, then yaw, then PCT's.

    With ``yaw`` and ``occlusion`` at 0 this is exactly PCT's augmentation (the same draws
    from the same generator), so older recipes train as before.
    """
    steps: list[Transform] = []
    if config.occlusion > 0:
        steps.append(Occlude(config.occlusion))
    if config.yaw > 0:
        steps.append(RotateUp("y", math.radians(config.yaw)))  # pcea's frame is y-up
    if config.augment == "pct":
        steps.extend(pct_train_transform().transforms)
    return Compose(steps) if steps else None


def init_weights(model: nn.Module, source: str, class_names: list[str],
                 log: Callable[[str], None] = print) -> None:
    """Load the weights of checkpoint ``source`` into ``model`` (``--init``), for fine-tuning.

    Every layer is copied when the source was trained on the same classes in the same
    order; otherwise every layer but the classifier's last Linear, which keeps its fresh
    initialisation (timm's ``reset_classifier`` convention). The frame is checked by
    :func:`pcea.engine.checkpoint.open_checkpoint` (a model of another frame is refused).

    Raises:
        PceaFileError: the source cannot be opened, or its layers do not fit ``model``.
    """
    source_model, _, path = open_checkpoint(source)
    state = source_model.state_dict()
    same_classes = [str(name) for name in source_model.class_names] == list(class_names)
    if not same_classes:
        last = f"head.{len(model.head) - 1}."
        state = {key: value for key, value in state.items() if not key.startswith(last)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise PceaFileError(path, f"--init: its layers do not fit this model ({first})") from None
    if unexpected or (missing and same_classes) or any(not key.startswith("head.") for key in missing):
        raise PceaFileError(path, f"--init: its layers do not fit this model (missing {len(missing)}, "
                                  f"unexpected {len(unexpected)} tensors)")
    what = "every layer" if same_classes else (
        f"every layer but the classifier ({len(source_model.class_names)} classes -> {len(class_names)})")
    log(f"init: {what} from {path}")


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


@dataclass(eq=False)
class Run:
    """What one training run works with: built once by :func:`build_run`, then read and updated by
    :func:`train_one_epoch`, :func:`evaluate_loader` and the loop in :meth:`Trainer.run`."""

    config: TrainConfig
    out: Path
    env: DistEnv
    device: torch.device
    log: Callable[[str], None]  # progress lines, rank 0 only
    class_names: list[str]
    train_set: AugmentedSubset
    val_set: AugmentedSubset | None
    test_set: AugmentedSubset | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    test_loader: DataLoader | None
    loader_generator: torch.Generator  # the training order's: its state is in every checkpoint
    model: nn.Module  # the classifier whose weights are saved
    net: nn.Module  # what batches go through: the model, wrapped by DDP and/or torch.compile
    compiled: bool
    amp: bool  # bf16 autocast
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step_schedule: bool  # the scheduler steps after every batch (warm-up), else after every epoch
    criterion: nn.Module
    history: list[dict] = field(default_factory=list)  # one row per completed epoch
    best: dict = field(default_factory=lambda: {"epoch": None, "score": -math.inf})
    start_epoch: int = 0  # the last epoch a resumed run had completed
    curves_ok: bool = False  # curves.png was drawn (matplotlib is installed)
    curves_written: float = 0.0  # when: the plot is refreshed at most every 30 s

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# -- building a run ---------------------------------------------------------------------------------


def build_run(config: TrainConfig, out: Path, env: DistEnv, device: torch.device, log: Callable[[str], None],
              *, resume: dict | None = None, resume_path: Path | None = None) -> Run:
    """Data, model, optimiser and schedule of a run, restored from a checkpoint when resuming.

    Nothing is written: the caller creates and locks the run directory once this succeeded.

    Args:
        config: the recipe.
        out: the run directory (named in messages).
        env: the process group (one process when not distributed).
        device: where the model trains.
        log: where progress lines go (rank 0 only).
        resume: the payload of ``resume_path`` (a ``last.pt``) to continue from.

    Raises:
        PceaError: the data, the model options or the checkpoint do not fit the recipe.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        keep_freed_memory()  # the malloc settings `pcea train` restarts with, for a library caller
    if env.enabled and config.batch_size // env.world_size < 2:
        raise PceaError(f"batch_size={config.batch_size} over {env.world_size} processes leaves "
                        "fewer than 2 clouds per process (BatchNorm needs 2)")
    amp = use_amp(config.amp, device, lambda why: log(f"note: --amp ignored, training in float32: {why}"))

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    train_base, test = _datasets(config, env, log)
    class_names = [str(name) for name in train_base.class_names]
    train_idx, val_idx = split_train_val(np.asarray(train_base.labels), config.val_split, config.seed,
                                         log=log)
    if len(train_idx) < config.batch_size:
        raise PceaError(f"{config.data}: {len(train_idx)} training clouds, fewer than one batch "
                        f"of {config.batch_size}; use a smaller --batch-size")
    train_set = AugmentedSubset(train_base, train_idx, transform=train_transform(config), seed=config.seed)
    val_set = AugmentedSubset(train_base, val_idx) if len(val_idx) else None
    test_set = AugmentedSubset(test, np.arange(len(test))) if test is not None else None
    loader_generator, eval_generator = torch.Generator(), torch.Generator()
    train_loader = _loader(train_set, config, env, device, train=True, generator=loader_generator)
    val_loader, test_loader = (_loader(subset, config, env, device, train=False, generator=eval_generator)
                               if subset is not None else None for subset in (val_set, test_set))

    model = _new_model(config, len(class_names))
    if config.init and resume is None:  # a resumed run has its own weights
        init_weights(model, config.init, class_names, log=log)
    model = accelerate(model)  # the CPU speed-ups, before the optimiser
    model.class_names = class_names
    model = model.to(device)
    optimizer = _optimizer(config, model)
    run = Run(config=config, out=out, env=env, device=device, log=log, class_names=class_names,
              train_set=train_set, val_set=val_set, test_set=test_set, train_loader=train_loader,
              val_loader=val_loader, test_loader=test_loader, loader_generator=loader_generator,
              model=model, net=model, compiled=False, amp=amp, optimizer=optimizer,
              scheduler=_scheduler(config, optimizer, steps_per_epoch=len(train_loader)),
              step_schedule=config.warmup_epochs > 0,
              criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing))
    if resume is not None:
        _restore(run, resume, resume_path)
    run.net, run.compiled = _wrap(model, config, env, device, log)
    return run


def _datasets(config: TrainConfig, env: DistEnv,
              log: Callable[[str], None]) -> tuple[Dataset, Dataset | None]:
    """The train and test splits of ``config.data`` (no test split: None, unless selecting on it)."""
    data = config.data
    if data == "synthetic":
        if env.is_main:
            data = str(ensure_synthetic())
        env.barrier()
        data = str(ensure_synthetic())
    kwargs = {"num_points": config.points, "normals": config.normals, "seed": config.seed}
    train_base = open_dataset(data, split="train", transform=None, **kwargs)
    try:
        test = open_dataset(data, split="test", transform=None, **kwargs)
    except MissingSplitError as err:
        if config.select_on == "test":
            raise PceaError(f"--select-on test needs a test split: {err}") from None
        log(f"note: {err}; training and selecting on the validation split, no test figures")
        return train_base, None
    if list(test.class_names) != list(train_base.class_names):
        raise PceaError(f"{data}: the train and test splits name different classes")
    return train_base, test


def _loader(dataset: Dataset, config: TrainConfig, env: DistEnv, device: torch.device, *, train: bool,
            generator: torch.Generator) -> DataLoader:
    per_rank = config.batch_size // env.world_size
    if train and env.enabled:
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                     shuffle=True, seed=config.seed, drop_last=True)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    else:
        sampler = ShardSampler(len(dataset), env)
    # More workers than cores only competes with the model for the CPU; the
    # batches do not depend on the worker count (each item has its own rng).
    workers = min(config.workers, os.cpu_count() or 1)
    return DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=train, generator=generator,
        # Not persistent: each epoch's workers must start from the dataset with the new epoch set.
        persistent_workers=False,
    )


def _new_model(config: TrainConfig, num_classes: int) -> nn.Module:
    options = {"num_points": config.points, "in_channels": 6 if config.normals else 3, **config.model_options}
    try:
        return build_model(config.model, num_classes=num_classes, **options)
    except (ValueError, TypeError) as err:
        raise PceaError(f"model {config.model!r}: {err}") from None


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.momentum, 0.999),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
               steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """With warm-up epochs, a per-step warm-up then cosine; else PCT's one cosine step per epoch."""
    if config.warmup_epochs > 0:
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        lr_lambda = warmup_cosine(config.epochs * steps_per_epoch, warmup_steps, config.min_lr / config.lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)


def _restore(run: Run, payload: dict, path: Path) -> None:
    """Continue from a ``last.pt`` payload: weights, optimiser, schedule, RNG and history."""
    if list(payload["class_names"]) != run.class_names:
        raise PceaError(f"{run.out}: the checkpoint's classes differ from those of {run.config.data}")
    try:
        run.model.load_state_dict(payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"], run.loader_generator)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PceaFileError(path, f"malformed checkpoint: its states do not fit this run "
                                  f"({type(err).__name__}: {text})") from None
    check_resumed_state(run.optimizer, run.scheduler, path)  # loaded is not yet usable
    run.history = list(payload["metrics"]["history"])
    run.best = dict(payload["metrics"]["best"])
    run.start_epoch = int(payload["epoch"])
    run.log(f"resuming {run.out} after epoch {run.start_epoch}/{run.config.epochs}")


def _wrap(model: nn.Module, config: TrainConfig, env: DistEnv, device: torch.device,
          log: Callable[[str], None]) -> tuple[nn.Module, bool]:
    """The module batches go through (DDP when distributed, then torch.compile) and whether it is compiled."""
    net = model
    if env.enabled:
        if device.type == "cuda":
            # PCT's accuracy collapses when BatchNorm sees only one GPU's slice of the batch.
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        try:
            return torch.compile(net), True
        except RuntimeError as err:  # its refusal of this Python; compiling itself waits for the first call
            _compile_failed(err, log)
    return net, False


def _compile_failed(err: RuntimeError, log: Callable[[str], None]) -> None:
    first = (str(err).splitlines() or [""])[0][:160]
    message = f"torch.compile failed ({type(err).__name__}: {first}); continuing in eager mode"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log(f"warning: {message}")


def _out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch.cuda.OutOfMemoryError (torch.OutOfMemoryError), or the CPU
    allocator's plain RuntimeError, also when a compiler backend wrapped it (BackendCompilerFailed)."""
    inner = getattr(err, "inner_exception", None)
    return (isinstance(err, torch.cuda.OutOfMemoryError) or "DefaultCPUAllocator" in str(err)
            or (isinstance(inner, BaseException) and _out_of_memory(inner)))


# -- one epoch, one evaluation ---------------------------------------------------------------------


def _forward(run: Run, points: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
    """The logits of a batch under the run's autocast; if torch.compile fails, eager from then on."""
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        if net is not None or not run.compiled:
            return (run.net if net is None else net)(points)
        try:
            return run.net(points)
        # Compiling happens on the first call of each new shape. Everything dynamo and inductor
        # raise is a RuntimeError (TorchDynamoException, BackendCompilerFailed, InductorError,
        # CppCompileError, InvalidCxxCompiler); a model's own error raises again in eager mode below.
        except RuntimeError as err:
            if _out_of_memory(err):
                raise  # too large a batch for this machine, compiled or not: not a compile failure
            _compile_failed(err, run.log)
            run.net, run.compiled = getattr(run.net, "_orig_mod", run.net), False
            return run.net(points)


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
    run.loader_generator.manual_seed(epoch_seed(run.config.seed, epoch))
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
            logits = _forward(run, points)  # (B, num_classes)
            loss = run.criterion(logits.float(), labels)
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
        if str(err).startswith("DataLoader worker"):  # kill -9, the OOM killer: resumable as a stop
            run.log(f"a data-loading worker died: {str(err).strip()}")
            return None
        raise
    finally:
        bar.close()
    totals = env.sum_(torch.stack([loss_sum, correct.to(wide), seen.to(wide),
                                   torch.tensor(float(steps), dtype=wide, device=device)]))
    loss_total, correct_total, seen_total, steps_total = totals.tolist()
    average_batchnorm_buffers(run.model, env)
    return {"train_loss": loss_total / max(steps_total, 1), "train_acc": correct_total / max(seen_total, 1)}


@torch.no_grad()
def evaluate_loader(run: Run, loader: DataLoader) -> tuple[float, float]:
    """(OA, mAcc) of the run's current weights on a loader's split, exact across ranks."""
    run.net.eval()
    # Under DDP, evaluate the unwrapped module: the DDP wrapper may broadcast buffers on a
    # forward, a collective that ranks with different numbers of batches would not match.
    net = run.model if run.env.enabled else None
    correct = torch.zeros(run.num_classes, dtype=torch.int64, device=run.device)
    total = torch.zeros(run.num_classes, dtype=torch.int64, device=run.device)
    for points, labels in loader:
        labels = labels.to(run.device)
        predictions = _forward(run, points.to(run.device), net).argmax(dim=1)  # (B,)
        total += torch.bincount(labels, minlength=run.num_classes)
        correct += torch.bincount(labels[predictions == labels], minlength=run.num_classes)
    run.env.sum_(correct)
    run.env.sum_(total)
    return accuracy_from_counts(correct.cpu().numpy(), total.cpu().numpy())


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
        **model_payload(run.model, model_name=run.config.model),  # what open_checkpoint reads
        "train_config": run.config.to_dict(),
        "epoch": epoch,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(run.loader_generator),
        "metrics": {"history": run.history, "best": run.best, "last": run.history[-1] if run.history else {}},
        "protocol": protocol,
    }


def _checkpoint_bytes(run: Run) -> int:
    """About the size of one checkpoint: weights and statistics, optimiser moments, history."""
    state = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in run.model.parameters())
    moments = 2 if run.config.optimizer == "adamw" else 1
    return state + moments * params + 2**18


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


def resume_config(out: Path, overrides: dict, log: Callable[[str], None]
                  ) -> tuple[TrainConfig, dict | None, Path | None]:
    """The recipe of the run in ``out`` with the runtime options of ``overrides``, and the
    checkpoint to continue from (``last.pt``, else ``last.prev.pt``; None for a run stopped
    before its first checkpoint) with its path.

    Raises:
        PceaError: ``overrides`` changes the recipe, or there is nothing to resume.
    """
    last = out / "last.pt"
    payload = used = None
    if not last.exists() and not previous_path(last).exists():
        if run_state(out) != "unstarted":
            raise PceaFileError(out, "no run to resume here (no last.pt)")
        # Stopped before its first checkpoint was written: nothing was trained, start it again.
        source = out / "config.yaml"
        values = load_config_file(source)
        log(f"note: {out} was stopped before its first checkpoint; starting it from scratch "
            "with its config.yaml")
    else:
        used, payload, problems = load_latest(last, require=RESUME_KEYS)
        for problem in problems:
            log(f"warning: {problem}")
        if problems:
            log(f"resuming from the previous checkpoint {used} instead")
        values, source = dict(payload["train_config"]), f"{used} (train_config)"
    changed = sorted(k for k, v in overrides.items() if k not in RUNTIME_KEYS and v != values.get(k))
    if changed:
        raise PceaError(f"--resume continues {out} with its own recipe; "
                        f"cannot change {', '.join(changed)} (only {', '.join(RUNTIME_KEYS)})")
    values.update({k: v for k, v in overrides.items() if k in RUNTIME_KEYS})
    # A run from a larger machine: its thread and worker counts are only runtime options.
    for key, bound in (("threads", max_threads()), ("workers", max_workers())):
        if key not in overrides and isinstance(values.get(key), int) and values[key] > bound:
            log(f"note: {key}={values[key]} is more than this machine allows; using {bound}")
            values[key] = bound
    return TrainConfig.from_dict(values, source=str(source)), payload, used


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
    """

    def __init__(self, config: TrainConfig | None, out: str | os.PathLike, *, resume: bool = False,
                 force: bool = False, overrides: dict | None = None,
                 log: Callable[[str], None] = print, stop_after: int | None = None):
        self.env = DistEnv.from_env()
        self.out = Path(out)
        self.resume = resume
        self.force = force
        self.stop_after = stop_after
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
            ``"interrupted": True`` when a signal or ``stop_after`` ended it early.
        """
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
                t0 = time.time()
                lr = run.optimizer.param_groups[0]["lr"]
                train_metrics = train_one_epoch(run, epoch, stop)
                if train_metrics is None:
                    return _interrupted(run, epoch, stop.signum, finished=False)
                _check_finite_weights(run, epoch)
                if not run.step_schedule:
                    run.scheduler.step()
                row = {"epoch": epoch, "lr": lr, **train_metrics}
                if run.val_loader is not None:
                    row["val_oa"], row["val_macc"] = evaluate_loader(run, run.val_loader)
                if config.select_on == "test":
                    row["test_oa"], row["test_macc"] = evaluate_loader(run, run.test_loader)
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


def _interrupted(run: Run, epoch: int, signum: int | None, *, finished: bool) -> dict:
    done = epoch if finished else epoch - 1
    _write_curves(run)
    why = f"stopped by {signal.Signals(signum).name}" if signum else "stopped"
    when = f"after epoch {epoch}" if finished else f"during epoch {epoch}"
    run.log(f"{why} {when}; {run.out / 'last.pt'} holds epoch {done}. "
            f"Continue with: pcea train --resume {run.out}")
    return {"interrupted": True, "signal": signal.Signals(signum).name if signum else None,
            "epochs_completed": done}


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
    last_oa, last_macc = evaluate_loader(run, run.test_loader)
    results["test"].append({"protocol": "last epoch", "epoch": config.epochs,
                            "oa": last_oa, "macc": last_macc})
    if config.select_on != "last" and run.best["epoch"] is not None:
        env.barrier()
        best = load_checkpoint(out / "best.pt", map_location=run.device)
        run.model.load_state_dict(best["model"])
        oa, macc = evaluate_loader(run, run.test_loader)
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
          stop_after: int | None = None) -> dict:
    """Run one training (see :class:`Trainer`); returns the results dict."""
    return Trainer(config, out, resume=resume, force=force, overrides=overrides, log=log,
                   stop_after=stop_after).run()
